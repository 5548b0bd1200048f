"""Overhead padding: the numbers, where it goes, the record, reinvocation-exactness and bad quantities."""

import copy
import json
from decimal import Decimal

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandgate.core import keys
from sandgate.core.clusterversion import Mode
from sandgate.core.podrequests import pod_requests
from sandgate.core.quantity import QuantityError
from webhooks.mutating import mutation_patch
from webhooks.padding import PaddingRecord, format_quantity, required_padding, round_up

from sandgate.core.policy import load_policy
from support import EXAMPLE_POLICY
from webhook_cases import fixture_request, pod_request
from webhooks.mutating import admit
from webhooks.review import NamespaceFacts

MI = 1024 * 1024
SLOT = keys.sandbox_resource("runv")


def ctr(name, requests=None, limits=None, **extra):
    resources = {}
    if requests is not None:
        resources["requests"] = requests
    if limits is not None:
        resources["limits"] = limits
    return {"name": name, "image": "busybox", "resources": resources, **extra}


def pod(containers, init=(), annotations=None, **spec_extra):
    meta = {"name": "p"}
    if annotations is not None:
        meta["annotations"] = annotations
    spec = {"containers": list(containers), **spec_extra}
    if init:
        spec["initContainers"] = list(init)
    return {"metadata": meta, "spec": spec}


def pad(p, profile, mode):
    """The pod after the mutating webhook's patch (what the API server stores), and the patch."""
    patch, _ = mutation_patch(p, profile, mode)
    return jsonpatch.apply_patch(p, patch), patch


def record(p):
    return json.loads(p["metadata"]["annotations"][keys.PADDING_ANNOTATION])


def effective(p, resource):
    return pod_requests(p["spec"], include_overhead=False).get(resource, Decimal(0))


@pytest.mark.parametrize("resource, value, text", [
    ("cpu", Decimal("0.1"), "100m"),
    ("cpu", Decimal("1.1"), "1100m"),
    ("cpu", Decimal("0.0005"), "0.0005"),  # exact: taking a padding back out restores the pod's own value
    ("memory", Decimal(64 * MI), "64Mi"),
    ("memory", Decimal(1088 * MI), "1088Mi"),
    ("memory", Decimal(1000), "1000"),
    ("memory", Decimal("1.5"), "1.5"),
    ("ephemeral-storage", Decimal(2 * MI), "2Mi"),
])
def test_quantities_are_written_exactly_in_canonical_form(resource, value, text):
    assert format_quantity(resource, value) == text


def test_amounts_are_rounded_up_never_down():
    assert round_up("cpu", Decimal("0.0005")) == Decimal("0.001")
    assert round_up("memory", Decimal("1.5")) == 2


def test_runtimeclass_mode_pads_only_memory_beyond_pod_fixed(policy):
    runv = policy.profiles["runv"]
    # 2% of 128Mi + 50Mi = 52.56Mi, below memoryMin 64Mi: 64Mi - 50Mi podFixed.
    assert required_padding(pod([ctr("a", {"memory": "128Mi"})])["spec"], runv, Mode.APISERVER_MERGES) == {
        "memory": 14 * MI}
    # 2% of 4Gi = 81.92Mi; 50Mi + 81.92Mi = 138328145.92 bytes, rounded up; minus 50Mi.
    assert required_padding(pod([ctr("a", {"memory": "4Gi"})])["spec"], runv, Mode.APISERVER_MERGES) == {
        "memory": 138328146 - 50 * MI}
    # 2% of 30Gi = 614.4Mi; clamped to memoryMax 512Mi.
    assert required_padding(pod([ctr("a", {"memory": "30Gi"})])["spec"], runv, Mode.APISERVER_MERGES) == {
        "memory": 462 * MI}


def test_legacy_mode_pads_the_whole_overhead(policy):
    runv = policy.profiles["runv"]
    assert required_padding(pod([ctr("a", {"memory": "128Mi"})])["spec"], runv, Mode.WEBHOOK_MERGES) == {
        "cpu": Decimal("0.1"), "memory": 64 * MI}
    assert required_padding(pod([ctr("a", {"memory": "30Gi"})])["spec"], runv, Mode.WEBHOOK_MERGES) == {
        "cpu": Decimal("0.1"), "memory": 512 * MI}


