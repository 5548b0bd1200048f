"""Which sandbox profile, if any, a pod is routed to: the one routing table of both webhooks.

The mutating webhook (admit) and the validating guard (validate) resolve a pod through the same
rules, so a pod the mutating webhook would route can never pass the guard unsandboxed, and a bad
namespace label or annotation is refused by both with the same message. Every outcome that could
let an untrusted pod run unsandboxed by mistake (unknown label value, unknown annotation value,
namespace labels not known yet) is a denial: the routing fails closed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Mapping

from sandgate.core import keys
from sandgate.core.jsonshape import as_object
from sandgate.core.policy import Policy, Profile
from webhooks.review import AdmissionRequest, NamespaceFacts


class Outcome(str, enum.Enum):
    """What the webhooks do with the pod."""

    ROUTE = "route"  # sandbox the pod with `Decision.profile`
    SKIP = "skip"  # leave the pod alone
    DENY = "deny"  # refuse the pod with `Decision.message`


class Rule(str, enum.Enum):
    """Which input chose the profile; reported in the `rule` audit annotation."""

    NAMESPACE_LABEL = "namespace-label"
    POD_ANNOTATION = "pod-annotation"
    RUNTIME_CLASS = "runtime-class"
    OPT_IN = "opt-in"
    UNLABELLED = "unlabelled-namespace"  # unlabelledNamespaces: sandboxed routed it to defaultProfile


@dataclass(frozen=True)
class Decision:
    """The routing outcome for one pod; `reason` is a short stable name for metrics and logs."""

    outcome: Outcome
    reason: str
    profile: Profile | None = None
    rule: Rule | None = None
    message: str = ""
    code: int = 403
    warnings: tuple[str, ...] = ()


def skip(reason: str, *warnings: str) -> Decision:
    """Leave the pod unchanged."""
    return Decision(Outcome.SKIP, reason, warnings=warnings)


def deny(reason: str, message: str, code: int = 403) -> Decision:
    """Refuse the pod; `message` names the field or input at fault."""
    return Decision(Outcome.DENY, reason, message=message, code=code)


def applies_to(req: AdmissionRequest) -> bool:
    """Only the creation of a pod itself is routed (no updates, subresources or other kinds).

    A pod's runtimeClassName, nodeSelector and resources are immutable after creation, so routing
    on CREATE is both necessary and sufficient.
    """
    return req.kind == "Pod" and req.group == "" and not req.sub_resource and req.operation == "CREATE"


def pod_metadata(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pod's metadata, or an empty mapping when it is missing or malformed."""
    return as_object(pod.get("metadata"))


