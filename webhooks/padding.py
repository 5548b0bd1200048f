"""Sandbox overhead accounted for by padding requests where `spec.overhead` cannot carry it.

The scheduler sees a pod as max(app containers + sidecars, each init step) + spec.overhead, or the
pod-level requests instead of the container sums when `spec.resources` sets them
(sandgate.core.podrequests). When the API server cannot set spec.overhead (legacy clusters), or
the overhead grows with the pod's requests (which a RuntimeClass's fixed overhead cannot express),
sandgate adds the missing amount:

* to the pod-level request of a resource the pod sets at pod level (the scheduler ignores the
  container sums for it), and to the pod-level limit where one exists;
* otherwise to the first app container and to every regular init container: that raises both
  sides of the max by the same amount (sidecars run beside the app containers and are covered by
  them), so the scheduler's total grows by exactly the overhead.

Limits grow only where a limit exists, so a pod's QoS class is kept.

The annotation `keys.PADDING_ANNOTATION` records what was added and the basis it was computed from
(the effective pod request before padding). It is never trusted, only used to take the padding
back out: on every call (webhook reinvocation after a later webhook added a sidecar or an init
container) the padding the *final* pod needs is computed from the pod with the recorded padding
subtracted, and only the difference is patched. Running it on its own output yields no patch. A
record that does not match the pod (a container it names is gone or holds less than it says) is
taken out only where it matches, so a forged or stale record can only lead to more padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Any, Mapping

from sandgate.core import keys
from sandgate.core.clusterversion import Mode
from sandgate.core.jsonshape import ShapeError, list_at, object_at
from sandgate.core.paddingrecord import POD, PaddingRecord, format_quantity
from sandgate.core.podrequests import (combine, is_pod_level_resource, is_sidecar,
                                       pod_requests, resource_list)
from sandgate.core.policy import Profile
from webhooks.routing import pod_annotations

_MILLI = Decimal("0.001")


def round_up(resource: str, value: Decimal) -> Decimal:
    """`value` rounded up to what the scheduler counts: whole millicores of cpu, whole units of the rest."""
    unit = _MILLI if resource == "cpu" else Decimal(1)
    return (value / unit).to_integral_value(rounding=ROUND_CEILING) * unit


class PaddingError(ValueError):
    """The padding the pod needs cannot be written without changing what the pod asked for; names the field."""


def required_padding(spec: Mapping[str, Any], profile: Profile, mode: Mode) -> dict[str, Decimal]:
    """How much each resource must be padded for `profile` in `mode`, for an unpadded pod `spec`."""
    return _required(pod_requests(spec, include_overhead=False), resource_list(spec.get("overhead"), "spec.overhead"),
                     profile, mode)


def _required(requests: Mapping[str, Decimal], accounted: Mapping[str, Decimal], profile: Profile,
              mode: Mode) -> dict[str, Decimal]:
    """The padding for a pod whose effective requests (without overhead) are `requests`.

    RuntimeClass mode: the API server sets spec.overhead to podFixed, so only the memory the
    request-dependent rule adds beyond podFixed is padded. Legacy mode: the whole overhead, less
    the spec.overhead the pod already carries (`accounted`: the API server accounted for that part).
    Amounts are rounded up to whole units and only positive ones are returned.
    """
    overhead = profile.overhead
    if overhead is None:
        return {}
    fixed = overhead.pod_fixed_values
    dependent = (overhead.memory_percent_of_requests is not None or overhead.memory_min is not None
                 or overhead.memory_max is not None)
    memory_total = None
    if dependent:
        memory_total = overhead.memory_total(requests.get("memory", Decimal(0)))
    if mode is Mode.APISERVER_MERGES:
        wanted = {} if memory_total is None else {"memory": memory_total - fixed.get("memory", Decimal(0))}
    else:
        wanted = dict(fixed)
        if memory_total is not None:
            wanted["memory"] = memory_total
        for resource in wanted:
            wanted[resource] -= accounted.get(resource, Decimal(0))
    return {resource: round_up(resource, amount) for resource, amount in wanted.items() if amount > 0}


@dataclass
class ResourceEdit:
    """New values for one place's requests and limits: resource -> Decimal, or None to remove the key."""

    requests: dict[str, Decimal | None] = field(default_factory=dict)
    limits: dict[str, Decimal | None] = field(default_factory=dict)


@dataclass
class PaddingPlan:
    """The outcome: per place ((kind, index) or (POD, 0)) the values to write, and the annotation."""

    edits: dict[tuple[str, int], ResourceEdit]
    record: PaddingRecord | None  # None: the pod needs no padding (an annotation present is removed)
    annotation: str | None  # the annotation value to write; None = remove it if present

    @property
    def amounts(self) -> dict[str, Decimal]:
        """What the final pod carries as padding, per resource."""
        return dict(self.record.amounts) if self.record else {}


def _resources(holder: Mapping[str, Any], path: str) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    """The requests and limits of `holder`; QuantityError names a value that is not a quantity, or one
    beyond what Kubernetes can count (the one parser's bound, `sandgate.core.quantity`)."""
    resources = object_at(holder.get("resources"), f"{path}.resources")
    return (resource_list(resources.get("requests"), f"{path}.resources.requests"),
            resource_list(resources.get("limits"), f"{path}.resources.limits"))


