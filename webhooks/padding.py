"""Sandbox overhead accounted for by padding container requests, where `spec.overhead` cannot carry it.

The scheduler sees a pod as max(sum(app containers), max(init containers)) + spec.overhead. When
the API server cannot set spec.overhead (legacy clusters), or the overhead grows with the pod's
requests (which a RuntimeClass's fixed overhead cannot express), sandgate adds the missing amount
to the first app container and to every init container: that raises both sides of the max by
the same amount, so the scheduler's total is exact. Limits grow only where a limit exists, so a
pod's QoS class is kept (Guaranteed stays Guaranteed, Burstable stays unbounded).

What was padded is recorded in the pod annotation `keys.PADDING_ANNOTATION`; a pod that carries it
is never padded again, which makes the mutation idempotent under webhook reinvocation and lets an
operator see exactly what was added.
"""

from __future__ import annotations

import json
from decimal import ROUND_CEILING, Decimal
from typing import Any, Mapping

from sandgate.core import keys
from sandgate.core.clusterversion import Mode
from sandgate.core.jsonshape import as_list, as_object
from sandgate.core.policy import Profile
from sandgate.core.quantity import parse_field
from webhooks.routing import pod_annotations, pod_spec

_MI = Decimal(1024 * 1024)


def format_quantity(resource: str, value: Decimal) -> str:
    """Canonical Kubernetes form: cpu in millicores, other resources in bytes, or Mi when exact.

    Values are rounded up, never down: padding must not account for less than the overhead.
    """
    if resource == "cpu":
        return f"{int((value * 1000).to_integral_value(rounding=ROUND_CEILING))}m"
    whole = value.to_integral_value(rounding=ROUND_CEILING)
    if whole and whole % _MI == 0:
        return f"{int(whole / _MI)}Mi"
    return str(int(whole))




def _is_sidecar(container: Mapping[str, Any]) -> bool:
    return container.get("restartPolicy") == "Always"


def _request(container: Any, kind: str, index: int, resource: str) -> Decimal:
    requests = as_object(as_object(as_object(container).get("resources")).get("requests"))
    if resource not in requests:
        return Decimal(0)
    return parse_field(requests[resource], f"spec.{kind}[{index}].resources.requests.{resource}")


def effective_request(spec: Mapping[str, Any], resource: str) -> Decimal:
    """The pod's request for `resource` as the scheduler computes it, without overhead.

    Follows k8s resource.PodRequests: the app containers plus restartable init containers
    (sidecars) run together; each regular init container runs alone beside the sidecars started
    before it.
    """
    app = sum((_request(c, "containers", i, resource) for i, c in enumerate(as_list(spec.get("containers")))),
              Decimal(0))
    sidecars = Decimal(0)
    init_peak = Decimal(0)
    for i, container in enumerate(as_list(spec.get("initContainers"))):
        request = _request(container, "initContainers", i, resource)
        if _is_sidecar(as_object(container)):
            sidecars += request
            init_peak = max(init_peak, sidecars)
        else:
            init_peak = max(init_peak, request + sidecars)
    return max(app + sidecars, init_peak)


def required_padding(pod: Mapping[str, Any], profile: Profile, mode: Mode) -> dict[str, Decimal]:
    """How much each resource must be padded for `profile` in `mode` (only positive amounts).

    RuntimeClass mode: the API server sets spec.overhead to podFixed, so only the memory the
    request-dependent rule adds beyond podFixed is padded. Legacy mode: the whole overhead, less
    any spec.overhead the pod already carries (the API server accounted for that part).
    """
    overhead = profile.overhead
    if overhead is None:
        return {}
    spec = pod_spec(pod)
    fixed = overhead.pod_fixed_values
    dependent = (overhead.memory_percent_of_requests is not None or overhead.memory_min is not None
                 or overhead.memory_max is not None)
    memory_total = overhead.memory_total(effective_request(spec, "memory")) if dependent else None
    if mode is Mode.APISERVER_MERGES:
        wanted = {} if memory_total is None else {"memory": memory_total - fixed.get("memory", Decimal(0))}
    else:
        wanted = dict(fixed)
        if memory_total is not None:
            wanted["memory"] = memory_total
        accounted = as_object(spec.get("overhead"))
        for resource in wanted:
            if resource in accounted:
                wanted[resource] -= parse_field(accounted[resource], f"spec.overhead.{resource}")
    return {resource: amount for resource, amount in wanted.items() if amount > 0}


def _pad_container(container: dict, amounts: Mapping[str, Decimal], kind: str, index: int) -> None:
    resources = container.get("resources")
    if not isinstance(resources, dict):
        resources = container["resources"] = {}
    requests = resources.get("requests")
    if not isinstance(requests, dict):
        requests = resources["requests"] = {}
    limits = as_object(resources.get("limits"))
    for resource, amount in amounts.items():
        base = f"spec.{kind}[{index}].resources"
        current = parse_field(requests[resource], f"{base}.requests.{resource}") if resource in requests else 0
        requests[resource] = format_quantity(resource, current + amount)
        if resource in limits:
            limits[resource] = format_quantity(resource, parse_field(limits[resource], f"{base}.limits.{resource}")
                                               + amount)


def pad_pod(pod: dict, profile: Profile, mode: Mode) -> dict[str, Any] | None:
    """Pad `pod` in place for `profile`'s overhead and record it; return the record, or None if nothing to do.

    Raises QuantityError (naming the field) when a quantity it must read is invalid.
    """
    spec = pod.get("spec")
    if not isinstance(spec, dict) or keys.PADDING_ANNOTATION in pod_annotations(pod):
        return None
    amounts = required_padding(pod, profile, mode)
    if not amounts:
        return None
    padded: dict[str, list[str]] = {"containers": [], "initContainers": []}
    containers = as_list(spec.get("containers"))
    if containers and isinstance(containers[0], dict):
        _pad_container(containers[0], amounts, "containers", 0)
        padded["containers"].append(str(containers[0].get("name", "")))
    for i, container in enumerate(as_list(spec.get("initContainers"))):
        # Sidecars run beside the app containers, whose padding already covers them.
        if isinstance(container, dict) and not _is_sidecar(container):
            _pad_container(container, amounts, "initContainers", i)
            padded["initContainers"].append(str(container.get("name", "")))
    record: dict[str, Any] = {resource: format_quantity(resource, amount) for resource, amount in amounts.items()}
    record.update(padded)
    metadata = pod.setdefault("metadata", {})
    if not isinstance(metadata.get("annotations"), dict):
        metadata["annotations"] = {}
    metadata["annotations"][keys.PADDING_ANNOTATION] = json.dumps(record, separators=(",", ":"))
    return record
