"""Typed boundary between the webhook's wire layer (HTTP, AdmissionReview JSON) and its decisions.

The server parses an AdmissionReview into an `AdmissionRequest`, gathers what it knows about the
namespace into a `NamespaceFacts`, and hands both with the policy and mode to the pure decision functions
(`webhooks.mutating.admit`, `webhooks.validating.validate`), which return a `Verdict`. The server
turns the Verdict back into an AdmissionReview response in the request's version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class UserInfo:
    """request.userInfo: who sent the request (the guards decide on it; pod routing does not)."""

    username: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def extra_value(self, key: str) -> str | None:
        """The single value of an extra key, or None when it is absent or not exactly one value."""
        values = self.extra.get(key) or ()
        return values[0] if len(values) == 1 and values[0] else None


@dataclass(frozen=True)
class AdmissionRequest:
    """The parts of AdmissionReview.request the decisions use (identical in v1 and v1beta1)."""

    uid: str
    api_version: str  # of the AdmissionReview: admission.k8s.io/v1 or admission.k8s.io/v1beta1
    kind: str  # request.kind.kind, e.g. "Pod"
    group: str  # request.kind.group, "" for core
    operation: str  # CREATE, UPDATE, DELETE, CONNECT
    namespace: str
    name: str | None  # absent for generateName pods made by controllers
    dry_run: bool
    object: dict[str, Any] | None
    old_object: dict[str, Any] | None = None
    sub_resource: str | None = None
    user: UserInfo = field(default_factory=UserInfo)

    @property
    def pod_name(self) -> str:
        """A name for logs and messages: the name, else generateName + "<generated>"."""
        meta = (self.object or {}).get("metadata")
        meta = meta if isinstance(meta, dict) else {}  # any JSON may arrive here: never raise
        name = self.name or meta.get("name")
        if isinstance(name, str) and name:
            return name
        generate = meta.get("generateName")
        return (generate if isinstance(generate, str) else "") + "<generated>"


@dataclass(frozen=True)
class NamespaceFacts:
    """What the server knows about the request's namespace.

    Exactly one source applies: `path_profile` when the request came to /mutate/<profile> or
    /validate/<profile> (the webhook configuration's namespaceSelector already matched the label),
    or `namespace_labels` read from the watched namespace cache for /mutate and /validate.
    `path_profile == keys.OPT_IN_PATH_SEGMENT` means the namespace carries no isolation label.
    """

    namespace_labels: Mapping[str, str] | None = None
    path_profile: str | None = None


@dataclass
class Verdict:
    """The answer to one admission request."""

    allowed: bool
    message: str = ""  # denial reason; names the offending field
    code: int = 403  # HTTP-style status code reported in response.status.code on denial
    patch: list[dict[str, Any]] = field(default_factory=list)  # RFC 6902 operations; [] = no change
    warnings: list[str] = field(default_factory=list)
    audit_annotations: dict[str, str] = field(default_factory=dict)
    profile: str | None = None  # the profile the pod was routed to, for logs and metrics
    reason: str = ""  # short machine-readable rule name for metrics/logs, e.g. "routed", "exempt", "forbidden"

    @classmethod
    def refusal(cls, profile: str, audit: dict[str, str], reason: str, message: str, code: int = 403) -> "Verdict":
        """A denial of a pod routed to `profile`, carrying the routing's audit annotations."""
        return cls(allowed=False, message=message, code=code, reason=reason, profile=profile, audit_annotations=audit)
