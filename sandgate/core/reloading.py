"""A value loaded from files and loaded again when they change, keeping the last good one.

Used for the policy (a ConfigMap volume) and the serving certificate (a Secret volume). Both are
updated by swapping a symlink, so files are compared by the stat of their resolved target, at most
every `check_interval` seconds because callers ask on every request or connection. A changed file
that fails to load is logged once and retried on later checks (a rotation may be half-written);
the previous value keeps serving, since refusing to serve would take every pod creation down.

A file rewritten in place (an editor, `cp`, a config tool writing in chunks) is, for a while,
a prefix of its new content, and a prefix can be valid: a policy whose `forbid` list stops before
`privileged` would admit privileged pods. So a change is only loaded once it is stable: the same
stat and the same bytes on two checks at least `settle` seconds apart, and no file modified within
the last `settle` seconds; a file that changes while it is being loaded is not taken either.
"""

from __future__ import annotations

import logging
import hashlib
import os
import threading
import time
from typing import Callable, Generic, Sequence, TypeVar

T = TypeVar("T")

# How long a changed file must stay unchanged before it is loaded.
SETTLE_SECONDS = 1.0

log = logging.getLogger(__name__)


class ReloadingFiles(Generic[T]):
    """`load()` over `paths`, re-run when any of them changes; the first load's error propagates."""

    def __init__(self, what: str, paths: Sequence[str], load: Callable[[], T],
                 errors: tuple[type[Exception], ...], check_interval: float,
                 on_reload: Callable[[T], None] | None = None, settle: float = SETTLE_SECONDS):
        self.what = what
        self.settle = settle
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
        # (stat signature, content digest, first seen) of a change waiting to prove it is stable
        self._pending: tuple[tuple, str, float] | None = None

    def _stat(self) -> tuple | None:
        try:
            return tuple((st.st_ino, st.st_mtime_ns, st.st_size) for st in map(os.stat, self.paths))
        except OSError:
            return None

    def _digest(self) -> str | None:
        sha = hashlib.sha256()
        try:
            for path in self.paths:
                with open(path, "rb") as f:
                    sha.update(f.read())
                sha.update(b"\0")
        except OSError:
            return None
        return sha.hexdigest()

    def _stable(self, signature: tuple) -> bool:
        """Whether the changed files have stayed the same (stat and bytes) for `settle` seconds."""
        now = time.monotonic()
        newest = max(mtime_ns for _ino, mtime_ns, _size in signature) / 1e9
        digest = self._digest()
        if digest is None:
            return False
        if self._pending is None or self._pending[:2] != (signature, digest):
            self._pending = (signature, digest, now)
        return now - self._pending[2] >= self.settle and time.time() - newest >= self.settle

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
                self._pending = None
                return False
            if not self._stable(signature):
                return False
            try:
                value = self._load()
            except self._errors as exc:
                if self.last_error != str(exc):
                    log.error(f"{self.what} reload failed; keeping the previous {self.what}",
                              extra={"files": self.paths, "error": str(exc)})
                self.last_error = str(exc)
                return False
            if self._stat() != signature:
                return False  # written to while being read: wait for it to settle again
            self._value = value
            self._signature = signature
            self.last_error = None
            self.generation += 1
            self.loaded_at = time.time()
        log.info(f"{self.what} reloaded", extra={"files": self.paths, "generation": self.generation})
        if self.on_reload:
            self.on_reload(value)
        return True
