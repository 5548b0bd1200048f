"""Typed, precomputed views of Nodes and Pods: what the extender's decisions need, parsed once.

A Node or Pod is turned into a `NodeInfo` / `PodInfo` when the cache (or a request carrying full
objects) first sees it, so that answering a filter for 5,000 nodes touches only a few attributes
per node instead of walking labels, annotations and quantities again.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Mapping

from sandgate.core import keys
from sandgate.core.jsonshape import ShapeError, object_at
from sandgate.core.podrequests import pod_requests
from sandgate.core.policy import Policy
from sandgate.core.quantity import QuantityError, parse_field
from sandgate.core.sandboxing import SandboxFacts, SandboxingError, profile_for, sandbox_facts

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
# A capacity annotation is a plain non-negative decimal integer in ASCII: str.isdigit() would also
# accept "²" or "٣", which int() then refuses or reads as another number. Bounded so that a hostile
# annotation cannot make the extender build a million-digit integer.
_CAPACITY = re.compile(r"[0-9]{1,9}")


# A Node or Pod field that cannot be understood; the message names the field.
ObjectError = ShapeError


# The scheduler keeps quantities in int64; a tenant may write cpu: "1e999990", which the API server
# accepts. Clamping keeps such a pod "uses everything" without building a million-digit integer.
INT64_MAX = 2**63 - 1
_INT64_MAX = Decimal(INT64_MAX)


def cpu_millis(value: Any, path: str) -> int:
    """A cpu quantity in millicores, rounded up (as the scheduler does), at most INT64_MAX."""
    return _millis(_quantity(value, path), path)


def _millis(amount: Decimal, path: str) -> int:
    if amount.is_finite() and amount >= _INT64_MAX:
        return INT64_MAX
    return _clamped(amount * 1000, path)


def memory_bytes(value: Any, path: str) -> int:
    """A memory quantity in bytes, rounded up, at most INT64_MAX."""
    return _clamped(_quantity(value, path), path)


def _clamped(value: Decimal, path: str) -> int:
    if not value.is_finite():
        raise ObjectError(f'{path}: invalid quantity "{value}"')
    return INT64_MAX if value >= _INT64_MAX else int(math.ceil(value))


def _quantity(value: Any, path: str) -> Decimal:
    try:
        return parse_field(value, path)
    except QuantityError as exc:
        raise ObjectError(str(exc)) from None




@dataclass(frozen=True)
class NodeInfo:
    """A Node reduced to the facts the extender decides on."""

    name: str
    handlers: frozenset[str]  # runtime handlers the agent advertises as working ("true" label)
    capacity: Mapping[str, int]  # handler -> sandbox capacity from the agent's annotation
    bad_capacity: Mapping[str, str]  # handler -> raw annotation value that is not a non-negative integer
    cpu_millis: int  # allocatable
    memory_bytes: int  # allocatable


def node_info(node: Any, path: str = "node") -> NodeInfo:
    """Build a NodeInfo from a Node object (dict in Kubernetes JSON form); ObjectError names a bad field."""
    node = object_at(node, path)
    meta = object_at(node.get("metadata"), f"{path}.metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ObjectError(f"{path}.metadata.name: required")
    labels = object_at(meta.get("labels"), f"{path}.metadata.labels")
    annotations = object_at(meta.get("annotations"), f"{path}.metadata.annotations")
    prefix = keys.RUNTIME_LABEL_PREFIX
    handlers = frozenset(k[len(prefix):] for k, v in labels.items()
                         if k.startswith(prefix) and v == keys.RUNTIME_LABEL_VALUE)
    capacity: dict[str, int] = {}
    bad: dict[str, str] = {}
    cap_prefix = keys.CAPACITY_ANNOTATION_PREFIX
    for key, value in annotations.items():
        if not key.startswith(cap_prefix):
            continue
        handler = key[len(cap_prefix):]
        text = value.strip() if isinstance(value, str) else ""
        if _CAPACITY.fullmatch(text):
            capacity[handler] = int(text)
        else:
            bad[handler] = str(value)[:64]
    allocatable = object_at(object_at(node.get("status"), f"{path}.status").get("allocatable"),
                           f"{path}.status.allocatable")
    cpu = cpu_millis(allocatable["cpu"], f"{path}.status.allocatable.cpu") if "cpu" in allocatable else 0
    mem = memory_bytes(allocatable["memory"], f"{path}.status.allocatable.memory") if "memory" in allocatable else 0
    return NodeInfo(name, handlers, capacity, bad, cpu, mem)


@dataclass
class PodInfo:
    """A Pod reduced to identity, placement and resource demand.

    `cpu_millis`/`memory_bytes` are the effective requests (max of the container sum and of each
    init container), without overhead; `handler`, `profile` and the overhead are filled in by
    `classify`, because they depend on the policy and on the cluster mode.
    """

    uid: str
    namespace: str
    name: str
    node_name: str
    terminal: bool
    sandbox: SandboxFacts  # runtimeClassName and slot requests: what decides whether it is sandboxed
    annotations: Mapping[str, str]
    cpu_millis: int
    memory_bytes: int
    spec_overhead: tuple[int, int] | None  # (cpu m, memory bytes) from spec.overhead
    profile: str | None = None
    handler: str | None = None
    overhead_cpu: int = 0
    overhead_memory: int = 0

    @property
    def padded(self) -> bool:
        """The webhook already folded the sandbox overhead into the container requests."""
        return keys.PADDING_ANNOTATION in self.annotations

    @property
    def total_cpu(self) -> int:
        """Requests plus the overhead the extender accounts for this pod."""
        return self.cpu_millis + self.overhead_cpu

    @property
    def total_memory(self) -> int:
        """Requests plus the overhead the extender accounts for this pod."""
        return self.memory_bytes + self.overhead_memory

    @property
    def ref(self) -> str:
        """namespace/name for messages."""
        return f"{self.namespace}/{self.name}"

    def classify(self, policy: Policy, overhead_in_scheduler: bool) -> None:
        """Find the pod's profile (`sandgate.core.sandboxing`, the webhook's rule) and the overhead to account."""
        profile = profile_for(self.sandbox, policy)
        self.profile = profile.name if profile else None
        self.handler = profile.handler if profile else None
        if self.spec_overhead is not None:
            self.overhead_cpu, self.overhead_memory = self.spec_overhead
        elif (not overhead_in_scheduler and profile is not None and profile.overhead is not None
              and not self.padded):
            # No PodOverhead in this cluster: the scheduler never sees the sandbox's own cost.
            fixed = profile.overhead.pod_fixed
            self.overhead_cpu = cpu_millis(fixed["cpu"], "overhead.podFixed.cpu") if "cpu" in fixed else 0
            self.overhead_memory = int(profile.overhead.memory_total(Decimal(self.memory_bytes)))
        else:
            self.overhead_cpu = self.overhead_memory = 0




def effective_requests(spec: Mapping[str, Any], path: str = "spec") -> tuple[int, int]:
    """The pod's effective cpu/memory requests (millicores, bytes, rounded up), without overhead.

    The scheduler's rule lives in sandgate.core.podrequests (sidecars, init steps, pod-level resources).
    """
    try:
        requests = pod_requests(spec, path, include_overhead=False)
    except (QuantityError, ShapeError) as exc:
        raise ObjectError(str(exc)) from None
    except ArithmeticError:  # NaN compared while summing: the quantity parser let a non-number through
        raise ObjectError(f"{path}: a container request is not a finite quantity") from None
    return (_millis(requests.get("cpu", Decimal(0)), f"{path}.containers[*].resources.requests.cpu"),
            _clamped(requests.get("memory", Decimal(0)), f"{path}.containers[*].resources.requests.memory"))


def pod_info(pod: Any, path: str = "Pod") -> PodInfo:
    """Build an (unclassified) PodInfo from a Pod object; ObjectError names a bad field."""
    pod = object_at(pod, path)
    meta = object_at(pod.get("metadata"), f"{path}.metadata")
    spec = object_at(pod.get("spec"), f"{path}.spec")
    status = object_at(pod.get("status"), f"{path}.status")
    name = meta.get("name") or ""
    namespace = meta.get("namespace") or ""
    if not isinstance(name, str) or not isinstance(namespace, str):
        raise ObjectError(f"{path}.metadata: name and namespace must be strings")
    annotations = object_at(meta.get("annotations"), f"{path}.metadata.annotations")
    try:
        sandbox = sandbox_facts(pod)
    except SandboxingError as exc:
        raise ObjectError(f"{path}.{exc}") from None
    cpu, mem = effective_requests(spec, f"{path}.spec")
    overhead = spec.get("overhead")
    spec_overhead = None
    if overhead:
        overhead = object_at(overhead, f"{path}.spec.overhead")
        spec_overhead = (
            cpu_millis(overhead["cpu"], f"{path}.spec.overhead.cpu") if "cpu" in overhead else 0,
            memory_bytes(overhead["memory"], f"{path}.spec.overhead.memory") if "memory" in overhead else 0,
        )
    return PodInfo(
        uid=str(meta.get("uid") or ""),
        namespace=namespace,
        name=name,
        node_name=str(spec.get("nodeName") or ""),
        terminal=isinstance(status.get("phase"), str) and status["phase"] in TERMINAL_PHASES,
        sandbox=sandbox,
        annotations=annotations,
        cpu_millis=cpu,
        memory_bytes=mem,
        spec_overhead=spec_overhead,
    )


@dataclass
class NodeUsage:
    """What is bound on a node: sandboxed pods per handler, and (for the overhead fit) their requests."""

    bound: dict[str, int]  # handler -> sandboxed pods bound to the node (non-terminal)
    cpu_millis: int = 0  # requests + accounted overhead of bound pods
    memory_bytes: int = 0

    @classmethod
    def empty(cls) -> "NodeUsage":
        """A node with nothing on it."""
        return cls({})

    def add(self, pod: PodInfo, sign: int = 1) -> None:
        """Count (sign=1) or uncount (sign=-1) a pod bound to the node."""
        if pod.handler is not None:
            self.bound[pod.handler] = self.bound.get(pod.handler, 0) + sign
        self.cpu_millis += sign * pod.total_cpu
        self.memory_bytes += sign * pod.total_memory

    def without(self, pods: list[PodInfo]) -> "NodeUsage":
        """A copy with `pods` (bound on this node) removed, e.g. the victims of a preemption."""
        copy = NodeUsage(dict(self.bound), self.cpu_millis, self.memory_bytes)
        for pod in pods:
            copy.add(pod, -1)
        return copy
