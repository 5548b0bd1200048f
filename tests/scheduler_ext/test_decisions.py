"""Decision logic and cache accounting, without a server."""

from __future__ import annotations

import json
import time

import pytest

from sandgate.core import keys
from sandgate.core.clusterversion import ClusterVersion
from sandgate.core.policy import load_policy
from scheduler_ext import decisions
from scheduler_ext.decisions import Fit
from scheduler_ext.objects import NodeUsage, ObjectError, effective_requests, node_info, pod_info
from sandgate.core.informer import object_key, parse_all
from scheduler_ext.state import ClusterCache
from support import EXAMPLE_POLICY

MI = 1024 * 1024
GI = 1024 * MI
NOW = 1_800_000_000.0


@pytest.fixture
def policy():
    return load_policy(EXAMPLE_POLICY)


def make_node(name="n1", handlers=("runv",), capacity=None, cpu="4", memory="16Gi"):
    labels = {keys.runtime_label(h): "true" for h in handlers}
    capacity = {"runv": 8} if capacity is None else capacity
    annotations = {keys.capacity_annotation(h): str(c) for h, c in capacity.items()}
    return {"metadata": {"name": name, "labels": labels, "annotations": annotations},
            "status": {"allocatable": {"cpu": cpu, "memory": memory}}}


def classified(policy, obj, legacy=False):
    info = pod_info(obj)
    info.classify(policy, overhead_in_scheduler=not legacy)
    return info


def evaluate(policy, node, pod, usage=None, lease=NOW + 30, legacy=False):
    return decisions.evaluate(node_info(node), usage or NodeUsage.empty(), pod, lease, NOW, not legacy,
                              "sandgate-system")


# -- which pods are sandboxed --------------------------------------------------------------------

def test_sandboxed_means_runtime_class_plus_one_slot_of_its_handler(policy, k8s):
    assert classified(policy, k8s.pod("a", runtime_class="runv")).handler == "runv"
    assert classified(policy, k8s.pod("b", runtime_class="gvisor")).profile == "gvisor"
    # The annotation alone no longer makes a pod sandboxed: the webhook did not route it (no slot).
    by_name = k8s.pod("c", annotations={policy.pod_annotation: "gvisor"})
    assert classified(policy, by_name).handler is None
    assert classified(policy, k8s.pod("d", runtime_class="runv", slot=False)).handler is None
    assert classified(policy, k8s.with_slot(k8s.pod("e", runtime_class="runv"), "gvisor")).handler is None
    assert classified(policy, k8s.with_slot(k8s.pod("f", runtime_class="runv", slot=False), "runv", "2")).handler \
        is None
    assert classified(policy, k8s.pod("g")).handler is None
    assert classified(policy, k8s.pod("h", runtime_class="nvidia")).handler is None


def test_hostile_node_values_are_read_safely():
    node = make_node(capacity={})
    node["metadata"]["annotations"][keys.capacity_annotation("runv")] = "\u00b2"  # "²".isdigit() is True
    info = node_info(node)
    assert info.capacity == {} and info.bad_capacity == {"runv": "\u00b2"}
    node["metadata"]["annotations"][keys.capacity_annotation("runv")] = "9" * 400
    assert node_info(node).capacity == {}
    # out of the one quantity parser's range (sandgate.core.quantity): refused at once, never clamped
    for bad in ("1e999990", "NaN", "Inf", "lots"):
        node["status"]["allocatable"]["cpu"] = bad
        with pytest.raises(ObjectError, match="status.allocatable.cpu"):
            node_info(node)


def test_effective_requests_take_the_largest_init_container_and_count_sidecars():
    spec = {"containers": [{"resources": {"requests": {"cpu": "200m", "memory": "64Mi"}}},
                           {"resources": {"requests": {"cpu": "300m"}}}],
            "initContainers": [{"resources": {"requests": {"cpu": "1", "memory": "32Mi"}}}]}
    assert effective_requests(spec) == (1000, 64 * MI)
    spec["initContainers"] = [{"restartPolicy": "Always", "resources": {"requests": {"cpu": "100m", "memory": "10Mi"}}}]
    assert effective_requests(spec) == (600, 74 * MI)


def test_bad_quantity_names_the_field(k8s):
    with pytest.raises(ObjectError, match=r"Pod.spec.containers\[0\].resources.requests.cpu.*\"lots\""):
        pod_info(k8s.pod("x", cpu="lots"))


