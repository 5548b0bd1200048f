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
    info.classify(policy, legacy)
    return info


def evaluate(policy, node, pod, usage=None, lease=NOW + 30, legacy=False):
    return decisions.evaluate(node_info(node), usage or NodeUsage.empty(), pod, lease, NOW, legacy,
                              "sandgate-system")


# -- which pods are sandboxed --------------------------------------------------------------------

def test_pod_profile_from_runtime_class_annotation_or_default(policy, k8s):
    assert classified(policy, k8s.pod("a", runtime_class="runv")).handler == "runv"
    assert classified(policy, k8s.pod("b", runtime_class="gvisor")).profile == "gvisor"
    by_name = k8s.pod("c", annotations={policy.pod_annotation: "gvisor"})
    assert classified(policy, by_name).handler == "gvisor"
    default = k8s.pod("d", annotations={policy.pod_annotation: keys.SANDBOXED_VALUE})
    assert classified(policy, default).profile == policy.default_profile
    assert classified(policy, k8s.pod("e")).handler is None
    assert classified(policy, k8s.pod("f", runtime_class="nvidia")).handler is None
    assert classified(policy, k8s.pod("g", annotations={policy.pod_annotation: keys.OPT_OUT_VALUE})).handler is None


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


def test_heartbeat_missing_or_stale_fails(policy, k8s):
    pod = classified(policy, k8s.pod("a", runtime_class="runv"))
    missing = evaluate(policy, make_node(), pod, lease=None)
    assert (missing.fit, missing.reason) == (Fit.FAIL, "heartbeat_missing")
    assert f"sandgate-system/{keys.agent_lease_name('n1')}" in missing.message
    stale = evaluate(policy, make_node(), pod, lease=NOW - 42)
    assert (stale.fit, stale.reason) == (Fit.FAIL, "heartbeat_stale")
    assert "42s ago" in stale.message
    assert evaluate(policy, make_node(), pod, lease=NOW).fit is Fit.PASS


def test_slots_count_bound_and_reserved(policy, k8s):
    pod = classified(policy, k8s.pod("a", runtime_class="runv"))
    node = make_node(capacity={"runv": 3})
    assert evaluate(policy, node, pod, NodeUsage({"runv": 1}, {"runv": 1})).fit is Fit.PASS
    full = evaluate(policy, node, pod, NodeUsage({"runv": 2}, {"runv": 1}))
    assert (full.fit, full.reason) == (Fit.FAIL, "no_free_slot")
    assert "capacity 3, bound 2, reserved 1" in full.message
    other_handler = NodeUsage({"gvisor": 10}, {})
    assert evaluate(policy, node, pod, other_handler).fit is Fit.PASS


def test_missing_or_bad_capacity_fails_with_the_annotation(policy, k8s):
    pod = classified(policy, k8s.pod("a", runtime_class="runv"))
    none = evaluate(policy, make_node(capacity={}), pod)
    assert none.reason == "capacity_unknown" and keys.capacity_annotation("runv") in none.message
    node = make_node()
    node["metadata"]["annotations"][keys.capacity_annotation("runv")] = "eight"
    assert '"eight"' in evaluate(policy, node, pod).message


def test_legacy_mode_checks_allocatable_with_overhead(policy, k8s):
    pod = classified(policy, k8s.pod("a", runtime_class="runv", cpu="500m", memory="1Gi"), legacy=True)
    node = make_node(cpu="2", memory="4Gi")
    near_full = NodeUsage({"runv": 1}, {}, cpu_millis=1400, memory_bytes=GI)
    cpu = evaluate(policy, node, pod, near_full, legacy=True)
    # 1400m + 500m + 100m overhead = 2000m fits exactly; one more millicore does not
    assert cpu.fit is Fit.PASS
    near_full.cpu_millis += 1
    assert evaluate(policy, node, pod, near_full, legacy=True).reason == "insufficient_cpu"
    assert evaluate(policy, node, pod, near_full, legacy=False).fit is Fit.PASS
    mem = NodeUsage({}, {}, cpu_millis=0, memory_bytes=3 * GI)
    assert evaluate(policy, node, pod, mem, legacy=True).reason == "insufficient_memory"


def test_checks_run_in_the_documented_order(policy, k8s):
    pod = classified(policy, k8s.pod("a", runtime_class="runv"))
    everything_wrong = make_node(handlers=(), capacity={"runv": 0})
    assert evaluate(policy, everything_wrong, pod, lease=None).reason == "runtime_not_advertised"
    assert evaluate(policy, make_node(capacity={"runv": 0}), pod, lease=None).reason == "heartbeat_missing"


# -- scores -----------------------------------------------------------------------------------------

