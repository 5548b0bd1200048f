"""AdmissionReview JSON <-> `AdmissionRequest` / `Verdict`, for admission.k8s.io/v1 and v1beta1.

Only this module touches the wire shape. The two versions carry identical request and response
fields (k8s.io/api/admission/{v1,v1beta1}/types.go); the answer repeats the request's apiVersion,
since an API server that sent v1 refuses a v1beta1 answer and vice versa. Anything that is not a
well-formed AdmissionReview is a `WireError` with a reason naming the field, which the server
returns as HTTP 400.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson

from webhooks.review import AdmissionRequest, UserInfo, Verdict

V1 = "admission.k8s.io/v1"
V1BETA1 = "admission.k8s.io/v1beta1"
SUPPORTED_VERSIONS = (V1, V1BETA1)
KIND = "AdmissionReview"
PATCH_TYPE = "JSONPatch"
# The API server caps a stored object at ~1.5 MiB; the review wraps the object (and oldObject on
# UPDATE) in an envelope, so 3 MiB admits every real request and bounds what one request can cost.
MAX_BODY_BYTES = 3 * 1024 * 1024


class WireError(ValueError):
    """The body is not an AdmissionReview we can answer; `kind` is a short label for metrics."""

    def __init__(self, reason: str, kind: str):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


def check_content_type(content_type: str | None) -> None:
    """Accept application/json with optional parameters (charset), nothing else."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise WireError(f'Content-Type must be application/json, got "{content_type or ""}"', "content_type")


_JSON_TYPE_NAMES = {dict: "an object", str: "a string", bool: "a boolean"}


def _field(doc: dict, key: str, path: str, expected: type, required: bool) -> Any:
    value = doc.get(key)
    if value is None:
        if required:
            raise WireError(f"{path}.{key} is missing", "missing_field")
        return None
    if not isinstance(value, expected):
        raise WireError(f"{path}.{key} must be {_JSON_TYPE_NAMES[expected]}, got {type(value).__name__}", "bad_field")
    return value


def _decode(body: bytes) -> tuple[dict, bool]:
    """The JSON object in `body` and whether orjson parsed it (no NaN or infinity in it then)."""
    doc = _decode_quickly(body) if body.count(b"{") + body.count(b"[") <= ORJSON_MAX_CONTAINERS else _REFUSED
    quick = doc is not _REFUSED
    if not quick:
        doc = _decode_slowly(body)
    if not isinstance(doc, dict):
        raise WireError(f"body must be a JSON object (an AdmissionReview), got {type(doc).__name__}", "malformed_json")
    return doc, quick


# orjson parses ~4x faster than json, but before 3.9.15 it recursed without a limit and crashed the
# process (SIGSEGV) on deep nesting (CVE-2024-27454: ~2,000 levels on a 256 KiB thread stack).
# pyproject requires a fixed version; counting the brackets (at C speed) keeps any older install
# safe too. A pod from the API server has a few hundred.
ORJSON_MAX_CONTAINERS = 1000
_REFUSED = object()


