"""The extender's decisions as pure functions: (node, what is on it, pod, heartbeat, time) -> verdict or score.

Nothing here does I/O or holds a lock; the cache feeds precomputed `NodeInfo`/`NodeUsage` in and
the HTTP layer turns the results into the scheduler's wire types.

Only sandboxed pods reach the extender (the shipped scheduler configurations name the slot
resources in `managedResources`), and kube-scheduler itself counts the slots: each pod requests one
`sandgate.io/sandbox-<handler>` and each node's kubelet advertises its slots through the agent's
device plugin. The extender checks what the scheduler cannot know, in order (the first failure is
the reason reported):
  1. the node advertises the profile's runtime handler (label)  -> UNRESOLVABLE
  2. the agent's heartbeat Lease exists and is fresh             -> UNRESOLVABLE
  3. the node's capacity annotation for the handler is readable  -> UNRESOLVABLE
  4. overhead_in_scheduler is off (clusters without PodOverhead): allocatable cpu/memory covers the
     requests + overhead of every pod on the node plus this pod's -> FAIL (preemption may help)
Preemption cannot install a runtime, restart an agent or fix an annotation, hence UNRESOLVABLE; the
HTTP layer reports those nodes in FailedNodes to schedulers older than 1.20, which do not know
FailedAndUnresolvableNodes.

Score (0..MAX_SCORE) of a node for a sandboxed pod, from the free slots the extender counts:
  spread:  round(MAX_SCORE * free / capacity)     binpack: round(MAX_SCORE * (1 - free / capacity))
kube-scheduler multiplies it by the extender's `weight` and by MaxNodeScore / MaxExtenderPriority
(100 / 10) before adding it to its own plugins' scores (docs/extender.md, "Scoring").
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
    UNRESOLVABLE = "unresolvable"  # FailedAndUnresolvableNodes (1.20+): preemption cannot help


@dataclass(frozen=True)
class NodeVerdict:
    """A verdict with a short machine-readable reason (metrics, logs) and the message for the scheduler."""

    fit: Fit
    reason: str
    message: str = ""


PASSED = NodeVerdict(Fit.PASS, "eligible")
NOT_SANDBOXED = NodeVerdict(Fit.PASS, "not_sandboxed")


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
             overhead_in_scheduler: bool, lease_namespace: str) -> NodeVerdict:
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
            return NodeVerdict(Fit.UNRESOLVABLE, "heartbeat_missing",
                               f"no sandgate agent heartbeat on node: Lease {lease_ref} not found")
        return NodeVerdict(Fit.UNRESOLVABLE, "heartbeat_stale",
                           f"sandgate agent heartbeat stale: Lease {lease_ref} expired "
                           f"{int(now - lease_expires)}s ago")
    if handler not in node.capacity:
        key = keys.capacity_annotation(handler)
        if handler in node.bad_capacity:
            detail = f'{key}="{node.bad_capacity[handler]}" is not a non-negative integer'
        else:
            detail = f"annotation {key} missing"
        return NodeVerdict(Fit.UNRESOLVABLE, "capacity_unknown",
                           f"sandbox capacity for {handler} unknown: {detail}")
    if not overhead_in_scheduler:
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


def score(node: NodeInfo | None, usage: NodeUsage, handler: str | None, strategy: str) -> int:
    """The node's priority 0..MAX_SCORE for a pod of `handler`; formula in the module docstring.

    0 for a node the extender does not know, a pod that is not sandboxed, or unknown capacity.
    """
    if node is None or handler is None:
        return 0
    capacity = node.capacity.get(handler, 0)
    if capacity <= 0:
        return 0
    free = max(0, capacity - usage.bound.get(handler, 0)) / capacity
    if strategy == "binpack":
        free = 1.0 - free
    return min(MAX_SCORE, max(0, int(free * MAX_SCORE + 0.5)))
