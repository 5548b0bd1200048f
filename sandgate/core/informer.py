"""List + watch one kind of Kubernetes object into a store, like a client-go informer.

Shared by the webhook (namespace labels) and the extender (Nodes, Pods, Leases); each keeps its own
policy on top of the `SyncStatus` this keeps: the webhook denies while unsynced, the extender serves
stale data and says so.

The list is paginated and read as raw JSON (`_preload_content=False`, orjson): both users work on
Kubernetes JSON dicts, and client models would triple the memory and CPU of a relist. A watch that
ends (server timeout) resumes from the last resourceVersion (bookmarks keep it current); `410 Gone`
relists; any other failure relists after an exponential back-off.

No single object can stop the informer: every object goes through the user's `parse` one at a
time, and one that raises is skipped, logged once (until its content changes), counted and listed
in `SkippedObjects.status()` (shown in /readyz), while every other object keeps flowing.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, Mapping, Protocol, TypeVar

import orjson
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger(__name__)

T = TypeVar("T")

PAGE = 500
CONNECT_TIMEOUT = 5
BACKOFF_START = 0.5
MAX_EXAMPLES = 10  # skipped objects named in status(); the count covers all of them


class Gone(Exception):
    """The resourceVersion is too old (HTTP 410): relist."""


def object_key(obj: Mapping[str, Any]) -> str:
    """namespace/name (or name for cluster-scoped objects) of a Kubernetes object; "" when unreadable."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict):
        return ""
    name, namespace = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str):
        return ""
    return f"{namespace}/{name}" if isinstance(namespace, str) and namespace else name


@dataclass
class SyncStatus:
    """Freshness of one informer's store."""

    synced: bool = False  # a full list has been loaded at least once
    connected: bool = False  # a watch is open: the store is current
    last_ok: float | None = None  # epoch seconds when the store was last known current
    error: str | None = None  # the last failure while the API is unreachable

    def staleness(self, now: float) -> float | None:
        """Seconds the store may be behind: 0 while watching; None when not applicable (snapshot, never synced)."""
        if self.connected:
            return 0.0
        return None if self.last_ok is None else max(0.0, now - self.last_ok)


class SkippedObjects:
    """Objects of one kind that could not be read: each logged once, counted, and named in status()."""

    def __init__(self, kind: str):
        self.kind = kind
        self.lock = threading.Lock()
        self.current: dict[str, str] = {}  # key -> why it is skipped, for objects still skipped
        self.total = 0  # skip events since start (a metric counter)

    def record(self, key: str, error: str) -> None:
        """`key` cannot be read; logs only when this object's error is new."""
        with self.lock:
            if self.current.get(key) == error:
                return
            self.current[key] = error
            self.total += 1
        log.warning("skipping an object that cannot be read", extra={"kind": self.kind, "object": key,
                                                                       "error": error})

    def clear(self, key: str) -> None:
        """`key` was read (or deleted): it is no longer skipped."""
        if key in self.current:
            with self.lock:
                self.current.pop(key, None)

    def reset(self, keys: Iterable[str]) -> None:
        """After a relist: only the given keys are still skipped."""
        keep = set(keys)
        with self.lock:
            self.current = {k: v for k, v in self.current.items() if k in keep}

    def status(self) -> dict[str, Any]:
        """{"count": objects skipped now, "total": skip events, "objects": {key: error} (first few)}."""
        with self.lock:
            shown = dict(list(self.current.items())[:MAX_EXAMPLES])
            return {"count": len(self.current), "total": self.total, "objects": shown}


class Store(Protocol[T]):
    """Where an informer puts the parsed objects, by key."""

    def replace(self, items: dict[str, T]) -> None:
        """Every object after a (re)list."""

    def upsert(self, key: str, item: T) -> None:
        """One object added or modified."""

    def delete(self, key: str) -> None:
        """One object deleted (or now unreadable, or no longer of interest)."""


def parse_all(objs: Iterable[Any], parse: Callable[[Mapping[str, Any]], T | None],
              skipped: SkippedObjects) -> dict[str, T]:
    """Parse a list of objects one by one: unreadable ones are recorded in `skipped`, None results dropped."""
    out: dict[str, T] = {}
    bad: list[str] = []
    for i, obj in enumerate(objs):
        key = object_key(obj) or f"{skipped.kind}[{i}]"
        try:
            item = parse(obj)
        except Exception as exc:  # one object's surprise must not stop the others
            skipped.record(key, _describe(exc))
            bad.append(key)
            continue
        if item is not None:
            out[key] = item
    skipped.reset(bad)
    return out


