"""The agent's sandbox inventory end to end: real containerd pods, and a CRI that is absent or slow."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

import pod_harness
from cri_standin import CriStandIn, FakeSandbox
from node_agent import cgroups
from pod_harness import PodHost
from agent_proc import agent, free_port
from support import REPO

needs_pods = pytest.mark.skipif(not pod_harness.available(),
                                reason="needs root, containerd, runc, busybox-static and CNI plugins")

POLICY = """\
apiVersion: sandgate.io/v1alpha1
kind: SandboxPolicy
defaultProfile: kata
profiles:
  kata: {runtimeClassName: kata, handler: kata, runtimeType: io.containerd.kata.v2}
agent:
  criEndpoint: unix://%s
  metrics: {allSandboxes: %s}
"""


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
        raise


def samples(port: int) -> dict[tuple[str, frozenset], float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def series(found: dict, name: str, **labels: str) -> dict[frozenset, float]:
    """Samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return {lab: v for (n, lab), v in found.items() if n == name and want <= set(lab)}


def wait_for(what: str, probe, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except requests.ConnectionError:  # the agent's metrics port is not up yet
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def shape(sandboxes: list[dict]) -> dict[str, tuple]:
    """What the dry-run and /sandboxes must agree on (counters move between the two)."""
    return {s["pod"]: (s["id"], s["uid"], s["handler"], s["state"], s["pid"], s["netns"], s["cgroup"],
                       tuple((c["name"], c["logPath"]) for c in s["containers"])) for s in sandboxes}


def enable_v1_block_counting(host: PodHost, uid: str) -> None:
    """cgroup v1 counts a cgroup's block I/O only once it has a throttle rule: give it one no real disk reaches."""
    layout = cgroups.load_layout(Path("/"))
    found = layout.locate("io", f"{host.cgroup_parent}/pod{uid}")
    if found and found[0] == 1:
        device = f"{os.major(os.stat('/tmp').st_dev)}:{os.minor(os.stat('/tmp').st_dev)}"
        (found[1] / "blkio.throttle.write_bps_device").write_text(f"{device} {1 << 50}")


def block_device_counts_direct_io() -> bool:
    """Whether /tmp (where the harness's containerd keeps container filesystems) sits on a block device."""
    return os.path.exists(f"/sys/dev/block/{os.major(os.stat('/tmp').st_dev)}:{os.minor(os.stat('/tmp').st_dev)}")


@needs_pods
def test_two_real_pods_dry_run_metrics_and_sandboxes_endpoint(tmp_path, fake_api):
    with PodHost.start(handlers=("kata",)) as host:
        hostnet = host.run_pod("hostnet", host_network=True,
                               command=["/bin/sh", "-c", "echo hello-from-hostnet; exec sleep 2147483647"])
        # RuntimeClass overhead 128 MiB (linux.overhead) + 32 MiB the webhook padded, over a 64 MiB request.
        record = '{"memory":"32Mi","basis":{"memory":"64Mi"},"containers":["main"]}'
        bridged = host.run_pod("bridged", handler="kata", overhead_memory=128 * 1024 * 1024,
                               annotations={"sandgate.io/overhead-padding": record},
                               command=["/bin/sh", "-c", "echo hello-from-bridged; exec sleep 2147483647"])
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY % (host.ctd.socket, "true"))
        common = ["--config", str(policy), "--node-name", "n1", "--root", "/"]

        done = subprocess.run([sys.executable, "-m", "sandgate", "agent", *common, "--once", "--dry-run",
                               "--node-allocatable-memory", "8Gi"], cwd=REPO,
                              capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert doc["sandboxesError"] is None
        listed = {s["pod"]: s for s in doc["sandboxes"]}
        assert set(listed) == {"hostnet", "bridged"}
        for pod, name in ((hostnet, "hostnet"), (bridged, "bridged")):
            got = listed[name]
            assert (got["id"], got["uid"], got["namespace"], got["state"]) == (pod.sandbox_id, pod.uid, "team-a",
                                                                              "SANDBOX_READY")
            assert isinstance(got["pid"], int) and Path(f"/proc/{got['pid']}").exists()
            assert got["cgroup"] == f"{host.cgroup_parent}/pod{pod.uid}/{pod.sandbox_id}"
            assert got["podCgroup"] == f"{host.cgroup_parent}/pod{pod.uid}".lstrip("/")
            [container] = got["containers"]
            assert (container["id"], container["name"], container["state"]) == (pod.container_id, "main",
                                                                                "CONTAINER_RUNNING")
            # The log path CRI reports is the real file: the container's first line is in it (CRI log format).
            line = wait_for("the log line", lambda: [ln for ln in Path(container["logPath"]).read_text().splitlines()
                                                     if ln.endswith(f"hello-from-{name}")])[0]
            assert " stdout F " in line
        assert listed["hostnet"]["netns"] is None and listed["hostnet"]["handler"] == "runc"
        assert Path(listed["bridged"]["netns"]).exists() and listed["bridged"]["handler"] == "kata"
        assert [n["interface"] for n in listed["bridged"]["counters"]["network"]] == ["eth0"]
        assert listed["hostnet"]["counters"]["network"] == []  # the node's traffic is not the pod's
        # The pod's overhead and its padding record reach the inventory through containerd's verbose
        # status, so the ratio needs no API access (this dry run is offline).
        counters = listed["bridged"]["counters"]
        assert (counters["overheadMemoryBytes"], counters["memoryRequestsBytes"]) == (160 * 1024 * 1024, 64 * 1024 * 1024)
        assert counters["overheadRatio"] == pytest.approx(
            (counters["memoryWorkingSetBytes"] - 64 * 1024 * 1024) / (160 * 1024 * 1024))
        assert listed["hostnet"]["counters"]["overheadRatio"] is None

        port = free_port()
        proc = agent(*common, "--kubeconfig", str(fake_api.kubeconfig(tmp_path)), "--interval", "0.3",
                     "--metrics-host", "127.0.0.1", "--metrics-port", str(port),
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            bridged_labels = {"pod": "bridged", "uid": bridged.uid, "handler": "kata", "namespace": "team-a"}
            found = wait_for("both sandboxes on /metrics", lambda: (lambda f: f if len(
                series(f, "sandgate_sandbox_info")) == 2 else None)(samples(port)))
            assert series(found, "sandgate_sandbox_info", pod="hostnet", sandbox_id=hostnet.sandbox_id)
            assert not series(found, "sandgate_sandbox_network_receive_bytes_total", pod="hostnet")
            for name in ("hostnet", "bridged"):
                assert list(series(found, "sandgate_sandbox_memory_working_set_bytes", pod=name).values())[0] > 0
                assert list(series(found, "sandgate_sandbox_cpu_seconds_total", pod=name).values())[0] > 0
            # Overhead ratio: (working set - 64 MiB requested) / 160 MiB overhead, for the pod that has one.
            found = wait_for("the overhead ratio", lambda: (lambda f: f if series(
                f, "sandgate_sandbox_overhead_ratio", pod="bridged") else None)(samples(port)))
            used = list(series(found, "sandgate_sandbox_memory_working_set_bytes", pod="bridged").values())[0]
            assert list(series(found, "sandgate_sandbox_overhead_ratio", pod="bridged").values())[0] == \
                pytest.approx((used - 64 * 1024 * 1024) / (160 * 1024 * 1024))
            assert not series(found, "sandgate_sandbox_overhead_ratio", pod="hostnet")  # no overhead admitted

            # Network: ping the bridge's gateway from inside the bridged pod; its eth0 counters follow.
            eth0 = {**bridged_labels, "interface": "eth0"}
            before = {k: list(series(found, f"sandgate_sandbox_network_{k}_total", **eth0).values())[0]
                      for k in ("transmit_packets", "transmit_bytes", "receive_packets", "receive_bytes")}
            ping = host.exec(bridged.container_id, ["ping", "-c", "3", "-W", "2", host.gateway])
            assert ping.exit_code == 0, ping.stderr
            wait_for("network counters to grow", lambda: all(
                list(series(samples(port), f"sandgate_sandbox_network_{k}_total", **eth0).values())[0]
                >= before[k] + (3 if k.endswith("packets") else 3 * 98) for k in before))

            # Block I/O: 4 MiB written with O_DIRECT by the host-network pod reach the disk and its counters.
            if block_device_counts_direct_io():
                enable_v1_block_counting(host, hostnet.uid)
                written = lambda: sum(series(samples(port), "sandgate_sandbox_block_write_bytes_total",
                                             pod="hostnet").values())
                start = written()
                dd = host.exec(hostnet.container_id, ["dd", "if=/dev/zero", "of=/data/f", "bs=1M", "count=4",
                                                      "oflag=direct"])
                assert dd.exit_code == 0, dd.stderr
                wait_for("block write counters to grow", lambda: written() >= start + 4 * 1024 * 1024)

            # /sandboxes serves the same list as the dry-run.
            body = requests.get(f"http://127.0.0.1:{port}/sandboxes", timeout=5).json()
            assert body["error"] is None and shape(body["sandboxes"]) == shape(doc["sandboxes"])

            # A removed pod's series and entry go away.
            host.remove_pod(bridged)
            wait_for("the bridged pod's series to go", lambda: not series(samples(port), "sandgate_sandbox_info",
                                                                          pod="bridged"))
            assert not series(samples(port), "sandgate_sandbox_network_receive_bytes_total", pod="bridged")
            wait_for("the removed pod to leave /sandboxes", lambda: [s["pod"] for s in requests.get(
                f"http://127.0.0.1:{port}/sandboxes", timeout=5).json()["sandboxes"]] == ["hostnet"])
        finally:
            code = stop(proc)
        assert code == 0


@needs_pods
def test_by_default_only_policy_handlers_are_exported(tmp_path, fake_api):
    with PodHost.start(handlers=("kata",)) as host:
        host.run_pod("plain")
        sandboxed = host.run_pod("sandboxed", handler="kata")
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY % (host.ctd.socket, "false"))
        port = free_port()
        proc = agent("--config", str(policy), "--node-name", "n1", "--root", "/", "--kubeconfig",
                     str(fake_api.kubeconfig(tmp_path)), "--interval", "0.3", "--metrics-host", "127.0.0.1",
                     "--metrics-port", str(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            found = wait_for("the sandboxed pod on /metrics",
                             lambda: (lambda f: f if series(f, "sandgate_sandbox_info") else None)(samples(port)))
            assert set(series(found, "sandgate_sandbox_info")) == {frozenset({
                "namespace": "team-a", "pod": "sandboxed", "uid": sandboxed.uid, "handler": "kata",
                "sandbox_id": sandboxed.sandbox_id}.items())}
            # ... while /sandboxes lists every pod, runc ones included, for log shippers.
            pods = {s["pod"] for s in requests.get(f"http://127.0.0.1:{port}/sandboxes", timeout=5).json()["sandboxes"]}
            assert pods == {"plain", "sandboxed"}
        finally:
            code = stop(proc)
        assert code == 0


def test_slow_cri_never_holds_up_the_heartbeat(policy_file, tables, fake_api, tmp_path):
    """A CRI that answers nothing within the deadline: Node patches and Lease renewals go on regardless."""
    # A short host root: the CRI socket resolves under --root and unix socket paths are limited to 107 bytes.
    root = Path("/tmp") / f"sg-slow-{uuid.uuid4().hex[:8]}"
    (root / "etc/containerd").mkdir(parents=True)
    (root / "etc/containerd/config.toml").write_text(tables.V2_HEAD + tables.runtime(tables.V2, "kata",
                                                                                     "io.containerd.kata.v2"))
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/local/bin/containerd-shim-kata-v2").write_text("#!/bin/sh\n")
    (root / "usr/local/bin/containerd-shim-kata-v2").chmod(0o755)
    (root / "dev").mkdir()
    (root / "dev/kvm").write_text("")
    (root / "run").mkdir()
    slow = CriStandIn(root / "run/cri.sock", [FakeSandbox("sb1", "p1", "u1")], delay=60)
    port = free_port()
    log = tmp_path / "agent.log"
    try:
        with open(log, "w") as out:
            proc = agent("--config", str(policy_file("  criEndpoint: unix:///run/cri.sock")), "--node-name", "n1",
                         "--root", str(root), "--kubeconfig", str(fake_api.kubeconfig(tmp_path)),
                         "--interval", "0.5", "--metrics-host", "127.0.0.1", "--metrics-port", str(port),
                         stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for("three Lease renewals", lambda: len(fake_api.calls("PUT", "/apis/coordination.k8s.io")) >= 3)
            assert fake_api.calls("PATCH", "/api/v1/nodes/n1")  # labels and capacity published
            found = wait_for("an inventory failure", lambda: (lambda f: f if f.get(
                ("sandgate_agent_sandbox_inventory_errors_total", frozenset()), 0) >= 1 else None)(samples(port)))
            assert found[("sandgate_agent_sandbox_inventory_up", frozenset())] == 0
        finally:
            code = stop(proc)
        assert code == 0
    finally:
        slow.close()
        shutil.rmtree(root)
    failures = [json.loads(ln) for ln in log.read_text().splitlines() if "sandbox inventory failed" in ln]
    assert failures and "DEADLINE_EXCEEDED" in failures[0]["error"]