def plan_padding(pod: Mapping[str, Any], profile: Profile, mode: Mode) -> PaddingPlan:
    """What to write so that the pod carries exactly the padding it needs, whatever it carries now.

    Raises QuantityError or ShapeError naming the field when a value it must read is invalid, and
    PaddingError when the padding cannot be expressed.
    """
    spec = object_at(pod.get("spec"), "spec")
    previous = PaddingRecord.from_annotation(pod_annotations(pod).get(keys.PADDING_ANNOTATION))
    places: list[tuple[str, int, Any, str]] = []  # (kind, index, container name, path)
    for kind in ("containers", "initContainers"):
        for i, container in enumerate(list_at(spec.get(kind), f"spec.{kind}")):
            if not isinstance(container, dict):  # null included: there is nothing to pad in place
                raise ShapeError(f"spec.{kind}[{i}]: must be an object, got {type(container).__name__}")
            places.append((kind, i, container.get("name"), f"spec.{kind}[{i}]"))
    current: dict[tuple[str, int], tuple[dict[str, Decimal], dict[str, Decimal]]] = {}
    unpadded: dict[tuple[str, int], tuple[dict[str, Decimal], dict[str, Decimal]]] = {}
    for kind, i, name, path in places + [(POD, 0, None, "spec")]:
        holder = spec if kind == POD else spec[kind][i]
        requests, limits = _resources(holder, path)
        current[kind, i] = (requests, limits)
        base_requests, base_limits = dict(requests), dict(limits)
        for resource in (previous.amounts if previous else {}):
            amount = previous.amount_at(kind, name, resource)
            # Take out only what is demonstrably there: a stale or forged record can only add padding.
            if amount and requests.get(resource, Decimal(0)) >= amount:
                base_requests[resource] = requests.get(resource, Decimal(0)) - amount
                if resource in limits and limits[resource] >= amount:
                    base_limits[resource] = limits[resource] - amount
        unpadded[kind, i] = (base_requests, base_limits)

    containers = [unpadded[kind, i][0] for kind, i, _, _ in places if kind == "containers"]
    inits = [(unpadded[kind, i][0], is_sidecar(spec[kind][i])) for kind, i, _, _ in places if kind != "containers"]
    before = combine(containers, inits)
    pod_level = {r: v for r, v in unpadded[POD, 0][0].items() if is_pod_level_resource(r)}
    before.update(pod_level)  # what the scheduler sums without any padding (podrequests.pod_requests)
    amounts = _required(before, resource_list(spec.get("overhead"), "spec.overhead"), profile, mode)
    targets: dict[tuple[str, int], dict[str, Decimal]] = {}
    for resource, amount in amounts.items():
        if resource in pod_level and is_pod_level_resource(resource):
            targets.setdefault((POD, 0), {})[resource] = amount
            continue
        pod_limit = unpadded[POD, 0][1].get(resource)
        if pod_limit is not None and is_pod_level_resource(resource) and before.get(resource, 0) + amount > pod_limit:
            # The containers' sum may not exceed a pod-level limit; raising the limit unasked would change
            # what the pod may use, and padding less would under-reserve: refuse, saying what to set.
            raise PaddingError(
                f"spec.resources.limits.{resource}: the sandbox overhead padding of {format_quantity(resource, amount)} "
                f"would take the containers' {resource} requests to "
                f"{format_quantity(resource, before.get(resource, Decimal(0)) + amount)}, above this pod-level "
                f"limit of {format_quantity(resource, pod_limit)}; set spec.resources.requests.{resource} "
                f"(sandgate then pads the pod-level request and limit) or raise the limit")
        for kind, i, _name, _path in places:
            if kind == "containers" and i == 0 or kind == "initContainers" and not is_sidecar(spec[kind][i]):
                targets.setdefault((kind, i), {})[resource] = amount

    edits: dict[tuple[str, int], ResourceEdit] = {}
    for place, (requests, limits) in current.items():
        base_requests, base_limits = unpadded[place]
        target = targets.get(place, {})
        edit = ResourceEdit()
        for resource in set(requests) | set(target):
            base = base_requests.get(resource, Decimal(0))
            wanted = base + target.get(resource, Decimal(0))
            if wanted != requests.get(resource):
                # A request that was only padding goes away with it rather than staying as "0".
                padding_only = not wanted and resource not in target and requests.get(resource)
                edit.requests[resource] = None if padding_only else wanted
            if resource in limits:
                limit = base_limits[resource] + target.get(resource, Decimal(0))
                if limit != limits[resource]:
                    edit.limits[resource] = limit
        if edit.requests or edit.limits:
            edits[place] = edit

    if not amounts:
        return PaddingPlan(edits, None, None)
    padded_kinds = {kind: tuple(str(name) for k, i, name, _ in places if (k, i) in targets and k == kind)
                    for kind in ("containers", "initContainers")}
    basis = {r: before.get(r, Decimal(0)) for r in amounts}
    record = PaddingRecord(amounts, basis, padded_kinds["containers"], padded_kinds["initContainers"],
                           tuple(sorted(r for r in amounts if (POD, 0) in targets and r in targets[POD, 0])))
    return PaddingPlan(edits, record, record.to_annotation())