def test_overhead_accounted_only_where_the_scheduler_cannot(policy, k8s):
    runv = k8s.pod("a", runtime_class="runv", memory="1Gi")
    legacy = classified(policy, runv, legacy=True)
    # podFixed 100m / 50Mi + 2% of 1Gi = 70.48Mi, clamped to [64Mi, 512Mi]
    assert legacy.overhead_cpu == 100
    assert legacy.overhead_memory == policy.profiles["runv"].overhead.memory_total(legacy.memory_bytes)
    assert legacy.total_memory == GI + legacy.overhead_memory
    assert classified(policy, runv, legacy=False).overhead_memory == 0
    padded = k8s.pod("b", runtime_class="runv", annotations={keys.PADDING_ANNOTATION: "100m,64Mi"})
    assert classified(policy, padded, legacy=True).overhead_memory == 0
    with_spec = k8s.pod("c", runtime_class="runv", overhead={"cpu": "250m", "memory": "128Mi"})
    assert (classified(policy, with_spec, legacy=True).overhead_cpu,
            classified(policy, with_spec).overhead_memory) == (250, 128 * MI)


# -- node checks, in order -------------------------------------------------------------------------

def test_runtime_not_advertised_is_unresolvable(policy, k8s):
    verdict = evaluate(policy, make_node(handlers=("gvisor",)), classified(policy, k8s.pod("a", runtime_class="runv")))
    assert verdict.fit is Fit.UNRESOLVABLE
    assert verdict.reason == "runtime_not_advertised"
    assert keys.runtime_label("runv") in verdict.message


def test_label_must_say_true(policy, k8s):
    node = make_node()
    node["metadata"]["labels"][keys.runtime_label("runv")] = "false"
    assert evaluate(policy, node, classified(policy, k8s.pod("a", runtime_class="runv"))).reason == \
        "runtime_not_advertised"


def test_heartbeat_missing_or_stale_is_unresolvable(policy, k8s):
    pod = classified(policy, k8s.pod("a", runtime_class="runv"))
    missing = evaluate(policy, make_node(), pod, lease=None)
    assert (missing.fit, missing.reason) == (Fit.UNRESOLVABLE, "heartbeat_missing")
    assert f"sandgate-system/{keys.agent_lease_name('n1')}" in missing.message
    stale = evaluate(policy, make_node(), pod, lease=NOW - 42)
    assert (stale.fit, stale.reason) == (Fit.UNRESOLVABLE, "heartbeat_stale")
    assert "42s ago" in stale.message
    assert evaluate(policy, make_node(), pod, lease=NOW).fit is Fit.PASS


def test_slots_are_the_schedulers_to_count(policy, k8s):
    pod = classified(policy, k8s.pod("a", runtime_class="runv"))
    full = NodeUsage({"runv": 3})
    assert evaluate(policy, make_node(capacity={"runv": 3}), pod, full).fit is Fit.PASS


def test_missing_or_bad_capacity_is_unresolvable_and_names_the_annotation(policy, k8s):
    pod = classified(policy, k8s.pod("a", runtime_class="runv"))
    none = evaluate(policy, make_node(capacity={}), pod)
    assert none.reason == "capacity_unknown" and keys.capacity_annotation("runv") in none.message
    assert none.fit is Fit.UNRESOLVABLE
    node = make_node()
    node["metadata"]["annotations"][keys.capacity_annotation("runv")] = "eight"
    assert '"eight"' in evaluate(policy, node, pod).message


def test_legacy_mode_checks_allocatable_with_overhead(policy, k8s):
    pod = classified(policy, k8s.pod("a", runtime_class="runv", cpu="500m", memory="1Gi"), legacy=True)
    node = make_node(cpu="2", memory="4Gi")
    near_full = NodeUsage({"runv": 1}, cpu_millis=1400, memory_bytes=GI)
    cpu = evaluate(policy, node, pod, near_full, legacy=True)
    # 1400m + 500m + 100m overhead = 2000m fits exactly; one more millicore does not
    assert cpu.fit is Fit.PASS
    near_full.cpu_millis += 1
    assert evaluate(policy, node, pod, near_full, legacy=True).reason == "insufficient_cpu"
    assert evaluate(policy, node, pod, near_full, legacy=False).fit is Fit.PASS
    mem = NodeUsage({}, cpu_millis=0, memory_bytes=3 * GI)
    assert evaluate(policy, node, pod, mem, legacy=True).reason == "insufficient_memory"


def test_checks_run_in_the_documented_order(policy, k8s):
    pod = classified(policy, k8s.pod("a", runtime_class="runv"))
    everything_wrong = make_node(handlers=(), capacity={})
    assert evaluate(policy, everything_wrong, pod, lease=None).reason == "runtime_not_advertised"
    assert evaluate(policy, make_node(capacity={}), pod, lease=None).reason == "heartbeat_missing"
    assert evaluate(policy, make_node(capacity={}), pod).reason == "capacity_unknown"


# -- scores -----------------------------------------------------------------------------------------

