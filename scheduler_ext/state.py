"""The extender's in-memory view of the cluster: nodes, pods, agent heartbeats and slot reservations.

Everything is kept precomputed and updated incrementally (one event changes one node's counters), so
a filter over N nodes is N dict look-ups plus the pure checks of `scheduler_ext.decisions`. One
re-entrant lock guards all of it: a reservation is checked and taken under the same lock as the
counters it changes, which is what makes parallel binds unable to overcommit a node.

Reservation lifecycle (keyed by pod UID, never by name, so a deleted and re-created pod of the same
name can never inherit or leak a slot):
  reserve (bind) -> pod seen with spec.nodeName (converted: counted as bound, reservation dropped)
                 -> binding failed / pod deleted (released)
                 -> not confirmed within reservationTimeoutSeconds (expired)
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping

from sandgate import keys
from sandgate.clusterversion import ClusterVersion, Mode
from sandgate.policy import Policy
from scheduler_ext import decisions
from scheduler_ext.decisions import NodeVerdict, Verdict
from scheduler_ext.model import NodeInfo, NodeUsage, ObjectError, PodInfo, node_info, pod_info

log = logging.getLogger(__name__)

RECENT_PODS = 10_000  # pods remembered from filter/prioritize calls, for /bind (which carries only the UID)


@dataclass
class Reservation:
    """A sandbox slot (and, on legacy clusters, cpu/memory) held for a pod between bind and watch."""

    pod: PodInfo
    node: str
    expires: float


@dataclass
class SyncStatus:
    """Freshness of one watched resource (Nodes, Pods, Leases)."""

    synced: bool = False  # a full list has been loaded at least once
    connected: bool = False  # a watch is open: the cache is current
    last_ok: float | None = None  # epoch seconds when the cache was last known current
    error: str | None = None  # the last connection error while the API is unreachable

    def staleness(self, now: float) -> float | None:
        """Seconds the cache may be behind: 0 while watching; None when not applicable (snapshot, never synced)."""
        if self.connected:
            return 0.0
        return None if self.last_ok is None else max(0.0, now - self.last_ok)


@dataclass
class FilterOutcome:
    """The per-node results of one filter call."""

    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unresolvable: dict[str, str] = field(default_factory=dict)
    reasons: dict[tuple[str, str], int] = field(default_factory=dict)  # (verdict, reason) -> nodes


def lease_expiry(lease: Mapping[str, Any]) -> float | None:
    """renewTime (or acquireTime) + leaseDurationSeconds of a coordination.k8s.io/v1 Lease, epoch seconds."""
    spec = lease.get("spec") or {}
    stamp = spec.get("renewTime") or spec.get("acquireTime")
    duration = spec.get("leaseDurationSeconds")
    if not stamp or not isinstance(duration, int):
        return None
    if isinstance(stamp, datetime):
        moment = stamp
    else:
        moment = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)  # MicroTime is always UTC
    return moment.timestamp() + duration


class ClusterCache:
    """Nodes, pods, heartbeats and reservations, with per-node counters kept up to date."""

    def __init__(self, policy: Policy, version: ClusterVersion, clock: Callable[[], float] = time.time):
        self.lock = threading.RLock()
        self.clock = clock
        self.version = version
        self.policy = policy
        self.legacy = version.mode(policy.pod_overhead) is Mode.LEGACY
        self.nodes: dict[str, NodeInfo] = {}
        self.usage: dict[str, NodeUsage] = {}
        self.pods: dict[str, PodInfo] = {}
        self.leases: dict[str, float] = {}
        self.reservations: dict[str, Reservation] = {}
        self.recent: OrderedDict[str, PodInfo] = OrderedDict()
        self.sync = {"nodes": SyncStatus(), "pods": SyncStatus(), "leases": SyncStatus()}
        self._next_expiry = float("inf")

    # -- policy ---------------------------------------------------------------------------------

    def set_policy(self, policy: Policy) -> None:
        """Adopt a reloaded policy: profiles may have changed, so every pod is re-classified."""
        with self.lock:
            self.policy = policy
            self.legacy = self.version.mode(policy.pod_overhead) is Mode.LEGACY
            for pod in list(self.pods.values()) + [r.pod for r in self.reservations.values()]:
                pod.classify(policy, self.legacy)
            self._rebuild_usage()

    def classify(self, pod: PodInfo) -> PodInfo:
        """Fill in the profile and accounted overhead of `pod` under the current policy."""
        pod.classify(self.policy, self.legacy)
        return pod

    # -- nodes ----------------------------------------------------------------------------------

    def upsert_node(self, obj: Mapping[str, Any]) -> None:
        """Add or update a Node."""
        try:
            info = node_info(obj)
        except ObjectError as exc:
            log.warning("ignoring a node the extender cannot read", extra={"error": str(exc)})
            return
        with self.lock:
            self.nodes[info.name] = info

    def delete_node(self, name: str) -> None:
        """Forget a Node (its pods are deleted by their own events)."""
        with self.lock:
            self.nodes.pop(name, None)

    def replace_nodes(self, objs: Iterable[Mapping[str, Any]]) -> None:
        """Replace every Node after a (re)list."""
        infos = {}
        for obj in objs:
            try:
                info = node_info(obj)
            except ObjectError as exc:
                log.warning("ignoring a node the extender cannot read", extra={"error": str(exc)})
                continue
            infos[info.name] = info
        with self.lock:
            self.nodes = infos

    # -- leases ---------------------------------------------------------------------------------

    def _lease_node(self, obj: Mapping[str, Any]) -> str | None:
        meta = obj.get("metadata") or {}
        name = meta.get("name") or ""
        if meta.get("namespace") != self.policy.agent.namespace or not name.startswith(keys.AGENT_LEASE_PREFIX):
            return None
        return name[len(keys.AGENT_LEASE_PREFIX):]

    def upsert_lease(self, obj: Mapping[str, Any]) -> None:
        """Record an agent heartbeat Lease (other Leases are ignored)."""
        node = self._lease_node(obj)
        if node is None:
            return
        try:
            expiry = lease_expiry(obj)
        except ValueError as exc:
            log.warning("ignoring a heartbeat Lease with a bad renewTime", extra={"node": node, "error": str(exc)})
            return
        with self.lock:
            if expiry is None:
                self.leases.pop(node, None)
            else:
                self.leases[node] = expiry

    def delete_lease(self, obj: Mapping[str, Any]) -> None:
        """Forget a heartbeat Lease."""
        node = self._lease_node(obj)
        if node is not None:
            with self.lock:
                self.leases.pop(node, None)

    def replace_leases(self, objs: Iterable[Mapping[str, Any]]) -> None:
        """Replace every heartbeat after a (re)list."""
        with self.lock:
            self.leases = {}
            for obj in objs:
                self.upsert_lease(obj)

    # -- pods -----------------------------------------------------------------------------------

    def _counts(self, pod: PodInfo) -> bool:
        return bool(pod.node_name) and not pod.terminal

    def _usage(self, node: str) -> NodeUsage:
        usage = self.usage.get(node)
        if usage is None:
            usage = self.usage[node] = NodeUsage.empty()
        return usage

    def _read_pod(self, obj: Mapping[str, Any]) -> PodInfo | None:
        try:
            return self.classify(pod_info(obj))
        except ObjectError as exc:
            meta = obj.get("metadata") or {}
            log.warning("ignoring a pod the extender cannot read",
                        extra={"namespace": meta.get("namespace"), "pod": meta.get("name"),
                               "uid": meta.get("uid"), "error": str(exc)})
            return None

    def upsert_pod(self, obj: Mapping[str, Any]) -> None:
        """Add or update a Pod; a pod seen bound turns its reservation into a bound pod."""
        pod = self._read_pod(obj)
        if pod is not None:
            self.put_pod(pod)

    def put_pod(self, pod: PodInfo) -> None:
        """Store an already parsed and classified pod (watch event, or a snapshot-mode binding)."""
        with self.lock:
            old = self.pods.get(pod.uid)
            if old is not None and self._counts(old):
                self._usage(old.node_name).add(old, -1)
            self.pods[pod.uid] = pod
            if self._counts(pod):
                self._usage(pod.node_name).add(pod)
            if pod.node_name or pod.terminal:
                self._drop_reservation(pod.uid, "converted" if pod.node_name else "pod finished")

    def delete_pod(self, obj: Mapping[str, Any]) -> None:
        """Forget a deleted Pod and release anything held for it."""
        uid = str((obj.get("metadata") or {}).get("uid") or "")
        with self.lock:
            old = self.pods.pop(uid, None)
            if old is not None and self._counts(old):
                self._usage(old.node_name).add(old, -1)
            self._drop_reservation(uid, "pod deleted")
            self.recent.pop(uid, None)

    def replace_pods(self, objs: Iterable[Mapping[str, Any]]) -> None:
        """Replace every Pod after a (re)list; reservations of pods that are gone are released."""
        pods = {}
        for obj in objs:
            pod = self._read_pod(obj)
            if pod is not None:
                pods[pod.uid] = pod
        with self.lock:
            self.pods = pods
            for uid in list(self.reservations):
                pod = pods.get(uid)
                if pod is None or pod.node_name or pod.terminal:
                    del self.reservations[uid]
            self._rebuild_usage()

    def _rebuild_usage(self) -> None:
        self.usage = {}
        for pod in self.pods.values():
            if self._counts(pod):
                self._usage(pod.node_name).add(pod)
        for res in self.reservations.values():
            self._usage(res.node).add(res.pod, reservation=True)

    def remember(self, pod: PodInfo) -> None:
        """Keep a pod seen in a filter/prioritize call, so /bind can find its profile by UID."""
        if not pod.uid:
            return
        with self.lock:
            self.recent[pod.uid] = pod
            self.recent.move_to_end(pod.uid)
            while len(self.recent) > RECENT_PODS:
                self.recent.popitem(last=False)

    def find_pod(self, uid: str) -> PodInfo | None:
        """The pod with this UID, from the watch cache or from recent scheduler calls."""
        with self.lock:
            return self.pods.get(uid) or self.recent.get(uid)

    # -- reservations ---------------------------------------------------------------------------

    def _drop_reservation(self, uid: str, why: str) -> Reservation | None:
        res = self.reservations.pop(uid, None)
        if res is not None:
            self._usage(res.node).add(res.pod, -1, reservation=True)
            log.info("reservation ended", extra={"namespace": res.pod.namespace, "pod": res.pod.name,
                                                 "uid": uid, "node": res.node, "why": why})
        return res

    def _expire(self, now: float) -> None:
        if now < self._next_expiry:
            return
        nxt = float("inf")
        for uid, res in list(self.reservations.items()):
            if res.expires <= now:
                self._drop_reservation(uid, "expired")
            else:
                nxt = min(nxt, res.expires)
        self._next_expiry = nxt

    def reserve(self, pod: PodInfo, node: str) -> NodeVerdict:
        """Atomically re-check `node` for `pod` and hold a slot; the verdict says why when it cannot."""
        now = self.clock()
        with self.lock:
            self._expire(now)
            current = self.pods.get(pod.uid)
            if current is not None and current.node_name:
                if current.node_name == node:
                    return decisions.ALREADY_BOUND
                return NodeVerdict(Verdict.FAIL, "bound_elsewhere",
                                   f"pod {pod.ref} is already bound to node {current.node_name}")
            held = self.reservations.get(pod.uid)
            if held is not None:
                if held.node == node:
                    held.expires = now + self.policy.scheduling.reservation_timeout_seconds
                    return decisions.PASSED
                self._drop_reservation(pod.uid, "re-bound to another node")
            usage = self._usage(node)
            info = self.nodes.get(node)
            if pod.handler is not None:
                if info is None:
                    return decisions.unknown_node(node)
                verdict = decisions.evaluate(info, usage, pod, self.leases.get(node), now, self.legacy,
                                             self.policy.agent.namespace)
                if verdict.verdict is not Verdict.PASS:
                    return verdict
            expires = now + self.policy.scheduling.reservation_timeout_seconds
            self.reservations[pod.uid] = Reservation(pod, node, expires)
            usage.add(pod, reservation=True)
            self._next_expiry = min(self._next_expiry, expires)
            return decisions.PASSED

    def release(self, uid: str, why: str) -> None:
        """Give back the slot held for `uid` (binding failed)."""
        with self.lock:
            self._drop_reservation(uid, why)

    def record_binding(self, pod: PodInfo, node: str) -> None:
        """Snapshot mode: the binding is the event; the pod now counts as bound on `node`."""
        self.put_pod(replace(pod, node_name=node))

    # -- decisions over many nodes --------------------------------------------------------------

    def filter(self, pod: PodInfo, names: list[str], given: Mapping[str, NodeInfo] | None = None) -> FilterOutcome:
        """Evaluate `pod` on each named node; `given` overrides the cached NodeInfo (nodeCacheCapable=false)."""
        out = FilterOutcome()
        if pod.handler is None:
            out.passed = list(names)
            out.reasons[(Verdict.PASS.value, decisions.NOT_SANDBOXED.reason)] = len(names)
            return out
        now = self.clock()
        evaluate, empty = decisions.evaluate, NodeUsage.empty()
        passed, failed, unresolvable, reasons = out.passed, out.failed, out.unresolvable, out.reasons
        with self.lock:
            self._expire(now)
            nodes = given if given is not None else self.nodes
            legacy, leases, usage_of = self.legacy, self.leases, self.usage
            lease_ns = self.policy.agent.namespace
            for name in names:
                info = nodes.get(name)
                if info is None:
                    verdict = decisions.unknown_node(name)
                else:
                    verdict = evaluate(info, usage_of.get(name, empty), pod, leases.get(name), now, legacy, lease_ns)
                key = (verdict.verdict.value, verdict.reason)
                reasons[key] = reasons.get(key, 0) + 1
                if verdict.verdict is Verdict.PASS:
                    passed.append(name)
                elif verdict.verdict is Verdict.UNRESOLVABLE:
                    unresolvable[name] = verdict.message
                else:
                    failed[name] = verdict.message
        return out

    def scores(self, pod: PodInfo, names: list[str], given: Mapping[str, NodeInfo] | None = None) -> list[int]:
        """Score each named node for `pod`, in input order."""
        score, empty = decisions.score, NodeUsage.empty()
        with self.lock:
            self._expire(self.clock())
            nodes = given if given is not None else self.nodes
            strategy = self.policy.scheduling.strategy
            prefer = self.policy.scheduling.prefer_non_sandbox_nodes
            usage_of = self.usage
            return [score(nodes.get(n), usage_of.get(n, empty), pod, strategy, prefer) for n in names]

    def verdict_after_eviction(self, pod: PodInfo, node: str, victims: list[PodInfo],
                               given: NodeInfo | None = None) -> NodeVerdict:
        """Would `pod` pass on `node` once `victims` are gone? (preemption)"""
        now = self.clock()
        with self.lock:
            info = given or self.nodes.get(node)
            if info is None:
                return decisions.unknown_node(node)
            usage = self.usage.get(node, NodeUsage.empty()).without([v for v in victims if self._counts(v)])
            return decisions.evaluate(info, usage, pod, self.leases.get(node), now, self.legacy, self.policy.agent.namespace)

    # -- status ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Counts and per-resource freshness, for /readyz and metrics."""
        now = self.clock()
        with self.lock:
            return {
                "nodes": len(self.nodes),
                "pods": len(self.pods),
                "heartbeats": len(self.leases),
                "reservations": len(self.reservations),
                "mode": "legacy" if self.legacy else "runtimeclass",
                "sync": {kind: {"synced": s.synced, "staleSeconds": s.staleness(now), "error": s.error}
                         for kind, s in self.sync.items()},
            }
