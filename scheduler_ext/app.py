"""HTTP layer of the extender (Flask application factory): wire in, decisions, wire out.

Every verb answers 400 with {"Error": reason} for a request it cannot read, and never a 500: an
unexpected failure is logged with its traceback and reported in the answer's `Error` (filter,
bind), as neutral scores (prioritize: the scheduler ignores extender priority errors anyway) or
as "no candidate" (preempt: evicting pods on the strength of a broken answer would be worse).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sandgate.policy import PolicyStore
from scheduler_ext import wire
from scheduler_ext.binder import Binder
from scheduler_ext.decisions import Verdict
from scheduler_ext.metrics import Metrics
from scheduler_ext.model import NodeInfo, ObjectError, PodInfo, node_info, pod_info
from scheduler_ext.state import ClusterCache
from scheduler_ext.wire import WireError

log = logging.getLogger(__name__)

JSON = "application/json"


class Leadership(Protocol):
    """Who may bind: a Lease-based elector in a cluster, always this process for a snapshot."""

    def is_leader(self) -> bool:
        """This replica may consume capacity (bind)."""

    def holder(self) -> str | None:
        """Identity of the current leader, if known."""


class SoleReplica:
    """Leadership when there is nothing to share (snapshot mode, or leader election turned off)."""

    def is_leader(self) -> bool:
        """Always the leader."""
        return True

    def holder(self) -> str | None:
        """No election: no identity."""
        return None


@dataclass
class Runtime:
    """What the HTTP handlers work with."""

    store: PolicyStore
    cache: ClusterCache
    binder: Binder
    leadership: Leadership
    source: str  # "snapshot" or "cluster"


def _pod_fields(pod: PodInfo) -> dict:
    return {"namespace": pod.namespace, "pod": pod.name, "uid": pod.uid, "profile": pod.profile}


def _given_nodes(args: wire.ExtenderArgs) -> dict[str, NodeInfo] | None:
    if args.nodes is None:
        return None
    return {n["metadata"]["name"]: node_info(n, f"ExtenderArgs.Nodes.items[{i}]") for i, n in enumerate(args.nodes)}


def create_app(rt: Runtime) -> Flask:
    """The extender's Flask app for `rt`."""
    app = Flask("sandgate-extender")
    cache = rt.cache

    def staleness(resource: str) -> float:
        value = cache.status()["sync"][resource]["staleSeconds"]
        return -1.0 if value is None else value

    metrics = Metrics(staleness, rt.leadership.is_leader, lambda: len(cache.reservations))
    app.extensions["sandgate_metrics"] = metrics

    def answer(verb: str, started: float, body: bytes, code: int = 200) -> Response:
        metrics.requests.labels(verb, str(code)).inc()
        metrics.latency.labels(verb).observe(time.perf_counter() - started)
        return Response(body, status=code, mimetype=JSON)

    def handle(verb: str, work: Callable[[bytes], bytes], on_crash: Callable[[str], bytes]) -> Response:
        started = time.perf_counter()
        rt.store.current  # noqa: B018 - re-reads a changed policy file (rate-limited stat)
        try:
            return answer(verb, started, work(request.get_data(cache=False)))
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
        cache.remember(pod)
        given = _given_nodes(args) if pod.handler is not None else None
        out = cache.filter(pod, args.names, given)
        count("filter", out.reasons)
        log.info("filter", extra={**_pod_fields(pod), "nodes": len(args.names), "passed": len(out.passed),
                                  "failed": len(out.failed), "unresolvable": len(out.unresolvable),
                                  "reasons": {f"{v}/{r}": n for (v, r), n in out.reasons.items()}})
        return wire.filter_result(args, out.passed, out.failed, out.unresolvable)

    def do_prioritize(body: bytes) -> bytes:
        args = wire.parse_extender_args(body)
        pod = cache.classify(pod_info(args.pod))
        cache.remember(pod)
        names = args.names
        scores = cache.scores(pod, names, _given_nodes(args))
        log.debug("prioritize", extra={**_pod_fields(pod), "nodes": len(names)})
        return wire.priority_list(names, scores)

    def do_bind(body: bytes) -> bytes:
        args = wire.parse_binding_args(body)
        error, result = rt.binder.bind(args)
        metrics.binds.labels(result).inc()
        return wire.binding_result(error)

    def do_preempt(body: bytes) -> bytes:
        args = wire.parse_preemption_args(body)
        pod = cache.classify(pod_info(args.pod))
        if pod.handler is None:
            return wire.preemption_result(args.victims)
        kept = {}
        reasons: dict[tuple[str, str], int] = {}
        for node, victims in args.victims.items():
            if victims.pods is not None:
                pods = [cache.classify(pod_info(p, f"NodeNameToVictims[{node}].Pods[{i}]"))
                        for i, p in enumerate(victims.pods)]
            else:
                pods = [p for p in (cache.find_pod(uid) for uid in victims.uids) if p is not None]
            verdict = cache.verdict_after_eviction(pod, node, pods)
            key = (verdict.verdict.value, verdict.reason)
            reasons[key] = reasons.get(key, 0) + 1
            if verdict.verdict is Verdict.PASS:
                kept[node] = victims
        count("preempt", reasons)
        log.info("preempt", extra={**_pod_fields(pod), "candidates": len(args.victims), "kept": len(kept)})
        return wire.preemption_result(kept)

    @app.post("/filter")
    def filter_():
        return handle("filter", do_filter, wire.filter_error)

    @app.post("/prioritize")
    def prioritize():
        def neutral(_message: str) -> bytes:
            return wire.encode([])
        return handle("prioritize", do_prioritize, neutral)

    @app.post("/bind")
    def bind():
        return handle("bind", do_bind, wire.binding_result)

    @app.post("/preempt")
    def preempt():
        return handle("preempt", do_preempt, lambda _message: wire.preemption_result({}))

    @app.get("/healthz")
    def healthz():
        return Response("ok\n", mimetype="text/plain")

    @app.get("/readyz")
    def readyz():
        status = cache.status()
        synced = all(s["synced"] for s in status["sync"].values())
        stale = any((s["staleSeconds"] or 0) > 0 for s in status["sync"].values())
        body = {"ready": synced, "source": rt.source, "stale": stale,
                "leader": rt.leadership.is_leader(), "leaderIdentity": rt.leadership.holder(),
                "policyGeneration": rt.store.generation, "policyError": rt.store.last_error, **status}
        return Response(wire.encode(body), status=200 if synced else 503, mimetype=JSON)

    @app.get("/metrics")
    def metrics_():
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    return app
