"""The extender protocol through the real command (`python3 -m sandgate extender --snapshot ...`) and real
HTTP, fed with the kube-scheduler v1.24 requests captured in tests/fixtures."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from sandgate.core import keys
from support import load_fixture

SANDBOX_1, SANDBOX_2, GENERAL_1, GENERAL_2 = "pool-sandbox-1", "pool-sandbox-2", "pool-general-1", "pool-general-2"


def fixture(name: str) -> dict:
    return load_fixture(f"extender/{name}.json")


def lower_keys(doc: dict) -> dict:
    """The request as a <= 1.15 scheduler spelled it: lower-case top-level keys."""
    return {k.lower(): v for k, v in doc.items()}


def set_capacity(nodes: list[dict], name: str, capacity: int) -> None:
    for node in nodes:
        if node["metadata"]["name"] == name:
            node["metadata"]["annotations"][keys.capacity_annotation("runv")] = str(capacity)


@pytest.fixture
def cluster(k8s):
    """The captured cluster: two runv nodes (capacity 8 and 16) with fresh heartbeats, two general nodes."""
    nodes = k8s.manifest_nodes()
    return {"nodes": nodes, "leases": k8s.fresh_leases(nodes), "pods": []}


def items(k8s, cluster) -> dict:
    return k8s.snapshot_list(cluster["nodes"], cluster["leases"], cluster["pods"])


# -- filter ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("casing", ["go", "lower"])
def test_runv_pod_node_cache_capable(extender, k8s, cluster, casing):
    server = extender(items(k8s, cluster))
    request = fixture("filter-ncc-true-runv-pod")
    resp = server.post("filter", request if casing == "go" else lower_keys(request))
    assert resp.status_code == 200
    assert resp.json() == {"Nodes": None, "NodeNames": [SANDBOX_2, SANDBOX_1], "FailedNodes": {},
                           "FailedAndUnresolvableNodes": {}, "Error": ""}


@pytest.mark.parametrize("casing", ["go", "lower"])
def test_failed_nodes_carry_specific_reasons(extender, k8s, cluster, casing):
    cluster["leases"] = [k8s.lease(SANDBOX_1)]  # pool-sandbox-2's agent went silent: no Lease at all
    server = extender(items(k8s, cluster))
    request = fixture("filter-ncc-true-some-nodes-failed")
    request["NodeNames"] = [SANDBOX_1, SANDBOX_2, GENERAL_1, GENERAL_2]
    request["Pod"]["spec"]["runtimeClassName"] = "runv"
    body = server.post("filter", request if casing == "go" else lower_keys(request)).json()
    assert body["NodeNames"] == [SANDBOX_1]
    assert body["Nodes"] is None and body["Error"] == ""
    assert set(body["FailedAndUnresolvableNodes"]) == {GENERAL_1, GENERAL_2}
    assert keys.runtime_label("runv") in body["FailedAndUnresolvableNodes"][GENERAL_1]
    assert list(body["FailedNodes"]) == [SANDBOX_2]
    assert keys.agent_lease_name(SANDBOX_2) in body["FailedNodes"][SANDBOX_2]


@pytest.mark.parametrize("casing", ["go", "lower"])
def test_node_list_mode_echoes_the_passing_node_objects(extender, k8s, cluster, casing):
    cluster["leases"] = [k8s.lease(SANDBOX_1), k8s.lease(SANDBOX_2, age_seconds=600)]
    server = extender(items(k8s, cluster))
    request = fixture("filter-ncc-false-runv-pod")
    body = server.post("filter", request if casing == "go" else lower_keys(request)).json()
    # With nodeCacheCapable=false the scheduler reads only Nodes: the answer must carry the objects.
    assert body["NodeNames"] is None
    passed = [n for n in request["Nodes"]["items"] if n["metadata"]["name"] == SANDBOX_1]
    assert body["Nodes"] == {"metadata": {}, "items": passed}
    assert "heartbeat stale" in body["FailedNodes"][SANDBOX_2]
    assert body["FailedAndUnresolvableNodes"] == {}


def test_node_list_mode_uses_the_nodes_sent_not_the_cache(extender, k8s, cluster):
    server = extender(items(k8s, cluster))
    request = fixture("filter-ncc-false-runv-pod")
    for node in request["Nodes"]["items"]:
        if node["metadata"]["name"] == SANDBOX_2:
            del node["metadata"]["labels"][keys.runtime_label("runv")]
    body = server.post("filter", request).json()
    assert [n["metadata"]["name"] for n in body["Nodes"]["items"]] == [SANDBOX_1]
    assert list(body["FailedAndUnresolvableNodes"]) == [SANDBOX_2]


@pytest.mark.parametrize("name", ["filter-ncc-true-plain-pod", "filter-ncc-false-plain-pod"])
def test_unsandboxed_pods_pass_unchanged(extender, k8s, cluster, name):
    server = extender(items(k8s, cluster))
    request = fixture(name)
    body = server.post("filter", request).json()
    if request["NodeNames"] is not None:
        assert body["NodeNames"] == request["NodeNames"] and body["Nodes"] is None
    else:
        assert body["Nodes"]["items"] == request["Nodes"]["items"] and body["NodeNames"] is None
    assert body["FailedNodes"] == {} and body["FailedAndUnresolvableNodes"] == {}


def test_answer_never_names_a_node_outside_the_input(extender, k8s, cluster):
    server = extender(items(k8s, cluster))
    request = fixture("filter-ncc-true-runv-pod")
    request["NodeNames"] = [SANDBOX_1, "node-the-extender-never-saw"]
    body = server.post("filter", request).json()
    assert body["NodeNames"] == [SANDBOX_1]
    assert set(body["NodeNames"]) | set(body["FailedNodes"]) | set(body["FailedAndUnresolvableNodes"]) \
        <= set(request["NodeNames"])
    assert "not in the sandgate extender's cache" in body["FailedNodes"]["node-the-extender-never-saw"]


def test_routing_annotation_makes_a_pod_sandboxed(extender, k8s, cluster):
    server = extender(items(k8s, cluster))
    request = fixture("filter-ncc-true-plain-pod")
    request["Pod"]["metadata"]["annotations"] = {keys.DEFAULT_POD_ANNOTATION: keys.SANDBOXED_VALUE}
    body = server.post("filter", request).json()
    assert body["NodeNames"] == [SANDBOX_1]
    assert set(body["FailedAndUnresolvableNodes"]) == {GENERAL_1, GENERAL_2}


# -- prioritize ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["prioritize-ncc-true-runv-pod", "prioritize-ncc-false-runv-pod"])
def test_spread_scores_the_emptier_sandbox_node_higher(extender, k8s, cluster, name):
    cluster["pods"] = [k8s.pod(f"vm-{i}", node=SANDBOX_1, runtime_class="runv", memory="2Gi") for i in range(6)]
    server = extender(items(k8s, cluster))
    request = fixture(name)
    sent = request["NodeNames"] or [n["metadata"]["name"] for n in request["Nodes"]["items"]]
    for casing in (request, lower_keys(request)):
        scores = server.post("prioritize", casing).json()
        assert [s["Host"] for s in scores] == sent
        by_host = {s["Host"]: s["Score"] for s in scores}
        assert all(isinstance(v, int) and 0 <= v <= 10 for v in by_host.values())
        # pool-sandbox-1: 2/8 slots and 4/16Gi free -> 3; pool-sandbox-2: all free -> 10
        assert by_host == {SANDBOX_1: 3, SANDBOX_2: 10}


@pytest.mark.parametrize("name", ["prioritize-ncc-true-plain-pod", "prioritize-ncc-false-plain-pod"])
def test_plain_pods_prefer_nodes_without_sandbox_runtimes(extender, k8s, cluster, name):
    server = extender(items(k8s, cluster))
    scores = {s["Host"]: s["Score"] for s in server.post("prioritize", fixture(name)).json()}
    assert scores == {SANDBOX_1: 0, GENERAL_1: 10, GENERAL_2: 10}


# -- bad requests ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("verb,body,reason", [
    ("filter", b"{not json", "not valid JSON"),
    ("filter", b"", "empty request body"),
    ("filter", b"[1, 2]", "must be a JSON object"),
    ("filter", {"NodeNames": ["a"]}, "ExtenderArgs.Pod is required"),
    ("filter", {"Pod": {"metadata": {"name": "p"}}, "Nodes": None, "NodeNames": None}, "neither Nodes"),
    ("prioritize", {"Pod": {"metadata": {"name": "p"}}, "NodeNames": "pool-sandbox-1"}, "NodeNames must be a list"),
    ("filter", {"Pod": {"metadata": {"name": "p"}}, "Nodes": {"items": [{"metadata": {}}]}},
     "Nodes.items[0].metadata.name is required"),
    ("filter", {"Pod": {"metadata": {"name": "p"}, "spec": {"runtimeClassName": "runv", "containers": [
        {"resources": {"requests": {"memory": "lots"}}}]}}, "NodeNames": []},
     'Pod.spec.containers[0].resources.requests.memory: invalid quantity "lots"'),
    ("bind", {"PodName": "p", "PodNamespace": "ns", "Node": "n"}, "ExtenderBindingArgs.PodUID is required"),
    ("preempt", {"Pod": {"metadata": {"name": "p"}}, "NodeNameToMetaVictims": {"n": {"Pods": [{}]}}},
     "NodeNameToMetaVictims[n].Pods[0].UID is required"),
])
def test_malformed_requests_get_400_with_the_reason(extender, k8s, cluster, verb, body, reason):
    server = extender(items(k8s, cluster))
    resp = server.post(verb, body)
    assert resp.status_code == 400
    assert reason in resp.json()["Error"]


# -- bind ----------------------------------------------------------------------------------------

def filter_as(server, name: str, uid: str, nodes: list[str]) -> dict:
    request = fixture("filter-ncc-true-runv-pod")
    request["Pod"]["metadata"].update(name=name, uid=uid)
    request["NodeNames"] = nodes
    return server.post("filter", request).json()


def test_bind_in_snapshot_mode_uses_the_slot_for_later_filters(extender, k8s, cluster):
    set_capacity(cluster["nodes"], SANDBOX_1, 1)
    server = extender(items(k8s, cluster))
    bind = fixture("bind-runv-pod")
    assert filter_as(server, bind["PodName"], bind["PodUID"], [SANDBOX_1])["NodeNames"] == [SANDBOX_1]
    assert server.post("bind", bind).json() == {"Error": ""}
    assert server.post("bind", lower_keys(bind)).json() == {"Error": ""}  # a retried bind is idempotent
    after = filter_as(server, "next-vm", "0b5cf3c4-0000-4000-8000-000000000001", [SANDBOX_1, SANDBOX_2])
    assert after["NodeNames"] == [SANDBOX_2]
    assert "capacity 1, bound 1, reserved 0" in after["FailedNodes"][SANDBOX_1]
    refused = server.post("bind", {**bind, "PodName": "next-vm", "PodUID": "0b5cf3c4-0000-4000-8000-000000000001"})
    assert "no free runv sandbox slot" in refused.json()["Error"]


def test_bind_of_an_unknown_pod_is_refused(extender, k8s, cluster):
    server = extender(items(k8s, cluster))
    error = server.post("bind", fixture("bind-plain-pod")).json()["Error"]
    assert "unknown to the extender" in error


def test_parallel_binds_never_overcommit(extender, k8s, cluster):
    set_capacity(cluster["nodes"], SANDBOX_1, 5)
    cluster["pods"] = [k8s.pod(f"running-{i}", node=SANDBOX_1, runtime_class="runv") for i in range(2)]
    server = extender(items(k8s, cluster))
    uids = [f"7e57a11e-0000-4000-8000-{i:012d}" for i in range(50)]
    for i, uid in enumerate(uids):
        assert filter_as(server, f"burst-{i}", uid, [SANDBOX_1])["NodeNames"] == [SANDBOX_1]

    def bind(i: int) -> str:
        args = {"PodName": f"burst-{i}", "PodNamespace": "batch-jobs", "PodUID": uids[i], "Node": SANDBOX_1}
        return requests.post(f"{server.url}/bind", json=args, timeout=30).json()["Error"]

    with ThreadPoolExecutor(max_workers=50) as pool:
        errors = list(pool.map(bind, range(50)))
    assert errors.count("") == 3
    assert all("no free runv sandbox slot" in e for e in errors if e)
    status = requests.get(f"{server.url}/readyz", timeout=5).json()
    assert status["pods"] == 5
    metrics = requests.get(f"{server.url}/metrics", timeout=5).text
    assert 'sandgate_extender_binds_total{result="bound"} 3.0' in metrics
    assert 'sandgate_extender_binds_total{result="no_free_slot"} 47.0' in metrics


# -- preempt ---------------------------------------------------------------------------------------

def test_preempt_drops_nodes_that_cannot_run_the_runtime(extender, k8s, cluster):
    request = fixture("preempt-ncc-true")
    set_capacity(cluster["nodes"], SANDBOX_1, 1)
    victim_uid = request["NodeNameToMetaVictims"][SANDBOX_1]["Pods"][0]["UID"]
    cluster["pods"] = [k8s.pod("low-vm", node=SANDBOX_1, runtime_class="runv", uid=victim_uid)]
    for node in cluster["nodes"]:
        if node["metadata"]["name"] == SANDBOX_2:
            del node["metadata"]["labels"][keys.runtime_label("runv")]
    server = extender(items(k8s, cluster))
    for casing in (request, lower_keys(request)):
        body = server.post("preempt", casing).json()
        assert body == {"NodeNameToMetaVictims": {SANDBOX_1: request["NodeNameToMetaVictims"][SANDBOX_1]}}


def test_preempt_for_a_plain_pod_keeps_every_candidate(extender, k8s, cluster):
    server = extender(items(k8s, cluster))
    request = fixture("preempt-ncc-false")
    body = server.post("preempt", request).json()
    expected = {node: {"Pods": [{"UID": p["metadata"]["uid"]} for p in v["Pods"]],
                       "NumPDBViolations": v["NumPDBViolations"]}
                for node, v in request["NodeNameToVictims"].items()}
    assert body == {"NodeNameToMetaVictims": expected}
    assert body == load_fixture("extender/response-preempt-ncc-false.json")


# -- legacy clusters, observability, startup ------------------------------------------------------------

def test_legacy_cluster_counts_sandbox_overhead_against_allocatable(extender, k8s, cluster):
    # pool-sandbox-1 has 4 cpu: 3 runv pods of 1 cpu + 100m overhead each leave 700m, not enough for
    # another 1 cpu + 100m; the scheduler of a 1.15 cluster would only see 3 cpu used.
    cluster["pods"] = [k8s.pod(f"vm-{i}", node=SANDBOX_1, runtime_class="runv", cpu="1") for i in range(3)]
    server = extender(items(k8s, cluster), cluster_version="1.15")
    request = fixture("filter-ncc-true-runv-pod")
    request["Pod"]["spec"].pop("overhead")
    request["Pod"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "1"
    body = server.post("filter", request).json()
    assert body["NodeNames"] == [SANDBOX_2]
    assert "insufficient cpu" in body["FailedNodes"][SANDBOX_1]
    assert requests.get(f"{server.url}/readyz", timeout=5).json()["mode"] == "legacy"


def test_metrics_readyz_and_logs(extender, k8s, cluster):
    server = extender(items(k8s, cluster), cluster_version=None)  # version from the nodes' kubeletVersion
    request = fixture("filter-ncc-true-some-nodes-failed")
    request["Pod"]["spec"]["runtimeClassName"] = "runv"
    server.post("filter", request)
    ready = requests.get(f"{server.url}/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["source"] == "snapshot" and ready.json()["mode"] == "runtimeclass"
    metrics = requests.get(f"{server.url}/metrics", timeout=5).text
    assert ('sandgate_extender_node_decisions_total{reason="runtime_not_advertised",verb="filter",'
            'verdict="unresolvable"} 2.0') in metrics
    assert 'sandgate_extender_request_duration_seconds_count{verb="filter"} 1.0' in metrics
    assert requests.get(f"{server.url}/healthz", timeout=5).text == "ok\n"
    filters = [line for line in server.logs() if line.get("msg") == "filter"]
    assert filters and filters[0]["namespace"] == "batch-jobs" and filters[0]["pod"] == "filter-demo-names"
    assert filters[0]["uid"] == request["Pod"]["metadata"]["uid"]


def test_bad_snapshot_exits_with_a_message(extender, tmp_path, k8s):
    with pytest.raises(AssertionError, match="expected a Kubernetes List"):
        extender({"kind": "Pod"})
    with pytest.raises(AssertionError, match="--cluster-version"):
        nodes = k8s.manifest_nodes()
        for node in nodes:
            del node["status"]["nodeInfo"]
        extender(k8s.snapshot_list(nodes), cluster_version=None)


def test_policy_reload_switches_strategy_and_a_bad_file_keeps_the_last_good(extender, k8s, cluster, tmp_path):
    import time

    import yaml

    from support import EXAMPLE_POLICY

    policy = tmp_path / "policy.yaml"
    policy.write_text(EXAMPLE_POLICY.read_text())
    cluster["pods"] = [k8s.pod(f"vm-{i}", node=SANDBOX_1, runtime_class="runv", memory="2Gi") for i in range(6)]
    server = extender(items(k8s, cluster), policy=policy)
    request = fixture("prioritize-ncc-true-runv-pod")

    def scores():
        return {s["Host"]: s["Score"] for s in server.post("prioritize", request).json()}

    assert scores() == {SANDBOX_1: 3, SANDBOX_2: 10}
    doc = yaml.safe_load(EXAMPLE_POLICY.read_text())
    doc["scheduling"] = {"strategy": "binpack"}
    policy.write_text(yaml.safe_dump(doc))
    deadline = time.monotonic() + 15
    while scores() != {SANDBOX_1: 8, SANDBOX_2: 0}:
        assert time.monotonic() < deadline, "the policy change was not picked up"
        time.sleep(0.3)
    policy.write_text("apiVersion: sandgate.io/v1alpha1\nkind: SandboxPolicy\nscheduling: {strategy: fastest}\n")
    deadline = time.monotonic() + 15
    while not requests.get(f"{server.url}/readyz", timeout=5).json()["policyError"]:
        assert time.monotonic() < deadline, "the bad policy was not noticed"
        time.sleep(0.3)
    assert "scheduling.strategy" in requests.get(f"{server.url}/readyz", timeout=5).json()["policyError"]
    assert scores() == {SANDBOX_1: 8, SANDBOX_2: 0}
