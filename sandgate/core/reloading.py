"""A value loaded from files and loaded again when they change, keeping the last good one.

Used for the policy (a ConfigMap volume) and the serving certificate (a Secret volume). Both are
updated by swapping a symlink, so files are compared by the stat of their resolved target, at most
every `check_interval` seconds because callers ask on every request or connection. A changed file
that fails to load is logged once and retried on later checks (a rotation may be half-written);
the previous value keeps serving, since refusing to serve would take every pod creation down.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, Generic, Sequence, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class ReloadingFiles(Generic[T]):
    """`load()` over `paths`, re-run when any of them changes; the first load's error propagates."""

    def __init__(self, what: str, paths: Sequence[str], load: Callable[[], T],
                 errors: tuple[type[Exception], ...], check_interval: float,
                 on_reload: Callable[[T], None] | None = None):
        self.what = what
        self.paths = tuple(str(p) for p in paths)
        self.check_interval = check_interval
        self.on_reload = on_reload
        self.last_error: str | None = None
        self.generation = 1
        self.loaded_at = time.time()
        self._load = load
        self._errors = errors
        self._lock = threading.Lock()
        self._signature = self._stat()
        self._value = load()
        self._checked_at = time.monotonic()

    def _stat(self) -> tuple | None:
        try:
            return tuple((st.st_ino, st.st_mtime_ns, st.st_size) for st in map(os.stat, self.paths))
        except OSError:
            return None

    @property
    def current(self) -> T:
        """The value in force, after a cheap (rate-limited) check for changed files."""
        self.refresh()
        return self._value

    def refresh(self) -> None:
        """Check for changed files, at most every `check_interval` seconds (for callers on a hot path)."""
        if time.monotonic() - self._checked_at >= self.check_interval:
            self.reload_if_changed()

    def reload_if_changed(self) -> bool:
        """Load again if a file changed; True when a new value took effect."""
        with self._lock:
            self._checked_at = time.monotonic()
            signature = self._stat()
            if signature is None or signature == self._signature:
                return False
            try:
                value = self._load()
            except self._errors as exc:
                if self.last_error != str(exc):
                    log.error(f"{self.what} reload failed; keeping the previous {self.what}",
                              extra={"files": self.paths, "error": str(exc)})
                self.last_error = str(exc)
                return False
            self._value = value
            self._signature = signature
            self.last_error = None
            self.generation += 1
            self.loaded_at = time.time()
        log.info(f"{self.what} reloaded", extra={"files": self.paths, "generation": self.generation})
        if self.on_reload:
            self.on_reload(value)
        return True
