"""The sandbox inventory (over a CRI stand-in), its metrics families, /sandboxes, and agent.metrics keys."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cri_standin import CriStandIn, FakeSandbox
from node_agent.cgroups import BlockIO, CgroupUsage, NetDev
from node_agent.metrics import AgentMetrics, MetricsServer
from node_agent.sandbox_metrics import SandboxCollector, families
from node_agent.sandboxes import (Container, Inventory, Sandbox, SandboxFacts, SandboxInventory, exported,
                                  facts_from_status, with_counters, MAX_INTERFACES)
from sandgate.core import keys
from sandgate.core.policy import PolicyError, parse_policy

POLICY = {"apiVersion": "sandgate.io/v1alpha1", "kind": "SandboxPolicy", "defaultProfile": "kata",
          "profiles": {"kata": {"runtimeClassName": "kata", "handler": "kata"}}}

# containerd 1.6.20's verbose PodSandboxStatus info["info"] for a bridged pod (trimmed to what we read).
BRIDGED_INFO = {
    "pid": 18915, "processStatus": "running", "netNamespaceClosed": False, "runtimeHandler": "kata",
    "runtimeType": "io.containerd.runc.v2",
    "config": {"metadata": {"name": "bridged", "uid": "3952", "namespace": "team-a"}, "hostname": "bridged",
               "log_directory": "/var/log/pods/team-a_bridged_3952",
               "linux": {"cgroup_parent": "/kubepods/pod3952", "overhead": {"memory_limit_in_bytes": 167772160}}},
    "runtimeSpec": {"linux": {"cgroupsPath": "/kubepods/pod3952/297aef",
                              "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                                             {"type": "network", "path": "/var/run/netns/cni-db88"}]}},
}


def policy(**agent):
    return parse_policy({**POLICY, "agent": agent} if agent else POLICY)


def status_response(info, annotations=None) -> SimpleNamespace:
    return SimpleNamespace(info={"info": info if isinstance(info, str) else json.dumps(info)},
                           status=SimpleNamespace(annotations=annotations or {}))


def test_facts_from_containerd_verbose_status():
    assert facts_from_status(status_response(BRIDGED_INFO)) == SandboxFacts(
        pid=18915, netns="/var/run/netns/cni-db88", cgroup="/kubepods/pod3952/297aef",
        log_directory="/var/log/pods/team-a_bridged_3952", overhead_memory_bytes=167772160)


def test_host_network_sandbox_has_no_netns_of_its_own():
    info = json.loads(json.dumps(BRIDGED_INFO))
    info["runtimeSpec"]["linux"]["namespaces"] = [{"type": "pid"}, {"type": "ipc"}, {"type": "mount"}]
    assert facts_from_status(status_response(info)).netns is None


@pytest.mark.parametrize("info", ["not json", "[]", {"pid": "12", "runtimeSpec": []}, {"pid": True}, {}])
def test_odd_verbose_info_yields_no_facts_instead_of_failing(info):
    facts = facts_from_status(status_response(info))
    assert (facts.pid, facts.netns, facts.cgroup) == (None, None, None)


def sandbox(handler="kata", state="SANDBOX_READY", name="p1", **kw) -> Sandbox:
    usage = CgroupUsage(1000, 2.5, (BlockIO("254:0", 4096, 8192, 1, 2),))
    return Sandbox(f"id-{name}", "team-a", name, f"uid-{name}", handler, state,
                   SandboxFacts(pid=1, netns="/n", cgroup="/kubepods/podu/id"),
                   (Container("c1", "main", "CONTAINER_RUNNING", "/var/log/pods/x/main/0.log"),),
                   (NetDev("eth0", 100, 2, 0, 1, 200, 3, 0, 0),), usage, **kw)


def scrape(inventory: Inventory, pol) -> str:
    registry = CollectorRegistry()
    registry.register(SandboxCollector(lambda: (inventory, pol)))
    return generate_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) -> value of a Prometheus text exposition."""
    return {(smp.name, frozenset(smp.labels.items())): smp.value
            for family in text_string_to_metric_families(text) for smp in family.samples}