def pod_spec(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pod's spec, or an empty mapping when it is missing or malformed."""
    return as_object(pod.get("spec"))


def pod_annotations(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pod's annotations, or an empty mapping."""
    return as_object(pod_metadata(pod).get("annotations"))


def _valid_values(policy: Policy, *fixed: str) -> str:
    return ", ".join([*fixed, *policy.profiles])


def _namespace_profile(req: AdmissionRequest, policy: Policy, facts: NamespaceFacts) -> Decision | Profile | None:
    """The profile the namespace routes to, None for an unlabelled namespace, or a denial."""
    if facts.path_profile is not None:
        segment = facts.path_profile
        if segment == keys.OPT_IN_PATH_SEGMENT:
            return _unlabelled(policy)
        # /mutate/sandboxed follows defaultProfile without rewriting the webhook configuration.
        profile = policy.profile_named(segment)
        if profile is not None:
            return profile
        return deny("unknown-path-profile",
                    f'webhook path profile "{segment}" is not a profile of the sandbox policy (valid: '
                    f'{_valid_values(policy, keys.SANDBOXED_VALUE, keys.OPT_IN_PATH_SEGMENT)}); '
                    f"fix the webhook configuration's clientConfig path")
    if facts.namespace_labels is None:
        return deny("namespace-routing-unknown",
                    f'namespace routing for "{req.namespace}" is unknown: the namespace cache is not ready; '
                    f"refusing the pod rather than guessing whether it must be sandboxed", code=503)
    value = facts.namespace_labels.get(policy.namespace_label)
    if value is None:
        return _unlabelled(policy)
    if value == keys.OPT_OUT_VALUE:
        return None  # an admin marked the namespace trusted (the label is guarded, docs/install.md)
    profile = policy.profile_named(value)
    if profile is not None:
        return profile
    return deny("invalid-namespace-label",
                f'namespace "{req.namespace}" has label {policy.namespace_label}="{value}", which is not a '
                f"sandbox profile (valid values: {_valid_values(policy, keys.SANDBOXED_VALUE, keys.OPT_OUT_VALUE)}); "
                f"refusing to admit the pod unsandboxed")


def _unlabelled(policy: Policy) -> Profile | None:
    """What a namespace without the isolation label routes to: nothing, or defaultProfile when sandboxed."""
    if policy.unlabelled_namespaces == "sandboxed":
        return policy.profiles[policy.default_profile]
    return None


def _locked(ns_profile: Profile, chosen: Profile, field: str, req: AdmissionRequest, policy: Policy) -> Decision:
    return deny("profile-locked",
                f'{field}: namespace "{req.namespace}" is locked to sandbox profile "{ns_profile.name}"; a pod '
                f'cannot choose "{chosen.name}" (policy allowProfileOverride: false)')


def _placement(decision: Decision, pod: Mapping[str, Any], policy: Policy) -> Decision:
    """Refuse a routed pod that would skip the extender's checks: a preset node or another scheduler."""
    spec = pod_spec(pod)
    node = spec.get("nodeName")
    if node:
        return deny("node-name-preset",
                    f'spec.nodeName: "{node}" is preset; a sandboxed pod must be placed by the scheduler and '
                    f"the sandgate extender, which check the node's runtime and heartbeat")
    scheduler = spec.get("schedulerName")
    allowed = policy.scheduling.allowed_scheduler_names
    if scheduler is not None and scheduler not in allowed:
        return deny("scheduler-name-refused",
                    f'spec.schedulerName: "{scheduler}" is not allowed for sandboxed pods (allowed: '
                    f'{", ".join(sorted(allowed))}; policy scheduling.allowedSchedulerNames)')
    return decision


def _by_runtime_class(profile: Profile, rule: Rule, policy: Policy, pod: Mapping[str, Any],
                      annotation_chose: bool) -> Decision:
    """Honour a runtimeClassName the user set, unless the annotation chose the profile."""
    rcn = pod_spec(pod).get("runtimeClassName")
    if not annotation_chose:
        chosen = policy.profile_for_runtime_class(rcn if isinstance(rcn, str) else None)
        if chosen is not None:
            profile, rule = chosen, Rule.RUNTIME_CLASS
    if rcn is not None and rcn != profile.runtime_class_name:
        return deny("runtime-class-mismatch",
                    f'spec.runtimeClassName: "{rcn}" does not match sandbox profile "{profile.name}", which '
                    f'requires runtimeClassName "{profile.runtime_class_name}" (sandgate cannot replace it: '
                    f"the API server has already applied RuntimeClass \"{rcn}\"); remove the field or set "
                    f'"{profile.runtime_class_name}"')
    return Decision(Outcome.ROUTE, "routed", profile=profile, rule=rule)


def resolve(req: AdmissionRequest, policy: Policy, facts: NamespaceFacts) -> Decision:
    """Route the pod of `req`: to a profile, to nothing (skip), or to a denial naming the input at fault."""
    decision = _resolve(req, policy, facts)
    if decision.outcome is Outcome.ROUTE:
        return _placement(decision, req.object or {}, policy)
    return decision


def _resolve(req: AdmissionRequest, policy: Policy, facts: NamespaceFacts) -> Decision:
    if not applies_to(req):
        return skip("not-applicable")
    if req.namespace in policy.exempt_namespaces:
        return skip("exempt")
    pod = req.object
    if not isinstance(pod, dict):
        return deny("invalid-pod", "request.object: the pod to create is missing", code=400)
    ns_profile = _namespace_profile(req, policy, facts)
    if isinstance(ns_profile, Decision):
        return ns_profile

    key = policy.pod_annotation
    field = f"metadata.annotations[{key}]"
    value = pod_annotations(pod).get(key)
    if value is not None and not isinstance(value, str):
        # Only a hand-made request can carry this; treat it as the unknown value it is.
        value = str(value)

    if ns_profile is not None:
        labelled = (facts.namespace_labels or {}).get(policy.namespace_label) is not None or (
            facts.path_profile not in (None, keys.OPT_IN_PATH_SEGMENT))
        ns_rule = Rule.NAMESPACE_LABEL if labelled else Rule.UNLABELLED
        if value is None or value == keys.SANDBOXED_VALUE:
            decision = _by_runtime_class(ns_profile, ns_rule, policy, pod, annotation_chose=False)
            if (decision.outcome is Outcome.ROUTE and decision.profile is not ns_profile
                    and not policy.allow_profile_override):
                return _locked(ns_profile, decision.profile, "spec.runtimeClassName", req, policy)
            return decision
        if value == keys.OPT_OUT_VALUE:
            return deny("opt-out-refused",
                        f'{field}: "{keys.OPT_OUT_VALUE}": opt-out is not allowed in a sandboxed namespace '
                        f'(namespace "{req.namespace}" routes pods to sandbox profile "{ns_profile.name}")')
        if value in policy.profiles:
            chosen = policy.profiles[value]
            if chosen is not ns_profile and not policy.allow_profile_override:
                return _locked(ns_profile, chosen, field, req, policy)
            return _by_runtime_class(chosen, Rule.POD_ANNOTATION, policy, pod, annotation_chose=True)
        return deny("invalid-annotation",
                    f'{field}: unknown sandbox profile "{value}" (valid values: '
                    f"{_valid_values(policy, keys.SANDBOXED_VALUE)})")

    # Unlabelled namespace: the pod stays unsandboxed unless it opts in.
    if value == keys.OPT_OUT_VALUE:
        return skip("not-routed")
    if value is None:
        rcn = pod_spec(pod).get("runtimeClassName")
        chosen = policy.profile_for_runtime_class(rcn if isinstance(rcn, str) else None)
        if chosen is not None and policy.allow_pod_opt_in:
            # The user picked a sandbox runtime explicitly: schedule and check it like an opt-in.
            return Decision(Outcome.ROUTE, "routed", profile=chosen, rule=Rule.RUNTIME_CLASS)
        return skip("not-routed")
    wanted = policy.profile_named(value)
    if wanted is None:
        return deny("invalid-annotation",
                    f'{field}: unknown sandbox profile "{value}" (valid values: '
                    f"{_valid_values(policy, keys.SANDBOXED_VALUE, keys.OPT_OUT_VALUE)})")
    if not policy.allow_pod_opt_in:
        return skip("opt-in-disabled",
                    f"sandgate: {field} asks for sandbox profile \"{wanted.name}\" but pod opt-in is disabled "
                    f"by policy (allowPodOptIn: false); the pod is NOT sandboxed")
    return _by_runtime_class(wanted, Rule.OPT_IN, policy, pod, annotation_chose=True)