def _decode_quickly(body: bytes) -> Any:
    """orjson's parse, or _REFUSED when it refuses the body.

    It refuses a few things Python's parser takes (NaN, lone surrogates): those bodies get the
    answer they always had from `_decode_slowly`, and real errors json's message with its
    position. (orjson 3.8 reads integers beyond 64 bits as floats; the API server never sends
    one: it re-encodes the pod from Go's int64 fields.)
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return _REFUSED


def _decode_slowly(body: bytes) -> Any:
    try:
        return json.loads(body)
    except RecursionError as exc:
        raise WireError("body is not valid JSON: nested too deeply", "malformed_json") from exc
    except ValueError as exc:
        raise WireError(f"body is not valid JSON: {exc}", "malformed_json") from exc


# Requests larger than this are not remembered by key (see `parse_review_keyed`).
MAX_KEYED_BYTES = 64 * 1024


def parse_review(body: bytes) -> AdmissionRequest:
    """Parse an AdmissionReview body into an AdmissionRequest, or raise WireError naming the field."""
    return parse_review_keyed(body, keyed=False)[0]


def parse_review_keyed(body: bytes, keyed: bool = True) -> tuple[AdmissionRequest, bytes | None]:
    """`parse_review`, plus a key equal for two bodies exactly when their reviews differ only in uid.

    The key is the canonical JSON of everything in the review but request.uid, so a decision that
    is a pure function of the AdmissionRequest (without its uid) can be remembered under it. None
    when not `keyed`, and for what is unlikely to recur or unsafe to key: a request with a name
    (only objects named by generateName, such as a ReplicaSet's pods, are sent alike), a body
    larger than MAX_KEYED_BYTES, or one parsed by json (its NaN and infinities would serialise as
    null and collide with a real null).
    """
    doc, quick = _decode(body)
    api_version = doc.get("apiVersion")
    if api_version not in SUPPORTED_VERSIONS:
        raise WireError(f"apiVersion must be {V1} or {V1BETA1}, got {api_version!r}", "api_version")
    if doc.get("kind") != KIND:
        raise WireError(f'kind must be "{KIND}", got {doc.get("kind")!r}', "kind")
    request = doc.get("request")
    if request is None:
        raise WireError("request is missing", "missing_request")
    if not isinstance(request, dict):
        raise WireError(f"request must be an object, got {type(request).__name__}", "bad_field")
    uid = _field(request, "uid", "request", str, required=True)
    if not uid:
        raise WireError("request.uid is empty", "missing_field")
    kind = _field(request, "kind", "request", dict, required=True)
    key = None
    if keyed and quick and len(body) <= MAX_KEYED_BYTES and not request.get("name"):
        try:
            key = orjson.dumps([api_version, {name: value for name, value in request.items() if name != "uid"}])
        except orjson.JSONEncodeError:  # nested deeper than orjson writes (254 levels): not keyed
            key = None
    return AdmissionRequest(
        uid=uid,
        api_version=api_version,
        kind=_field(kind, "kind", "request.kind", str, required=True),
        group=_field(kind, "group", "request.kind", str, required=False) or "",
        operation=_field(request, "operation", "request", str, required=True),
        namespace=_field(request, "namespace", "request", str, required=False) or "",
        name=_field(request, "name", "request", str, required=False) or None,
        dry_run=bool(_field(request, "dryRun", "request", bool, required=False)),
        object=_field(request, "object", "request", dict, required=False),
        old_object=_field(request, "oldObject", "request", dict, required=False),
        sub_resource=_field(request, "subResource", "request", str, required=False) or None,
        user=_user_info(request.get("userInfo")),
    ), key


def _user_info(doc: Any) -> UserInfo:
    """request.userInfo; malformed parts read as absent, which the guards treat as "not allowed"."""
    if not isinstance(doc, dict):
        return UserInfo()
    username = doc.get("username") if isinstance(doc.get("username"), str) else ""
    groups = tuple(g for g in doc.get("groups") or () if isinstance(g, str)) if isinstance(doc.get("groups"), list) else ()
    extra: dict[str, tuple[str, ...]] = {}
    if isinstance(doc.get("extra"), dict):
        for key, values in doc["extra"].items():
            if isinstance(values, list):
                extra[key] = tuple(v for v in values if isinstance(v, str))
    return UserInfo(username, groups, extra)


def review_response(api_version: str, uid: str, verdict: Verdict) -> dict:
    """The AdmissionReview answering `uid` in `api_version` (the request's own version).

    A denial never carries a patch (the API server would ignore it, and a half-applied decision
    must not even look possible); `patchType` is only present together with a patch, and empty
    warnings/auditAnnotations are left out, so an allowed no-op answer is exactly
    {apiVersion, kind, response: {uid, allowed: true}} as the API server itself expects.
    """
    response: dict[str, Any] = {"uid": uid, "allowed": bool(verdict.allowed)}
    if not verdict.allowed:
        response["status"] = {"code": verdict.code, "message": verdict.message}
    elif verdict.patch:
        response["patchType"] = PATCH_TYPE
        response["patch"] = base64.b64encode(orjson.dumps(verdict.patch)).decode("ascii")
    if verdict.warnings:
        response["warnings"] = list(verdict.warnings)
    if verdict.audit_annotations:
        response["auditAnnotations"] = dict(verdict.audit_annotations)
    return {"apiVersion": api_version, "kind": KIND, "response": response}


def encode(doc: dict) -> bytes:
    """Compact JSON bytes for an HTTP body."""
    return orjson.dumps(doc)