def test_spread_prefers_free_slots_and_binpack_the_fullest(policy, k8s):
    pod = classified(policy, k8s.pod("a", runtime_class="runv"))
    empty, busy = node_info(make_node("a", capacity={"runv": 10})), node_info(make_node("b", capacity={"runv": 10}))
    busy_usage = NodeUsage({"runv": 8}, memory_bytes=12 * GI)
    assert decisions.score(empty, NodeUsage.empty(), pod.handler, "spread") == 10
    assert decisions.score(busy, busy_usage, pod.handler, "spread") == 2  # 2 of 10 slots free
    assert decisions.score(busy, busy_usage, pod.handler, "binpack") == 8
    assert decisions.score(empty, NodeUsage.empty(), pod.handler, "binpack") == 0
    unknown = node_info(make_node("c", capacity={}))
    assert decisions.score(unknown, NodeUsage.empty(), pod.handler, "spread") == 0
    assert decisions.score(None, NodeUsage.empty(), pod.handler, "spread") == 0


# -- cache accounting ------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


def load(cache: ClusterCache, nodes=(), leases=(), pods=()) -> None:
    """Fill the cache as a relist does (one object at a time, unreadable ones skipped)."""
    if nodes:
        cache.node_store().replace(parse_all(nodes, cache.parse_node, cache.skipped["nodes"]))
    if leases:
        cache.lease_store().replace(parse_all(leases, cache.parse_lease, cache.skipped["leases"]))
    if pods:
        cache.pod_store().replace(parse_all(pods, cache.parse_pod, cache.skipped["pods"]))


def put_pod(cache: ClusterCache, obj: dict) -> None:
    cache.pod_store().upsert(object_key(obj), cache.parse_pod(obj))


@pytest.fixture
def cache(policy, k8s):
    clock = Clock()
    c = ClusterCache(policy, ClusterVersion(1, 24), clock=clock)
    load(c, [make_node("n1", capacity={"runv": 2}), make_node("n2", capacity={"runv": 2})],
         [k8s.lease("n1"), k8s.lease("n2")])
    c.clock_ctl = clock
    return c


def test_bound_pods_count_for_scores_and_terminal_pods_do_not(cache, policy, k8s):
    put_pod(cache, k8s.pod("a", node="n1", runtime_class="runv"))
    put_pod(cache, k8s.pod("b", node="n1", runtime_class="runv", phase="Succeeded"))
    put_pod(cache, k8s.pod("c", node="n1"))
    assert cache.usage["n1"].bound == {"runv": 1}
    new = classified(policy, k8s.pod("new", runtime_class="runv"))
    assert json.loads(cache.priorities(new, ["n1", "n2"])) == [{"Host": "n1", "Score": 5}, {"Host": "n2", "Score": 10}]
    put_pod(cache, k8s.pod("d", node="n1", runtime_class="runv"))
    out = cache.filter(new, ["n1", "n2", "ghost"])
    assert out.passed == ["n1", "n2"]  # full by the extender's count, but slots are the scheduler's to count
    assert set(out.failed) == {"ghost"}
    assert "not in the sandgate extender's cache" in out.failed["ghost"]
    cache.pod_store().delete("batch-jobs/d")
    assert cache.usage["n1"].bound == {"runv": 1}


def test_a_stale_heartbeat_leaves_the_index_when_it_expires(cache, policy, k8s):
    pod = classified(policy, k8s.pod("new", runtime_class="runv"))
    assert cache.filter(pod, ["n1", "n2"]).passed == ["n1", "n2"]
    cache.lease_store().upsert("sandgate-system/x", cache.parse_lease(k8s.lease("n2", duration=5)))
    assert cache.filter(pod, ["n1", "n2"]).passed == ["n1", "n2"]
    cache.clock_ctl.now += 10
    out = cache.filter(pod, ["n1", "n2"])
    assert out.passed == ["n1"] and "heartbeat stale" in out.unresolvable["n2"]


def test_unreadable_objects_are_skipped_counted_and_logged_once(policy, k8s, caplog):
    cache = ClusterCache(policy, ClusterVersion(1, 24))
    bad_node = make_node("bad")
    bad_node["status"]["allocatable"]["memory"] = "NaN"
    bad_lease = k8s.lease("n1")
    bad_lease["spec"]["renewTime"] = "yesterday"
    bad_pod = k8s.pod("p", node="n1", cpu="\u00b2")
    load(cache, [make_node("n1"), bad_node, "not an object"], [bad_lease, k8s.lease("n2")],
         [bad_pod, k8s.pod("ok", node="n1", runtime_class="runv")])
    assert set(cache.nodes) == {"n1"} and set(cache.leases) == {"n2"} and len(cache.pods) == 1
    skipped = cache.status()["skipped"]
    assert {k: v["count"] for k, v in skipped.items()} == {"nodes": 2, "pods": 1, "leases": 1}
    assert "status.allocatable.memory" in skipped["nodes"]["objects"]["bad"]
    assert "renewTime" in skipped["leases"]["objects"][f"{keys.DEFAULT_AGENT_NAMESPACE}/sandgate-agent-n1"]
    warnings = [r for r in caplog.records if r.getMessage() == "skipping an object that cannot be read"]
    assert len(warnings) == 4
    load(cache, [make_node("n1"), bad_node])  # relisted, still bad: not logged again
    assert len([r for r in caplog.records if r.getMessage() == "skipping an object that cannot be read"]) == 4
    load(cache, [make_node("n1")])
    assert cache.status()["skipped"]["nodes"]["count"] == 0


