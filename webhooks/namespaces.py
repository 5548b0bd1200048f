"""Namespace labels for `/mutate` and `/validate` without a profile: a cache kept by list + watch.

The API server does not put namespace labels into an AdmissionReview, and a GET per admission
would put the API server on every pod creation's critical path. The cache follows the namespaces
with the core informer (`sandgate.core.informer`: paged list, then a watch from its
resourceVersion, a relist after 410 Gone or a broken watch, one unreadable object skipped rather
than fatal). Each gunicorn worker runs its own informer, started after the fork (the kubernetes
client's connection pool is not fork-safe).

The webhook's own rule on top: while the cache is not synced (first list pending, a relist failed:
API unreachable, RBAC missing), lookups return None and the decision logic denies: admitting a pod
without knowing whether its namespace demands a sandbox would be guessing in the unsafe direction.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Mapping

from kubernetes import client

from sandgate.core.informer import Informer

log = logging.getLogger(__name__)

# The API server ends each watch after this long; a new one resumes from the last resourceVersion.
WATCH_SECONDS = 60
BACKOFF_MAX = 30.0


def namespace_labels(obj: Mapping[str, Any]) -> dict[str, str]:
    """The labels of a Namespace object; ValueError when they are not a string map."""
    meta = obj.get("metadata")
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if labels is None:
        return {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ValueError("metadata.labels: must be a map of strings")
    return dict(labels)


class NamespaceCache:
    """Labels of every namespace, from list + watch; `lookup` never calls the API itself."""

    def __init__(self, api_factory: Callable[[], client.ApiClient],
                 on_sync_change: Callable[[bool], None] | None = None,
                 watch_seconds: int = WATCH_SECONDS, backoff_max: float = BACKOFF_MAX):
        self._api_factory = api_factory
        self._core: client.CoreV1Api | None = None
        self._labels: dict[str, dict[str, str]] = {}
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._on_sync_change = on_sync_change
        self._informer: Informer[dict[str, str]] = Informer(
            "namespaces", self._list_namespaces, namespace_labels, self, self._stop,
            watch_seconds=watch_seconds, backoff_max=backoff_max, on_sync_change=self._sync_changed)

    # ---- reading side (request threads) -------------------------------------------------

    @property
    def synced(self) -> bool:
        """True once a list succeeded and no later relist has failed."""
        return self._informer.status.connected

    def status(self) -> str:
        """A one-line account of the cache for /readyz and logs."""
        if self.synced:
            skipped = len(self._informer.skipped.current)
            return f"synced ({len(self._labels)} namespaces" + (f", {skipped} unreadable skipped)" if skipped else ")")
        return f"not synced: {self._informer.status.error or 'waiting for the first list of namespaces'}"

    def lookup(self, namespace: str, wait: float = 1.0) -> Mapping[str, str] | None:
        """The namespace's labels, or None when they cannot be known (not synced, or unknown).

        A namespace created a moment before its first pod may not have reached the watch yet;
        waiting briefly for the event beats denying the pod.
        """
        deadline = time.monotonic() + wait
        with self._changed:
            while True:
                if self.synced and namespace in self._labels:
                    return self._labels[namespace]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return None
                self._changed.wait(remaining)

    # ---- the informer's store (sandgate.core.informer.Store) ---------------------------------

    def replace(self, items: dict[str, dict[str, str]]) -> None:
        """Every namespace after a (re)list."""
        with self._changed:
            self._labels = dict(items)
            self._changed.notify_all()

    def upsert(self, key: str, item: dict[str, str]) -> None:
        """A namespace added or relabelled."""
        with self._changed:
            self._labels[key] = item
            self._changed.notify_all()

    def delete(self, key: str) -> None:
        """A namespace deleted (or now unreadable: its labels are no longer known)."""
        with self._changed:
            self._labels.pop(key, None)
            self._changed.notify_all()

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> "NamespaceCache":
        """Start the list + watch thread (call after fork)."""
        self._informer.start()
        return self

    def stop(self) -> None:
        """Stop the watch thread (it is a daemon; this only makes shutdown prompt)."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()

    def _list_namespaces(self, **kwargs: Any) -> Any:
        if self._core is None:  # built in the informer thread, after the fork
            self._core = client.CoreV1Api(self._api_factory())
        return self._core.list_namespace(**kwargs)

    def _sync_changed(self, synced: bool) -> None:
        if synced:
            log.info("namespace cache synced", extra={"namespaces": len(self._labels)})
        else:
            log.error("namespace cache not synced: namespace labels unavailable, "
                      "/mutate and /validate without a profile deny until it recovers",
                      extra={"error": self._informer.status.error})
        with self._changed:
            self._changed.notify_all()
        if self._on_sync_change:
            self._on_sync_change(synced)
