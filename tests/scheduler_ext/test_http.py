"""The extender protocol through the real command (`python3 -m sandgate extender --snapshot ...`) and real
HTTP, fed with the kube-scheduler v1.24 requests captured in tests/fixtures."""

from __future__ import annotations

import pytest
import requests

from sandgate.core import keys
from support import load_fixture

SANDBOX_1, SANDBOX_2, GENERAL_1, GENERAL_2 = "pool-sandbox-1", "pool-sandbox-2", "pool-general-1", "pool-general-2"


def fixture(name: str) -> dict:
    """A captured request; its Pod, when it runs in runv, requests the runv slot as the webhook now routes it."""
    request = load_fixture(f"extender/{name}.json")
    pod = request.get("Pod")
    if pod and pod["spec"].get("runtimeClassName") == "runv":
        with_slot(pod, "runv")
    return request


def with_slot(pod: dict, handler: str) -> dict:
    resources = pod["spec"]["containers"][0].setdefault("resources", {})
    for kind in ("requests", "limits"):
        resources.setdefault(kind, {})[keys.sandbox_resource(handler)] = "1"
    return pod


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
    with_slot(request["Pod"], "runv")
    body = server.post("filter", request if casing == "go" else lower_keys(request)).json()
    assert body["NodeNames"] == [SANDBOX_1]
    assert body["Nodes"] is None and body["Error"] == ""
    # Preemption can neither install a runtime nor revive an agent: unresolvable (kube-scheduler >= 1.20).
    assert set(body["FailedAndUnresolvableNodes"]) == {GENERAL_1, GENERAL_2, SANDBOX_2}
    assert keys.runtime_label("runv") in body["FailedAndUnresolvableNodes"][GENERAL_1]
    assert keys.agent_lease_name(SANDBOX_2) in body["FailedAndUnresolvableNodes"][SANDBOX_2]
    assert body["FailedNodes"] == {}


@pytest.mark.parametrize("version", ["1.14", "1.19"])
def test_schedulers_before_1_20_get_every_failure_in_failed_nodes(extender, k8s, cluster, version):
    """FailedAndUnresolvableNodes is unknown before 1.20: nodes put there would be silently kept."""
    cluster["leases"] = [k8s.lease(SANDBOX_1)]
    server = extender(items(k8s, cluster), cluster_version=version)
    request = fixture("filter-ncc-true-some-nodes-failed")
    request["NodeNames"] = [SANDBOX_1, SANDBOX_2, GENERAL_1, GENERAL_2]
    request["Pod"]["spec"]["runtimeClassName"] = "runv"
    request["Pod"]["spec"].pop("overhead", None)
    with_slot(request["Pod"], "runv")
    body = server.post("filter", request).json()
    assert body["NodeNames"] == [SANDBOX_1]
    assert set(body["FailedNodes"]) == {GENERAL_1, GENERAL_2, SANDBOX_2}
    assert body["FailedAndUnresolvableNodes"] == {}


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
    assert "heartbeat stale" in body["FailedAndUnresolvableNodes"][SANDBOX_2]
    assert body["FailedNodes"] == {}


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


def test_a_pod_the_webhook_did_not_route_is_not_sandboxed(extender, k8s, cluster):
    """The annotation alone (say, where allowPodOptIn is off) or a slot without its runtime class is not routing."""
    server = extender(items(k8s, cluster))
    annotated = fixture("filter-ncc-true-plain-pod")
    annotated["Pod"]["metadata"]["annotations"] = {keys.DEFAULT_POD_ANNOTATION: keys.SANDBOXED_VALUE}
    slot_only = fixture("filter-ncc-true-plain-pod")
    with_slot(slot_only["Pod"], "runv")
    for request in (annotated, slot_only):
        body = server.post("filter", request).json()
        assert body["NodeNames"] == request["NodeNames"]
        assert body["FailedNodes"] == {} and body["FailedAndUnresolvableNodes"] == {}


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
        # pool-sandbox-1: 2 of 8 slots free -> round(2.5) = 3; pool-sandbox-2: all free -> 10
        assert by_host == {SANDBOX_1: 3, SANDBOX_2: 10}


@pytest.mark.parametrize("name", ["prioritize-ncc-true-plain-pod", "prioritize-ncc-false-plain-pod"])
def test_plain_pods_get_neutral_scores(extender, k8s, cluster, name):
    """Only sandboxed pods reach the extender (managedResources); any other pod is not its business."""
    server = extender(items(k8s, cluster))
    scores = {s["Host"]: s["Score"] for s in server.post("prioritize", fixture(name)).json()}
    assert scores == {SANDBOX_1: 0, GENERAL_1: 0, GENERAL_2: 0}


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
    ("filter", {"Pod": {"metadata": {"name": "p"}, "spec": {"runtimeClassName": "runv", "containers": [
        {"resources": {"requests": {keys.sandbox_resource("runv"): "NaN"}}}]}}, "NodeNames": []},
     f'{keys.sandbox_resource("runv")}: invalid quantity "NaN"'),
    ("filter", {"Pod": {"metadata": {"name": "p"}, "spec": {"runtimeClassName": "runv", "containers": [
        {"resources": {"requests": {keys.sandbox_resource("runv"): "2e6"}}}]}}, "NodeNames": []},
     "is not a slot count"),
    ("preempt", {"Pod": {"metadata": {"name": "p"}}, "NodeNameToMetaVictims": {"n": {"Pods": [{}]}}},
     "NodeNameToMetaVictims[n].Pods[0].UID is required"),
])
def test_malformed_requests_get_400_with_the_reason(extender, k8s, cluster, verb, body, reason):
    server = extender(items(k8s, cluster))
    resp = server.post(verb, body)
    assert resp.status_code == 400
    assert reason in resp.json()["Error"]


