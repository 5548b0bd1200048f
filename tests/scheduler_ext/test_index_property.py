"""The extender's index is a pure pre-filter: whatever passes it passes `decisions.evaluate` (hypothesis).

The cache is built from generated Nodes, heartbeat Leases and bound Pods, then changed by generated
events (node updates and deletions, lease renewals and expiries, pods bound and deleted, the clock
moving on). After every step: a node in the index for a handler passes `evaluate` for a pod of that
handler, and the filter answer is exactly `evaluate`'s verdict node by node.
"""

from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandgate.core import keys
from sandgate.core.clusterversion import ClusterVersion
from sandgate.core.informer import object_key
from sandgate.core.policy import load_policy
from scheduler_ext import decisions
from scheduler_ext.decisions import Fit
from scheduler_ext.objects import NodeUsage, pod_info
from scheduler_ext.state import ClusterCache
from support import EXAMPLE_POLICY

POLICY = load_policy(EXAMPLE_POLICY)
HANDLERS = sorted(POLICY.handlers)
NODES = [f"n{i}" for i in range(6)]
START = 1_800_000_000.0


class Clock:
    def __init__(self):
        self.now = START

    def __call__(self) -> float:
        return self.now


def node_obj(name: str, handlers: list[str], capacity: dict[str, str], cpu: str, memory: str) -> dict:
    return {"metadata": {"name": name,
                         "labels": {keys.runtime_label(h): "true" for h in handlers},
                         "annotations": {keys.capacity_annotation(h): v for h, v in capacity.items()}},
            "status": {"allocatable": {"cpu": cpu, "memory": memory}}}


def lease_obj(node: str, renewed: float, duration: int) -> dict:
    stamp = datetime.fromtimestamp(renewed, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"metadata": {"name": keys.agent_lease_name(node), "namespace": POLICY.agent.namespace},
            "spec": {"renewTime": stamp, "leaseDurationSeconds": duration}}


def pod_obj(name: str, node: str, handler: str | None, cpu: str) -> dict:
    resources: dict = {"requests": {"cpu": cpu, "memory": "64Mi"}}
    spec: dict = {"nodeName": node, "containers": [{"name": "c", "resources": resources}]}
    if handler:
        spec["runtimeClassName"] = POLICY.profiles[handler].runtime_class_name
        resources["requests"][keys.sandbox_resource(handler)] = "1"
    return {"metadata": {"name": name, "namespace": "ns", "uid": name}, "spec": spec, "status": {"phase": "Running"}}


capacities = st.sampled_from(["0", "1", "4", "16", "\u00b2", "-1", "x", "99999999999"])
nodes = st.builds(node_obj, st.sampled_from(NODES), st.lists(st.sampled_from(HANDLERS), unique=True),
                  st.dictionaries(st.sampled_from(HANDLERS), capacities), st.sampled_from(["1", "4"]),
                  st.sampled_from(["1Gi", "8Gi"]))
leases = st.builds(lambda node, age, duration: ("lease", node, age, duration), st.sampled_from(NODES),
                   st.integers(-30, 200), st.sampled_from([10, 40, 90]))
pods = st.builds(lambda i, node, handler, cpu: ("pod", pod_obj(f"p{i}", node, handler, cpu)), st.integers(0, 9),
                 st.sampled_from(NODES), st.sampled_from([None, *HANDLERS]), st.sampled_from(["100m", "900m"]))
events = st.lists(st.one_of(
    nodes.map(lambda n: ("node", n)),
    st.sampled_from(NODES).map(lambda n: ("delete-node", n)),
    leases,
    st.sampled_from(NODES).map(lambda n: ("delete-lease", n)),
    pods,
    st.integers(0, 9).map(lambda i: ("delete-pod", f"ns/p{i}")),
    st.integers(1, 120).map(lambda s: ("tick", s)),
), max_size=30)


def apply(cache: ClusterCache, clock: Clock, event) -> None:
    kind = event[0]
    if kind == "node":
        cache.node_store().upsert(event[1]["metadata"]["name"], cache.parse_node(event[1]))
    elif kind == "delete-node":
        cache.node_store().delete(event[1])
    elif kind == "lease":
        _, node, age, duration = event
        obj = lease_obj(node, clock.now - age, duration)
        cache.lease_store().upsert(object_key(obj), cache.parse_lease(obj))
    elif kind == "delete-lease":
        cache.lease_store().delete(f"{POLICY.agent.namespace}/{keys.agent_lease_name(event[1])}")
    elif kind == "pod":
        cache.pod_store().upsert(object_key(event[1]), cache.parse_pod(event[1]))
    elif kind == "delete-pod":
        cache.pod_store().delete(event[1])
    else:
        clock.now += event[1]


def check(cache: ClusterCache, clock: Clock) -> None:
    for handler in HANDLERS:
        pod = pod_info(pod_obj("new", "", handler, "500m"))
        cache.classify(pod)
        for name in cache.index(handler, clock.now):
            verdict = decisions.evaluate(cache.nodes[name], cache.usage.get(name, NodeUsage.empty()), pod,
                                         cache.leases.get(name), clock.now, True, POLICY.agent.namespace)
            assert verdict.fit is Fit.PASS, (handler, name, verdict)
        out = cache.filter(pod, NODES)
        for name in NODES:
            info = cache.nodes.get(name)
            expected = (decisions.evaluate(info, cache.usage.get(name, NodeUsage.empty()), pod, cache.leases.get(name),
                                           clock.now, cache.overhead_in_scheduler, POLICY.agent.namespace)
                        if info else decisions.unknown_node(name))
            got = Fit.PASS if name in out.passed else Fit.UNRESOLVABLE if name in out.unresolvable else Fit.FAIL
            assert got is expected.fit, (handler, name, expected)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(nodes, max_size=6), st.lists(leases, max_size=6), st.lists(pods, max_size=8), events,
       st.sampled_from([ClusterVersion(1, 24), ClusterVersion(1, 15)]))
def test_passing_the_index_implies_passing_evaluate(initial_nodes, initial_leases, initial_pods, changes, version):
    clock = Clock()
    cache = ClusterCache(POLICY, version, clock=clock)
    for event in [("node", n) for n in initial_nodes] + initial_leases + initial_pods:
        apply(cache, clock, event)
    check(cache, clock)
    for event in changes:
        apply(cache, clock, event)
        check(cache, clock)


def test_the_property_is_not_vacuous():
    """The generated clusters do put nodes in the index (a property over empty indexes would prove nothing)."""
    clock = Clock()
    cache = ClusterCache(POLICY, ClusterVersion(1, 24), clock=clock)
    apply(cache, clock, ("node", node_obj("n0", ["runv"], {"runv": "4"}, "4", "8Gi")))
    apply(cache, clock, ("lease", "n0", 0, 90))
    assert cache.index("runv", clock.now) == {"n0"}
    apply(cache, clock, ("tick", 91))
    assert cache.index("runv", clock.now) == set()
