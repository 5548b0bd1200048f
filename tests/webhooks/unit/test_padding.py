"""Overhead padding: the numbers, the containers padded, the record, idempotency and bad quantities."""

import copy
import json
from decimal import Decimal

import pytest

from sandgate.core import keys
from sandgate.core.clusterversion import Mode
from sandgate.core.quantity import QuantityError
from webhooks.padding import effective_request, format_quantity, pad_pod, required_padding

from webhook_cases import fixture_request

MI = 1024 * 1024


def ctr(name, requests=None, limits=None, **extra):
    resources = {}
    if requests is not None:
        resources["requests"] = requests
    if limits is not None:
        resources["limits"] = limits
    return {"name": name, "image": "busybox", "resources": resources, **extra}


def pod(containers, init=(), annotations=None):
    meta = {"name": "p"}
    if annotations is not None:
        meta["annotations"] = annotations
    spec = {"containers": list(containers)}
    if init:
        spec["initContainers"] = list(init)
    return {"metadata": meta, "spec": spec}


@pytest.mark.parametrize("resource, value, text", [
    ("cpu", Decimal("0.1"), "100m"),
    ("cpu", Decimal("1.1"), "1100m"),
    ("cpu", Decimal("0.0005"), "1m"),  # rounded up, never down
    ("memory", Decimal(64 * MI), "64Mi"),
    ("memory", Decimal(1088 * MI), "1088Mi"),
    ("memory", Decimal(1000), "1000"),
    ("memory", Decimal("1.5"), "2"),
    ("ephemeral-storage", Decimal(2 * MI), "2Mi"),
])
def test_quantities_are_written_in_canonical_form(resource, value, text):
    assert format_quantity(resource, value) == text


def test_effective_request_is_max_of_app_sum_and_largest_init():
    spec = pod([ctr("a", {"cpu": "250m", "memory": "100Mi"}), ctr("b", {"cpu": "100m"})],
               [ctr("i1", {"cpu": "500m", "memory": "32Mi"}), ctr("i2", {"memory": "300Mi"})])["spec"]
    assert effective_request(spec, "cpu") == Decimal("0.5")
    assert effective_request(spec, "memory") == 300 * MI
    assert effective_request({}, "memory") == 0


def test_effective_request_counts_sidecars_beside_app_and_later_init_containers():
    spec = pod([ctr("app", {"memory": "100Mi"})],
               [ctr("side", {"memory": "50Mi"}, restartPolicy="Always"), ctr("init", {"memory": "120Mi"})])["spec"]
    # app + sidecar = 150Mi; init runs beside the sidecar = 170Mi.
    assert effective_request(spec, "memory") == 170 * MI


def test_runtimeclass_mode_pads_only_memory_beyond_pod_fixed(policy):
    runv = policy.profiles["runv"]
    # 2% of 128Mi + 50Mi = 52.56Mi, below memoryMin 64Mi: 64Mi - 50Mi podFixed.
    assert required_padding(pod([ctr("a", {"memory": "128Mi"})]), runv, Mode.APISERVER_MERGES) == {"memory": 14 * MI}
    # 2% of 4Gi = 81.92Mi; 50Mi + 81.92Mi = 138328145.92 bytes, rounded up; minus 50Mi.
    assert required_padding(pod([ctr("a", {"memory": "4Gi"})]), runv, Mode.APISERVER_MERGES) == {
        "memory": 138328146 - 50 * MI}
    # 2% of 30Gi = 614.4Mi; clamped to memoryMax 512Mi.
    assert required_padding(pod([ctr("a", {"memory": "30Gi"})]), runv, Mode.APISERVER_MERGES) == {"memory": 462 * MI}


def test_legacy_mode_pads_the_whole_overhead(policy):
    runv = policy.profiles["runv"]
    assert required_padding(pod([ctr("a", {"memory": "128Mi"})]), runv, Mode.WEBHOOK_MERGES) == {
        "cpu": Decimal("0.1"), "memory": 64 * MI}
    assert required_padding(pod([ctr("a", {"memory": "30Gi"})]), runv, Mode.WEBHOOK_MERGES) == {
        "cpu": Decimal("0.1"), "memory": 512 * MI}


def test_legacy_mode_subtracts_overhead_the_api_server_already_set(policy):
    # 03a arrives with spec.overhead {cpu: 100m, memory: 50Mi} from the RuntimeClass plugin.
    pod_03a = fixture_request("v1-03a-create-runtimeclass-runv").object
    assert required_padding(pod_03a, policy.profiles["runv"], Mode.WEBHOOK_MERGES) == {"memory": 14 * MI}


def test_profile_without_overhead_needs_no_padding(policy):
    assert required_padding(pod([ctr("a", {"memory": "1Gi"})]), policy.profiles["gvisor"], Mode.WEBHOOK_MERGES) == {}