def test_policy_reload_reclassifies_pods(cache, policy, k8s):
    put_pod(cache, k8s.pod("a", node="n1", runtime_class="gvisor"))
    assert cache.usage["n1"].bound == {"gvisor": 1}
    profiles = {name: p for name, p in policy.profiles.items() if name != "gvisor"}
    cache.set_policy(type(policy)(**{**policy.__dict__, "profiles": profiles}))
    assert cache.usage["n1"].bound == {}


def test_preemption_judges_the_node_after_eviction(policy, k8s):
    cache = ClusterCache(policy, ClusterVersion(1, 15))  # no PodOverhead: the extender checks the fit
    load(cache, [make_node("n1", cpu="1")], [k8s.lease("n1")])
    victims = []
    for i in range(2):
        raw = k8s.pod(f"low{i}", node="n1", runtime_class="runv", cpu="400m")
        put_pod(cache, raw)
        victims.append(cache.pods[object_key(raw)])
    urgent = classified(policy, k8s.pod("urgent", runtime_class="runv", cpu="300m"), legacy=True)
    assert cache.verdict_after_eviction(urgent, "n1", []).reason == "insufficient_cpu"
    assert cache.verdict_after_eviction(urgent, "n1", victims[:1]).fit is Fit.PASS
    gvisor_only = node_info(make_node("n1", handlers=("gvisor",)))
    assert cache.verdict_after_eviction(urgent, "n1", victims, gvisor_only).fit is Fit.UNRESOLVABLE


@pytest.mark.parametrize("version", [ClusterVersion(1, 24), ClusterVersion(1, 15)])
def test_precomputed_filter_and_scores_agree_with_the_pure_checks(policy, k8s, version):
    """The cache's fast paths must give exactly the verdicts and scores of decisions.evaluate/score."""
    import random

    rng = random.Random(7)
    cache = ClusterCache(policy, version)
    nodes = []
    for i in range(60):
        handlers = rng.choice([(), ("runv",), ("gvisor",), ("runv", "gvisor")])
        capacity = {h: rng.randint(0, 4) for h in handlers if rng.random() > 0.1}
        nodes.append(make_node(f"n{i}", handlers, capacity, cpu=rng.choice(["2", "4"]),
                               memory=rng.choice(["2Gi", "8Gi"])))
    load(cache, nodes, [k8s.lease(f"n{i}", age_seconds=rng.choice([0, 0, 0, 500])) for i in range(60)
                        if rng.random() > 0.1])
    for j in range(150):
        put_pod(cache, k8s.pod(f"p{j}", node=f"n{rng.randrange(60)}", runtime_class=rng.choice(["runv", "gvisor", None]),
                               cpu=rng.choice(["100m", "500m"]), memory=rng.choice(["64Mi", "512Mi"])))
    for key in list(cache.pods)[:30]:
        cache.pod_store().delete(key)
    names = [f"n{i}" for i in range(62)]
    for runtime_class in ("runv", "gvisor"):
        pod = classified(policy, k8s.pod("new", runtime_class=runtime_class, cpu="500m", memory="512Mi"),
                         cache.legacy)
        out = cache.filter(pod, names)
        now = time.time()
        for name in names:
            info = cache.nodes.get(name)
            usage = cache.usage.get(name, NodeUsage.empty())
            expected = (decisions.evaluate(info, usage, pod, cache.leases.get(name), now, not cache.legacy,
                                           policy.agent.namespace) if info else decisions.unknown_node(name))
            got = (Fit.PASS if name in out.passed else Fit.UNRESOLVABLE if name in out.unresolvable
                   else Fit.FAIL)
            assert got is expected.fit, (name, expected)
            if got is not Fit.PASS:  # "expired Ns ago" may differ by a second between the two clocks
                message = (out.failed | out.unresolvable)[name]
                assert message.split(" expired ")[0] == expected.message.split(" expired ")[0]
        assert sum(out.reasons.values()) == len(names)
        expected_scores = [decisions.score(cache.nodes.get(n), cache.usage.get(n, NodeUsage.empty()), pod.handler,
                                           policy.scheduling.strategy) for n in names]
        entries = json.loads(cache.priorities(pod, names))
        assert [e["Score"] for e in entries] == expected_scores
        assert [e["Host"] for e in entries] == names
