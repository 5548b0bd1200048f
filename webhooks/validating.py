"""Validate: the fail-closed guard that no routed pod is created outside its sandbox.

Its webhook configuration uses `failurePolicy: Fail`, and it runs after every mutating webhook,
so it catches a pod the mutating webhook never saw (skipped, bypassed, misconfigured) or that a
later mutation changed. It routes the pod by the same rules as admit and refuses it when its
`spec.runtimeClassName` is not the profile's, it uses a feature the profile forbids, or it does not
request exactly one sandbox slot of the profile's handler (the scheduler's slot accounting must not
be skippable). It never patches.

Whether a pod is sandboxed, and in which profile, is one rule shared with the scheduler extender,
which cannot see namespace labels (`sandgate.core.sandboxing`): a routed pod must be sandboxed by
that rule in its profile, and a pod left alone must not be sandboxed by it (one that requests a
sandbox slot in a profile's runtime class is refused).

Two updates of a running sandboxed pod (one whose runtimeClassName is a profile's) are checked too:

* `pods/ephemeralcontainers` (`kubectl debug`): an ephemeral container runs inside the sandbox, but
  must not bring a feature the profile forbids (`privileged`);
* `pods/resize` (in-place resize, 1.33+): the request-dependent overhead padding was computed from
  the requests at creation, and a resize keeps only container resources (no annotation), so the
  padding cannot follow it. A resize after which the pod needs more padding than it carries is
  refused, naming the request it raised; one that lowers requests keeps the (now generous) padding.
"""

from __future__ import annotations

from decimal import Decimal
from functools import partial

from sandgate.core import keys, sandboxing
from sandgate.core.clusterversion import Mode
from sandgate.core.jsonshape import ShapeError, list_at
from sandgate.core.podrequests import container_requests
from sandgate.core.policy import Policy
from sandgate.core.quantity import QuantityError
from webhooks.forbidden import forbidden_fields, forbidden_message
from webhooks.review import AdmissionRequest, NamespaceFacts, Verdict
from webhooks.mutating import audit_annotations, unrouted_verdict
from webhooks.padding import PaddingError, PaddingRecord, format_quantity, plan_padding
from webhooks.routing import Outcome, applies_to, pod_annotations, pod_spec, resolve

# Updates of these pod subresources are checked for sandboxed pods.
EPHEMERAL_CONTAINERS = "ephemeralcontainers"
RESIZE = "resize"


def validate(req: AdmissionRequest, policy: Policy, mode: Mode, facts: NamespaceFacts) -> Verdict:
    """Allow or refuse one admission request; pure, never patches."""
    if req.kind == "Pod" and req.group == "" and req.operation == "UPDATE" \
            and req.sub_resource in (EPHEMERAL_CONTAINERS, RESIZE):
        return _validate_update(req, policy, mode)
    decision = resolve(req, policy, facts)
    if decision.outcome is Outcome.SKIP and applies_to(req) and isinstance(req.object, dict):
        try:
            problem = sandboxing.disagreement(req.object, policy, None)
        except sandboxing.SandboxingError as exc:
            return Verdict(allowed=False, message=str(exc), code=400, reason="invalid-pod")
        if problem:
            return Verdict(allowed=False, message=problem, reason="unrouted-sandbox-slot")
    if decision.outcome is not Outcome.ROUTE:
        # Warnings were already given by the mutating webhook; repeating them adds noise.
        return unrouted_verdict(decision) if decision.outcome is Outcome.DENY else \
            Verdict(allowed=True, reason=decision.reason)
    profile = decision.profile
    audit = audit_annotations(decision)

    denied = partial(Verdict.refusal, profile.name, audit)

    forbidden = forbidden_message(req.object, profile)
    if forbidden:
        return denied("forbidden", forbidden)
    actual = pod_spec(req.object).get("runtimeClassName")
    if actual != profile.runtime_class_name:
        shown = "it is not set" if actual is None else f'got "{actual}"'
        return denied("runtime-class-mismatch",
                      f'spec.runtimeClassName: sandbox profile "{profile.name}" requires '
                      f'"{profile.runtime_class_name}", {shown} (was the sandgate mutating webhook skipped?)')
    try:
        slots = sandboxing.disagreement(req.object, policy, profile)
    except (sandboxing.SandboxingError, QuantityError) as exc:
        return denied("invalid-pod", str(exc), code=400)
    if slots:
        return denied("sandbox-slot", slots)
    return Verdict(allowed=True, reason="routed", profile=profile.name, audit_annotations=audit)