class Informer(threading.Thread, Generic[T]):
    """List+watch one resource into `store` until `stop` is set (a daemon thread)."""

    def __init__(self, kind: str, list_fn: Callable[..., Any], parse: Callable[[Mapping[str, Any]], T | None],
                 store: Store[T], stop: threading.Event, *, watch_seconds: int = 300,
                 backoff_max: float = 30.0, clock: Callable[[], float] = time.time,
                 on_sync_change: Callable[[bool], None] | None = None):
        super().__init__(name=f"informer-{kind}", daemon=True)
        self.kind = kind
        self.list_fn = list_fn
        self.parse = parse
        self.store = store
        self.stop_event = stop
        self.watch_seconds = watch_seconds
        self.backoff_max = backoff_max
        self.clock = clock
        self.on_sync_change = on_sync_change
        self.status = SyncStatus()
        self.skipped = SkippedObjects(kind)

    def run(self) -> None:
        """Relist and watch until stopped, backing off while the API server is unreachable.

        A watch that breaks is followed by an immediate relist; only a failed list marks the store
        disconnected (`on_sync_change(False)`), as the webhook's fail-closed rule needs.
        """
        backoff = BACKOFF_START
        while not self.stop_event.is_set():
            try:
                version = self._list()
            except Exception as exc:  # ApiException, urllib3 and socket errors alike: keep the last store
                if self.stop_event.is_set():
                    return
                self._lost(_describe(exc, self.kind), backoff)
                self.stop_event.wait(backoff)
                backoff = min(self.backoff_max, backoff * 2)
                continue
            backoff = BACKOFF_START
            try:
                self._watch(version)
            except Gone:
                log.info("watch expired (410 Gone); relisting", extra={"resource": self.kind})
            except Exception as exc:  # connection reset, timeout, bad chunk: relist like an informer
                if not self.stop_event.is_set():
                    log.warning("watch broke; relisting", extra={"resource": self.kind, "error": _describe(exc, self.kind)})
                    self.stop_event.wait(BACKOFF_START)

    def _lost(self, error: str, retry_in: float) -> None:
        was = self.status.connected
        changed = self.status.error != error[:500]
        self.status.error = error[:500]  # before `connected`: whoever sees the store stale also sees why
        self.status.connected = False
        if was or changed:
            log.warning("cannot list; serving the last good store", extra={"resource": self.kind, "error": error,
                                                                          "retryInSeconds": retry_in})
        if was and self.on_sync_change:
            self.on_sync_change(False)

    def _set_synced(self) -> None:
        changed = not self.status.connected
        self.status.synced = self.status.connected = True
        self.status.last_ok = self.clock()
        self.status.error = None
        if changed and self.on_sync_change:
            self.on_sync_change(True)

    def _list(self) -> str:
        items: list[Any] = []
        token = None
        while True:
            kwargs: dict[str, Any] = {"limit": PAGE, "_preload_content": False,
                                      "_request_timeout": (CONNECT_TIMEOUT, self.watch_seconds + 30)}
            if token:
                kwargs["_continue"] = token
            try:
                doc = orjson.loads(self.list_fn(**kwargs).data)
            except ApiException as exc:
                if exc.status == 410:  # the continue token expired mid-list
                    raise Gone() from None
                raise
            if not isinstance(doc, dict) or not isinstance(doc.get("items") or [], list):
                raise ValueError(f"list of {self.kind} is not a Kubernetes List")
            items.extend(doc.get("items") or [])
            meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
            token = meta.get("continue")
            if not token:
                break
        self.store.replace(parse_all(items, self.parse, self.skipped))
        self._set_synced()
        log.info("listed", extra={"resource": self.kind, "count": len(items),
                                  "skipped": len(self.skipped.current)})
        return str(meta.get("resourceVersion") or "")

    def _watch(self, version: str) -> None:
        while not self.stop_event.is_set():
            resp = self.list_fn(watch=True, resource_version=version, allow_watch_bookmarks=True,
                                timeout_seconds=self.watch_seconds, _preload_content=False,
                                _request_timeout=(CONNECT_TIMEOUT, self.watch_seconds + 30))
            try:
                for line in iter_resp_lines(resp):
                    if self.stop_event.is_set():
                        return
                    if line:
                        version = self._event(line, version)
            finally:
                resp.close()  # a watch left early has unread data: never return it to the pool
                resp.release_conn()
            self.status.last_ok = self.clock()

    def _event(self, line: str | bytes, version: str) -> str:
        event = orjson.loads(line)
        if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
            raise ValueError(f"watch of {self.kind}: not a watch event: {str(line)[:200]}")
        kind, obj = event.get("type"), event["object"]
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise ApiException(status=obj.get("code"), reason=f"{obj.get('reason')}: {obj.get('message')}")
        key = object_key(obj)
        if kind in ("ADDED", "MODIFIED") and key:
            try:
                item = self.parse(obj)
            except Exception as exc:  # skip this object, keep watching the others
                self.skipped.record(key, _describe(exc))
                self.store.delete(key)  # what the cache held for it is no longer true
            else:
                self.skipped.clear(key)
                if item is None:
                    self.store.delete(key)
                else:
                    self.store.upsert(key, item)
        elif kind == "DELETED" and key:
            self.skipped.clear(key)
            self.store.delete(key)
        self.status.connected = True
        self.status.last_ok = self.clock()
        meta = obj.get("metadata")
        rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
        return rv if isinstance(rv, str) and rv else version


def _describe(exc: Exception, kind: str = "") -> str:
    if isinstance(exc, ApiException):
        hint = f" (RBAC: the ServiceAccount needs list and watch on {kind or 'this resource'})" \
            if exc.status == 403 else ""
        return f"API server answered {exc.status} {exc.reason}{hint}"
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
