"""The extender's in-memory view of the cluster (nodes, pods, agent heartbeats) and its pre-filter index.

Stateless as far as scheduling goes: kube-scheduler counts the sandbox slots (an extended resource),
so nothing here is reserved or bound, and every replica answers every verb from its own cache.

The index is a pure pre-filter: per runtime handler, the nodes that advertise it, have a readable
capacity and a fresh heartbeat. A node the index passes is still confirmed by
`scheduler_ext.decisions.evaluate`; the confirmations are memoised until the next change of the
cache (a verdict of checks 1-3 does not depend on the pod), and on clusters without PodOverhead
every candidate is evaluated for the pod. tests/scheduler_ext/test_index_property.py shows that
"passes the index" implies "passes evaluate". Nodes the index rejects are evaluated for their reason.

Every Node, Pod and Lease goes through its parser one at a time (`sandgate.core.informer`): one that
cannot be read is skipped, logged once, counted and listed in /readyz, and never stops the others.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

import orjson

from sandgate.core import keys
from sandgate.core.clusterversion import ClusterVersion, Mode
from sandgate.core.informer import SkippedObjects, SyncStatus
from sandgate.core.policy import Policy
from scheduler_ext import decisions
from scheduler_ext.decisions import Fit, NodeVerdict
from scheduler_ext.objects import NodeInfo, NodeUsage, ObjectError, PodInfo, node_info, pod_info

log = logging.getLogger(__name__)

KINDS = ("nodes", "pods", "leases")


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
    if not isinstance(spec, dict):
        raise ObjectError("spec: must be an object")
    stamp = spec.get("renewTime") or spec.get("acquireTime")
    duration = spec.get("leaseDurationSeconds")
    if not stamp or isinstance(duration, bool) or not isinstance(duration, int):
        return None
    if not isinstance(stamp, str):
        raise ObjectError("spec.renewTime: must be a timestamp string")
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        raise ObjectError(f'spec.renewTime: "{stamp[:64]}" is not an RFC 3339 time') from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)  # MicroTime is always UTC
    return moment.timestamp() + max(0, min(duration, 10**9))


class ClusterCache:
    """Nodes, pods and heartbeats, with per-node usage and the pre-filter index kept up to date."""

    def __init__(self, policy: Policy, version: ClusterVersion, clock: Callable[[], float] = time.time):
        self.lock = threading.RLock()
        self.clock = clock
        self.version = version
        self.policy = policy
        self.mode = version.mode(policy.pod_overhead)
        self.nodes: dict[str, NodeInfo] = {}
        self.usage: dict[str, NodeUsage] = {}
        self.pods: dict[str, PodInfo] = {}  # by namespace/name
        self.pod_keys: dict[str, str] = {}  # uid -> namespace/name
        self.leases: dict[str, float] = {}  # node name -> heartbeat expiry (epoch seconds)
        self.sync = {kind: SyncStatus() for kind in KINDS}
        self.skipped = {kind: SkippedObjects(kind) for kind in KINDS}
        # handler -> nodes advertising it / of those, with a readable capacity
        self.advertising: dict[str, set[str]] = {}
        self.known_capacity: dict[str, set[str]] = {}
        # handler -> node -> its HostPriority entry as JSON, encoded once per change: a 5,000-node
        # prioritize answer is then one bytes.join
        self.scored: dict[str, dict[str, bytes]] = {}
        # nodes whose heartbeat is fresh; recomputed when the earliest recorded expiry passes
        self.fresh: set[str] = set()
        self._fresh_until = float("inf")
        self._changes = 0  # bumped by every index change; keys the memo of confirmed nodes
        self._confirmed: dict[str, tuple[int, set[str]]] = {}
        self._reindex()

    @property
    def overhead_in_scheduler(self) -> bool:
        """The scheduler counts PodOverhead itself (follows `mode`, which a policy reload may change)."""
        return self.mode is not Mode.WEBHOOK_MERGES

    @property
    def legacy(self) -> bool:
        """The scheduler does not count PodOverhead: the extender checks the overhead fit (check 4)."""
        return not self.overhead_in_scheduler

    # -- index -------------------------------------------------------------------------------------

    def _reindex(self) -> None:
        handlers = self.policy.handlers
        self.advertising = {h: set() for h in handlers}
        self.known_capacity = {h: set() for h in handlers}
        self.scored = {h: {} for h in handlers}
        for name in set(self.nodes) | set(self.usage):
            self._refresh(name)
        self._changes += 1

    def _refresh(self, name: str) -> None:
        """Recompute `name`'s index entries after its Node or what is bound on it changed."""
        self._changes += 1
        info = self.nodes.get(name)
        usage = self.usage.get(name) or NodeUsage.empty()
        strategy = self.policy.scheduling.strategy
        for handler, scored in self.scored.items():
            if info is None:
                scored.pop(name, None)
            else:
                scored[name] = orjson.dumps({"Host": name, "Score": decisions.score(info, usage, handler, strategy)})
        for handler, advertising in self.advertising.items():
            if info is not None and handler in info.handlers:
                advertising.add(name)
            else:
                advertising.discard(name)
            if info is not None and handler in info.capacity:
                self.known_capacity[handler].add(name)
            else:
                self.known_capacity[handler].discard(name)

    def _refresh_freshness(self, now: float) -> None:
        if now > self._fresh_until:
            self.fresh = {node for node, expiry in self.leases.items() if expiry >= now}
            self._fresh_until = min((self.leases[node] for node in self.fresh), default=float("inf"))
            self._changes += 1

    def index(self, handler: str, now: float) -> set[str]:
        """The pre-filter: nodes that advertise `handler`, know its capacity and have a fresh heartbeat."""
        with self.lock:
            self._refresh_freshness(now)
            return self.advertising.get(handler, set()) & self.known_capacity.get(handler, set()) & self.fresh

    def _confirmed_nodes(self, pod: PodInfo, now: float) -> set[str]:
        """Index candidates confirmed by `decisions.evaluate`, memoised until the cache changes.

        Only where the scheduler counts overhead: checks 1-3 then depend on the pod's handler alone.
        """
        handler = pod.handler
        assert handler is not None
        memo = self._confirmed.get(handler)
        if memo is None or memo[0] != self._changes:
            candidates = self.index(handler, now)
            ok = self._evaluate_all(pod, candidates, now)
            memo = self._confirmed[handler] = (self._changes, ok)
        return memo[1]

    def _evaluate_all(self, pod: PodInfo, names: set[str], now: float) -> set[str]:
        evaluate, empty, pass_ = decisions.evaluate, NodeUsage.empty(), Fit.PASS
        nodes, usage, leases = self.nodes, self.usage, self.leases
        ois, ns = self.overhead_in_scheduler, self.policy.agent.namespace
        return {n for n in names
                if evaluate(nodes[n], usage.get(n, empty), pod, leases.get(n), now, ois, ns).fit is pass_}

    # -- policy ------------------------------------------------------------------------------------

    def set_policy(self, policy: Policy) -> None:
        """Adopt a reloaded policy: profiles may have changed, so every pod is re-classified."""
        with self.lock:
            self.policy = policy
            self.mode = self.version.mode(policy.pod_overhead)
            for pod in self.pods.values():
                pod.classify(policy, self.overhead_in_scheduler)
            self._rebuild_usage()
            self._reindex()

    def classify(self, pod: PodInfo) -> PodInfo:
        """Fill in the profile and accounted overhead of `pod` under the current policy."""
        pod.classify(self.policy, self.overhead_in_scheduler)
        return pod

    # -- stores (sandgate.core.informer.Store) -------------------------------------------------------

    def node_store(self) -> "_NodeStore":
        """Where the Node informer (or the snapshot) puts parsed Nodes."""
        return _NodeStore(self)

    def pod_store(self) -> "_PodStore":
        """Where the Pod informer (or the snapshot) puts parsed Pods."""
        return _PodStore(self)

    def lease_store(self) -> "_LeaseStore":
        """Where the Lease informer (or the snapshot) puts heartbeat expiries."""
        return _LeaseStore(self)

    def parse_node(self, obj: Mapping[str, Any]) -> NodeInfo:
        """A Node as the index needs it; ObjectError names a bad field."""
        return node_info(obj)

    def parse_pod(self, obj: Mapping[str, Any]) -> PodInfo:
        """A Pod, classified under the current policy; ObjectError names a bad field."""
        return self.classify(pod_info(obj))

    def parse_lease(self, obj: Mapping[str, Any]) -> tuple[str, float | None] | None:
        """(node, heartbeat expiry) of an agent Lease in the agent namespace; None for any other Lease."""
        meta = obj.get("metadata") or {}
        name = meta.get("name") if isinstance(meta, dict) else None
        if (not isinstance(name, str) or meta.get("namespace") != self.policy.agent.namespace
                or not name.startswith(keys.AGENT_LEASE_PREFIX)):
            return None
        return name[len(keys.AGENT_LEASE_PREFIX):], lease_expiry(obj)

    def _usage(self, node: str) -> NodeUsage:
        usage = self.usage.get(node)
        if usage is None:
            usage = self.usage[node] = NodeUsage.empty()
        return usage

    @staticmethod
    def _counts(pod: PodInfo) -> bool:
        return bool(pod.node_name) and not pod.terminal

    def _rebuild_usage(self) -> None:
        self.usage = {}
        for pod in self.pods.values():
            if self._counts(pod):
                self._usage(pod.node_name).add(pod)

    def _put_pod(self, key: str, pod: PodInfo | None) -> None:
        old = self.pods.pop(key, None)
        if old is not None:
            self.pod_keys.pop(old.uid, None)
            if self._counts(old):
                self._usage(old.node_name).add(old, -1)
                self._refresh(old.node_name)
        if pod is not None:
            self.pods[key] = pod
            self.pod_keys[pod.uid] = key
            if self._counts(pod):
                self._usage(pod.node_name).add(pod)
                self._refresh(pod.node_name)

    def _put_lease(self, node: str, expiry: float | None) -> None:
        was_fresh = node in self.fresh
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
        if was_fresh != (node in self.fresh):
            self._changes += 1  # a renewal that keeps the node fresh leaves the memo valid

    # -- decisions over many nodes -----------------------------------------------------------------

    def filter(self, pod: PodInfo, names: list[str], given: Mapping[str, NodeInfo] | None = None) -> FilterOutcome:
        """Evaluate `pod` on each named node; `given` overrides the cached NodeInfo (nodeCacheCapable=false)."""
        out = FilterOutcome()
        handler = pod.handler
        if handler is None:
            out.passed = list(names)
            out.reasons[(Fit.PASS.value, decisions.NOT_SANDBOXED.reason)] = len(names)
            return out
        now = self.clock()
        with self.lock:
            if given is None:
                if self.legacy:  # the overhead fit depends on the pod: evaluate every candidate for it
                    ok = self._evaluate_all(pod, self.index(handler, now).intersection(names), now)
                else:
                    self._refresh_freshness(now)
                    ok = self._confirmed_nodes(pod, now)
                passed = [n for n in names if n in ok]
                rest = [n for n in names if n not in ok] if len(passed) != len(names) else []
                nodes = self.nodes
            else:
                passed, rest, nodes = [], names, given
            missing: list[str] = []
            empty = NodeUsage.empty()
            for name in rest:
                info = nodes.get(name)
                if info is None:
                    verdict = decisions.unknown_node(name)
                elif handler not in info.handlers:
                    missing.append(name)  # the common failure: one shared message, no per-node work
                    continue
                else:
                    verdict = decisions.evaluate(info, self.usage.get(name, empty), pod,
                                                 self.leases.get(name), now, self.overhead_in_scheduler,
                                                 self.policy.agent.namespace)
                if verdict.fit is Fit.PASS:
                    passed.append(name)
                    continue
                key = (verdict.fit.value, verdict.reason)
                out.reasons[key] = out.reasons.get(key, 0) + 1
                target = out.unresolvable if verdict.fit is Fit.UNRESOLVABLE else out.failed
                target[name] = verdict.message
        if given is not None:
            order = {n: i for i, n in enumerate(names)}
            passed.sort(key=order.__getitem__)
        out.passed = passed
        if passed:
            out.reasons[(Fit.PASS.value, decisions.PASSED.reason)] = len(passed)
        if missing:
            verdict = decisions.runtime_missing(handler)
            out.unresolvable.update(dict.fromkeys(missing, verdict.message))
            out.reasons[(verdict.fit.value, verdict.reason)] = len(missing)
        return out

    def priorities(self, pod: PodInfo, names: list[str], given: Mapping[str, NodeInfo] | None = None) -> bytes:
        """The HostPriorityList for `pod` on the named nodes, in input order, as JSON."""
        handler = pod.handler
        if handler is None:
            return orjson.dumps([{"Host": n, "Score": 0} for n in names])
        with self.lock:
            scored = self.scored.get(handler) if given is None else None
            if scored is not None:
                return b"[" + b",".join([scored.get(n) or orjson.dumps({"Host": n, "Score": 0}) for n in names]) + b"]"
            nodes = given if given is not None else self.nodes
            strategy, empty = self.policy.scheduling.strategy, NodeUsage.empty()
            return orjson.dumps([{"Host": n, "Score": decisions.score(nodes.get(n), self.usage.get(n, empty),
                                                                      handler, strategy)} for n in names])

    def verdict_after_eviction(self, pod: PodInfo, node: str, victims: list[PodInfo],
                               given: NodeInfo | None = None) -> NodeVerdict:
        """Would `pod` pass on `node` once `victims` are gone? `given`: the Node the scheduler sent."""
        now = self.clock()
        with self.lock:
            info = given or self.nodes.get(node)
            if info is None:
                return decisions.unknown_node(node)
            usage = self.usage.get(node, NodeUsage.empty()).without(
                [v for v in victims if self._counts(v) and v.node_name == node])
            return decisions.evaluate(info, usage, pod, self.leases.get(node), now, self.overhead_in_scheduler,
                                      self.policy.agent.namespace)

    def find_pod(self, uid: str) -> PodInfo | None:
        """The cached pod with this UID (preemption victims sent as UIDs only)."""
        with self.lock:
            key = self.pod_keys.get(uid)
            return self.pods.get(key) if key is not None else None

    # -- status ------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Counts, per-resource freshness and skipped objects, for /readyz and metrics."""
        now = self.clock()
        with self.lock:
            return {
                "nodes": len(self.nodes),
                "pods": len(self.pods),
                "heartbeats": len(self.leases),
                "mode": self.mode.value,
                "sync": {kind: {"synced": s.synced, "staleSeconds": s.staleness(now), "error": s.error}
                         for kind, s in self.sync.items()},
                "skipped": {kind: s.status() for kind, s in self.skipped.items()},
            }