def _validate_update(req: AdmissionRequest, policy: Policy, mode: Mode) -> Verdict:
    """An ephemeral-container or resize update of a pod: checked when the pod runs in a sandbox profile."""
    pod = req.object
    if not isinstance(pod, dict):
        return Verdict(allowed=False, code=400, reason="invalid-pod",
                       message="request.object: the pod being updated is missing")
    runtime_class = pod_spec(pod).get("runtimeClassName")
    profile = policy.profile_for_runtime_class(runtime_class if isinstance(runtime_class, str) else None)
    if profile is None:
        return Verdict(allowed=True, reason="not-sandboxed")
    audit = {keys.AUDIT_PROFILE: profile.name, keys.AUDIT_RULE: "runtime-class"}

    denied = partial(Verdict.refusal, profile.name, audit)

    if req.sub_resource == EPHEMERAL_CONTAINERS:
        paths = [p for p in forbidden_fields(pod, profile) if p.startswith("spec.ephemeralContainers")]
        if paths:
            more = f" (also: {', '.join(paths[1:])})" if len(paths) > 1 else ""
            return denied("forbidden", f'{paths[0]} is forbidden by sandbox profile "{profile.name}"{more}')
        return Verdict(allowed=True, reason="routed", profile=profile.name, audit_annotations=audit)
    try:
        plan = plan_padding(pod, profile, mode)
    except (QuantityError, ShapeError) as exc:
        return denied("invalid-pod", str(exc), code=400)
    except PaddingError as exc:
        return denied("resize-padding-short", str(exc))
    previous = PaddingRecord.from_annotation(pod_annotations(pod).get(keys.PADDING_ANNOTATION))
    carried = previous.amounts if previous else {}
    for resource, needed in sorted(plan.amounts.items()):
        if needed > carried.get(resource, Decimal(0)):
            return denied("resize-padding-short",
                          f"{_grown_field(req, resource)}: this resize raises the requests the sandbox overhead "
                          f'of profile "{profile.name}" depends on beyond what the pod\'s padding covers (it '
                          f"carries {format_quantity(resource, carried.get(resource, Decimal(0)))} of {resource}, "
                          f"the new requests need {format_quantity(resource, needed)}); the padding cannot follow "
                          f"an in-place resize: recreate the pod with the new requests")
    return Verdict(allowed=True, reason="routed", profile=profile.name, audit_annotations=audit)


def _grown_field(req: AdmissionRequest, resource: str) -> str:
    """The first request of `resource` the resize raised, as a field path (spec.containers[0]... by default)."""
    old = pod_spec(req.old_object) if isinstance(req.old_object, dict) else {}
    new = pod_spec(req.object)
    for kind in ("containers", "initContainers"):
        for i, container in enumerate(list_at(new.get(kind), f"spec.{kind}")):
            before = list_at(old.get(kind), f"spec.{kind}")
            was = container_requests(before[i], f"spec.{kind}[{i}]") if i < len(before) else {}
            if container_requests(container, f"spec.{kind}[{i}]").get(resource, Decimal(0)) > \
                    was.get(resource, Decimal(0)):
                return f"spec.{kind}[{i}].resources.requests.{resource}"
    return f"spec.containers[0].resources.requests.{resource}"