def test_metrics_have_the_contract_names_and_labels():
    text = scrape(Inventory((sandbox(),), None, 1.0), policy())
    base = {"namespace": "team-a", "pod": "p1", "uid": "uid-p1", "handler": "kata"}
    eth0 = frozenset({**base, "interface": "eth0"}.items())
    disk = frozenset({**base, "device": "254:0"}.items())
    info, none, base = frozenset({**base, "sandbox_id": "id-p1"}.items()), frozenset(), frozenset(base.items())
    expected = {
        ("sandgate_sandbox_info", info): 1,
        ("sandgate_sandbox_network_receive_bytes_total", eth0): 100,
        ("sandgate_sandbox_network_transmit_bytes_total", eth0): 200,
        ("sandgate_sandbox_network_receive_packets_total", eth0): 2,
        ("sandgate_sandbox_network_transmit_packets_total", eth0): 3,
        ("sandgate_sandbox_network_receive_errors_total", eth0): 0,
        ("sandgate_sandbox_network_transmit_errors_total", eth0): 0,
        ("sandgate_sandbox_network_receive_drops_total", eth0): 1,
        ("sandgate_sandbox_network_transmit_drops_total", eth0): 0,
        ("sandgate_sandbox_block_read_bytes_total", disk): 4096,
        ("sandgate_sandbox_block_write_bytes_total", disk): 8192,
        ("sandgate_sandbox_block_read_ops_total", disk): 1,
        ("sandgate_sandbox_block_write_ops_total", disk): 2,
        ("sandgate_sandbox_memory_working_set_bytes", base): 1000,
        ("sandgate_sandbox_cpu_seconds_total", base): 2.5,
        ("sandgate_agent_sandbox_inventory_up", none): 1,
        ("sandgate_agent_sandbox_inventory_errors_total", none): 0,
        ("sandgate_agent_sandbox_inventory_last_success_timestamp_seconds", none): 1.0,
    }
    assert samples(text) == expected
    assert "# TYPE sandgate_sandbox_cpu_seconds_total counter" in text.splitlines()
    assert "# TYPE sandgate_sandbox_memory_working_set_bytes gauge" in text.splitlines()


def test_only_policy_handlers_unless_all_sandboxes_and_only_ready_ones():
    inventory = Inventory((sandbox(), sandbox("runc", name="plain"), sandbox(state="SANDBOX_NOTREADY", name="old")))
    assert [s.pod for s in exported(inventory, policy())] == ["p1"]
    assert [s.pod for s in exported(inventory, policy(metrics={"allSandboxes": True}))] == ["p1", "plain"]
    text = scrape(inventory, policy())
    assert 'pod="plain"' not in text and 'pod="old"' not in text


def test_series_of_a_gone_sandbox_disappear():
    current = [Inventory((sandbox(), sandbox(name="p2")), None, 1.0)]
    registry = CollectorRegistry()
    registry.register(SandboxCollector(lambda: (current[0], policy())))
    assert 'pod="p2"' in generate_latest(registry).decode()
    current[0] = Inventory((sandbox(),), None, 2.0)
    after = generate_latest(registry).decode()
    assert 'pod="p2"' not in after and 'pod="p1"' in after


def test_no_counters_no_series():
    bare = Sandbox("id", "ns", "p", "u", "kata", "SANDBOX_READY")
    names = {m.name: m.samples for m in families(Inventory((bare,)), policy())}
    assert len(names["sandgate_sandbox_info"]) == 1
    assert names["sandgate_sandbox_memory_working_set_bytes"] == []
    assert names["sandgate_sandbox_network_receive_bytes"] == []


