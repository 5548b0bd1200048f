"""The `sandgate.io/overhead-padding` record (keys.PADDING_ANNOTATION): its format, written and read.

The webhook writes it (webhooks/padding.py): what it added to the pod's requests for the sandbox
overhead, per resource, where, and the effective pod request it computed that from (`basis`,
before padding), as compact JSON such as
`{"memory":"64Mi","basis":{"memory":"512Mi"},"containers":["app"],"initContainers":[]}`. The webhook
reads it back to take its padding out on reinvocation; the kubelet passes pod annotations into the
CRI sandbox config, so the node agent reads it over CRI (the overhead ratio) without reading Pods
from the API server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sandgate.core.podrequests import resource_list

# The record's own keys; every other key is a padded resource and its amount.
_BASIS, _CONTAINERS, _INIT_CONTAINERS, _POD_LEVEL = "basis", "containers", "initContainers", "podLevel"
POD = "pod"  # the place name of spec.resources


def format_quantity(resource: str, value: Decimal) -> str:
    """`value` exactly, in Kubernetes form: cpu in millicores, the rest in Mi when exact, else in units.

    Exact (never rounded) so that taking a recorded amount back out restores the pod's own value.
    A value beyond what Kubernetes counts (only ever shown in a message) keeps its exponent form:
    turning "1e999990" into digits would take the worker for seconds.
    """
    if value.is_finite() and value.adjusted() > 18:
        return str(value)
    if resource == "cpu" and (value * 1000) == (value * 1000).to_integral_value():
        return f"{int(value * 1000)}m"
    if value == value.to_integral_value():
        whole = int(value)
        return f"{whole // (1024 * 1024)}Mi" if whole and whole % (1024 * 1024) == 0 else str(whole)
    return format(value.normalize(), "f")


@dataclass(frozen=True)
class PaddingRecord:
    """What the annotation says: `amounts` added at each place, the `basis` they were computed from."""

    amounts: dict[str, Decimal]
    basis: dict[str, Decimal] = field(default_factory=dict)
    containers: tuple[str, ...] = ()
    init_containers: tuple[str, ...] = ()
    pod_level: tuple[str, ...] = ()  # resources padded in spec.resources instead of the containers

    def amount_at(self, kind: str, name: Any, resource: str) -> Decimal:
        """What this record says was added to `resource` of the container `name` in `kind` (or POD)."""
        amount = self.amounts.get(resource, Decimal(0))
        if kind == POD:
            return amount if resource in self.pod_level else Decimal(0)
        names = self.containers if kind == "containers" else self.init_containers
        return amount if resource not in self.pod_level and name in names else Decimal(0)

    def to_annotation(self) -> str:
        """Compact JSON: {"cpu": "100m", "memory": "64Mi", "basis": {...}, "containers": [...], ...}."""
        doc: dict[str, Any] = {r: format_quantity(r, a) for r, a in sorted(self.amounts.items())}
        doc[_BASIS] = {r: format_quantity(r, a) for r, a in sorted(self.basis.items())}
        doc[_CONTAINERS] = list(self.containers)
        doc[_INIT_CONTAINERS] = list(self.init_containers)
        if self.pod_level:
            doc[_POD_LEVEL] = list(self.pod_level)
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_annotation(cls, value: Any) -> "PaddingRecord | None":
        """The record in an annotation value, or None when it is not one (it is then simply replaced)."""
        try:
            doc = json.loads(value) if isinstance(value, str) else None
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        try:
            amounts = {str(r): Decimal(resource_list({r: q}, "record")[r]) for r, q in doc.items()
                       if r not in (_BASIS, _CONTAINERS, _INIT_CONTAINERS, _POD_LEVEL)}
            basis = resource_list(doc.get(_BASIS), "record.basis")
        except (ValueError, ArithmeticError):
            return None
        names = [doc.get(k, []) for k in (_CONTAINERS, _INIT_CONTAINERS, _POD_LEVEL)]
        if any(not isinstance(n, list) or not all(isinstance(x, str) for x in n) for n in names) \
                or any(a < 0 for a in amounts.values()):
            return None
        return cls(amounts, basis, tuple(names[0]), tuple(names[1]), tuple(names[2]))


def padded_resource(value: Any, resource: str) -> tuple[Decimal, Decimal] | None:
    """(amount padded, basis) of `resource` in a record; None when the record does not pad it or is not one."""
    record = PaddingRecord.from_annotation(value)
    if record is None or resource not in record.amounts or resource not in record.basis:
        return None
    amount, basis = record.amounts[resource], record.basis[resource]
    return (amount, basis) if basis >= 0 else None
