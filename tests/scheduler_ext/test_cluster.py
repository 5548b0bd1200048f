"""Cluster mode through the real command against a stand-in API server over HTTP: list+watch into the
cache, relist after 410 Gone, Binding POSTs with the pod UID, reservations turned into bound pods by the
watch, leader election on a Lease, and serving from the last good cache while the API is unreachable."""

from __future__ import annotations

import time

import pytest
import requests

from sandgate.core import keys
from support import load_fixture

SANDBOX_1, SANDBOX_2 = "pool-sandbox-1", "pool-sandbox-2"


def wait_for(check, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def filter_pod(server, pod: dict, nodes: list[str]) -> dict:
    request = load_fixture("extender/filter-ncc-true-runv-pod.json")
    request["Pod"] = pod
    request["NodeNames"] = nodes
    return server.post("filter", request).json()


@pytest.fixture
def cluster(fake_api, k8s):
    for node in k8s.manifest_nodes():
        if node["metadata"]["name"] == SANDBOX_1:
            node["metadata"]["annotations"][keys.capacity_annotation("runv")] = "2"
        fake_api.put("nodes", node)
    fake_api.put("leases", k8s.lease(SANDBOX_1))  # pool-sandbox-2 has no agent heartbeat
    return fake_api


def start(extender, fake_api, tmp_path):
    return extender(None, "--kubeconfig", str(fake_api.kubeconfig(tmp_path / "kubeconfig")), cluster_version=None)


def readyz(server) -> dict:
    return requests.get(f"{server.url}/readyz", timeout=5).json()


def test_watch_bind_and_lease_leadership(extender, cluster, k8s, tmp_path):
    running = cluster.put("pods", k8s.pod("running", node=SANDBOX_1, runtime_class="runv"))
    pending = cluster.put("pods", k8s.pod("vm-new", runtime_class="runv"))
    server = start(extender, cluster, tmp_path)
    status = readyz(server)
    assert status["source"] == "cluster" and status["mode"] == "runtimeclass"  # 1.24 from /version
    wait_for(lambda: readyz(server)["leader"], "leadership")
    lease = cluster.objects["leases"][f"{keys.DEFAULT_AGENT_NAMESPACE}/sandgate-extender"]
    assert lease["spec"]["holderIdentity"] == readyz(server)["leaderIdentity"]

    answer = filter_pod(server, pending, [SANDBOX_1, SANDBOX_2])
    assert answer["NodeNames"] == [SANDBOX_1]
    assert "not found" in answer["FailedNodes"][SANDBOX_2]

    meta = pending["metadata"]
    bind = {"PodName": meta["name"], "PodNamespace": meta["namespace"], "PodUID": meta["uid"], "Node": SANDBOX_1}
    assert server.post("bind", bind).json() == {"Error": ""}
    posted = cluster.bindings[-1]
    assert posted["metadata"] == {"name": "vm-new", "namespace": "batch-jobs", "uid": meta["uid"]}
    assert posted["target"] == {"apiVersion": "v1", "kind": "Node", "name": SANDBOX_1}
    # the watch delivers the bound pod: the reservation becomes a bound pod, the node is now full
    wait_for(lambda: readyz(server)["reservations"] == 0, "the reservation to turn into a bound pod")
    third = k8s.pod("vm-third", runtime_class="runv")
    assert "capacity 2, bound 2, reserved 0" in filter_pod(server, third, [SANDBOX_1])["FailedNodes"][SANDBOX_1]
    # a deleted pod frees its slot
    cluster.delete("pods", running)
    wait_for(lambda: filter_pod(server, third, [SANDBOX_1])["NodeNames"] == [SANDBOX_1], "the slot to free up")


def test_relists_after_410_gone(extender, cluster, k8s, tmp_path):
    cluster.gone_next_watch.update({"pods", "nodes"})
    server = start(extender, cluster, tmp_path)
    cluster.put("pods", k8s.pod("late-1", node=SANDBOX_1, runtime_class="runv"))
    cluster.put("pods", k8s.pod("late-2", node=SANDBOX_1, runtime_class="runv"))
    probe = k8s.pod("probe", runtime_class="runv")
    wait_for(lambda: SANDBOX_1 in filter_pod(server, probe, [SANDBOX_1])["FailedNodes"], "the relisted pods")
    assert any(line.get("msg") == "watch expired (410 Gone); relisting" for line in server.logs())


def test_keeps_serving_from_cache_while_the_api_is_down(extender, cluster, k8s, tmp_path):
    server = start(extender, cluster, tmp_path)
    cluster.down = True
    status = wait_for(lambda: (s := readyz(server))["stale"] and s, "staleness to be reported")
    assert status["ready"] is True
    assert any(s["error"] for s in status["sync"].values())
    assert filter_pod(server, k8s.pod("vm", runtime_class="runv"), [SANDBOX_1])["NodeNames"] == [SANDBOX_1]
    metrics = requests.get(f"{server.url}/metrics", timeout=5).text
    stale = [line for line in metrics.splitlines()
             if line.startswith('sandgate_extender_cache_staleness_seconds{resource="pods"}')]
    assert stale and float(stale[0].split()[-1]) > 0


def test_a_refused_binding_releases_the_slot(extender, cluster, k8s, tmp_path):
    pods = [cluster.put("pods", k8s.pod(f"vm-{i}", runtime_class="runv")) for i in range(2)]
    server = start(extender, cluster, tmp_path)
    wait_for(lambda: readyz(server)["leader"], "leadership")
    cluster.binding_status = 409
    args = [{"PodName": p["metadata"]["name"], "PodNamespace": "batch-jobs", "PodUID": p["metadata"]["uid"],
             "Node": SANDBOX_1} for p in pods]
    error = server.post("bind", args[0]).json()["Error"]
    assert "the API server refused the binding: 409" in error
    assert readyz(server)["reservations"] == 0
    cluster.binding_status = 201
    assert server.post("bind", args[0]).json() == {"Error": ""}
    assert server.post("bind", args[1]).json() == {"Error": ""}
