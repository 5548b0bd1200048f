"""The extender's decisions as pure functions: (node, what is on it, pod, heartbeat, time) -> verdict or score.

Nothing here does I/O or holds a lock; the cache feeds precomputed `NodeInfo`/`NodeUsage` in and
the HTTP layer turns the results into the scheduler's wire types.

Node checks for a sandboxed pod, in order (the first failure is the reason reported):
  1. the node advertises the profile's runtime handler (label) -> else UNRESOLVABLE
     (preemption cannot add a runtime to a node);
  2. the node agent's heartbeat Lease is fresh -> else FAIL;
  3. capacity annotation minus sandboxes bound or reserved on the node >= 1 -> else FAIL
     (preemption of a sandboxed pod may free a slot);
  4. legacy clusters only (no PodOverhead in the scheduler): allocatable cpu/memory covers the
     requests + overhead of every pod on the node plus this pod's -> else FAIL.

Scores (0..10, MaxExtenderPriority), for a sandboxed pod:
  free = (free_slots / capacity + free_memory / allocatable_memory) / 2
  spread: round(10 * free)       binpack: round(10 * (1 - free))
and for a pod that is not sandboxed, when `preferNonSandboxNodes` is on: 10 on nodes that serve no
sandbox runtime, 0 on nodes that do (keeping sandbox capacity for sandboxes); otherwise 0 everywhere.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import lru_cache

from sandgate.core import keys
from scheduler_ext.objects import NodeInfo, NodeUsage, PodInfo

MAX_SCORE = 10  # k8s.io/kube-scheduler/extender/v1.MaxExtenderPriority


class Fit(str, enum.Enum):
    """How one node fits one pod (the three outcomes the scheduler distinguishes)."""

    PASS = "pass"
    FAIL = "fail"  # FailedNodes: preemption may help
    UNRESOLVABLE = "unresolvable"  # FailedAndUnresolvableNodes: preemption cannot help


@dataclass(frozen=True)
class NodeVerdict:
    """A verdict with a short machine-readable reason (metrics, logs) and the message for the scheduler."""

    fit: Fit
    reason: str
    message: str = ""


PASSED = NodeVerdict(Fit.PASS, "eligible")
NOT_SANDBOXED = NodeVerdict(Fit.PASS, "not_sandboxed")
ALREADY_BOUND = NodeVerdict(Fit.PASS, "already_bound")  # bind retried after the pod was bound there


@lru_cache(maxsize=256)
def runtime_missing(handler: str) -> NodeVerdict:
    """The (shared) verdict for a node without the handler's label; interned, it is the common case."""
    return NodeVerdict(Fit.UNRESOLVABLE, "runtime_not_advertised",
                       f'node does not advertise runtime handler {handler} '
                       f'(label {keys.runtime_label(handler)}="{keys.RUNTIME_LABEL_VALUE}")')


def unknown_node(name: str) -> NodeVerdict:
    """A node name the extender has not seen yet (its cache lags the scheduler's)."""
    return NodeVerdict(Fit.FAIL, "unknown_node",
                       f"node {name} is not in the sandgate extender's cache yet")


def evaluate(node: NodeInfo, usage: NodeUsage, pod: PodInfo, lease_expires: float | None, now: float,
             legacy: bool, lease_namespace: str) -> NodeVerdict:
    """Run the node checks for `pod` on `node`.

    `lease_expires` is the heartbeat Lease's renewTime + leaseDurationSeconds (epoch seconds), or None
    when the node has no Lease in `lease_namespace`.
    """
    handler = pod.handler
    if handler is None:
        return NOT_SANDBOXED
    if handler not in node.handlers:
        return runtime_missing(handler)
    if lease_expires is None or lease_expires < now:
        lease_ref = f"{lease_namespace}/{keys.agent_lease_name(node.name)}"
    if lease_expires is None:
        return NodeVerdict(Fit.FAIL, "heartbeat_missing",
                           f"no sandgate agent heartbeat on node: Lease {lease_ref} not found")
    if lease_expires < now:
        return NodeVerdict(Fit.FAIL, "heartbeat_stale",
                           f"sandgate agent heartbeat stale: Lease {lease_ref} expired {int(now - lease_expires)}s ago")
    capacity = node.capacity.get(handler)
    if capacity is None:
        key = keys.capacity_annotation(handler)
        if handler in node.bad_capacity:
            detail = f'{key}="{node.bad_capacity[handler]}" is not a non-negative integer'
        else:
            detail = f"annotation {key} missing"
        return NodeVerdict(Fit.FAIL, "capacity_unknown", f"sandbox capacity for {handler} unknown: {detail}")
    bound = usage.bound.get(handler, 0)
    reserved = usage.reserved.get(handler, 0)
    if capacity - bound - reserved < 1:
        return NodeVerdict(Fit.FAIL, "no_free_slot",
                           f"no free {handler} sandbox slot on node "
                           f"(capacity {capacity}, bound {bound}, reserved {reserved})")
    if legacy:
        need_cpu = usage.cpu_millis + pod.total_cpu
        if need_cpu > node.cpu_millis:
            return NodeVerdict(Fit.FAIL, "insufficient_cpu",
                               f"insufficient cpu on a cluster without PodOverhead: pods on node "
                               f"{usage.cpu_millis}m + this pod {pod.total_cpu}m (overhead {pod.overhead_cpu}m) "
                               f"> allocatable {node.cpu_millis}m")
        need_mem = usage.memory_bytes + pod.total_memory
        if need_mem > node.memory_bytes:
            return NodeVerdict(Fit.FAIL, "insufficient_memory",
                               f"insufficient memory on a cluster without PodOverhead: pods on node "
                               f"{usage.memory_bytes} + this pod {pod.total_memory} bytes "
                               f"(overhead {pod.overhead_memory}) > allocatable {node.memory_bytes}")
    return PASSED


def score(node: NodeInfo | None, usage: NodeUsage, handler: str | None, strategy: str,
          prefer_non_sandbox_nodes: bool) -> int:
    """The node's priority 0..10 for a pod of `handler` (None: not sandboxed); formula in the module docstring."""
    if node is None:
        return 0
    if handler is None:
        if prefer_non_sandbox_nodes and not node.handlers:
            return MAX_SCORE
        return 0
    capacity = node.capacity.get(handler, 0)
    slot_free = max(0, capacity - usage.in_use(handler)) / capacity if capacity > 0 else 0.0
    memory = node.memory_bytes
    memory_free = max(0, memory - usage.memory_bytes) / memory if memory > 0 else 0.0
    free = (slot_free + memory_free) / 2
    if strategy == "binpack":
        free = 1.0 - free
    return min(MAX_SCORE, max(0, int(free * MAX_SCORE + 0.5)))