def test_legacy_padding_of_init_containers_and_limits_checked_by_hand(policy):
    p = copy.deepcopy(fixture_request("v1-05a-create-init-limits-special-keys").object)
    before = {r: effective_request(p["spec"], r) for r in ("cpu", "memory")}
    record = pad_pod(p, policy.profiles["runv"], Mode.WEBHOOK_MERGES)
    assert record == {"cpu": "100m", "memory": "64Mi", "containers": ["etl"], "initContainers": ["fetch"]}
    assert p["metadata"]["annotations"][keys.PADDING_ANNOTATION] == (
        '{"cpu":"100m","memory":"64Mi","containers":["etl"],"initContainers":["fetch"]}')
    etl, fetch = p["spec"]["containers"][0]["resources"], p["spec"]["initContainers"][0]["resources"]
    assert etl == {"limits": {"cpu": "1100m", "memory": "1088Mi"}, "requests": {"cpu": "600m", "memory": "576Mi"}}
    assert fetch == {"limits": {"cpu": "300m", "memory": "128Mi"}, "requests": {"cpu": "200m", "memory": "96Mi"}}
    # The scheduler's view grows by exactly the overhead.
    assert effective_request(p["spec"], "cpu") == before["cpu"] + Decimal("0.1")
    assert effective_request(p["spec"], "memory") == before["memory"] + 64 * MI


def test_init_heavy_pod_total_grows_by_exactly_the_overhead(policy):
    p = pod([ctr("a", {"cpu": "100m", "memory": "64Mi"}), ctr("b", {"cpu": "100m", "memory": "64Mi"})],
            [ctr("big-init", {"cpu": "2", "memory": "1Gi"}), ctr("small-init", {"cpu": "10m"}),
             ctr("side", {"cpu": "50m", "memory": "16Mi"}, restartPolicy="Always")])
    before = {r: effective_request(p["spec"], r) for r in ("cpu", "memory")}
    record = pad_pod(p, policy.profiles["runv"], Mode.WEBHOOK_MERGES)
    # Only the first app container and the regular init containers; sidecars are covered by the app side.
    assert (record["containers"], record["initContainers"]) == (["a"], ["big-init", "small-init"])
    assert p["spec"]["containers"][1]["resources"]["requests"] == {"cpu": "100m", "memory": "64Mi"}
    assert p["spec"]["initContainers"][2]["resources"]["requests"] == {"cpu": "50m", "memory": "16Mi"}
    # The pod's memory is the 1Gi init container: 50Mi + 2% of 1Gi = 73903636.48 bytes, rounded up.
    assert record["memory"] == "73903637"
    assert p["spec"]["initContainers"][1]["resources"]["requests"] == {"cpu": "110m", "memory": "73903637"}
    assert effective_request(p["spec"], "cpu") == before["cpu"] + Decimal("0.1")
    assert effective_request(p["spec"], "memory") == before["memory"] + 73903637


def test_container_without_resources_gets_requests_but_no_limits(policy):
    p = pod([ctr("a")])
    pad_pod(p, policy.profiles["runv"], Mode.WEBHOOK_MERGES)
    assert p["spec"]["containers"][0]["resources"] == {"requests": {"cpu": "100m", "memory": "64Mi"}}
    bare = {"metadata": {}, "spec": {"containers": [{"name": "x", "image": "i"}]}}
    pad_pod(bare, policy.profiles["runv"], Mode.APISERVER_MERGES)
    assert bare["spec"]["containers"][0]["resources"] == {"requests": {"memory": "14Mi"}}
    assert json.loads(bare["metadata"]["annotations"][keys.PADDING_ANNOTATION]) == {
        "memory": "14Mi", "containers": ["x"], "initContainers": []}


def test_limit_only_on_one_resource_is_padded_only_there(policy):
    p = pod([ctr("a", {"cpu": "1", "memory": "128Mi"}, {"memory": "256Mi"})])
    pad_pod(p, policy.profiles["runv"], Mode.WEBHOOK_MERGES)
    assert p["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "1100m", "memory": "192Mi"}, "limits": {"memory": "320Mi"}}


def test_an_annotated_pod_is_never_padded_again(policy):
    p = pod([ctr("a", {"memory": "128Mi"})], annotations={keys.PADDING_ANNOTATION: '{"memory":"14Mi"}'})
    untouched = copy.deepcopy(p)
    assert pad_pod(p, policy.profiles["runv"], Mode.WEBHOOK_MERGES) is None
    assert p == untouched


def test_padding_twice_changes_nothing_the_second_time(policy):
    p = pod([ctr("a", {"memory": "128Mi"})])
    pad_pod(p, policy.profiles["runv"], Mode.APISERVER_MERGES)
    once = copy.deepcopy(p)
    assert pad_pod(p, policy.profiles["runv"], Mode.APISERVER_MERGES) is None
    assert p == once


@pytest.mark.parametrize("where, field", [
    ({"containers": [ctr("a", {"memory": "abc"})]}, "spec.containers[0].resources.requests.memory"),
    ({"containers": [ctr("a", {"memory": "1Gi"}), ctr("b", {"memory": ["x"]})]},
     "spec.containers[1].resources.requests.memory"),
    ({"containers": [ctr("a")], "initContainers": [ctr("i", {"memory": "12Q"})]},
     "spec.initContainers[0].resources.requests.memory"),
])
def test_invalid_request_quantities_name_the_field(policy, where, field):
    p = {"metadata": {}, "spec": where}
    with pytest.raises(QuantityError) as info:
        pad_pod(p, policy.profiles["runv"], Mode.APISERVER_MERGES)
    assert str(info.value).startswith(f"{field}: invalid quantity ")


def test_invalid_limit_quantity_names_the_field(policy):
    p = pod([ctr("a", {"cpu": "1"}, {"cpu": "fast"})])
    with pytest.raises(QuantityError) as info:
        pad_pod(p, policy.profiles["runv"], Mode.WEBHOOK_MERGES)
    assert str(info.value) == 'spec.containers[0].resources.limits.cpu: invalid quantity "fast"'