def test_legacy_mode_subtracts_overhead_the_api_server_already_set(policy):
    # 03a arrives with spec.overhead {cpu: 100m, memory: 50Mi} from the RuntimeClass plugin.
    pod_03a = fixture_request("v1-03a-create-runtimeclass-runv").object
    assert required_padding(pod_03a["spec"], policy.profiles["runv"], Mode.WEBHOOK_MERGES) == {"memory": 14 * MI}


def test_profile_without_overhead_needs_no_padding(policy):
    assert required_padding(pod([ctr("a", {"memory": "1Gi"})])["spec"], policy.profiles["gvisor"],
                            Mode.WEBHOOK_MERGES) == {}


def test_legacy_padding_of_init_containers_and_limits_checked_by_hand(policy):
    p = fixture_request("v1-05a-create-init-limits-special-keys").object
    before = {r: effective(p, r) for r in ("cpu", "memory")}
    after, _ = pad(p, policy.profiles["runv"], Mode.WEBHOOK_MERGES)
    assert after["metadata"]["annotations"][keys.PADDING_ANNOTATION] == (
        '{"cpu":"100m","memory":"64Mi","basis":{"cpu":"500m","memory":"512Mi"},"containers":["etl"],'
        '"initContainers":["fetch"]}')
    etl, fetch = after["spec"]["containers"][0]["resources"], after["spec"]["initContainers"][0]["resources"]
    assert etl == {"limits": {"cpu": "1100m", "memory": "1088Mi", SLOT: "1"},
                   "requests": {"cpu": "600m", "memory": "576Mi", SLOT: "1"}}
    assert fetch == {"limits": {"cpu": "300m", "memory": "128Mi"}, "requests": {"cpu": "200m", "memory": "96Mi"}}
    # The scheduler's view grows by exactly the overhead.
    assert effective(after, "cpu") == before["cpu"] + Decimal("0.1")
    assert effective(after, "memory") == before["memory"] + 64 * MI


def test_init_heavy_pod_total_grows_by_exactly_the_overhead(policy):
    p = pod([ctr("a", {"cpu": "100m", "memory": "64Mi"}), ctr("b", {"cpu": "100m", "memory": "64Mi"})],
            [ctr("big-init", {"cpu": "2", "memory": "1Gi"}), ctr("small-init", {"cpu": "10m"}),
             ctr("side", {"cpu": "50m", "memory": "16Mi"}, restartPolicy="Always")])
    before = {r: effective(p, r) for r in ("cpu", "memory")}
    after, _ = pad(p, policy.profiles["runv"], Mode.WEBHOOK_MERGES)
    rec = record(after)
    # Only the first app container and the regular init containers; sidecars are covered by the app side.
    assert (rec["containers"], rec["initContainers"]) == (["a"], ["big-init", "small-init"])
    assert after["spec"]["containers"][1]["resources"]["requests"] == {"cpu": "100m", "memory": "64Mi"}
    assert after["spec"]["initContainers"][2]["resources"]["requests"] == {"cpu": "50m", "memory": "16Mi"}
    # The pod's memory is the 1Gi init container: 50Mi + 2% of 1Gi = 73903636.48 bytes, rounded up.
    assert rec["memory"] == "73903637" and rec["basis"] == {"cpu": "2000m", "memory": "1024Mi"}
    assert after["spec"]["initContainers"][1]["resources"]["requests"] == {"cpu": "110m", "memory": "73903637"}
    assert effective(after, "cpu") == before["cpu"] + Decimal("0.1")
    assert effective(after, "memory") == before["memory"] + 73903637


def test_container_without_resources_gets_requests_but_no_limits(policy):
    after, _ = pad(pod([ctr("a")]), policy.profiles["runv"], Mode.WEBHOOK_MERGES)
    assert after["spec"]["containers"][0]["resources"] == {"requests": {"cpu": "100m", "memory": "64Mi", SLOT: "1"},
                                                           "limits": {SLOT: "1"}}
    bare = {"metadata": {}, "spec": {"containers": [{"name": "x", "image": "i"}]}}
    after, _ = pad(bare, policy.profiles["runv"], Mode.APISERVER_MERGES)
    assert after["spec"]["containers"][0]["resources"] == {"requests": {"memory": "14Mi", SLOT: "1"},
                                                           "limits": {SLOT: "1"}}
    assert record(after) == {"memory": "14Mi", "basis": {"memory": "0"}, "containers": ["x"], "initContainers": []}


