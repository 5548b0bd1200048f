"""Benchmark the node agent: resident memory of the running process and CPU per cycle, with 0 and N sandboxes.

Runs the real agent (`python3 -m sandgate agent`, loop mode) over a fake host root with kata and
runsc configured (shims and /dev/kvm present) against a loopback fake API server, with a short
--interval, twice: with a CRI stand-in (tests/node_agent/cri_standin.py, a gRPC server on a unix
socket) listing no sandbox, then N sandboxes (default 100). Each stand-in sandbox is real to the
agent's readers: its pid is a live process (/proc/<pid>/net/dev) and its pod cgroup is a real,
empty cgroup created for the run in every hierarchy that counts memory, CPU and block I/O (removed
after). CPU is the agent's utime+stime (from /proc/<pid>/stat) over the measured cycles divided by
the cycle count, after a warm-up cycle: a cycle is one publish (Node read, discovery, Lease renewal)
plus one inventory refresh, which runs on its own thread at the same interval. A /metrics scrape is
measured apart (it happens per Prometheus scrape interval, not per cycle). Memory is VmRSS and VmHWM
(peak) from /proc/<pid>/status. The baselines, measured in the same run, are the 0-sandbox agent and
a bare interpreter that imports the shared policy module and the libraries no agent can do without
(grpc for CRI, urllib3 for TLS to the API server, prometheus_client): what is above it is our code,
its data and the rest of the kubernetes client.

    python3 bench/agent.py                 # 50 cycles at --interval 0.1, 0 and 100 sandboxes
    python3 bench/agent.py --quick         # 5 cycles
    python3 bench/agent.py --sandboxes 20
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "node_agent"), str(REPO / "tests"), str(REPO)]
from cri_standin import CriStandIn, FakeSandbox  # noqa: E402
from fake_api import FakeApi  # noqa: E402
from node_agent import cgroups  # noqa: E402

POLICY = """\
apiVersion: sandgate.io/v1alpha1
kind: SandboxPolicy
defaultProfile: kata
profiles:
  kata: {runtimeClassName: kata, handler: kata, runtimeType: io.containerd.kata.v2,
         overhead: {podFixed: {cpu: 250m, memory: 160Mi}}}
  gvisor: {runtimeClassName: gvisor, handler: runsc, runtimeType: io.containerd.runsc.v1}
agent:
  criEndpoint: unix:///run/cri.sock
"""
CONTAINERD = """\
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]
  runtime_type = "io.containerd.kata.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runsc]
  runtime_type = "io.containerd.runsc.v1"