def test_policy_keys_for_the_inventory():
    assert policy().agent.all_sandboxes is False
    assert policy(metrics={"allSandboxes": True}).agent.all_sandboxes is True
    with pytest.raises(PolicyError) as err:
        policy(metrics={"allSandboxes": "yes", "everything": 1})
    assert set(err.value.errors) == {
        "agent.metrics.allSandboxes: must be true or false, got 'yes'",
        "agent.metrics.everything: unknown key (allowed: allSandboxes)"}
    with pytest.raises(PolicyError, match="agent.metrics: must be a mapping"):
        policy(metrics=True)


@pytest.fixture
def short_tmp():
    """A short directory for unix sockets (107-byte path limit)."""
    d = Path("/tmp") / f"sg-inv-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


def fake(i: int, tmp: Path, **kw) -> FakeSandbox:
    return FakeSandbox(f"sb{i}", f"pod{i}", f"uid-{i}", pid=os.getpid(), netns="/proc/self/ns/net",
                       cgroups_path=f"/sandgate-none/pod{i}/sb{i}", log_directory=f"{tmp}/logs/pod{i}", **kw)


def test_inventory_over_cri_lists_caches_and_forgets(short_tmp):
    sandboxes = [fake(1, short_tmp), fake(2, short_tmp, handler="", containers=("a", "b"))]
    server = CriStandIn(short_tmp / "cri.sock", sandboxes)
    inventory = SandboxInventory(lambda: short_tmp / "cri.sock", Path("/"), deadline=5)
    try:
        first = inventory.refresh()
        assert first.error is None and first.failures == 0
        got = {s.id: s for s in first.sandboxes}
        assert got["sb1"].handler == "kata" and got["sb2"].handler == "runc"  # "" is the runtime's default
        assert [c.log_path for c in got["sb2"].containers] == [f"{short_tmp}/logs/pod2/a/0.log",
                                                                f"{short_tmp}/logs/pod2/b/0.log"]
        assert got["sb1"].facts.pid == os.getpid() and got["sb1"].network  # our own namespace's interfaces
        assert got["sb1"].to_json()["containers"] == [{"id": "sb1-main", "name": "main", "state": "CONTAINER_RUNNING",
                                                       "logPath": f"{short_tmp}/logs/pod1/main/0.log"}]
        inventory.refresh()
        # Facts and log paths never change for an id: asked once, not every refresh.
        assert server.calls["PodSandboxStatus"] == 2 and server.calls["ContainerStatus"] == 3
        assert server.calls["ListPodSandbox"] == 2
        sandboxes.pop(0)
        assert [s.id for s in inventory.refresh().sandboxes] == ["sb2"]
        assert set(inventory._facts) == {"sb2"} and set(inventory._log_paths) == {"sb2-a", "sb2-b"}
    finally:
        inventory.close()
        server.close()


def test_unreachable_cri_keeps_the_last_list_and_counts(short_tmp):
    server = CriStandIn(short_tmp / "cri.sock", [fake(1, short_tmp)])
    inventory = SandboxInventory(lambda: short_tmp / "cri.sock", Path("/"), deadline=5)
    try:
        assert len(inventory.refresh().sandboxes) == 1
        server.close()
        (short_tmp / "cri.sock").unlink(missing_ok=True)
        failed = inventory.refresh()
        assert [s.id for s in failed.sandboxes] == ["sb1"] and "UNAVAILABLE" in failed.error and failed.failures == 1
        found = samples(scrape(failed, policy()))
        assert found[("sandgate_agent_sandbox_inventory_up", frozenset())] == 0
        assert found[("sandgate_agent_sandbox_inventory_errors_total", frozenset())] == 1
    finally:
        inventory.close()


def test_a_state_from_a_newer_cri_is_shown_not_fatal():
    from node_agent.cri.client import api
    from node_agent.sandboxes import container_from, sandbox_from

    item = api.PodSandbox(id="s", metadata=api.PodSandboxMetadata(name="p", uid="u", namespace="n"))
    item.state = 7  # proto3 keeps enum values it does not know
    container = api.Container(id="c", metadata=api.ContainerMetadata(name="main"))
    container.state = 9
    found = sandbox_from(item, SandboxFacts(), [container_from(container, "/l")], "runc")
    assert (found.state, found.handler, found.containers[0].state) == ("UNKNOWN_7", "runc", "UNKNOWN_9")


