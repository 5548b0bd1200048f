"""Cluster mode through the real command against a stand-in API server over HTTP: list+watch into the
cache (sandgate.core.informer), relist after 410 Gone, hostile objects skipped without stopping the
watch, and serving from the last good cache while the API is unreachable."""

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


def scores(server, pod: dict, nodes: list[str]) -> dict:
    request = {"Pod": pod, "NodeNames": nodes}
    return {s["Host"]: s["Score"] for s in server.post("prioritize", request).json()}


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


def test_the_watch_keeps_the_cache_current(extender, cluster, k8s, tmp_path):
    running = cluster.put("pods", k8s.pod("running", node=SANDBOX_1, runtime_class="runv"))
    server = start(extender, cluster, tmp_path)
    status = readyz(server)
    assert status["source"] == "cluster" and status["mode"] == "runtimeclass"  # 1.24 from /version
    pending = k8s.pod("vm-new", runtime_class="runv")
    answer = filter_pod(server, pending, [SANDBOX_1, SANDBOX_2])
    assert answer["NodeNames"] == [SANDBOX_1]
    assert "not found" in answer["FailedAndUnresolvableNodes"][SANDBOX_2]
    assert scores(server, pending, [SANDBOX_1]) == {SANDBOX_1: 5}  # 1 of 2 slots used
    # the scheduler bound another pod: the watch brings it, the node scores as full
    cluster.put("pods", k8s.pod("second", node=SANDBOX_1, runtime_class="runv"))
    wait_for(lambda: scores(server, pending, [SANDBOX_1]) == {SANDBOX_1: 0}, "the bound pod to count")
    cluster.delete("pods", running)
    wait_for(lambda: scores(server, pending, [SANDBOX_1]) == {SANDBOX_1: 5}, "the deleted pod to free a slot")
    cluster.put("leases", k8s.lease(SANDBOX_2))
    wait_for(lambda: filter_pod(server, pending, [SANDBOX_2])["NodeNames"] == [SANDBOX_2], "the new heartbeat")


def test_a_hostile_object_is_skipped_and_the_watch_goes_on(extender, cluster, k8s, tmp_path):
    server = start(extender, cluster, tmp_path)
    node = next(n for n in k8s.manifest_nodes() if n["metadata"]["name"] == SANDBOX_1)
    node["metadata"]["annotations"][keys.capacity_annotation("runv")] = "\u00b2"
    node["status"]["allocatable"]["cpu"] = "NaN"
    cluster.put("nodes", node)
    cluster.put("pods", k8s.pod("huge", node=SANDBOX_1, cpu="1e999990", memory="Inf"))
    status = wait_for(lambda: (s := readyz(server))["skippedObjects"] == 2 and s, "the objects to be skipped")
    assert "status.allocatable.cpu" in status["skipped"]["nodes"]["objects"][SANDBOX_1]
    assert status["ready"] is True and not status["stale"]
    # a later event still flows: the watch was not stuck on the bad objects
    cluster.put("leases", k8s.lease(SANDBOX_2))
    probe = k8s.pod("probe", runtime_class="runv")
    wait_for(lambda: filter_pod(server, probe, [SANDBOX_2])["NodeNames"] == [SANDBOX_2], "a later event")
    # the unreadable node is not trusted from before: it has no entry until it is readable again
    assert "not in the sandgate extender's cache" in filter_pod(server, probe, [SANDBOX_1])["FailedNodes"][SANDBOX_1]
    node["status"]["allocatable"]["cpu"] = "4"
    node["metadata"]["annotations"][keys.capacity_annotation("runv")] = "2"
    cluster.put("nodes", node)
    wait_for(lambda: readyz(server)["skipped"]["nodes"]["count"] == 0, "the repaired node")
    assert filter_pod(server, probe, [SANDBOX_1])["NodeNames"] == [SANDBOX_1]
    warnings = [line for line in server.logs() if line.get("msg") == "skipping an object that cannot be read"]
    assert len(warnings) == 2


def test_relists_after_410_gone(extender, cluster, k8s, tmp_path):
    cluster.gone_next_watch.update({"pods", "nodes"})
    server = start(extender, cluster, tmp_path)
    cluster.put("pods", k8s.pod("late-1", node=SANDBOX_1, runtime_class="runv"))
    cluster.put("pods", k8s.pod("late-2", node=SANDBOX_1, runtime_class="runv"))
    probe = k8s.pod("probe", runtime_class="runv")
    wait_for(lambda: scores(server, probe, [SANDBOX_1]) == {SANDBOX_1: 0}, "the relisted pods")
    assert any(line.get("msg") == "watch expired (410 Gone); relisting" for line in server.logs())


def test_keeps_serving_from_cache_while_the_api_is_down(extender, cluster, k8s, tmp_path):
    server = start(extender, cluster, tmp_path)
    cluster.down = True
    # Each resource notices on its own (its watch ends, its relist fails): wait for the pods.
    status = wait_for(lambda: ((s := readyz(server))["sync"]["pods"]["staleSeconds"] or 0) > 0 and s,
                      "staleness of the pods to be reported")
    assert status["ready"] is True and status["stale"] is True
    assert status["sync"]["pods"]["error"]
    assert filter_pod(server, k8s.pod("vm", runtime_class="runv"), [SANDBOX_1])["NodeNames"] == [SANDBOX_1]
    metrics = requests.get(f"{server.url}/metrics", timeout=5).text
    stale = [line for line in metrics.splitlines()
             if line.startswith('sandgate_extender_cache_staleness_seconds{resource="pods"}')]
    assert stale and float(stale[0].split()[-1]) > 0