def test_spread_prefers_free_nodes_and_binpack_the_fullest(policy, k8s):
    pod = classified(policy, k8s.pod("a", runtime_class="runv"))
    empty, busy = node_info(make_node("a", capacity={"runv": 10})), node_info(make_node("b", capacity={"runv": 10}))
    busy_usage = NodeUsage({"runv": 8}, {}, memory_bytes=12 * GI)
    assert decisions.score(empty, NodeUsage.empty(), pod.handler, "spread", True) == 10
    # free slots 2/10, free memory 4/16: (0.2 + 0.25) / 2 = 0.225 -> 2
    assert decisions.score(busy, busy_usage, pod.handler, "spread", True) == 2
    assert decisions.score(busy, busy_usage, pod.handler, "binpack", True) == 8
    assert decisions.score(empty, NodeUsage.empty(), pod.handler, "binpack", True) == 0


def test_unsandboxed_pods_prefer_nodes_without_sandbox_runtimes(policy, k8s):
    plain = classified(policy, k8s.pod("a"))
    sandbox, general = node_info(make_node("s")), node_info(make_node("g", handlers=(), capacity={}))
    assert decisions.score(general, NodeUsage.empty(), plain.handler, "spread", True) == 10
    assert decisions.score(sandbox, NodeUsage.empty(), plain.handler, "spread", True) == 0
    assert decisions.score(general, NodeUsage.empty(), plain.handler, "spread", False) == 0
    assert decisions.score(None, NodeUsage.empty(), plain.handler, "spread", True) == 0


# -- cache accounting and reservations ------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


@pytest.fixture
def cache(policy, k8s):
    clock = Clock()
    c = ClusterCache(policy, ClusterVersion(1, 24), clock=clock)
    c.replace_nodes([make_node("n1", capacity={"runv": 2}), make_node("n2", capacity={"runv": 2})])
    c.replace_leases([k8s.lease("n1"), k8s.lease("n2")])
    c.clock_ctl = clock
    return c


def test_bound_pods_use_slots_and_terminal_pods_do_not(cache, policy, k8s):
    cache.upsert_pod(k8s.pod("a", node="n1", runtime_class="runv"))
    cache.upsert_pod(k8s.pod("b", node="n1", runtime_class="runv", phase="Succeeded"))
    cache.upsert_pod(k8s.pod("c", node="n1"))
    assert cache.usage["n1"].bound == {"runv": 1}
    new = classified(policy, k8s.pod("new", runtime_class="runv"))
    assert cache.filter(new, ["n1", "n2"]).passed == ["n1", "n2"]
    cache.upsert_pod(k8s.pod("d", node="n1", runtime_class="runv"))
    out = cache.filter(new, ["n1", "n2", "ghost"])
    assert out.passed == ["n2"]
    assert set(out.failed) == {"n1", "ghost"}
    assert "not in the sandgate extender's cache" in out.failed["ghost"]


def test_reservation_lifecycle_never_leaks(cache, policy, k8s):
    raw = k8s.pod("web", runtime_class="runv")
    first = classified(policy, raw)
    assert cache.reserve(first, "n1").fit is Fit.PASS
    assert cache.usage["n1"].in_use("runv") == 1
    # the watch shows the pod bound: the reservation becomes the bound pod, still one slot
    raw["spec"]["nodeName"] = "n1"
    cache.upsert_pod(raw)
    assert (cache.usage["n1"].bound, cache.usage["n1"].reserved) == ({"runv": 1}, {"runv": 0})
    assert not cache.reservations
    cache.delete_pod(raw)
    assert cache.usage["n1"].in_use("runv") == 0
    # delete/create the same name many times: reservation held, pod deleted before it was seen bound
    for _ in range(50):
        again = classified(policy, k8s.pod("web", runtime_class="runv"))
        assert cache.reserve(again, "n1").fit is Fit.PASS
        cache.delete_pod({"metadata": {"uid": again.uid}})
    assert cache.usage["n1"].in_use("runv") == 0 and not cache.reservations


def test_reservations_block_overcommit_and_expire(cache, policy, k8s):
    pods = [classified(policy, k8s.pod(f"p{i}", runtime_class="runv")) for i in range(3)]
    assert cache.reserve(pods[0], "n1").fit is Fit.PASS
    assert cache.reserve(pods[0], "n1").fit is Fit.PASS  # a retried bind holds one slot, not two
    assert cache.reserve(pods[1], "n1").fit is Fit.PASS
    refused = cache.reserve(pods[2], "n1")
    assert refused.reason == "no_free_slot" and "reserved 2" in refused.message
    cache.release(pods[1].uid, "binding failed")
    assert cache.reserve(pods[2], "n1").fit is Fit.PASS
    cache.clock_ctl.now += policy.scheduling.reservation_timeout_seconds + 1
    assert cache.filter(pods[1], ["n1"]).passed == ["n1"]
    assert not cache.reservations and cache.usage["n1"].in_use("runv") == 0