"""
CLK_TCK = os.sysconf("SC_CLK_TCK")
LEASES = "/apis/coordination.k8s.io/v1/namespaces/"


def renewals(api: FakeApi) -> int:
    """Completed cycles: every cycle ends by creating (first) or replacing (later) the heartbeat Lease."""
    return len(api.calls("POST", LEASES)) + len(api.calls("PUT", LEASES))


def status_kib(pid: int, field: str) -> int:
    """A `VmXXX:  N kB` line of /proc/<pid>/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def fake_host(base: Path) -> Path:
    root = base / "host"
    (root / "etc/containerd").mkdir(parents=True)
    (root / "etc/containerd/config.toml").write_text(CONTAINERD)
    for shim in ("containerd-shim-kata-v2", "containerd-shim-runsc-v1"):
        path = root / "usr/local/bin" / shim
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    (root / "dev").mkdir()
    (root / "dev/kvm").write_text("")
    return root


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def baseline_rss_kib() -> int:
    """RSS of an interpreter that imported sandgate.core.policy, grpc, urllib3 and prometheus_client."""
    out = subprocess.run([sys.executable, "-c", "import sandgate.core.policy, grpc, urllib3, prometheus_client, re; "
                          "print(re.search(r'VmRSS:\\s+(\\d+)', "
                          "open('/proc/self/status').read()).group(1))"],
                         cwd=REPO, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return int(out.stdout)


class PodCgroups:
    """N empty pod cgroups under /sandgate-bench-<pid>, in each hierarchy the agent reads; removed on close."""

    def __init__(self, count: int):
        self.parent = f"sandgate-bench-{os.getpid()}"
        layout = cgroups.load_layout(Path("/"))
        self.dirs = []
        for what in ("memory", "cpu", "io"):
            found = layout.locate(what, self.parent)
            if found and found[1] not in self.dirs:
                self.dirs.append(found[1])
        for base in self.dirs:
            for i in range(count):
                (base / f"pod{i}").mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        for base in self.dirs:
            for child in base.glob("pod*"):
                child.rmdir()
            base.rmdir()


def run_agent(root: Path, policy: Path, api: FakeApi, base: Path, interval: float, cycles: int) -> dict:
    """Run the agent loop; return its CPU per cycle, RSS, peak RSS, and CPU per /metrics scrape."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandgate", "agent", "--config", str(policy), "--node-name", "bench-1",
         "--root", str(root), "--kubeconfig", str(api.kubeconfig(base)), "--interval", str(interval),
         "--metrics-host", "127.0.0.1", "--metrics-port", str(port)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        done_before = renewals(api)
        wait_for(lambda: renewals(api) >= done_before + 2, 60, "the first cycles")
        cpu0, done0 = cpu_seconds(proc.pid), renewals(api)
        wait_for(lambda: renewals(api) >= done0 + cycles, 60 + cycles * 5, f"{cycles} cycles")
        cpu1, done1 = cpu_seconds(proc.pid), renewals(api)
        rss, hwm = status_kib(proc.pid, "VmRSS"), status_kib(proc.pid, "VmHWM")
        scrapes, body = 20, b""
        cpu2 = cpu_seconds(proc.pid)
        for _ in range(scrapes):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
                body = answer.read()
        cpu3 = cpu_seconds(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    return {"cycles": done1 - done0, "cpu_ms": (cpu1 - cpu0) / (done1 - done0) * 1000, "rss": rss, "hwm": hwm,
            "scrape_ms": (cpu3 - cpu2) / scrapes * 1000, "series": body.count(b"\nsandgate_sandbox_")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--sandboxes", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="5 cycles (smoke run)")
    args = parser.parse_args()
    cycles = 5 if args.quick else args.cycles
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "bench-1", "labels": {}, "annotations": {}},
            "status": {"allocatable": {"memory": "8Gi"}}}
    api = FakeApi(node)
    pods = PodCgroups(args.sandboxes)
    results = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            root = fake_host(base)
            (root / "run").mkdir()
            # The host's /proc and /sys under the fake root: the inventory reads real net/dev and cgroup files.
            (root / "proc").symlink_to("/proc")
            (root / "sys").symlink_to("/sys")
            policy = base / "policy.yaml"
            policy.write_text(POLICY)
            for count in (0, args.sandboxes):
                sandboxes = [FakeSandbox(f"sb{i:03d}", f"pod-{i}", f"uid-{i}", pid=os.getpid(),
                                         netns=f"/proc/{os.getpid()}/ns/net", cgroups_path=f"/{pods.parent}/pod{i}/sb{i}",
                                         log_directory=f"/var/log/pods/team_pod-{i}_uid-{i}", containers=("app", "proxy"))
                             for i in range(count)]
                standin = CriStandIn(root / "run/cri.sock", sandboxes, runtimes={
                    "runc": "io.containerd.runc.v2", "kata": "io.containerd.kata.v2", "runsc": "io.containerd.runsc.v1"})
                try:
                    results[count] = run_agent(root, policy, api, base, args.interval, cycles)
                finally:
                    standin.close()
                    (root / "run/cri.sock").unlink(missing_ok=True)
    finally:
        api.close()
        pods.close()
    base_rss = baseline_rss_kib()
    none, many = results[0], results[args.sandboxes]
    print(f"cycles measured:         {none['cycles']} / {many['cycles']} (interval {args.interval:g}s; each: read Node, "
          "discover, PATCH if changed, Lease read+renew, plus one CRI inventory on its own thread)")
    print(f"sandboxes:               0 | {args.sandboxes} (2 containers each; CRI stand-in on a unix socket, "
          "real /proc and cgroup files)")
    print(f"CPU per cycle:           {none['cpu_ms']:.1f} ms | {many['cpu_ms']:.1f} ms  "
          f"(ratio {many['cpu_ms'] / none['cpu_ms']:.2f}x; target <= 20 ms at 100; {CLK_TCK} ticks/s)")
    print(f"CPU per /metrics scrape: {none['scrape_ms']:.1f} ms | {many['scrape_ms']:.1f} ms  "
          f"({none['series']} | {many['series']} sandgate_sandbox_* samples)")
    print(f"agent VmRSS:             {none['rss'] / 1024:.1f} MiB | {many['rss'] / 1024:.1f} MiB  "
          f"(peak VmHWM {none['hwm'] / 1024:.1f} | {many['hwm'] / 1024:.1f} MiB; target <= 60 MiB at 100)")
    print(f"baseline VmRSS:          {base_rss / 1024:.1f} MiB  (interpreter + `import sandgate.core.policy, grpc, "
          "urllib3, prometheus_client`)")
    print(f"agent / baseline RSS:    {none['rss'] / base_rss:.2f}x | {many['rss'] / base_rss:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
