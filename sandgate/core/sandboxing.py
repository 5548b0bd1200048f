"""Is this pod sandboxed, and in which profile: the one rule the validating webhook and the extender share.

The extender cannot see namespace labels, so the rule reads only what the mutating webhook writes
into every pod it routes and what the validating webhook then insists on:

* `spec.runtimeClassName` is the runtimeClassName of a profile, and
* the pod requests exactly one slot of that profile's handler (`keys.sandbox_resource(handler)`)
  and no slot of any other handler.

A pod that meets both is sandboxed in that profile; any other pod is not sandboxed. The validating
webhook admits a pod only when this rule names the profile the routing chose (None for a pod it
leaves alone), so the extender's view of a pod is the webhook's, without namespace labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Mapping

from sandgate.core import keys
from sandgate.core.jsonshape import ShapeError, list_at, object_at
from sandgate.core.podrequests import pod_requests
from sandgate.core.policy import Policy, Profile
from sandgate.core.quantity import QuantityError, parse_field

MAX_SLOTS = 10**6  # far above any node's slots; bounds the arithmetic on hostile values


# A pod field the rule reads is malformed; the message names the field.
SandboxingError = ShapeError


@dataclass(frozen=True)
class SandboxFacts:
    """What the rule reads from a pod: its runtimeClassName and its slot requests per resource."""

    runtime_class: str | None
    slots: Mapping[str, Decimal]  # sandgate.io/sandbox-<handler> -> the pod's effective request


def _check_slot_values(spec: Mapping[str, Any]) -> None:
    """Every slot request is a count in 0..MAX_SLOTS; SandboxingError naming the field otherwise.

    Checked before the sums so that a hostile value (NaN, Inf, 1e999990) is reported, never computed with.
    """
    for kind in ("containers", "initContainers"):
        for i, container in enumerate(list_at(spec.get(kind), f"spec.{kind}")):
            path = f"spec.{kind}[{i}].resources.requests"
            resources = object_at(object_at(container, f"spec.{kind}[{i}]").get("resources"), f"spec.{kind}[{i}].resources")
            for name, value in object_at(resources.get("requests"), path).items():
                if not (isinstance(name, str) and name.startswith(keys.SANDBOX_RESOURCE_PREFIX)):
                    continue
                try:
                    amount = parse_field(value, f"{path}.{name}")
                except QuantityError as exc:
                    raise SandboxingError(str(exc)) from None
                if not amount.is_finite() or amount < 0 or amount > MAX_SLOTS:
                    raise SandboxingError(f'{path}.{name}: "{value}" is not a slot count (0..{MAX_SLOTS})')


def sandbox_facts(pod: Mapping[str, Any]) -> SandboxFacts:
    """Read the pod's runtimeClassName and effective slot requests (SandboxingError names a bad field).

    The effective request is what the scheduler counts (`sandgate.core.podrequests`): app
    containers plus sidecars, or the largest init step, whichever is more.
    """
    spec = object_at(object_at(pod, "pod").get("spec"), "spec")
    runtime_class = spec.get("runtimeClassName")
    if runtime_class is not None and not isinstance(runtime_class, str):
        raise SandboxingError("spec.runtimeClassName: must be a string")
    _check_slot_values(spec)
    try:
        requests = pod_requests(spec, include_overhead=False)
    except QuantityError as exc:
        raise SandboxingError(str(exc)) from None
    except ArithmeticError as exc:  # a non-finite quantity of another resource
        raise SandboxingError(f"spec: a resource request is not a finite quantity ({type(exc).__name__})") from None
    return SandboxFacts(runtime_class, {name: value for name, value in requests.items()
                                        if name.startswith(keys.SANDBOX_RESOURCE_PREFIX) and value != 0})


def profile_for(facts: SandboxFacts, policy: Policy) -> Profile | None:
    """The profile a pod with these facts is sandboxed in, or None (the rule of the module docstring)."""
    profile = policy.profile_for_runtime_class(facts.runtime_class)
    if profile is None:
        return None
    resource = keys.sandbox_resource(profile.handler)
    if len(facts.slots) != 1 or facts.slots.get(resource) != 1:
        return None
    return profile


def profile_of(pod: Mapping[str, Any], policy: Policy) -> Profile | None:
    """The profile `pod` is sandboxed in, or None; SandboxingError when a field it reads is malformed."""
    return profile_for(sandbox_facts(pod), policy)


def disagreement(pod: Mapping[str, Any], policy: Policy, expected: Profile | None) -> str | None:
    """Why `profile_of(pod)` is not `expected` (a message naming the field), or None when it is.

    The validating webhook refuses a pod whenever this returns a message: a routed pod must carry
    exactly its one slot, and a pod left alone must not look sandboxed to the extender. A malformed
    field raises SandboxingError (naming it), as `sandbox_facts` does.
    """
    facts = sandbox_facts(pod)
    actual = profile_for(facts, policy)
    if actual == expected:
        return None
    if expected is None:
        shown = ", ".join(f"{name}: {_count(value)}" for name, value in sorted(facts.slots.items()))
        return (f'spec.containers[*].resources: the pod requests sandbox slots ({shown}) with spec.runtimeClassName '
                f'"{facts.runtime_class}", but the sandbox policy does not route it (its namespace is exempt or not '
                f"sandboxed and it did not opt in); remove the {keys.SANDBOX_RESOURCE_PREFIX}* requests and limits")
    own = keys.sandbox_resource(expected.handler)
    count = facts.slots.get(own, Decimal(0))
    if count != 1:
        return (f'spec.containers[0].resources.requests[{own}]: a pod in sandbox profile "{expected.name}" must '
                f'request exactly one sandbox slot ("{own}": "1" in requests and limits of its first container), '
                f"got {_count(count)} (was the sandgate mutating webhook skipped?)")
    others = sorted(name for name in facts.slots if name != own)
    if others:
        return (f'spec.containers[*].resources.requests[{others[0]}]: a pod in sandbox profile "{expected.name}" '
                f"may only request slots of its own runtime handler ({own})")
    return (f'spec.runtimeClassName: sandbox profile "{expected.name}" requires "{expected.runtime_class_name}", '
            f'got "{facts.runtime_class}"')


def _count(value: Decimal) -> str:
    return str(int(value)) if value == value.to_integral_value() else str(value)
