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
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from sandgate.core.clusterversion import ClusterVersion, Mode
from sandgate.core.policy import Policy, PolicyStore
from webhooks import guards, wire
from webhooks.metrics import Metrics
from webhooks.review import AdmissionRequest, NamespaceFacts, Verdict
from webhooks.mutating import admit
from webhooks.namespaces import NamespaceCache
from sandgate.core.serving import ReloadingContext
from webhooks.runtimeclasses import RuntimeClassLookup, missing_runtime_class
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
    reason shown in denials and /readyz. `runtime_classes` (None without API access) checks that a
    pod's RuntimeClass exists on versions without the built-in plugin that does (1.14-1.15).
    """

    policies: PolicyStore
    start_version: ClusterVersion
    metrics: Metrics
    cluster_version: ClusterVersion | None = None
    namespaces: NamespaceCache | None = None
    namespaces_off: str = "disabled"
    tls: ReloadingContext | None = None
    lookup_wait: float = 1.0
    runtime_classes: RuntimeClassLookup | None = None
    pod_nodes: guards.PodNodes | None = None

    def version(self, policy: Policy) -> ClusterVersion:
        """The cluster version for the policy in force (a reload may change clusterVersion)."""
        return self.cluster_version or policy.cluster_version or self.start_version

    def mode(self, policy: Policy) -> Mode:
        """The routing mode for the policy in force (a reload may change clusterVersion/podOverhead)."""
        return self.version(policy).mode(policy.pod_overhead)

    def runtime_class_check(self, req: AdmissionRequest, policy: Policy, verdict: Verdict) -> Verdict:
        """`verdict`, or the built-in plugin's refusal of a missing RuntimeClass where no plugin gives it."""
        if not verdict.allowed or self.runtime_classes is None or self.version(policy).runtimeclass_scheduling:
            return verdict
        return missing_runtime_class(req, self.runtime_classes.exists) or verdict

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


def _read_body(length: int | None, stream) -> bytes:
    """The request body, at most wire.MAX_BODY_BYTES; WireError beyond.

    `length` is the Content-Length (None when the body is chunked) and `stream` the WSGI input.
    An oversized body is still read (and dropped) up to DRAIN_LIMIT so the client, which is still
    sending, reads our 400 instead of a connection reset; past that gunicorn's own time-bounded
    drain before keep-alive decides.
    """
    if length is not None and length <= wire.MAX_BODY_BYTES:
        body = stream.read(length) if length else b""  # the API server always sends Content-Length
        if len(body) != length:
            raise wire.WireError(f"body ended after {len(body)} of its {length} bytes (Content-Length)", "truncated")
        return body
    too_large = wire.WireError(f"body is larger than the {wire.MAX_BODY_BYTES} byte limit", "too_large")
    if length is not None and length > DRAIN_LIMIT:
        raise too_large
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


