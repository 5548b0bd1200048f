"""The extender's in-memory view of the cluster: nodes, pods, agent heartbeats and slot reservations.

Everything is kept precomputed and updated incrementally (one event refreshes one node's entries):
per runtime handler, the free slots of every node that advertises it and every node's score. A
filter over N nodes is then a few dict look-ups per node, and only nodes that fail go through the
full checks of `scheduler_ext.decisions` (for their reason); prioritize is one look-up per node.
One re-entrant lock guards all of it: a reservation is checked and taken under the same lock as the
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

import orjson

from sandgate.core import keys
from sandgate.core.clusterversion import ClusterVersion, Mode
from sandgate.core.policy import Policy
from scheduler_ext import decisions
from scheduler_ext.decisions import NodeVerdict, Fit
from scheduler_ext.objects import NodeInfo, NodeUsage, ObjectError, PodInfo, node_info, pod_info

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
        self.legacy = version.mode(policy.pod_overhead) is Mode.WEBHOOK_MERGES
        self.nodes: dict[str, NodeInfo] = {}
        self.usage: dict[str, NodeUsage] = {}
        self.pods: dict[str, PodInfo] = {}
        self.leases: dict[str, float] = {}
        self.reservations: dict[str, Reservation] = {}
        self.recent: OrderedDict[str, PodInfo] = OrderedDict()
        self.sync = {"nodes": SyncStatus(), "pods": SyncStatus(), "leases": SyncStatus()}
        self._next_expiry = float("inf")
        # handler -> nodes with at least one free slot / nodes advertising the handler
        self.open: dict[str, set[str]] = {}
        self.advertising: dict[str, set[str]] = {}
        # handler (None: unsandboxed pods) -> node -> its HostPriority entry as JSON, encoded once per
        # change: a 5,000-node prioritize answer is then one bytes.join
        self.scored: dict[str | None, dict[str, bytes]] = {}
        # nodes whose heartbeat is fresh; recomputed when the earliest recorded expiry passes
        self.fresh: set[str] = set()
        self._fresh_until = float("inf")
        self._changes = 0  # bumped by every index change; keys the memo of eligible nodes
        self._eligible_memo: dict[str, tuple[int, set[str]]] = {}
        self._reindex()

    # -- precomputed per-node entries -------------------------------------------------------------

    def _reindex(self) -> None:
        handlers = self.policy.handlers
        self.open = {h: set() for h in handlers}
        self.advertising = {h: set() for h in handlers}
        self.scored = {h: {} for h in (*handlers, None)}
        for name in set(self.nodes) | set(self.usage):
            self._refresh(name)
        self._changes += 1

    def _eligible(self, handler: str, now: float) -> set[str]:
        """Nodes that pass checks 1-3 for `handler` at `now`: a free slot and a fresh heartbeat."""
        if now > self._fresh_until:
            self.fresh = {node for node, expiry in self.leases.items() if expiry >= now}
            self._fresh_until = min((self.leases[node] for node in self.fresh), default=float("inf"))
            self._changes += 1
        memo = self._eligible_memo.get(handler)
        if memo is None or memo[0] != self._changes:
            memo = self._eligible_memo[handler] = (self._changes, self.open.get(handler, set()) & self.fresh)
        return memo[1]

    def _refresh(self, name: str) -> None:
        """Recompute `name`'s index entries after its Node or what is placed on it changed."""
        self._changes += 1
        info = self.nodes.get(name)
        usage = self.usage.get(name) or NodeUsage.empty()
        scheduling = self.policy.scheduling
        for handler, scored in self.scored.items():
            if info is None:
                scored.pop(name, None)
            else:
                scored[name] = orjson.dumps({"Host": name, "Score": decisions.score(
                    info, usage, handler, scheduling.strategy, scheduling.prefer_non_sandbox_nodes)})
        for handler, advertising in self.advertising.items():
            slots = 0
            if info is not None and handler in info.handlers:
                advertising.add(name)
                slots = info.capacity.get(handler, 0) - usage.in_use(handler)
            else:
                advertising.discard(name)
            if slots >= 1:
                self.open[handler].add(name)
            else:
                self.open[handler].discard(name)

    def _count(self, node: str, pod: PodInfo, sign: int = 1, reservation: bool = False) -> None:
        self._usage(node).add(pod, sign, reservation)
        self._refresh(node)

    # -- policy ---------------------------------------------------------------------------------

    def set_policy(self, policy: Policy) -> None:
        """Adopt a reloaded policy: profiles may have changed, so every pod is re-classified."""
        with self.lock:
            self.policy = policy
            self.legacy = self.version.mode(policy.pod_overhead) is Mode.WEBHOOK_MERGES
            for pod in list(self.pods.values()) + [r.pod for r in self.reservations.values()]:
                pod.classify(policy, self.legacy)
            self._rebuild_usage()
            self._reindex()

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
            self._refresh(info.name)

    def delete_node(self, name: str) -> None:
        """Forget a Node (its pods are deleted by their own events)."""
        with self.lock:
            self.nodes.pop(name, None)
            self._refresh(name)

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
            self._reindex()

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
            self._changes += 1
            if expiry is None:
                self.leases.pop(node, None)
                self.fresh.discard(node)
            else:
                self.leases[node] = expiry
                if expiry >= self.clock():
                    self.fresh.add(node)
                    self._fresh_until = min(self._fresh_until, expiry)
                else:
                    self.fresh.discard(node)

    def delete_lease(self, obj: Mapping[str, Any]) -> None:
        """Forget a heartbeat Lease."""
        node = self._lease_node(obj)
        if node is not None:
            with self.lock:
                self._changes += 1
                self.leases.pop(node, None)
                self.fresh.discard(node)

    def replace_leases(self, objs: Iterable[Mapping[str, Any]]) -> None:
        """Replace every heartbeat after a (re)list."""
        with self.lock:
            self.leases, self.fresh, self._fresh_until = {}, set(), float("inf")
            self._changes += 1
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
                self._count(old.node_name, old, -1)
            self.pods[pod.uid] = pod
            if self._counts(pod):
                self._count(pod.node_name, pod)
            if pod.node_name or pod.terminal:
                self._drop_reservation(pod.uid, "converted" if pod.node_name else "pod finished")

    def delete_pod(self, obj: Mapping[str, Any]) -> None:
        """Forget a deleted Pod and release anything held for it."""
        uid = str((obj.get("metadata") or {}).get("uid") or "")
        with self.lock:
            old = self.pods.pop(uid, None)
            if old is not None and self._counts(old):
                self._count(old.node_name, old, -1)
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
            self._reindex()

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
            self._count(res.node, res.pod, -1, reservation=True)
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
                return NodeVerdict(Fit.FAIL, "bound_elsewhere",
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
                if verdict.fit is not Fit.PASS:
                    return verdict
            expires = now + self.policy.scheduling.reservation_timeout_seconds
            self.reservations[pod.uid] = Reservation(pod, node, expires)
            self._count(node, pod, reservation=True)
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
        handler = pod.handler
        if handler is None:
            out.passed = list(names)
            out.reasons[(Fit.PASS.value, decisions.NOT_SANDBOXED.reason)] = len(names)
            return out
        now = self.clock()
        evaluate, empty = decisions.evaluate, NodeUsage.empty()
        passed, failed, unresolvable, reasons = out.passed, out.failed, out.unresolvable, out.reasons
        missing: list[str] = []
        with self.lock:
            self._expire(now)
            legacy, leases, usage_of = self.legacy, self.leases, self.usage
            lease_ns = self.policy.agent.namespace
            nodes = given if given is not None else self.nodes
            if given is None:
                # Set arithmetic on the precomputed indexes (C speed); only the few nodes that fail for
                # another reason than a missing runtime get a per-node look.
                ok = self._eligible(handler, now)
                if legacy:
                    fits = []
                    need_cpu, need_mem = pod.total_cpu, pod.total_memory
                    for name in names:
                        if name in ok:
                            info, usage = nodes[name], usage_of.get(name, empty)
                            if (usage.cpu_millis + need_cpu <= info.cpu_millis
                                    and usage.memory_bytes + need_mem <= info.memory_bytes):
                                fits.append(name)
                    ok = set(fits)
                passed += [n for n in names if n in ok]
                rest_set = set(names)
                rest_set -= ok
                missing_set = rest_set - self.advertising.get(handler, set())
                missing_set -= missing_set.difference(nodes)  # unknown nodes get their own reason below
                missing = list(missing_set)
                rest = list(rest_set - missing_set)
            else:
                rest = names
            for name in rest:
                info = nodes.get(name)
                if info is None:
                    verdict = decisions.unknown_node(name)
                elif handler not in info.handlers:
                    missing.append(name)  # the common failure: one shared message, no per-node work
                    continue
                else:
                    verdict = evaluate(info, usage_of.get(name, empty), pod, leases.get(name), now, legacy, lease_ns)
                if verdict.fit is Fit.PASS:
                    passed.append(name)
                    continue
                key = (verdict.fit.value, verdict.reason)
                reasons[key] = reasons.get(key, 0) + 1
                if verdict.fit is Fit.UNRESOLVABLE:
                    unresolvable[name] = verdict.message
                else:
                    failed[name] = verdict.message
        if passed:
            key = (Fit.PASS.value, decisions.PASSED.reason)
            reasons[key] = reasons.get(key, 0) + len(passed)
        if missing:
            verdict = decisions.runtime_missing(handler)
            if unresolvable:
                unresolvable.update(dict.fromkeys(missing, verdict.message))
            else:
                out.unresolvable = dict.fromkeys(missing, verdict.message)
            reasons[(verdict.fit.value, verdict.reason)] = len(missing)
        return out

    def priorities(self, pod: PodInfo, names: list[str], given: Mapping[str, NodeInfo] | None = None) -> bytes:
        """The HostPriorityList for `pod` on the named nodes, in input order, as JSON."""
        with self.lock:
            self._expire(self.clock())
            scored = self.scored.get(pod.handler) if given is None else None
            if scored is not None:
                return b"[" + b",".join([scored.get(n) or orjson.dumps({"Host": n, "Score": 0}) for n in names]) + b"]"
            nodes = given if given is not None else self.nodes
            strategy = self.policy.scheduling.strategy
            prefer = self.policy.scheduling.prefer_non_sandbox_nodes
            empty = NodeUsage.empty()
            return orjson.dumps([{"Host": n, "Score": decisions.score(nodes.get(n), self.usage.get(n, empty),
                                                                      pod.handler, strategy, prefer)}
                                 for n in names])

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