def test_limit_only_on_one_resource_is_padded_only_there(policy):
    after, _ = pad(pod([ctr("a", {"cpu": "1", "memory": "128Mi"}, {"memory": "256Mi"})]), policy.profiles["runv"],
                   Mode.WEBHOOK_MERGES)
    assert after["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "1100m", "memory": "192Mi", SLOT: "1"}, "limits": {"memory": "320Mi", SLOT: "1"}}


@pytest.mark.parametrize("mode", list(Mode))
def test_padding_twice_changes_nothing_the_second_time(policy, mode):
    for p in (pod([ctr("a", {"memory": "128Mi"})]), fixture_request("v1-05a-create-init-limits-special-keys").object,
              pod([ctr("a", {"cpu": "0.0005", "memory": "1.5"}), ctr("b", {"memory": "0.5"})])):
        once, _ = pad(p, policy.profiles["runv"], mode)
        assert mutation_patch(once, policy.profiles["runv"], mode)[0] == []


# ---- reinvocation: a later webhook changed the pod ---------------------------------------------------

def test_a_sidecar_added_later_gets_its_share_of_the_request_dependent_memory(policy):
    runv = policy.profiles["runv"]
    first, _ = pad(pod([ctr("app", {"memory": "4Gi"})]), runv, Mode.APISERVER_MERGES)
    # A service mesh injects its proxy as a sidecar after sandgate; the API server calls sandgate again.
    meshed = copy.deepcopy(first)
    meshed["spec"]["initContainers"] = [ctr("proxy", {"memory": "1Gi"}, restartPolicy="Always")]
    final, patch = pad(meshed, runv, Mode.APISERVER_MERGES)
    # 2% of 5Gi = 102.4Mi + 50Mi fixed = 152.4Mi, of which 102.4Mi is beyond podFixed.
    needed = required_padding(pod([ctr("app", {"memory": "4Gi"})], [ctr("p", {"memory": "1Gi"}, restartPolicy="Always")])
                              ["spec"], runv, Mode.APISERVER_MERGES)["memory"]
    assert needed == 107374183
    assert record(final)["memory"] == str(needed) and record(final)["basis"] == {"memory": "5120Mi"}
    assert effective(final, "memory") == 5 * 1024 * MI + needed
    assert [op["path"] for op in patch] == ["/spec/containers/0/resources/requests/memory",
                                            "/metadata/annotations/sandgate.io~1overhead-padding"]
    assert mutation_patch(final, runv, Mode.APISERVER_MERGES)[0] == []


def test_legacy_init_container_added_later_is_padded_and_becomes_the_largest_step(policy):
    runv = policy.profiles["runv"]
    first, _ = pad(pod([ctr("app", {"cpu": "100m", "memory": "128Mi"})]), runv, Mode.WEBHOOK_MERGES)
    later = copy.deepcopy(first)
    later["spec"]["initContainers"] = [ctr("migrate", {"cpu": "1", "memory": "2Gi"})]
    final, _ = pad(later, runv, Mode.WEBHOOK_MERGES)
    # The 2Gi init step decides now: 50Mi + 2% of 2Gi = 90.96Mi (above memoryMin), whole overhead in legacy mode.
    needed = runv.overhead.memory_total(Decimal(2 * 1024 * MI))
    assert effective(final, "memory") == 2 * 1024 * MI + needed
    assert effective(final, "cpu") == Decimal("1.1")
    assert final["spec"]["containers"][0]["resources"]["requests"]["memory"] == format_quantity(
        "memory", 128 * MI + needed)
    assert record(final)["initContainers"] == ["migrate"]
    assert mutation_patch(final, runv, Mode.WEBHOOK_MERGES)[0] == []


def test_the_record_is_recomputed_never_trusted(policy):
    runv = policy.profiles["runv"]
    honest, _ = pad(pod([ctr("a", {"memory": "128Mi"})]), runv, Mode.WEBHOOK_MERGES)
    # A tenant writes the annotation themselves, claiming padding that is not there.
    forged = pod([ctr("a", {"memory": "128Mi"})],
                 annotations={keys.PADDING_ANNOTATION: '{"memory":"1Gi","cpu":"5","containers":["a"]}'})
    assert pad(forged, runv, Mode.WEBHOOK_MERGES)[0]["spec"] == honest["spec"]
    garbage = pod([ctr("a", {"memory": "128Mi"})], annotations={keys.PADDING_ANNOTATION: "100m,64Mi"})
    assert pad(garbage, runv, Mode.WEBHOOK_MERGES)[0] == honest
    # A profile without overhead: the tenant's annotation is removed, so nothing downstream trusts it.
    gvisor, _ = pad(garbage, policy.profiles["gvisor"], Mode.WEBHOOK_MERGES)
    assert keys.PADDING_ANNOTATION not in gvisor["metadata"]["annotations"]


def test_padding_no_longer_needed_is_taken_back_out(policy, fixed_overhead_policy):
    padded, _ = pad(pod([ctr("a")]), policy.profiles["runv"], Mode.APISERVER_MERGES)
    assert padded["spec"]["containers"][0]["resources"]["requests"]["memory"] == "14Mi"
    # The same pod under a profile whose overhead the RuntimeClass carries in full.
    final, _ = pad(padded, fixed_overhead_policy.profiles["runv"], Mode.APISERVER_MERGES)
    assert final["spec"]["containers"][0]["resources"] == {"requests": {SLOT: "1"}, "limits": {SLOT: "1"}}
    assert keys.PADDING_ANNOTATION not in final["metadata"]["annotations"]


def test_record_round_trips():
    rec = PaddingRecord({"memory": Decimal(14 * MI)}, {"memory": Decimal(128 * MI)}, ("a",), ("i",), ("memory",))
    assert PaddingRecord.from_annotation(rec.to_annotation()) == rec
    for bad in ("", "[]", '{"memory": "x"}', '{"memory": "-1"}', '{"containers": "a"}', None):
        assert PaddingRecord.from_annotation(bad) is None


# ---- pod-level resources (spec.resources, 1.32+) -------------------------------------------------------

def test_pod_level_requests_are_padded_instead_of_the_containers(policy):
    runv = policy.profiles["runv"]
    p = pod([ctr("a", {"memory": "1Gi"}), ctr("b")], resources={"requests": {"memory": "4Gi"},
                                                                "limits": {"memory": "8Gi"}})
    after, _ = pad(p, runv, Mode.APISERVER_MERGES)
    needed = runv.overhead.memory_total(Decimal(4 * 1024 * MI)) - 50 * MI
    assert after["spec"]["resources"] == {"requests": {"memory": format_quantity("memory", 4 * 1024 * MI + needed)},
                                          "limits": {"memory": format_quantity("memory", 8 * 1024 * MI + needed)}}
    # The containers keep their requests: the scheduler uses the pod-level value for memory.
    assert after["spec"]["containers"][0]["resources"]["requests"] == {"memory": "1Gi", SLOT: "1"}
    assert effective(after, "memory") == 4 * 1024 * MI + needed
    assert record(after)["podLevel"] == ["memory"] and record(after)["containers"] == []
    assert mutation_patch(after, runv, Mode.APISERVER_MERGES)[0] == []


def test_pod_level_cpu_only_leaves_memory_padding_on_the_containers(policy):
    runv = policy.profiles["runv"]
    p = pod([ctr("a", {"cpu": "1", "memory": "128Mi"})], resources={"requests": {"cpu": "2"}})
    after, _ = pad(p, runv, Mode.APISERVER_MERGES)
    assert after["spec"]["resources"] == {"requests": {"cpu": "2"}}
    assert after["spec"]["containers"][0]["resources"]["requests"]["memory"] == "142Mi"


def test_a_pod_level_limit_the_padded_containers_would_exceed_is_refused_not_under_reserved(policy):
    runv = policy.profiles["runv"]
    p = pod([ctr("a", {"memory": "1Gi"})], resources={"limits": {"memory": "1Gi"}})
    req = pod_request(p)
    verdict = admit(req, policy, Mode.APISERVER_MERGES, NamespaceFacts(path_profile="runv"))
    assert (verdict.allowed, verdict.reason, verdict.patch) == (False, "padding-not-expressible", [])
    assert verdict.message == (
        "spec.resources.limits.memory: the sandbox overhead padding of 21474837 would take the containers' memory "
        "requests to 1095216661, above this pod-level limit of 1024Mi; set spec.resources.requests.memory (sandgate "
        "then pads the pod-level request and limit) or raise the limit")
    roomy = pod([ctr("a", {"memory": "1Gi"})], resources={"limits": {"memory": "2Gi"}})
    after, _ = pad(roomy, runv, Mode.APISERVER_MERGES)
    assert after["spec"]["resources"] == {"limits": {"memory": "2Gi"}}
    assert effective(after, "memory") == 1024 * MI + 21474837


# ---- bad input -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where, field", [
    ({"containers": [ctr("a", {"memory": "abc"})]}, "spec.containers[0].resources.requests.memory"),
    ({"containers": [ctr("a", {"memory": "1Gi"}), ctr("b", {"memory": ["x"]})]},
     "spec.containers[1].resources.requests.memory"),
    ({"containers": [ctr("a")], "initContainers": [ctr("i", {"memory": "12Q"})]},
     "spec.initContainers[0].resources.requests.memory"),
    ({"containers": [ctr("a")], "resources": {"requests": {"memory": "lots"}}}, "spec.resources.requests.memory"),
])
def test_invalid_request_quantities_name_the_field(policy, where, field):
    with pytest.raises(QuantityError) as info:
        mutation_patch({"metadata": {}, "spec": where}, policy.profiles["runv"], Mode.APISERVER_MERGES)
    assert str(info.value).startswith(f"{field}: invalid quantity ")


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("quantity", ["1e999990", "8Ei"])
def test_a_quantity_no_node_can_hold_is_refused_at_once_naming_the_field(policy, mode, quantity):
    """The API server accepts memory: 1e999990; written out as digits it would stall the worker."""
    p = pod([ctr("a", {"cpu": "1"}), ctr("b", {"memory": quantity})])
    verdict = admit(pod_request(p), policy, mode, NamespaceFacts(path_profile="runv"))
    assert (verdict.allowed, verdict.code, verdict.reason) == (False, 400, "invalid-pod")
    assert verdict.message == (f'spec.containers[1].resources.requests.memory: quantity "{quantity}" is out of '
                               f"range (magnitude above 9223372036854775)")


