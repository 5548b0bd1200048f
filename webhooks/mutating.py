"""Admit: the mutating decision that routes a pod into its sandbox profile.

The mutation depends on what the API server does by itself (see docs/webhook-policy.md):

* RuntimeClass mode (1.18+, or 1.16-1.17 with PodOverhead on): set `spec.runtimeClassName` only.
  The API server re-runs its RuntimeClass admission after a webhook changed the pod and adds the
  RuntimeClass's scheduling and `spec.overhead`; writing those ourselves would be rejected when
  they differ. Only overhead the RuntimeClass cannot express (the request-dependent memory part)
  is padded (webhooks/padding.py).
* Legacy mode (< 1.16, or 1.16-1.17 without PodOverhead): nothing helps, so set runtimeClassName,
  merge the profile's nodeSelector and tolerations exactly like the built-in plugin, and pad the
  whole overhead.

In every mode the first app container asks for one sandbox slot of the profile's handler
(`keys.sandbox_resource`), so the scheduler counts slots and calls the extender for the pod.

The JSON Patch is built operation by operation from what must change, and returned only when all
of it was built, so a denial at any step leaves no partial patch; a pod that is already right gets
no operation, so running admit on its own output yields no patch (reinvocation-safe).
"""

from __future__ import annotations

from decimal import Decimal
from functools import partial
from typing import Any

import jsonpatch

from sandgate.core import keys
from sandgate.core.clusterversion import Mode
from sandgate.core.jsonshape import ShapeError, list_at, object_at
from sandgate.core.podrequests import resource_list
from sandgate.core.policy import Policy, Profile
from sandgate.core.quantity import QuantityError, check_pod_resources
from webhooks.forbidden import forbidden_message
from webhooks.review import AdmissionRequest, NamespaceFacts, Verdict
from webhooks.padding import POD, PaddingError, PaddingPlan, ResourceEdit, format_quantity, plan_padding
from webhooks.routing import Decision, Outcome, pod_annotations, resolve
from webhooks.scheduling import NodeSelectorConflict, merge_node_selector, merge_tolerations, \
    with_edge_toleration_seconds


def routed_warning(profile: Profile) -> str:
    """The short explanation attached to every routed pod."""
    return f'sandgate: routed to sandbox profile "{profile.name}" (runtimeClassName {profile.runtime_class_name})'


def audit_annotations(decision: Decision) -> dict[str, str]:
    """The auditAnnotations naming the profile and the rule that chose it."""
    return {keys.AUDIT_PROFILE: decision.profile.name, keys.AUDIT_RULE: decision.rule.value}


def unrouted_verdict(decision: Decision) -> Verdict:
    """The Verdict of a pod the routing skipped or refused."""
    if decision.outcome is Outcome.SKIP:
        return Verdict(allowed=True, reason=decision.reason, warnings=list(decision.warnings))
    return Verdict(allowed=False, message=decision.message, code=decision.code, reason=decision.reason)


def _escape(token: str) -> str:
    """A JSON Pointer reference token (RFC 6901): keys such as sandgate.io/overhead-padding."""
    return token.replace("~", "~0").replace("/", "~1")


def _set_member(ops: list[dict], parent: Any, parent_path: str, key: str, value: Any) -> None:
    """Set `key` of the object at `parent_path` to `value`, creating the object when it is absent."""
    if isinstance(parent, dict):
        op = "replace" if key in parent else "add"
        ops.append({"op": op, "path": f"{parent_path}/{_escape(key)}", "value": value})
    else:
        ops.append({"op": "add", "path": parent_path, "value": {key: value}})


def _resource_ops(ops: list[dict], holder: dict, path: str, edit: ResourceEdit) -> None:
    """The operations writing `edit` into the `resources` of `holder` (a container, or the pod spec)."""
    resources = holder.get("resources")
    if not isinstance(resources, dict):
        value = {name: {r: format_quantity(r, v) for r, v in values.items() if v is not None}
                 for name, values in (("requests", edit.requests), ("limits", edit.limits))}
        ops.append({"op": "add", "path": f"{path}/resources", "value": {k: v for k, v in value.items() if v}})
        return
    for name, values in (("requests", edit.requests), ("limits", edit.limits)):
        current = resources.get(name)
        if not values:
            continue
        if not isinstance(current, dict):
            ops.append({"op": "add", "path": f"{path}/resources/{name}",
                        "value": {r: format_quantity(r, v) for r, v in values.items() if v is not None}})
            continue
        for resource, value in sorted(values.items()):
            if value is None:
                ops.append({"op": "remove", "path": f"{path}/resources/{name}/{_escape(resource)}"})
            else:
                _set_member(ops, current, f"{path}/resources/{name}", resource, format_quantity(resource, value))


def _slot_edit(container: dict, handler: str, edit: ResourceEdit) -> None:
    """Ask for exactly one sandbox slot of `handler` in requests and limits (kept when already so)."""
    resource = keys.sandbox_resource(handler)
    requests, limits = _resources_of(container)
    for current, wanted in ((requests, edit.requests), (limits, edit.limits)):
        if current.get(resource) != Decimal(1):
            wanted[resource] = Decimal(1)


def _resources_of(container: dict) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    resources = object_at(container.get("resources"), "spec.containers[0].resources")
    return (resource_list(resources.get("requests"), "spec.containers[0].resources.requests"),
            resource_list(resources.get("limits"), "spec.containers[0].resources.limits"))