# -- no bind ---------------------------------------------------------------------------------------

def test_bind_is_gone(extender, k8s, cluster):
    """kube-scheduler binds: /bind answers 404 to anyone who reaches the port, and binds nothing."""
    server = extender(items(k8s, cluster))
    resp = server.post("bind", fixture("bind-runv-pod"))
    assert resp.status_code == 404 and "/bind" in resp.json()["Error"]


# -- preempt ---------------------------------------------------------------------------------------

def test_preempt_drops_nodes_that_cannot_run_the_runtime(extender, k8s, cluster):
    request = fixture("preempt-ncc-true")
    with_slot(request["Pod"], "runv")
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


def test_preempt_without_node_cache_judges_the_nodes_the_scheduler_sent(extender, k8s, cluster):
    """nodeCacheCapable=false: the Node objects of the pod's filter call, not the cache, decide."""
    server = extender(items(k8s, cluster))
    sent = fixture("filter-ncc-false-runv-pod")
    for node in sent["Nodes"]["items"]:
        if node["metadata"]["name"] == SANDBOX_2:
            del node["metadata"]["labels"][keys.runtime_label("runv")]
    assert [n["metadata"]["name"] for n in server.post("filter", sent).json()["Nodes"]["items"]] == [SANDBOX_1]
    request = fixture("preempt-ncc-false")
    request["Pod"] = sent["Pod"]
    victims = request["NodeNameToVictims"][SANDBOX_1]  # the captured victims, offered on both runv nodes
    request["NodeNameToVictims"] = {SANDBOX_1: victims, SANDBOX_2: victims}
    # The cache says pool-sandbox-2 runs runv; the Node the scheduler sent says it does not.
    kept = server.post("preempt", request).json()["NodeNameToMetaVictims"]
    assert set(kept) == {SANDBOX_1}


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
    with_slot(request["Pod"], "runv")
    server.post("filter", request)
    ready = requests.get(f"{server.url}/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["source"] == "snapshot" and ready.json()["mode"] == "runtimeclass"
    assert ready.json()["skippedObjects"] == 0
    metrics = requests.get(f"{server.url}/metrics", timeout=5).text
    assert ('sandgate_extender_node_decisions_total{reason="runtime_not_advertised",verb="filter",'
            'verdict="unresolvable"} 2.0') in metrics
    assert 'sandgate_extender_request_duration_seconds_count{verb="filter"} 1.0' in metrics
    assert requests.get(f"{server.url}/healthz", timeout=5).text == "ok\n"
    filters = [line for line in server.logs() if line.get("msg") == "filter"]
    assert filters and filters[0]["namespace"] == "batch-jobs" and filters[0]["pod"] == "filter-demo-names"
    assert filters[0]["uid"] == request["Pod"]["metadata"]["uid"]


def test_hostile_objects_in_a_snapshot_are_skipped_and_shown(extender, k8s, cluster):
    """One unreadable Node, Pod or Lease must neither stop the extender nor hide the others."""
    hostile = k8s.manifest_nodes()[0]
    hostile["metadata"]["name"] = "hostile-node"
    hostile["metadata"]["annotations"][keys.capacity_annotation("runv")] = "\u00b2"
    hostile["status"]["allocatable"]["memory"] = "NaN"
    bad_pod = k8s.pod("huge", node=SANDBOX_1, cpu="1e999990")
    bad_pod["spec"]["containers"][0]["resources"]["requests"]["memory"] = "Inf"
    bad_lease = k8s.lease(SANDBOX_2)
    bad_lease["spec"]["renewTime"] = "\u00b2"
    cluster["nodes"].append(hostile)
    cluster["pods"] = [bad_pod]
    cluster["leases"].append(bad_lease)
    server = extender(items(k8s, cluster))
    ready = requests.get(f"{server.url}/readyz", timeout=5).json()
    assert ready["ready"] is True and ready["skippedObjects"] == 3
    assert "hostile-node" in ready["skipped"]["nodes"]["objects"]
    assert "batch-jobs/huge" in ready["skipped"]["pods"]["objects"]
    assert ready["skipped"]["leases"]["count"] == 1
    body = server.post("filter", fixture("filter-ncc-true-runv-pod")).json()
    assert body["NodeNames"] == [SANDBOX_2, SANDBOX_1]
    assert 'sandgate_extender_skipped_objects{resource="nodes"} 1.0' in \
        requests.get(f"{server.url}/metrics", timeout=5).text


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
