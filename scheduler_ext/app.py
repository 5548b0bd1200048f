"""HTTP layer of the extender (a WSGI application factory): wire in, decisions, wire out.

A plain WSGI callable rather than Flask: the extender serves seven fixed routes of JSON bytes, and at
5,000 nodes the framework's per-request work was a tenth of the latency budget. Nothing here needs
sessions, templates or request parsing beyond the body.

Every verb answers 400 with {"Error": reason} for a request it cannot read, and never a 500: an
unexpected failure is logged with its traceback and reported in the answer's `Error` (filter),
as neutral scores (prioritize: the scheduler ignores extender priority errors anyway) or as "no
candidate" (preempt: evicting pods on the strength of a broken answer would be worse).

There is no /bind (404): kube-scheduler binds, and counts the sandbox slots itself. Nothing here
is per replica, so any number of replicas behind one Service answer alike.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sandgate.core.clusterversion import ClusterVersion
from sandgate.core.policy import PolicyStore
from scheduler_ext import wire
from scheduler_ext.decisions import Fit
from scheduler_ext.metrics import Metrics
from scheduler_ext.objects import NodeInfo, ObjectError, PodInfo, node_info, pod_info
from scheduler_ext.state import KINDS, ClusterCache
from scheduler_ext.wire import WireError

log = logging.getLogger(__name__)

JSON = "application/json"
MAX_BODY = 128 * 1024 * 1024  # a 5,000-node NodeList is ~10 MB; refuse what no scheduler sends
STATUS = {200: "200 OK", 400: "400 Bad Request", 404: "404 Not Found", 405: "405 Method Not Allowed",
          413: "413 Content Too Large", 503: "503 Service Unavailable"}

Answer = tuple[int, str, bytes]  # HTTP status, content type, body


class ExtenderApp:
    """The WSGI application: routes (method, path) to a handler returning (status, content type, body)."""

    def __init__(self, routes: dict[tuple[str, str], Callable[[bytes], Answer]], metrics: Metrics):
        self.routes = routes
        self.metrics = metrics

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        handler = self.routes.get((method, path))
        if handler is None:
            known = any(p == path for _, p in self.routes)
            code = 405 if known else 404
            answer: Answer = (code, JSON, wire.bad_request(f"{method} {path}: {STATUS[code][4:].lower()}"))
        else:
            answer = handler(self._body(environ)) if method == "POST" else handler(b"")
        code, content_type, body = answer
        start_response(STATUS[code], [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    @staticmethod
    def _body(environ: dict) -> bytes:
        length = environ.get("CONTENT_LENGTH") or ""
        stream = environ["wsgi.input"]
        if not length.isdigit():
            return stream.read(MAX_BODY + 1)  # chunked request: gunicorn ends the stream at its end
        return stream.read(min(int(length), MAX_BODY + 1))


# FailedAndUnresolvableNodes is read by kube-scheduler from 1.20 on (k8s.io/kube-scheduler/extender/v1).
UNRESOLVABLE_SINCE = ClusterVersion(1, 20)
# Node objects of recent nodeCacheCapable=false filter calls, by pod UID, for that pod's /preempt
# (ExtenderPreemptionArgs carries no Nodes). kube-scheduler preempts for a pod right after its
# failed filter, one pod at a time, so a few suffice; each can hold thousands of Nodes. A replica
# that never saw the filter falls back to its cache.
RECENT_FILTERS = 8


@dataclass
class Runtime:
    """What the HTTP handlers work with."""

    store: PolicyStore
    cache: ClusterCache
    source: str  # "snapshot" or "cluster"


def _pod_fields(pod: PodInfo) -> dict:
    return {"namespace": pod.namespace, "pod": pod.name, "uid": pod.uid, "profile": pod.profile}


def _given_nodes(args: wire.ExtenderArgs) -> dict[str, NodeInfo] | None:
    if args.nodes is None:
        return None
    return {n["metadata"]["name"]: node_info(n, f"ExtenderArgs.Nodes.items[{i}]") for i, n in enumerate(args.nodes)}


def create_app(rt: Runtime) -> ExtenderApp:
    """The extender's WSGI app for `rt`."""
    cache = rt.cache

    def staleness(resource: str) -> float:
        value = cache.sync[resource].staleness(cache.clock())
        return -1.0 if value is None else value

    metrics = Metrics(KINDS, staleness, lambda kind: len(cache.skipped[kind].current))
    knows_unresolvable = cache.version >= UNRESOLVABLE_SINCE
    sent_nodes: OrderedDict[str, dict[str, NodeInfo]] = OrderedDict()
    sent_lock = threading.Lock()

    def remember_sent(pod: PodInfo, given: dict[str, NodeInfo] | None) -> None:
        if given is None or not pod.uid:
            return
        with sent_lock:
            sent_nodes[pod.uid] = given
            sent_nodes.move_to_end(pod.uid)
            while len(sent_nodes) > RECENT_FILTERS:
                sent_nodes.popitem(last=False)

    def answer(verb: str, started: float, body: bytes, code: int = 200) -> Answer:
        metrics.requests.labels(verb, str(code)).inc()
        metrics.latency.labels(verb).observe(time.perf_counter() - started)
        return code, JSON, body

    def handle(verb: str, body: bytes, work: Callable[[bytes], bytes], on_crash: Callable[[str], bytes]) -> Answer:
        started = time.perf_counter()
        rt.store.refresh()  # a changed policy reaches the cache through the store's on_reload
        if len(body) > MAX_BODY:
            return answer(verb, started, wire.bad_request(f"request body larger than {MAX_BODY} bytes"), 413)
        try:
            return answer(verb, started, work(body))
        except (WireError, ObjectError) as exc:
            log.warning("bad request", extra={"verb": verb, "error": str(exc)})
            return answer(verb, started, wire.bad_request(str(exc)), 400)
        except Exception as exc:  # a bug must not become a 500 the scheduler cannot act on
            log.exception("internal error", extra={"verb": verb})
            return answer(verb, started, on_crash(f"sandgate extender internal error in {verb}: {exc}"))

    def count(verb: str, reasons: dict[tuple[str, str], int]) -> None:
        for (verdict, reason), n in reasons.items():
            metrics.decisions.labels(verb, verdict, reason).inc(n)

    def do_filter(body: bytes) -> bytes:
        args = wire.parse_extender_args(body)
        pod = cache.classify(pod_info(args.pod))
        given = _given_nodes(args) if pod.handler is not None else None
        remember_sent(pod, given)
        out = cache.filter(pod, args.names, given)
        count("filter", out.reasons)
        log.info("filter", extra={**_pod_fields(pod), "nodes": len(args.names), "passed": len(out.passed),
                                  "failed": len(out.failed), "unresolvable": len(out.unresolvable),
                                  "reasons": {f"{v}/{r}": n for (v, r), n in out.reasons.items()}})
        return wire.filter_result(args, out.passed, out.failed, out.unresolvable, knows_unresolvable)

    def do_prioritize(body: bytes) -> bytes:
        args = wire.parse_extender_args(body)
        pod = cache.classify(pod_info(args.pod))
        log.debug("prioritize", extra={**_pod_fields(pod), "nodes": len(args.names)})
        # a pod that is not sandboxed scores 0 everywhere: its Nodes need not be parsed (as in filter)
        return cache.priorities(pod, args.names, _given_nodes(args) if pod.handler is not None else None)

    def do_preempt(body: bytes) -> bytes:
        args = wire.parse_preemption_args(body)
        pod = cache.classify(pod_info(args.pod))
        if pod.handler is None:
            return wire.preemption_result(args.victims)
        kept = {}
        reasons: dict[tuple[str, str], int] = {}
        with sent_lock:
            sent = sent_nodes.get(pod.uid) or {}
        for node, victims in args.victims.items():
            if victims.pods is not None:
                pods = [cache.classify(pod_info(p, f"NodeNameToVictims[{node}].Pods[{i}]"))
                        for i, p in enumerate(victims.pods)]
            else:
                pods = [p for p in (cache.find_pod(uid) for uid in victims.uids) if p is not None]
            verdict = cache.verdict_after_eviction(pod, node, pods, sent.get(node))
            key = (verdict.fit.value, verdict.reason)
            reasons[key] = reasons.get(key, 0) + 1
            if verdict.fit is Fit.PASS:
                kept[node] = victims
        count("preempt", reasons)
        log.info("preempt", extra={**_pod_fields(pod), "candidates": len(args.victims), "kept": len(kept)})
        return wire.preemption_result(kept)

    def neutral_scores(_message: str) -> bytes:
        return wire.encode([])

    def healthz(_body: bytes) -> Answer:
        return 200, "text/plain; charset=utf-8", b"ok\n"

    def readyz(_body: bytes) -> Answer:
        rt.store.refresh()  # so policyError reflects the file on disk
        status = cache.status()
        synced = all(s["synced"] for s in status["sync"].values())
        stale = any((s["staleSeconds"] or 0) > 0 for s in status["sync"].values())
        body = {"ready": synced, "source": rt.source, "stale": stale,
                "skippedObjects": sum(s["count"] for s in status["skipped"].values()),
                "policyGeneration": rt.store.generation, "policyError": rt.store.last_error, **status}
        return (200 if synced else 503), JSON, wire.encode(body)

    def metrics_(_body: bytes) -> Answer:
        return 200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry)

    return ExtenderApp({
        ("POST", "/filter"): lambda body: handle("filter", body, do_filter, wire.filter_error),
        ("POST", "/prioritize"): lambda body: handle("prioritize", body, do_prioritize, neutral_scores),
        ("POST", "/preempt"): lambda body: handle("preempt", body, do_preempt,
                                                  lambda _message: wire.preemption_result({})),
        ("GET", "/healthz"): healthz,
        ("GET", "/readyz"): readyz,
        ("GET", "/metrics"): metrics_,
    }, metrics)
