"""kube-scheduler's scheduling cycle for one pod, emulated around the real extender.

In-tree filters run first (in kube-scheduler's plugin order: NodeUnschedulable, TaintToleration,
NodeAffinity/nodeSelector, NodeResourcesFit, which counts the sandbox slots: the extended resources
`sandgate.io/sandbox-<handler>` the agents' device plugins advertise). As with the shipped
`managedResources`, only a pod that requests a sandbox slot goes to the extender, and only with
the nodes that passed: /filter (nodeCacheCapable: true, so as `NodeNames`), then /prioritize,
skipped when one node is left, as the scheduler does. A node's score is the extender's (0..10,
times weight 2, times MaxNodeScore / MaxExtenderPriority = 10) plus the in-tree NodeResourcesFit
LeastAllocated score (0..100), the part of kube-scheduler's default scoring that matters on this
cluster; where kube-scheduler picks at random among equal scores, the demo takes the first node by
name so that runs are reproducible. The scheduler binds itself (the extender has no bind verb) and
counts the pod's slot on the node.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Mapping

from sandgate.core import keys
from sandgate.core.podrequests import pod_requests
from sandgate.core.quantity import millis, units
from sandgate.demo.httpclient import JsonClient, RequestFailed

# As the shipped scheduler configurations (manifests/scheduler/) set the extender up.
EXTENDER_WEIGHT = 2
EXTENDER_HTTP_TIMEOUT_SECONDS = 5
# kube-scheduler scales extender scores (0..MaxExtenderPriority=10) to its own 0..100 range.
EXTENDER_SCORE_SCALE = 10
_FILTER_EFFECTS = ("NoSchedule", "NoExecute")


@dataclass
class NodeState:
    """What the scheduler's cache knows about a node: labels, taints, allocatable and what is placed."""

    name: str
    labels: Mapping[str, str]
    taints: list[Mapping[str, Any]]
    unschedulable: bool
    cpu_millis: int
    memory_bytes: int
    max_pods: int
    slots: Mapping[str, int] = field(default_factory=dict)  # allocatable sandbox slots, by extended resource
    used_cpu: int = 0
    used_memory: int = 0
    pod_count: int = 0
    used_slots: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_node(cls, node: Mapping[str, Any]) -> "NodeState":
        """Build from a Node object."""
        allocatable = node["status"]["allocatable"]
        spec = node.get("spec") or {}
        return cls(node["metadata"]["name"], dict(node["metadata"].get("labels") or {}),
                   list(spec.get("taints") or []), bool(spec.get("unschedulable")),
                   millis(allocatable.get("cpu", 0), "status.allocatable.cpu"),
                   units(allocatable.get("memory", 0), "status.allocatable.memory"),
                   int(allocatable.get("pods", 110)),
                   {name: int(value) for name, value in allocatable.items()
                    if name.startswith(keys.SANDBOX_RESOURCE_PREFIX)})

    def place(self, request: tuple[int, int], slots: Mapping[str, int]) -> None:
        """Account a pod bound to this node, sandbox slots included."""
        self.used_cpu += request[0]
        self.used_memory += request[1]
        self.pod_count += 1
        for name, count in slots.items():
            self.used_slots[name] = self.used_slots.get(name, 0) + count


def pod_request(pod: Mapping[str, Any], count_overhead: bool) -> tuple[int, int]:
    """(cpu millicores, memory bytes) the scheduler reserves (sandgate.core.podrequests), rounded up."""
    requests = pod_requests(pod.get("spec") or {}, include_overhead=count_overhead)
    return (int(math.ceil(requests.get("cpu", Decimal(0)) * 1000)),
            int(math.ceil(requests.get("memory", Decimal(0)))))


def slot_request(pod: Mapping[str, Any]) -> dict[str, int]:
    """The sandbox slots (extended resources sandgate.io/sandbox-<handler>) the pod requests."""
    requests = pod_requests(pod.get("spec") or {}, include_overhead=False)
    return {name: int(math.ceil(value)) for name, value in requests.items()
            if name.startswith(keys.SANDBOX_RESOURCE_PREFIX) and value > 0}


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """v1.Toleration.ToleratesTaint: empty effect and empty key match any; Exists ignores the value."""
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("key") and toleration["key"] != taint.get("key"):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Equal":
        return (toleration.get("value") or "") == (taint.get("value") or "")
    return operator == "Exists"


