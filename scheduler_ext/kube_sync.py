"""Keep the cache in step with the API server: list, then watch, Nodes, Pods and agent Leases.

One daemon thread per resource. Lists are paginated and read as raw JSON (`_preload_content=False`,
decoded with orjson): the extender works on Kubernetes JSON dicts, and deserialising every Pod into
client models would triple the memory and CPU of a relist. A watch that ends (server timeout)
resumes from the last resourceVersion; `410 Gone` (too old) triggers a relist; a connection error
keeps the last good cache serving, marks the resource stale (readyz, metrics) and retries with
exponential back-off.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import orjson
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

from scheduler_ext.state import ClusterCache, SyncStatus

log = logging.getLogger(__name__)

PAGE = 500
WATCH_SECONDS = 300  # server-side watch timeout; the watch is re-opened from the last resourceVersion
MAX_BACKOFF = 30.0


class Gone(Exception):
    """The resourceVersion is too old (HTTP 410): relist."""


@dataclass
class Resource:
    """How to list/watch one kind and where its objects go in the cache."""

    kind: str  # "nodes", "pods", "leases"
    list_fn: Callable[..., Any]  # a kubernetes client list_* method
    replace: Callable[[list[Mapping[str, Any]]], None]
    upsert: Callable[[Mapping[str, Any]], None]
    delete: Callable[[Mapping[str, Any]], None]


def resources(api: client.ApiClient, cache: ClusterCache) -> list[Resource]:
    """Nodes (cluster), Pods (all namespaces), heartbeat Leases (the agent's namespace)."""
    core = client.CoreV1Api(api)
    coordination = client.CoordinationV1Api(api)
    namespace = cache.policy.agent.namespace

    def list_leases(**kwargs: Any) -> Any:
        return coordination.list_namespaced_lease(namespace, **kwargs)

    return [
        Resource("nodes", core.list_node, cache.replace_nodes, cache.upsert_node,
                 lambda obj: cache.delete_node((obj.get("metadata") or {}).get("name", ""))),
        Resource("pods", core.list_pod_for_all_namespaces, cache.replace_pods, cache.upsert_pod, cache.delete_pod),
        Resource("leases", list_leases, cache.replace_leases, cache.upsert_lease, cache.delete_lease),
    ]


class Watcher(threading.Thread):
    """List+watch one resource into the cache until `stop` is set."""

    def __init__(self, resource: Resource, status: SyncStatus, stop: threading.Event,
                 clock: Callable[[], float] = time.time):
        super().__init__(name=f"watch-{resource.kind}", daemon=True)
        self.resource = resource
        self.status = status
        self.stop_event = stop
        self.clock = clock

    def run(self) -> None:
        """Relist and watch forever, backing off while the API server is unreachable."""
        backoff = 1.0
        while not self.stop_event.is_set():
            try:
                version = self._list()
                backoff = 1.0
                self._watch(version)
            except Gone:
                log.info("watch expired (410 Gone); relisting", extra={"resource": self.resource.kind})
            except Exception as exc:  # ApiException, urllib3 and socket errors alike: keep the last cache
                self.status.connected = False
                self.status.error = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("API server unreachable; serving from the last good cache",
                            extra={"resource": self.resource.kind, "error": self.status.error,
                                   "retryInSeconds": backoff})
                self.stop_event.wait(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)

    def _list(self) -> str:
        items: list[Mapping[str, Any]] = []
        token = None
        while True:
            kwargs: dict[str, Any] = {"limit": PAGE, "_preload_content": False, "_request_timeout": (5, 60)}
            if token:
                kwargs["_continue"] = token
            try:
                doc = orjson.loads(self.resource.list_fn(**kwargs).data)
            except ApiException as exc:
                if exc.status == 410:  # the continue token expired mid-list
                    raise Gone() from None
                raise
            items.extend(doc.get("items") or [])
            meta = doc.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                break
        self.resource.replace(items)
        gc.freeze()  # the listed objects are the long-lived cache: keep them out of full collections
        self.status.synced = self.status.connected = True
        self.status.last_ok = self.clock()
        self.status.error = None
        log.info("listed", extra={"resource": self.resource.kind, "count": len(items)})
        return str(meta.get("resourceVersion") or "")

    def _watch(self, version: str) -> None:
        while not self.stop_event.is_set():
            resp = self.resource.list_fn(watch=True, resource_version=version, allow_watch_bookmarks=True,
                                         timeout_seconds=WATCH_SECONDS, _preload_content=False,
                                         _request_timeout=(5, WATCH_SECONDS + 30))
            try:
                for line in iter_resp_lines(resp):
                    if not line:
                        continue
                    version = self._event(orjson.loads(line), version)
                    if self.stop_event.is_set():
                        return
            finally:
                resp.close()  # a watch left early has unread data: never return it to the pool
                resp.release_conn()
            self.status.last_ok = self.clock()

    def _event(self, event: Mapping[str, Any], version: str) -> str:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise ApiException(status=obj.get("code"), reason=f"{obj.get('reason')}: {obj.get('message')}")
        if kind in ("ADDED", "MODIFIED"):
            self.resource.upsert(obj)
        elif kind == "DELETED":
            self.resource.delete(obj)
        self.status.connected = True
        self.status.last_ok = self.clock()
        return str((obj.get("metadata") or {}).get("resourceVersion") or version)


def start(api: client.ApiClient, cache: ClusterCache, stop: threading.Event) -> list[Watcher]:
    """Start one watcher thread per resource."""
    watchers = [Watcher(r, cache.sync[r.kind], stop, cache.clock) for r in resources(api, cache)]
    for w in watchers:
        w.start()
    return watchers