def test_relist_drops_reservations_of_vanished_pods(cache, policy, k8s):
    kept_raw = k8s.pod("kept", runtime_class="runv")
    kept, gone = classified(policy, kept_raw), classified(policy, k8s.pod("gone", runtime_class="runv"))
    cache.reserve(kept, "n1")
    cache.reserve(gone, "n1")
    cache.replace_pods([kept_raw])
    assert set(cache.reservations) == {kept.uid}
    assert cache.usage["n1"].reserved == {"runv": 1}


def test_policy_reload_reclassifies_pods(cache, policy, k8s):
    cache.upsert_pod(k8s.pod("a", node="n1", annotations={policy.pod_annotation: "gvisor"}))
    assert cache.usage["n1"].bound == {"gvisor": 1}
    renamed = type(policy)(**{**policy.__dict__, "pod_annotation": "example.com/other"})
    cache.set_policy(renamed)
    assert cache.usage["n1"].bound == {}


def test_preemption_keeps_nodes_where_the_victims_free_a_slot(cache, policy, k8s):
    victims = []
    for i in range(2):
        raw = k8s.pod(f"low{i}", node="n1", runtime_class="runv")
        cache.upsert_pod(raw)
        victims.append(cache.pods[raw["metadata"]["uid"]])
    plain = classified(policy, k8s.pod("plain", node="n1"))
    cache.upsert_pod(k8s.pod("plain", node="n1", uid=plain.uid))
    urgent = classified(policy, k8s.pod("urgent", runtime_class="runv"))
    assert cache.verdict_after_eviction(urgent, "n1", [plain]).reason == "no_free_slot"
    assert cache.verdict_after_eviction(urgent, "n1", victims[:1]).fit is Fit.PASS
    cache.replace_nodes([make_node("n1", handlers=("gvisor",))])
    assert cache.verdict_after_eviction(urgent, "n1", victims).fit is Fit.UNRESOLVABLE


@pytest.mark.parametrize("legacy_version", [ClusterVersion(1, 24), ClusterVersion(1, 15)])
def test_precomputed_filter_and_scores_agree_with_the_pure_checks(policy, k8s, legacy_version):
    """The cache's fast paths must give exactly the verdicts and scores of decisions.evaluate/score."""
    import random

    rng = random.Random(7)
    cache = ClusterCache(policy, legacy_version)
    nodes = []
    for i in range(60):
        handlers = rng.choice([(), ("runv",), ("gvisor",), ("runv", "gvisor")])
        capacity = {h: rng.randint(0, 4) for h in handlers if rng.random() > 0.1}
        nodes.append(make_node(f"n{i}", handlers, capacity, cpu=rng.choice(["2", "4"]),
                               memory=rng.choice(["2Gi", "8Gi"])))
    cache.replace_nodes(nodes)
    cache.replace_leases([k8s.lease(f"n{i}", age_seconds=rng.choice([0, 0, 0, 500])) for i in range(60)
                          if rng.random() > 0.1])
    for j in range(150):
        cache.upsert_pod(k8s.pod(f"p{j}", node=f"n{rng.randrange(60)}", runtime_class=rng.choice(["runv", "gvisor", None]),
                                 cpu=rng.choice(["100m", "500m"]), memory=rng.choice(["64Mi", "512Mi"])))
    for j in range(20):  # reservations and bound-then-deleted pods move the counters both ways
        held = classified(policy, k8s.pod(f"r{j}", runtime_class="runv"), cache.legacy)
        cache.reserve(held, f"n{rng.randrange(60)}")
    for uid in list(cache.pods)[:30]:
        cache.delete_pod({"metadata": {"uid": uid}})
    names = [f"n{i}" for i in range(62)]
    for runtime_class in ("runv", "gvisor", None):
        pod = classified(policy, k8s.pod("new", runtime_class=runtime_class, cpu="500m", memory="512Mi"),
                         cache.legacy)
        out = cache.filter(pod, names)
        now = time.time()
        for name in names:
            info = cache.nodes.get(name)
            usage = cache.usage.get(name, NodeUsage.empty())
            expected = (decisions.unknown_node(name) if info is None and pod.handler else
                        decisions.evaluate(info, usage, pod, cache.leases.get(name), now, cache.legacy,
                                           "sandgate-system") if info else decisions.NOT_SANDBOXED)
            got = (Fit.PASS if name in out.passed else Fit.UNRESOLVABLE if name in out.unresolvable
                   else Fit.FAIL)
            assert got is expected.fit, (name, expected)
            if got is Fit.FAIL:  # "expired Ns ago" may differ by a second between the two clocks
                assert out.failed[name].split(" expired ")[0] == expected.message.split(" expired ")[0]
        assert sum(out.reasons.values()) == len(names)
        expected_scores = [decisions.score(cache.nodes.get(n), cache.usage.get(n, NodeUsage.empty()), pod.handler,
                                           policy.scheduling.strategy, True) for n in names]
        entries = json.loads(cache.priorities(pod, names))
        assert [e["Score"] for e in entries] == expected_scores
        assert [e["Host"] for e in entries] == names