def least_allocated(pod: Mapping[str, Any], node: NodeState, count_overhead: bool) -> int:
    """NodeResourcesFit's LeastAllocated score (0..100): the mean free share of cpu and memory after placing."""
    cpu, mem = pod_request(pod, count_overhead)
    shares = []
    for used, allocatable in ((node.used_cpu + cpu, node.cpu_millis), (node.used_memory + mem, node.memory_bytes)):
        shares.append(0 if not allocatable or used > allocatable else (allocatable - used) * 100 // allocatable)
    return sum(shares) // len(shares)


def in_tree_filter(pod: Mapping[str, Any], node: NodeState, count_overhead: bool) -> str | None:
    """The first in-tree filter `node` fails for `pod`, in kube-scheduler's wording, or None."""
    spec = pod.get("spec") or {}
    tolerations = spec.get("tolerations") or []
    if node.unschedulable and not any(
            tolerates(t, {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}) for t in tolerations):
        return "node(s) were unschedulable"
    for taint in node.taints:
        if taint.get("effect") in _FILTER_EFFECTS and not any(tolerates(t, taint) for t in tolerations):
            return f"node(s) had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"
    for key, value in (spec.get("nodeSelector") or {}).items():
        if node.labels.get(key) != value:
            return "node(s) didn't match Pod's node affinity/selector"
    cpu, mem = pod_request(pod, count_overhead)
    if node.pod_count + 1 > node.max_pods:
        return "Too many pods"
    if cpu and node.used_cpu + cpu > node.cpu_millis:
        return "Insufficient cpu"
    if mem and node.used_memory + mem > node.memory_bytes:
        return "Insufficient memory"
    for name, count in sorted(slot_request(pod).items()):
        if node.used_slots.get(name, 0) + count > node.slots.get(name, 0):
            return f"Insufficient {name}"
    return None


class AnswerError(ValueError):
    """An extender answer that would not decode into the scheduler's Go type."""


def _get(answer: Mapping[str, Any], name: str) -> Any:
    """A field of an extender answer, matched case-insensitively as Go's JSON decoder does."""
    if name in answer:
        return answer[name]
    for key, value in answer.items():
        if key.lower() == name.lower():
            return value
    return None


def _object(answer: Any, kind: str) -> Mapping[str, Any]:
    if not isinstance(answer, dict):
        raise AnswerError(f"{kind} must be a JSON object, got {type(answer).__name__}")
    return answer


def _reasons(answer: Mapping[str, Any], name: str) -> dict[str, str]:
    value = _get(answer, name)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise AnswerError(f"{name} must map node names to strings, got {value!r:.120}")
    return dict(value)


def _error(answer: Mapping[str, Any]) -> str:
    value = _get(answer, "Error")
    if value is not None and not isinstance(value, str):
        raise AnswerError(f"Error must be a string, got {value!r:.120}")
    return value or ""


def decode_filter(answer: Any) -> tuple[list[str], dict[str, str], dict[str, str], str]:
    """ExtenderFilterResult -> (NodeNames, FailedNodes, FailedAndUnresolvableNodes, Error)."""
    answer = _object(answer, "ExtenderFilterResult")
    names = _get(answer, "NodeNames")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise AnswerError(f"NodeNames must be a list of node names, got {names!r:.120}")
    return list(names or []), _reasons(answer, "FailedNodes"), _reasons(answer, "FailedAndUnresolvableNodes"), \
        _error(answer)


def decode_priorities(answer: Any) -> dict[str, int]:
    """HostPriorityList -> {Host: Score}."""
    if not isinstance(answer, list):
        raise AnswerError(f"HostPriorityList must be a JSON list, got {type(answer).__name__}")
    scores = {}
    for entry in answer:
        entry = _object(entry, "HostPriority")
        host, score = _get(entry, "Host"), _get(entry, "Score")
        if not isinstance(host, str) or isinstance(score, bool) or not isinstance(score, int):
            raise AnswerError(f"HostPriority must have a string Host and an integer Score, got {entry!r:.120}")
        scores[host] = score
    return scores


@dataclass
class ScheduleResult:
    """The outcome of one scheduling cycle."""

    node: str | None = None
    in_tree_failed: dict[str, str] = field(default_factory=dict)
    extender_input: list[str] = field(default_factory=list)
    extender_failed: dict[str, str] = field(default_factory=dict)
    extender_unresolvable: dict[str, str] = field(default_factory=dict)
    scores: dict[str, int] = field(default_factory=dict)  # extender score 0..10 per node
    in_tree_scores: dict[str, int] = field(default_factory=dict)  # LeastAllocated 0..100 per node
    prioritize_skipped: bool = False
    error: str = ""  # extender error

    @property
    def extender_called(self) -> bool:
        """The pod requested a sandbox slot (managedResources) and some node passed the in-tree filters."""
        return bool(self.extender_input)

    def total(self, node: str) -> int:
        """The node's final score: extender score x weight x 10 + the in-tree score."""
        return (self.scores.get(node, 0) * EXTENDER_WEIGHT * EXTENDER_SCORE_SCALE
                + self.in_tree_scores.get(node, 0))

    def diagnosis(self, total_nodes: int) -> str:
        """kube-scheduler's FailedScheduling message: "0/N nodes are available: ..."."""
        reasons = Counter(self.in_tree_failed.values())
        reasons.update(self.extender_failed.values())
        reasons.update(self.extender_unresolvable.values())
        parts = sorted(f"{count} {reason}" for reason, count in reasons.items())
        return f"0/{total_nodes} nodes are available: {', '.join(parts)}."


class Scheduler:
    """One scheduler instance with its node cache and the extender it calls."""

    def __init__(self, nodes: list[NodeState], extender: JsonClient, count_overhead: bool):
        self.nodes = {n.name: n for n in nodes}
        self.extender = extender
        self.count_overhead = count_overhead

    def place_existing(self, pod: Mapping[str, Any]) -> None:
        """Account a pod that is already bound (from the snapshot)."""
        node = self.nodes.get((pod.get("spec") or {}).get("nodeName", ""))
        if node is not None:
            node.place(pod_request(pod, self.count_overhead), slot_request(pod))

    def _wire_pod(self, pod: Mapping[str, Any]) -> dict[str, Any]:
        # The scheduler sends the Pod without kind/apiVersion (see the captured fixtures).
        return {k: v for k, v in pod.items() if k not in ("kind", "apiVersion")}

    def _extender_cycle(self, pod: Mapping[str, Any], feasible: list[str], result: ScheduleResult) -> str | None:
        """Filter and prioritize through the extender; the node chosen, or None (reasons in `result`)."""
        wire_pod = self._wire_pod(pod)
        result.extender_input = feasible
        passed, result.extender_failed, result.extender_unresolvable, error = decode_filter(
            self.extender.post("/filter", {"Pod": wire_pod, "Nodes": None, "NodeNames": feasible}))
        if error:
            result.error = f"extender filter error: {error}"
            return None
        unknown = [n for n in passed if n not in feasible]
        if unknown:
            result.error = f'extender claims a filtered node "{unknown[0]}" which is not found in the input node list'
            return None
        if not passed:
            return None
        if len(passed) == 1:
            result.prioritize_skipped = True
            chosen = passed[0]
        else:
            result.scores = decode_priorities(
                self.extender.post("/prioritize", {"Pod": wire_pod, "Nodes": None, "NodeNames": passed}))
            result.in_tree_scores = {n: least_allocated(pod, self.nodes[n], self.count_overhead) for n in passed}
            chosen = max(sorted(passed), key=result.total)
        return chosen

    def schedule(self, pod: Mapping[str, Any]) -> ScheduleResult:
        """Filter, prioritize and bind `pod`; the result says where it went or why nowhere."""
        slots = slot_request(pod)
        result = ScheduleResult()
        feasible = []
        for name in sorted(self.nodes):
            reason = in_tree_filter(pod, self.nodes[name], self.count_overhead)
            if reason:
                result.in_tree_failed[name] = reason
            else:
                feasible.append(name)
        if not feasible:
            return result
        if not slots:  # no managed resource requested: kube-scheduler does not call the extender
            result.in_tree_scores = {n: least_allocated(pod, self.nodes[n], self.count_overhead) for n in feasible}
            chosen = max(feasible, key=result.total)
            self.nodes[chosen].place(pod_request(pod, self.count_overhead), slots)
            result.node = chosen
            return result
        try:
            chosen = self._extender_cycle(pod, feasible, result)
        except RequestFailed as exc:
            result.error = f"extender call failed: {exc}"
            return result
        except AnswerError as exc:
            result.error = f"extender answer cannot be decoded: {exc}"
            return result
        if chosen is None:
            return result
        self.nodes[chosen].place(pod_request(pod, self.count_overhead), slots)
        result.node = chosen
        return result