def _freeze() -> None:
    """Move what a (re)list loaded out of the cyclic collector's reach.

    A 5,000-node cluster is ~10^6 long-lived objects; left to the collector, its full collections
    showed up as multi-millisecond p99 spikes of filter latency (bench/extender.py).
    """
    gc.collect()
    gc.freeze()


class _NodeStore:
    def __init__(self, cache: ClusterCache):
        self.cache = cache

    def replace(self, items: dict[str, NodeInfo]) -> None:
        with self.cache.lock:
            self.cache.nodes = dict(items)
            self.cache._reindex()
        _freeze()

    def upsert(self, key: str, item: NodeInfo) -> None:
        with self.cache.lock:
            self.cache.nodes[key] = item
            self.cache._refresh(key)

    def delete(self, key: str) -> None:
        with self.cache.lock:
            self.cache.nodes.pop(key, None)
            self.cache._refresh(key)


class _PodStore:
    def __init__(self, cache: ClusterCache):
        self.cache = cache

    def replace(self, items: dict[str, PodInfo]) -> None:
        with self.cache.lock:
            self.cache.pods = dict(items)
            self.cache.pod_keys = {pod.uid: key for key, pod in items.items()}
            self.cache._rebuild_usage()
            self.cache._reindex()
        _freeze()

    def upsert(self, key: str, item: PodInfo) -> None:
        with self.cache.lock:
            self.cache._put_pod(key, item)

    def delete(self, key: str) -> None:
        with self.cache.lock:
            self.cache._put_pod(key, None)


class _LeaseStore:
    def __init__(self, cache: ClusterCache):
        self.cache = cache

    def replace(self, items: dict[str, tuple[str, float | None]]) -> None:
        with self.cache.lock:
            cache = self.cache
            cache.leases, cache.fresh, cache._fresh_until = {}, set(), float("inf")
            cache._changes += 1
            for node, expiry in items.values():
                cache._put_lease(node, expiry)

    def upsert(self, key: str, item: tuple[str, float | None]) -> None:
        with self.cache.lock:
            self.cache._put_lease(*item)

    def delete(self, key: str) -> None:
        namespace, _, node = key.rpartition("/")
        if namespace == self.cache.policy.agent.namespace and node.startswith(keys.AGENT_LEASE_PREFIX):
            with self.cache.lock:
                self.cache._put_lease(node[len(keys.AGENT_LEASE_PREFIX):], None)
