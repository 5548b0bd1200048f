"""/bind: hold a slot in the cache, post the Binding, give the slot back if that fails.

The reservation is taken first, under the cache lock, so two parallel binds to the last free slot
of a node cannot both succeed; the Binding is posted outside the lock (it is network I/O). A failed
post releases the slot at once; a successful one keeps it until the pod watch shows the pod bound
(or deleted), or until the reservation expires.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Protocol

import orjson
from kubernetes import client
from kubernetes.client.rest import ApiException

from scheduler_ext.decisions import ALREADY_BOUND, Fit
from scheduler_ext.objects import ObjectError, PodInfo, pod_info
from scheduler_ext.state import ClusterCache
from scheduler_ext.wire import BindingArgs

log = logging.getLogger(__name__)


class BindError(RuntimeError):
    """The Binding could not be made; the message is what the scheduler logs."""


class Poster(Protocol):
    """Where a binding goes: the API server, or the in-memory snapshot."""

    def post(self, args: BindingArgs, pod: PodInfo) -> None:
        """Bind the pod or raise BindError."""

    def fetch(self, args: BindingArgs) -> PodInfo | None:
        """Look the pod up at the source when the cache does not know it."""


class SnapshotPoster:
    """Snapshot mode: the binding is recorded in memory, so later filters see the slot used."""

    def __init__(self, cache: ClusterCache):
        self.cache = cache

    def post(self, args: BindingArgs, pod: PodInfo) -> None:
        """Record the pod as bound to the node."""
        self.cache.record_binding(pod, args.node)

    def fetch(self, args: BindingArgs) -> PodInfo | None:
        """A snapshot has nothing beyond what the cache already holds."""
        return None


class ApiPoster:
    """Cluster mode: POST pods/<name>/binding with the kubernetes client."""

    def __init__(self, api: client.ApiClient, timeout: float = 10.0):
        self.core = client.CoreV1Api(api)
        self.timeout = timeout

    def post(self, args: BindingArgs, pod: PodInfo) -> None:
        """Create the Binding; metadata.uid makes the API server refuse a re-created pod of the same name."""
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": args.pod_name, "namespace": args.pod_namespace, "uid": args.pod_uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": args.node},
        }
        try:
            # _preload_content=False: the client cannot deserialize the Binding it gets back
            # (kubernetes-client/python#825, "Invalid value for `target`, must not be `None`").
            resp = self.core.create_namespaced_pod_binding(args.pod_name, args.pod_namespace, body,
                                                           _preload_content=False,
                                                           _request_timeout=self.timeout)
            resp.data  # noqa: B018 - read the body so the pooled connection is clean for the next request
        except ApiException as exc:
            raise BindError(f"the API server refused the binding: {exc.status} {_status_message(exc)}") from None
        except Exception as exc:  # urllib3/socket errors: the API server is unreachable
            raise BindError(f"cannot reach the API server to bind: {exc}") from None

    def fetch(self, args: BindingArgs) -> PodInfo | None:
        """GET the pod (the watch may not have delivered it yet)."""
        try:
            resp = self.core.read_namespaced_pod(args.pod_name, args.pod_namespace, _preload_content=False,
                                                 _request_timeout=self.timeout)
            return pod_info(orjson.loads(resp.data))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise BindError(f"cannot read pod {args.pod_namespace}/{args.pod_name}: {exc.status} "
                            f"{_status_message(exc)}") from None
        except ObjectError as exc:
            raise BindError(f"cannot read pod {args.pod_namespace}/{args.pod_name}: {exc}") from None


def _status_message(exc: ApiException) -> str:
    try:
        return str(orjson.loads(exc.body).get("message") or exc.reason)
    except (orjson.JSONDecodeError, TypeError, AttributeError):
        return str(exc.reason)


class Binder:
    """Runs one /bind: leader check, pod lookup, reservation, Binding, release on failure."""

    def __init__(self, cache: ClusterCache, poster: Poster, is_leader: Callable[[], bool],
                 leader_name: Callable[[], str | None]):
        self.cache = cache
        self.poster = poster
        self.is_leader = is_leader
        self.leader_name = leader_name

    def bind(self, args: BindingArgs) -> tuple[str, str]:
        """Bind; returns (Error for the scheduler ("" on success), short result for metrics)."""
        fields: dict[str, Any] = {"namespace": args.pod_namespace, "pod": args.pod_name, "uid": args.pod_uid,
                                  "node": args.node}
        if not self.is_leader():
            leader = self.leader_name() or "unknown"
            log.warning("bind refused: not the leader", extra={**fields, "leader": leader})
            return (f"this sandgate extender replica is not the leader (leader: {leader}); "
                    f"the scheduler will retry"), "not_leader"
        pod = self.cache.find_pod(args.pod_uid)
        if pod is None:
            try:
                pod = self.poster.fetch(args)
            except BindError as exc:
                log.warning("bind failed", extra={**fields, "error": str(exc)})
                return str(exc), "error"
            if pod is None or pod.uid != args.pod_uid:
                message = (f"pod {args.pod_namespace}/{args.pod_name} (uid {args.pod_uid}) is unknown to the "
                           f"extender: not in its cache and not seen in a filter call")
                log.warning("bind failed", extra={**fields, "error": message})
                return message, "unknown_pod"
            self.cache.classify(pod)
        verdict = self.cache.reserve(pod, args.node)
        if verdict.fit is not Fit.PASS:
            log.info("bind rejected", extra={**fields, "profile": pod.profile, "reason": verdict.reason,
                                             "error": verdict.message})
            return f"{verdict.message} (node {args.node})", verdict.reason
        if verdict is ALREADY_BOUND:
            log.info("bind repeated: pod already bound there", extra={**fields, "profile": pod.profile})
            return "", "bound"
        try:
            self.poster.post(args, pod)
        except BindError as exc:
            self.cache.release(args.pod_uid, "binding failed")
            log.warning("bind failed", extra={**fields, "profile": pod.profile, "error": str(exc)})
            return str(exc), "error"
        log.info("bound", extra={**fields, "profile": pod.profile})
        return "", "bound"
