"""The webhook's Flask application: thin HTTP around the pure decisions.

`create_app(state)` wires one request path: wire.parse_review -> NamespaceFacts (from the URL's profile or
the namespace cache) -> webhooks.mutating.admit / webhooks.validating.validate -> wire.review_response.
Everything that can go wrong on the way ends in a specific answer: a 400 with a JSON reason for a
body that is not an AdmissionReview, a denial for a failure inside the decision (never an admission
of a pod the logic did not approve), and JSON for every HTTP error Flask itself raises.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from sandgate.core.clusterversion import ClusterVersion, Mode
from sandgate.core.policy import Policy, PolicyStore
from webhooks import wire
from webhooks.metrics import Metrics
from webhooks.review import AdmissionRequest, NamespaceFacts, Verdict
from webhooks.mutating import admit
from webhooks.namespaces import NamespaceCache
from sandgate.core.serving import ReloadingContext
from webhooks.validating import validate

log = logging.getLogger("sandgate.webhook")

DECIDERS = {"mutate": admit, "validate": validate}
READ_CHUNK = 64 * 1024
# How much of an oversized body is read to answer it cleanly before giving up on the connection.
DRAIN_LIMIT = 4 * wire.MAX_BODY_BYTES


@dataclass
class WebhookState:
    """What one worker's application serves with.

    `cluster_version` is the --cluster-version override; `start_version` is the version resolved
    at start (override, policy, or the API server's /version) and applies whenever a reloaded
    policy says "auto". `namespaces` is None when the cache is disabled, with `namespaces_off` the
    reason shown in denials and /readyz.
    """

    policies: PolicyStore
    start_version: ClusterVersion
    metrics: Metrics
    cluster_version: ClusterVersion | None = None
    namespaces: NamespaceCache | None = None
    namespaces_off: str = "disabled"
    tls: ReloadingContext | None = None
    lookup_wait: float = 1.0

    def mode(self, policy: Policy) -> Mode:
        """The routing mode for the policy in force (a reload may change clusterVersion/podOverhead)."""
        version = self.cluster_version or policy.cluster_version or self.start_version
        return version.mode(policy.pod_overhead)

    def namespace_facts(self, req: AdmissionRequest, profile: str | None) -> tuple[NamespaceFacts, str | None]:
        """The NamespaceFacts for the request and, when namespace labels are unknown, why."""
        if profile is not None:
            return NamespaceFacts(path_profile=profile), None
        if self.namespaces is None:
            return NamespaceFacts(), f"namespace cache {self.namespaces_off}"
        labels = self.namespaces.lookup(req.namespace, wait=self.lookup_wait)
        if labels is None:
            if self.namespaces.synced:
                return NamespaceFacts(), f'namespace "{req.namespace}" is not in the namespace cache'
            return NamespaceFacts(), f"namespace cache {self.namespaces.status()}"
        return NamespaceFacts(namespace_labels=labels), None


def _json(doc: dict, status: int = 200) -> Response:
    return Response(wire.encode(doc), status=status, mimetype="application/json")


def _internal_error(uid: str) -> Verdict:
    return Verdict(allowed=False, code=500, reason="internal-error",
                   message=f"internal error in the sandgate webhook while deciding (uid {uid}); "
                           f"denied rather than admitted unchecked, see the webhook log")


def _read_body() -> bytes:
    """The request body, at most wire.MAX_BODY_BYTES; WireError beyond.

    An oversized body is still read (and dropped) up to DRAIN_LIMIT so the client, which is still
    sending, reads our 400 instead of a connection reset; past that gunicorn's own time-bounded
    drain before keep-alive decides.
    """
    length = request.content_length
    if length is not None and length <= wire.MAX_BODY_BYTES:
        return request.get_data(cache=False)  # the API server always sends Content-Length
    too_large = wire.WireError(f"body is larger than the {wire.MAX_BODY_BYTES} byte limit", "too_large")
    if length is not None and length > DRAIN_LIMIT:
        raise too_large
    stream = request.stream
    chunks, size = [], 0
    while size <= wire.MAX_BODY_BYTES:
        chunk = stream.read(min(READ_CHUNK, wire.MAX_BODY_BYTES + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    chunks.clear()
    while size <= DRAIN_LIMIT and stream.read(READ_CHUNK):
        size += READ_CHUNK
    raise too_large


def create_app(state: WebhookState) -> Flask:
    """The Flask application serving /mutate, /validate (with or without a profile), health and metrics."""
    app = Flask("sandgate.webhook")

    def review(endpoint: str, profile: str | None) -> Response:
        started = time.perf_counter()
        try:
            wire.check_content_type(request.headers.get("Content-Type"))
            req = wire.parse_review(_read_body())
        except wire.WireError as exc:
            state.metrics.observe(endpoint, "invalid", exc.kind, None, time.perf_counter() - started)
            log.warning("bad admission request", extra={"endpoint": request.path, "error": exc.reason,
                                                        "remote": request.remote_addr})
            return _json({"error": exc.reason}, 400)

        policy = state.policies.current
        unknown = None
        try:
            facts, unknown = state.namespace_facts(req, profile)
            verdict = DECIDERS[endpoint](req, policy, state.mode(policy), facts)
        except Exception:  # a bug must not admit a pod unchecked; log it with the uid and deny
            log.exception("decision failed; denying the request", extra={
                "uid": req.uid, "namespace": req.namespace, "pod": req.pod_name, "endpoint": request.path})
            verdict = _internal_error(req.uid)
        if unknown and not verdict.allowed:
            verdict.message = f"{verdict.message} ({unknown})"
        answer = wire.review_response(req.api_version, req.uid, verdict)
        elapsed = time.perf_counter() - started
        outcome = "denied" if not verdict.allowed else "patched" if verdict.patch else "allowed"
        state.metrics.observe(endpoint, outcome, verdict.reason, verdict.profile, elapsed)
        facts = {
            "uid": req.uid, "namespace": req.namespace, "pod": req.pod_name, "kind": req.kind,
            "operation": req.operation, "endpoint": request.path, "profile": verdict.profile,
            "verdict": outcome, "reason": verdict.reason, "latency_ms": round(elapsed * 1000, 3),
            "dry_run": req.dry_run, "pid": os.getpid(),
        }
        if not verdict.allowed:
            facts["denial"] = verdict.message
        if unknown:
            facts["namespace_labels"] = unknown
        log.log(logging.WARNING if unknown and not verdict.allowed else logging.INFO, "admission", extra=facts)
        return _json(answer)

    # /mutate, /validate (namespace labels from the cache) and /mutate/<profile>, /validate/<profile>.
    endpoint = f"<any({', '.join(DECIDERS)}):endpoint>"
    app.add_url_rule(f"/{endpoint}", "review", review, methods=["POST"], defaults={"profile": None})
    app.add_url_rule(f"/{endpoint}/<profile>", "review", review, methods=["POST"])

    @app.get("/healthz")
    def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        checks = {}
        store = state.policies
        store.reload_if_changed()
        checks["policy"] = {"ready": True, "detail": f"loaded {store.path} (generation {store.generation})"
                            + (f"; last change refused: {store.last_error}" if store.last_error else "")}
        if state.tls is not None:
            checks["certificate"] = {"ready": True, "detail": f"serving {state.tls.cert_file}"
                                     + (f"; reload failed: {state.tls.last_error}" if state.tls.last_error else "")}
        if state.namespaces is None:
            checks["namespaces"] = {"ready": True, "detail": f"{state.namespaces_off}; /mutate and /validate "
                                    f"without a profile deny, the /<profile> paths need no API access"}
        else:
            checks["namespaces"] = {"ready": state.namespaces.synced, "detail": state.namespaces.status()}
        ready = all(c["ready"] for c in checks.values())
        not_ready = [f"{name}: {c['detail']}" for name, c in checks.items() if not c["ready"]]
        body = {"ready": ready, "checks": checks}
        if not_ready:
            body["notReady"] = not_ready
        return _json(body, 200 if ready else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        body, content_type = state.metrics.exposition()
        return Response(body, mimetype=None, content_type=content_type)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        detail = {404: f"no such endpoint: {request.path}",
                  405: f"method {request.method} is not allowed on {request.path}"}.get(exc.code, exc.description)
        response = _json({"error": detail}, exc.code or 500)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error", extra={"endpoint": request.path})
        return _json({"error": "internal error, see the webhook log"}, 500)

    return app