def test_a_new_socket_from_the_policy_gets_a_new_channel(short_tmp):
    first = CriStandIn(short_tmp / "a.sock", [fake(1, short_tmp)])
    second = CriStandIn(short_tmp / "b.sock", [fake(2, short_tmp), fake(3, short_tmp)])
    socket = [short_tmp / "a.sock"]
    inventory = SandboxInventory(lambda: socket[0], Path("/"), deadline=5)
    try:
        assert [s.id for s in inventory.refresh().sandboxes] == ["sb1"]
        socket[0] = short_tmp / "b.sock"  # e.g. agent.criEndpoint changed in a reloaded policy
        assert [s.id for s in inventory.refresh().sandboxes] == ["sb2", "sb3"]
        assert second.calls["Status"] == 1  # the default handler is asked of the new runtime
    finally:
        inventory.close()
        first.close()
        second.close()


def test_slow_cri_costs_one_deadline(short_tmp):
    server = CriStandIn(short_tmp / "cri.sock", [fake(1, short_tmp)], delay=30)
    inventory = SandboxInventory(lambda: short_tmp / "cri.sock", Path("/"), deadline=0.5)
    try:
        failed = inventory.refresh()
        assert failed.sandboxes == () and "DEADLINE_EXCEEDED" in failed.error and failed.failures == 1
    finally:
        inventory.close()
        server.close()


def test_sandboxes_endpoint_serves_the_inventory_document():
    inventory = Inventory((sandbox(),), None, 123.0)
    server = MetricsServer(AgentMetrics(), "127.0.0.1", 0, 60, sandboxes=inventory.document)
    server.start()
    base = f"http://127.0.0.1:{server.httpd.server_address[1]}"
    try:
        answer = requests.get(f"{base}/sandboxes", timeout=5)
        assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
        body = answer.json()
        assert body == {"sandboxes": inventory.to_json(), "error": None, "refreshedAt": 123.0}
        assert body["sandboxes"][0]["containers"][0]["logPath"] == "/var/log/pods/x/main/0.log"
        assert requests.post(f"{base}/sandboxes", timeout=5).status_code == 501  # read-only
    finally:
        server.stop()


MI = 1024 * 1024


def test_overhead_ratio_is_memory_beyond_requests_over_the_admitted_overhead():
    facts = SandboxFacts(pid=1, netns=None, cgroup="/kubepods/podu/id", overhead_memory_bytes=160 * MI,
                         memory_requests_bytes=64 * MI)
    measured = Sandbox("id", "team-a", "p", "u", "kata", "SANDBOX_READY", facts, usage=CgroupUsage(300 * MI, 1.0, ()))
    assert measured.overhead_ratio == (300 - 64) / 160
    found = samples(scrape(Inventory((measured,), None, 1.0), policy()))
    labels = frozenset({"namespace": "team-a", "pod": "p", "uid": "u", "handler": "kata"}.items())
    assert found[("sandgate_sandbox_overhead_ratio", labels)] == (300 - 64) / 160
    no_requests = SandboxFacts(overhead_memory_bytes=160 * MI)
    no_overhead = SandboxFacts(memory_requests_bytes=64 * MI)
    for unknown in (no_requests, no_overhead):
        sandbox = Sandbox("id", "n", "p", "u", "kata", "SANDBOX_READY", unknown, usage=CgroupUsage(300 * MI))
        assert sandbox.overhead_ratio is None
        assert not [k for k in samples(scrape(Inventory((sandbox,)), policy())) if k[0] == "sandgate_sandbox_overhead_ratio"]


def padding(record) -> dict[str, str]:
    return {keys.PADDING_ANNOTATION: record if isinstance(record, str) else json.dumps(record)}