def test_invalid_limit_quantity_names_the_field(policy):
    with pytest.raises(QuantityError) as info:
        mutation_patch(pod([ctr("a", {"cpu": "1"}, {"cpu": "fast"})]), policy.profiles["runv"], Mode.WEBHOOK_MERGES)
    assert str(info.value) == 'spec.containers[0].resources.limits.cpu: invalid quantity "fast"'


# ---- properties over generated pods ---------------------------------------------------------------------

QUANTITIES = st.one_of(st.integers(0, 64 * 1024).map(lambda mi: f"{mi}Mi"), st.integers(0, 10**10).map(str),
                       st.integers(0, 8000).map(lambda m: f"{m}m"), st.sampled_from(["0.5", "1.5Gi", "3k"]))


@st.composite
def pods(draw):
    def container(name, sidecar=False):
        requests = draw(st.dictionaries(st.sampled_from(["cpu", "memory"]), QUANTITIES, max_size=2))
        limits = {r: q for r, q in requests.items() if draw(st.booleans())}
        extra = {"restartPolicy": "Always"} if sidecar else {}
        return ctr(name, requests, limits or None, **extra)

    apps = [container(f"app{i}") for i in range(draw(st.integers(1, 3)))]
    inits = [container(f"init{i}", sidecar=draw(st.booleans())) for i in range(draw(st.integers(0, 3)))]
    extra = {}
    if draw(st.booleans()):
        extra["resources"] = {"requests": draw(st.dictionaries(st.sampled_from(["cpu", "memory"]), QUANTITIES,
                                                               min_size=1, max_size=2))}
    return pod(apps, inits, **extra)