def mutation_patch(pod: dict, profile: Profile, mode: Mode) -> tuple[list[dict], PaddingPlan]:
    """The JSON Patch operations that route `pod` into `profile`, and the padding they carry.

    Built directly from what must change (no copy, no diff): nothing when the pod is already
    right, which is what makes reinvocation a no-op. Raises NodeSelectorConflict, QuantityError or
    ShapeError; the caller turns them into denials, so a pod never gets half a mutation.
    """
    spec = pod["spec"]
    ops: list[dict] = []
    # Absent or null (also a duplicate key the decoder kept as null): "add" sets or replaces it.
    # Routing refused every other value that is not the profile's.
    if spec.get("runtimeClassName") != profile.runtime_class_name:
        ops.append({"op": "add", "path": "/spec/runtimeClassName", "value": profile.runtime_class_name})
    existing = spec.get("tolerations") if isinstance(spec.get("tolerations"), list) else []
    for i, toleration in enumerate(existing):
        if not isinstance(toleration, dict):  # the API server never sends one; a direct caller may
            raise ShapeError(f"spec.tolerations[{i}]: must be an object, got {type(toleration).__name__}")
    tolerations = existing
    if mode is Mode.WEBHOOK_MERGES:
        current = spec.get("nodeSelector")
        selector = merge_node_selector(current, profile.node_selector)
        for key in selector:
            if not isinstance(current, dict) or not current:
                ops.append({"op": "add", "path": "/spec/nodeSelector", "value": selector})
                break
            if key not in current:
                ops.append({"op": "add", "path": f"/spec/nodeSelector/{_escape(key)}", "value": selector[key]})
        tolerations = merge_tolerations(tolerations, [t.to_k8s() for t in profile.tolerations])
    if profile.edge_toleration_seconds is not None:
        tolerations = with_edge_toleration_seconds(tolerations, profile.edge_toleration_seconds)
    if tolerations != existing:
        ops.append({"op": "add", "path": "/spec/tolerations", "value": tolerations})

    plan = plan_padding(pod, profile, mode)
    edits = dict(plan.edits)
    containers = list_at(spec.get("containers"), "spec.containers")
    if containers:
        _slot_edit(object_at(containers[0], "spec.containers[0]"), profile.handler,
                   edits.setdefault(("containers", 0), ResourceEdit()))
    for (kind, index), edit in sorted(edits.items()):
        if edit.requests or edit.limits:
            if kind == POD:
                _resource_ops(ops, spec, "/spec", edit)
            else:
                _resource_ops(ops, spec[kind][index], f"/spec/{kind}/{index}", edit)

    annotations = pod_annotations(pod)
    if plan.annotation is not None and annotations.get(keys.PADDING_ANNOTATION) != plan.annotation:
        metadata = pod.get("metadata")
        if isinstance(metadata, dict):
            _set_member(ops, metadata.get("annotations"), "/metadata/annotations", keys.PADDING_ANNOTATION,
                        plan.annotation)
        else:
            ops.append({"op": "add", "path": "/metadata",
                        "value": {"annotations": {keys.PADDING_ANNOTATION: plan.annotation}}})
    elif plan.annotation is None and keys.PADDING_ANNOTATION in annotations:
        # Written by the pod's author (or left from a padding no longer needed): never trusted, removed.
        ops.append({"op": "remove", "path": f"/metadata/annotations/{_escape(keys.PADDING_ANNOTATION)}"})
    return jsonpatch.JsonPatch(ops).patch, plan


def admit(req: AdmissionRequest, policy: Policy, mode: Mode, facts: NamespaceFacts) -> Verdict:
    """Decide and build the mutation of one admission request (pure: no I/O, never raises on pod content)."""
    decision = resolve(req, policy, facts)
    if decision.outcome is not Outcome.ROUTE:
        return unrouted_verdict(decision)
    profile = decision.profile
    audit = audit_annotations(decision)

    denied = partial(Verdict.refusal, profile.name, audit)

    pod = req.object
    if not isinstance(pod.get("spec"), dict):
        return denied("invalid-pod", "spec: the pod has no spec", code=400)
    forbidden = forbidden_message(pod, profile)
    if forbidden:
        return denied("forbidden", forbidden)
    try:
        check_pod_resources(pod["spec"])
        patch, plan = mutation_patch(pod, profile, mode)
    except NodeSelectorConflict as exc:
        # The built-in plugin refuses this with Forbidden (403) and the same text.
        return denied("node-selector-conflict", str(exc))
    except (QuantityError, ShapeError) as exc:
        return denied("invalid-pod", str(exc), code=400)
    except PaddingError as exc:
        return denied("padding-not-expressible", str(exc))
    warnings = [routed_warning(profile)]
    if plan.annotation is not None and any(op["path"].startswith("/metadata") for op in patch):
        amounts = ", ".join(f"{r} +{format_quantity(r, a)}" for r, a in sorted(plan.amounts.items()))
        warnings.append(f"sandgate: requests padded for sandbox overhead ({amounts}); "
                        f"see annotation {keys.PADDING_ANNOTATION}")
    return Verdict(allowed=True, patch=patch, warnings=warnings,
                   audit_annotations=audit, profile=profile.name, reason="routed")