def test_requests_and_padded_overhead_come_from_the_webhooks_record_in_cri():
    # RuntimeClass mode with a request-dependent rule: spec.overhead (podFixed, in CRI linux.overhead)
    # plus the memory the webhook padded; the record's basis is the pod's own request.
    record = {"memory": "32Mi", "basis": {"memory": "512Mi"}, "containers": ["app"]}
    facts = facts_from_status(status_response(BRIDGED_INFO, padding(record)))
    assert (facts.overhead_memory_bytes, facts.memory_requests_bytes) == (160 * MI + 32 * MI, 512 * MI)
    # Legacy mode: no spec.overhead, the whole overhead is padding.
    legacy = json.loads(json.dumps(BRIDGED_INFO))
    del legacy["config"]["linux"]["overhead"]
    record = {"cpu": "250m", "memory": "160Mi", "basis": {"cpu": "1", "memory": "64Mi"}, "containers": ["app"]}
    facts = facts_from_status(status_response(legacy, padding(record)))
    assert (facts.overhead_memory_bytes, facts.memory_requests_bytes) == (160 * MI, 64 * MI)


@pytest.mark.parametrize("record", [
    None, "not json", "[]", {"cpu": "250m", "basis": {"cpu": "1"}}, {"memory": "32Mi"},
    {"memory": "32Mi", "basis": {"cpu": "1"}}, {"memory": "1e999990", "basis": {"memory": "64Mi"}},
    {"memory": "32Mi", "basis": {"memory": "-64Mi"}}, {"memory": "32Mi", "basis": "64Mi"},
    {"memory": ["32Mi"], "basis": {"memory": "64Mi"}}])
def test_without_a_usable_memory_record_the_requests_are_unknown_and_no_ratio(record):
    facts = facts_from_status(status_response(BRIDGED_INFO, padding(record) if record is not None else {}))
    assert facts.memory_requests_bytes is None
    assert facts.overhead_memory_bytes == 160 * MI  # spec.overhead alone
    sandbox = Sandbox("id", "n", "p", "u", "kata", "SANDBOX_READY", facts, usage=CgroupUsage(300 * MI))
    assert sandbox.overhead_ratio is None


def test_the_record_reaches_the_inventory_over_cri(short_tmp):
    record = {"memory": "96Mi", "basis": {"memory": "64Mi"}, "containers": ["main"]}
    sandboxes = [fake(1, short_tmp, overhead_memory=64 * MI, annotations=padding(record)), fake(2, short_tmp)]
    server = CriStandIn(short_tmp / "cri.sock", sandboxes)
    inventory = SandboxInventory(lambda: short_tmp / "cri.sock", Path("/"), deadline=5)
    try:
        got = {s.pod: s.to_json()["counters"] for s in inventory.refresh().sandboxes}
        assert (got["pod1"]["memoryRequestsBytes"], got["pod1"]["overheadMemoryBytes"]) == (64 * MI, 160 * MI)
        assert (got["pod2"]["memoryRequestsBytes"], got["pod2"]["overheadMemoryBytes"]) == (None, None)
    finally:
        inventory.close()
        server.close()


def test_a_pod_with_many_interfaces_cannot_grow_the_labels_without_bound(tmp_path):
    lines = ["h1", "h2"] + [f" dummy{i:03d}: " + "1 " * 16 for i in range(200)] + [" eth0: " + "7 " * 16]
    (tmp_path / "proc/42/net").mkdir(parents=True)
    (tmp_path / "proc/42/net/dev").write_text("\n".join(lines) + "\n")
    bare = Sandbox("id", "ns", "p", "u", "kata", "SANDBOX_READY", SandboxFacts(pid=42, netns="/n"))
    counted = with_counters(bare, tmp_path, None)
    assert [d.interface for d in counted.network][:2] == ["eth0", "dummy000"]
    assert len(counted.network) == MAX_INTERFACES
