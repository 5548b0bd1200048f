"""Namespace labels for `/mutate` and `/validate` without a profile: a cache kept by list + watch.

The API server does not put namespace labels into an AdmissionReview, and a GET per admission
would put the API server on every pod creation's critical path. Like a client-go informer, the
cache lists all namespaces once, then follows a watch from the list's resourceVersion; an expired
watch (410 Gone) or a broken one is followed by a fresh list. Each gunicorn worker runs its own
watch thread, started after the fork (the kubernetes client's connection pool is not fork-safe).

While the cache is not synced (first list pending, API unreachable, RBAC missing), lookups return
None and the decision logic denies: admitting a pod without knowing whether its namespace demands
a sandbox would be guessing in the unsafe direction.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable, Mapping

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

HTTP_GONE = 410
# The API server ends each watch after this long; a new one resumes from the last resourceVersion.
WATCH_SECONDS = 60
# A silent connection (network partition) is noticed after the watch should have ended anyway.
READ_TIMEOUT = WATCH_SECONDS + 15
CONNECT_TIMEOUT = 5
LIST_PAGE = 500
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0


class NamespaceCache:
    """Labels of every namespace, from list + watch; `lookup` never calls the API itself."""

    def __init__(self, api_factory: Callable[[], client.ApiClient],
                 on_sync_change: Callable[[bool], None] | None = None,
                 watch_seconds: int = WATCH_SECONDS, backoff_max: float = BACKOFF_MAX):
        self._api_factory = api_factory
        self._on_sync_change = on_sync_change
        self._watch_seconds = watch_seconds
        self._backoff_max = backoff_max
        self._labels: dict[str, dict[str, str]] = {}
        self._synced = False
        self._error: str | None = "waiting for the first list of namespaces"
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread: threading.Thread | None = None

    # ---- reading side (request threads) -------------------------------------------------

    @property
    def synced(self) -> bool:
        """True once a list succeeded and no later relist has failed."""
        return self._synced

    def status(self) -> str:
        """A one-line account of the cache for /readyz and logs."""
        if self._synced:
            return f"synced ({len(self._labels)} namespaces)"
        return f"not synced: {self._error}"

    def lookup(self, namespace: str, wait: float = 1.0) -> Mapping[str, str] | None:
        """The namespace's labels, or None when they cannot be known (not synced, or unknown).

        A namespace created a moment before its first pod may not have reached the watch yet;
        waiting briefly for the event beats denying the pod.
        """
        deadline = time.monotonic() + wait
        with self._changed:
            while True:
                if self._synced and namespace in self._labels:
                    return self._labels[namespace]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return None
                self._changed.wait(remaining)

    # ---- writing side (the watch thread) ------------------------------------------------

    def start(self) -> "NamespaceCache":
        """Start the list + watch thread (call after fork)."""
        self._thread = threading.Thread(target=self._run, name="namespace-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the watch thread (it is a daemon; this only makes shutdown prompt)."""
        self._stop.set()
        if self._watch:
            self._watch.stop()
        with self._changed:
            self._changed.notify_all()

    def _set_synced(self, synced: bool, error: str | None = None) -> None:
        changed = synced != self._synced
        self._synced = synced
        self._error = error
        if changed and self._on_sync_change:
            self._on_sync_change(synced)

    def _run(self) -> None:
        backoff = BACKOFF_START
        core = None
        while not self._stop.is_set():
            try:
                if core is None:
                    core = client.CoreV1Api(self._api_factory())
                resource_version = self._list(core)
            except Exception as exc:  # any failure to list means we cannot know the labels
                reason = _describe(exc)
                if self._synced or self._error != reason:
                    log.error("namespace cache not synced: namespace labels unavailable, "
                              "/mutate and /validate without a profile deny until it recovers",
                              extra={"error": reason, "retry_in_s": backoff})
                self._set_synced(False, reason)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._backoff_max)
                continue
            if not self._synced:
                log.info("namespace cache synced", extra={"namespaces": len(self._labels)})
            self._set_synced(True)
            backoff = BACKOFF_START
            try:
                while not self._stop.is_set():
                    resource_version = self._watch_once(core, resource_version)
            except ApiException as exc:
                if exc.status == HTTP_GONE:
                    log.info("namespace watch expired (410 Gone); relisting")
                else:
                    log.warning("namespace watch failed; relisting", extra={"error": _describe(exc)})
            except Exception as exc:  # connection reset, timeout, bad chunk: relist like an informer
                if not self._stop.is_set():
                    log.warning("namespace watch broke; relisting", extra={"error": _describe(exc)})

    def _list(self, core: client.CoreV1Api) -> str:
        """List every namespace (paged), replace the cache, return the list's resourceVersion."""
        labels: dict[str, dict[str, str]] = {}
        token = None
        while True:
            kwargs = {"limit": LIST_PAGE, "_preload_content": False,
                      "_request_timeout": (CONNECT_TIMEOUT, READ_TIMEOUT)}
            if token:
                kwargs["_continue"] = token
            doc = json.loads(core.list_namespace(**kwargs).data)
            for item in doc.get("items") or []:
                meta = item.get("metadata") or {}
                if meta.get("name"):
                    labels[meta["name"]] = dict(meta.get("labels") or {})
            meta = doc.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                break
        with self._changed:
            self._labels = labels
            self._changed.notify_all()
        return meta.get("resourceVersion") or ""

    def _watch_once(self, core: client.CoreV1Api, resource_version: str) -> str:
        """Follow one watch until the server ends it; return the last resourceVersion seen."""
        self._watch = watch.Watch()
        for event in self._watch.stream(core.list_namespace, resource_version=resource_version,
                                        allow_watch_bookmarks=True, timeout_seconds=self._watch_seconds,
                                        _request_timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)):
            meta = (event.get("raw_object") or {}).get("metadata") or {}
            resource_version = meta.get("resourceVersion") or resource_version
            name = meta.get("name")
            kind = event.get("type")
            if not name or kind not in ("ADDED", "MODIFIED", "DELETED"):
                continue
            with self._changed:
                if kind == "DELETED":
                    self._labels.pop(name, None)
                else:
                    self._labels[name] = dict(meta.get("labels") or {})
                self._changed.notify_all()
            if self._stop.is_set():
                break
        return resource_version


def _describe(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        hint = " (RBAC: the webhook's ServiceAccount needs list and watch on namespaces)" if exc.status == 403 else ""
        return f"API server answered {exc.status} {exc.reason}{hint}"
    return f"{type(exc).__name__}: {exc}"