@settings(max_examples=150, deadline=None)
@given(p=pods(), mode=st.sampled_from(list(Mode)), sidecar=st.sampled_from(["64Mi", "3Gi", "0"]))
def test_padding_is_exact_idempotent_and_reinvocation_gives_the_same_pod(p, mode, sidecar):
    runv = load_policy(EXAMPLE_POLICY).profiles["runv"]
    once, _ = pad(p, runv, mode)
    assert mutation_patch(once, runv, mode)[0] == []
    rec = record(once)
    for resource, amount in required_padding(p["spec"], runv, mode).items():
        # The scheduler's total grows by exactly the padding, from the recorded basis.
        assert effective(once, resource) == effective(p, resource) + amount
        assert format_quantity(resource, effective(p, resource)) == rec["basis"][resource]
    # A later webhook adds a sidecar: reinvoking sandgate gives the pod it would have made of the final pod.
    late = {"name": "late", "image": "i", "restartPolicy": "Always", "resources": {"requests": {"memory": sidecar}}}
    reinvoked = copy.deepcopy(once)
    reinvoked["spec"].setdefault("initContainers", []).append(late)
    direct = copy.deepcopy(p)
    direct["spec"].setdefault("initContainers", []).append(copy.deepcopy(late))
    assert pad(reinvoked, runv, mode)[0]["spec"] == pad(direct, runv, mode)[0]["spec"]