def _content_length(environ: dict) -> int | None:
    """CONTENT_LENGTH as an int; None when absent (chunked) or unparsable (then read like chunked)."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None
    return length if length >= 0 else None


class VerdictMemo:
    """The verdicts of recent requests, by everything the decision reads: a repeat is not decided again.

    The decisions are pure functions of the AdmissionRequest (without its uid), the policy, the
    mode and the namespace facts, so a request equal to an earlier one in all of these gets the
    earlier Verdict, exactly. That is what a burst of pods from one ReplicaSet or Job looks like
    to the mutating webhook: the API server calls it (and reinvokes it) before the pod has a name,
    so every replica's review is the same but for its uid. Anything that differs, however small
    (another webhook's change, a new annotation, a reloaded policy), is a different key and gets
    the full decision. Bounded (least recently used out) and cleared when the policy changes.
    """

    def __init__(self, size: int = 256):
        self.size = size
        self._entries: OrderedDict[tuple, Verdict] = OrderedDict()
        self._policy: Policy | None = None
        self._lock = threading.Lock()

    def get(self, policy: Policy, key: tuple) -> Verdict | None:
        """The Verdict remembered for `key` under `policy`, or None."""
        with self._lock:
            if policy is not self._policy:
                self._entries.clear()
                self._policy = policy
                return None
            verdict = self._entries.get(key)
            if verdict is not None:
                self._entries.move_to_end(key)
            return verdict

    def put(self, policy: Policy, key: tuple, verdict: Verdict) -> None:
        """Remember `verdict` for `key` under `policy` (the Verdict must not be changed afterwards)."""
        with self._lock:
            if policy is not self._policy:
                self._entries.clear()
                self._policy = policy
            self._entries[key] = verdict
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)


def _facts_key(facts: NamespaceFacts) -> tuple:
    labels = facts.namespace_labels
    return facts.path_profile, None if labels is None else tuple(sorted(labels.items()))


class Reviewer:
    """Answers one AdmissionReview POST: parse, decide, log one line, count it.

    Shared by the Flask view and the WSGI front (`AdmissionFront`), so both paths give the same
    answers; it only sees plain values (content type, length, body stream, path, peer).
    """

    def __init__(self, state: WebhookState, memo: VerdictMemo | None = None):
        self.state = state
        self.memo = memo if memo is not None else VerdictMemo()

    def __call__(self, endpoint: str, profile: str | None, content_type: str | None, length: int | None,
                 stream, path: str, remote: str | None) -> tuple[int, bytes]:
        """(HTTP status, JSON body) for the review POSTed to `path`."""
        state = self.state
        started = time.perf_counter()
        try:
            wire.check_content_type(content_type)
            # Only the mutating calls of unnamed pods recur (see VerdictMemo); the others skip the key.
            req, key = wire.parse_review_keyed(_read_body(length, stream), keyed=endpoint == "mutate")
        except wire.WireError as exc:
            state.metrics.observe(endpoint, "invalid", exc.kind, None, time.perf_counter() - started)
            log.warning("bad admission request", extra={"endpoint": path, "error": exc.reason, "remote": remote})
            return 400, wire.encode({"error": exc.reason})

        policy = state.policies.current
        unknown = None
        try:
            facts, unknown = state.namespace_facts(req, profile)
            decide, mode = DECIDERS[endpoint], state.mode(policy)
            # Only verdicts of known namespace facts are remembered (the others name the reason).
            memo_key = (decide, mode, _facts_key(facts), key) if key is not None and unknown is None else None
            verdict = self.memo.get(policy, memo_key) if memo_key else None
            if verdict is None:
                verdict = decide(req, policy, mode, facts)
                if memo_key:
                    self.memo.put(policy, memo_key, verdict)
            if endpoint == "validate":  # not remembered: it may ask the API server (legacy clusters)
                verdict = state.runtime_class_check(req, policy, verdict)
        except Exception:  # a bug must not admit a pod unchecked; log it with the uid and deny
            log.exception("decision failed; denying the request", extra={
                "uid": req.uid, "namespace": req.namespace, "pod": req.pod_name, "endpoint": path})
            verdict = _internal_error(req.uid)
        if unknown and not verdict.allowed:
            verdict.message = f"{verdict.message} ({unknown})"
        body = wire.encode(wire.review_response(req.api_version, req.uid, verdict))
        elapsed = time.perf_counter() - started
        outcome = "denied" if not verdict.allowed else "patched" if verdict.patch else "allowed"
        state.metrics.observe(endpoint, outcome, verdict.reason, verdict.profile, elapsed)
        fields = {
            "uid": req.uid, "namespace": req.namespace, "pod": req.pod_name, "kind": req.kind,
            "operation": req.operation, "endpoint": path, "profile": verdict.profile,
            "verdict": outcome, "reason": verdict.reason, "latency_ms": round(elapsed * 1000, 3),
            "dry_run": req.dry_run, "pid": os.getpid(),
        }
        if not verdict.allowed:
            fields["denial"] = verdict.message
        if unknown:
            fields["namespace_labels"] = unknown
        log.log(logging.WARNING if unknown and not verdict.allowed else logging.INFO, "admission", extra=fields)
        return 200, body


_STATUS = {200: "200 OK", 400: "400 BAD REQUEST", 500: "500 INTERNAL SERVER ERROR"}


class AdmissionFront:
    """WSGI middleware that answers `POST /mutate[/<profile>]` and `POST /validate[/<profile>]` itself.

    These are every request the API server sends, and the Flask request machinery around them
    (request context, URL map binding, Response objects) cost about as much CPU as the decision
    (bench/webhook.py). Everything else, including any other method on those paths, goes to the
    Flask app unchanged, so 404/405 answers, health and metrics keep Flask's behaviour. The paths
    taken here are exactly those the Flask URL rules accept (a profile is one non-empty segment).
    """

    def __init__(self, flask_wsgi, reviewer: Reviewer):
        self.flask_wsgi = flask_wsgi
        self.reviewer = reviewer

    def __call__(self, environ: dict, start_response):
        """The WSGI entry point."""
        if environ.get("REQUEST_METHOD") == "POST":
            path = environ.get("PATH_INFO") or ""
            if not path.isascii():  # WSGI carries the path as latin-1; decode it as Flask does
                path = path.encode("latin-1").decode("utf-8", "replace")
            endpoint, slash, profile = path[1:].partition("/")
            if path[:1] == "/" and endpoint in DECIDERS and (not slash or (profile and "/" not in profile)):
                try:
                    status, body = self.reviewer(endpoint, profile or None, environ.get("CONTENT_TYPE"),
                                                 _content_length(environ), environ["wsgi.input"], path,
                                                 environ.get("REMOTE_ADDR"))
                except Exception:  # never a traceback to the client, as the Flask error handler
                    log.exception("unhandled error", extra={"endpoint": path})
                    status, body = 500, wire.encode({"error": "internal error, see the webhook log"})
                start_response(_STATUS[status], [("Content-Type", "application/json"),
                                                 ("Content-Length", str(len(body)))])
                return [body]
        return self.flask_wsgi(environ, start_response)


def create_app(state: WebhookState) -> Flask:
    """The Flask application serving /mutate, /validate (with or without a profile), health and metrics.

    Admission POSTs are answered by `AdmissionFront` in front of Flask's own WSGI callable; the
    Flask view for the same paths gives the same answers for whatever reaches it.
    """
    app = Flask("sandgate.webhook")
    reviewer = Reviewer(state)

    def review(endpoint: str, profile: str | None) -> Response:
        status, body = reviewer(endpoint, profile, request.headers.get("Content-Type"), request.content_length,
                                request.stream, request.path, request.remote_addr)
        return Response(body, status=status, mimetype="application/json")

    def guard(kind: str) -> Response:
        """/guard/agent and /guard/namespaces: the rules RBAC cannot express (webhooks.guards)."""
        started = time.perf_counter()
        endpoint = f"guard-{kind}"
        try:
            wire.check_content_type(request.headers.get("Content-Type"))
            req = wire.parse_review(_read_body(request.content_length, request.stream))
        except wire.WireError as exc:
            state.metrics.observe(endpoint, "invalid", exc.kind, None, time.perf_counter() - started)
            return _json({"error": exc.reason}, 400)
        policy = state.policies.current
        try:
            if kind == "namespaces":
                verdict = guards.guard_namespace(req, policy)
            elif not guards.is_agent(req.user, policy):
                verdict = guards.guard_agent(req, policy, None)
            else:
                try:
                    node = guards.agent_node(req.user, policy, state.pod_nodes)
                except guards.PodNodeUnknown as exc:
                    verdict = Verdict(allowed=False, code=503, reason="agent-node-lookup",
                                      message=f"cannot tell which node the sandgate agent's request comes from: {exc}")
                else:
                    version = state.version(policy)
                    bound = (version.major, version.minor) >= guards.POD_BOUND_TOKENS_SINCE
                    verdict = guards.guard_agent(req, policy, node, tokens_are_pod_bound=bound)
        except Exception:  # a bug must not let a guarded write through
            log.exception("guard failed; denying the request", extra={"uid": req.uid, "endpoint": request.path})
            verdict = _internal_error(req.uid)
        elapsed = time.perf_counter() - started
        outcome = "allowed" if verdict.allowed else "denied"
        state.metrics.observe(endpoint, outcome, verdict.reason, None, elapsed)
        facts = {"uid": req.uid, "kind": req.kind, "namespace": req.namespace, "object": req.name,
                 "operation": req.operation, "user": req.user.username, "endpoint": request.path,
                 "verdict": outcome, "reason": verdict.reason, "latency_ms": round(elapsed * 1000, 3)}
        if not verdict.allowed:
            facts["denial"] = verdict.message
        log.log(logging.WARNING if not verdict.allowed else logging.INFO, "guard", extra=facts)
        return _json(wire.review_response(req.api_version, req.uid, verdict))

    app.add_url_rule("/guard/<any(agent, namespaces):kind>", "guard", guard, methods=["POST"])

    # /mutate, /validate (namespace labels from the cache) and /mutate/<profile>, /validate/<profile>.
    endpoint = f"<any({', '.join(DECIDERS)}):endpoint>"
    app.add_url_rule(f"/{endpoint}", "review", review, methods=["POST"], defaults={"profile": None})
    app.add_url_rule(f"/{endpoint}/<profile>", "review", review, methods=["POST"])
    app.wsgi_app = AdmissionFront(app.wsgi_app, reviewer)

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

    if state.tls is not None:  # every worker reports from its start (livemin would see 0 otherwise)
        state.metrics.record_certificate(state.tls.cert_file)

    @app.get("/metrics")
    def metrics() -> Response:
        if state.tls is not None:
            state.metrics.record_certificate(state.tls.cert_file)
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
