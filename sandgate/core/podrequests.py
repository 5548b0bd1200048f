"""What the scheduler sums for a pod: the one rule, used by the webhook, the extender and the demo.

Follows `PodRequests` in k8s.io/component-helpers/resource (what kube-scheduler's NodeResourcesFit
and the kubelet's admission use):

* app containers run together, and so do restartable init containers ("sidecars", 1.28+), which
  keep running beside them: sum(containers) + sum(sidecars);
* each regular init container runs alone beside the sidecars started before it;
* the pod needs the max of the two, per resource;
* pod-level requests (`spec.resources.requests`, PodLevelResources: alpha 1.32, beta 1.34) replace
  that aggregate for the resources pod-level resources support (cpu, memory, hugepages-*);
* `spec.overhead` (set by the RuntimeClass admission plugin, 1.18+) is added on top.

Quantities are exact Decimals in base units (cores, bytes); callers round (the scheduler rounds
the total, never each container). Fields that are not the shape a Pod has raise `jsonshape.ShapeError`,
quantities that do not parse raise `QuantityError`, each naming the field.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Iterable, Mapping

from sandgate.core.jsonshape import list_at, object_at
from sandgate.core.quantity import parse_field

_POD_LEVEL_RESOURCES = ("cpu", "memory")
_HUGEPAGES_PREFIX = "hugepages-"


def is_sidecar(container: Mapping[str, Any]) -> bool:
    """A restartable init container (restartPolicy Always): it keeps running beside the app containers."""
    return isinstance(container, dict) and container.get("restartPolicy") == "Always"


def is_pod_level_resource(resource: str) -> bool:
    """Whether pod-level resources (spec.resources) can set `resource` (IsSupportedPodLevelResource)."""
    return resource in _POD_LEVEL_RESOURCES or resource.startswith(_HUGEPAGES_PREFIX)


def resource_list(value: Any, path: str) -> dict[str, Decimal]:
    """A ResourceList (requests, limits, overhead) parsed to Decimals in base units."""
    return {str(name): parse_field(quantity, f"{path}.{name}") for name, quantity in object_at(value, path).items()}


def container_requests(container: Any, path: str) -> dict[str, Decimal]:
    """The requests of one container (`path` is e.g. "spec.containers[0]")."""
    resources = object_at(object_at(container, path).get("resources"), f"{path}.resources")
    return resource_list(resources.get("requests"), f"{path}.resources.requests")


def _add(total: dict[str, Decimal], more: Mapping[str, Decimal]) -> None:
    for name, amount in more.items():
        total[name] = total.get(name, Decimal(0)) + amount


def _max(total: dict[str, Decimal], other: Mapping[str, Decimal]) -> None:
    for name, amount in other.items():
        if amount > total.get(name, Decimal(0)):
            total[name] = amount


def combine(containers: Iterable[Mapping[str, Decimal]],
            init_containers: Iterable[tuple[Mapping[str, Decimal], bool]]) -> dict[str, Decimal]:
    """The aggregate of parsed requests: app containers, then (requests, is_sidecar) per init container."""
    result: dict[str, Decimal] = {}
    for requests in containers:
        _add(result, requests)
    sidecars: dict[str, Decimal] = {}
    init_peak: dict[str, Decimal] = {}
    for requests, sidecar in init_containers:
        if sidecar:
            _add(result, requests)
            _add(sidecars, requests)
            step = dict(sidecars)
        else:
            step = dict(requests)
            _add(step, sidecars)
        _max(init_peak, step)
    _max(result, init_peak)
    return result


def aggregate_container_requests(spec: Mapping[str, Any], path: str = "spec") -> dict[str, Decimal]:
    """AggregateContainerRequests: max(app containers + sidecars, each init step), per resource."""
    containers = list_at(spec.get("containers"), f"{path}.containers")
    inits = list_at(spec.get("initContainers"), f"{path}.initContainers")
    return combine((container_requests(c, f"{path}.containers[{i}]") for i, c in enumerate(containers)),
                   ((container_requests(c, f"{path}.initContainers[{i}]"),
                     is_sidecar(object_at(c, f"{path}.initContainers[{i}]"))) for i, c in enumerate(inits)))


def pod_level_requests(spec: Mapping[str, Any], path: str = "spec") -> dict[str, Decimal]:
    """The pod-level requests the scheduler uses instead of the container sums (empty when not set)."""
    resources = object_at(spec.get("resources"), f"{path}.resources")
    requests = resource_list(resources.get("requests"), f"{path}.resources.requests")
    return {name: amount for name, amount in requests.items() if is_pod_level_resource(name)}


def pod_requests(spec: Mapping[str, Any], path: str = "spec", include_overhead: bool = True) -> dict[str, Decimal]:
    """PodRequests: what the scheduler reserves for a pod with `spec`, per resource, in base units."""
    result = aggregate_container_requests(spec, path)
    result.update(pod_level_requests(spec, path))
    if include_overhead:
        _add(result, resource_list(spec.get("overhead"), f"{path}.overhead"))
    return result
