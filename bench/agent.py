"""Benchmark the node agent: resident memory of the running process and CPU per cycle.

Runs the real agent (`python3 -m sandgate agent`, loop mode) over a fake host root with kata and
runsc configured (shims and /dev/kvm present) against a loopback fake API server, with a short
--interval. CPU is the agent's utime+stime (from /proc/<pid>/stat) over the measured cycles divided
by the cycle count, after a warm-up cycle; memory is VmRSS and VmHWM (peak) from /proc/<pid>/status.
The baseline, measured in the same run, is a bare interpreter that only imports the shared policy
module the ordinary way, which runs the kubernetes package's eager __init__ (client, config, dynamic,
watch, stream, ... through parse_quantity); the agent skips that __init__ (node_agent/skip_kubernetes_init.py).

    python3 bench/agent.py            # 50 cycles at --interval 0.1
    python3 bench/agent.py --quick    # 5 cycles
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "node_agent"), str(REPO / "tests")]
from fake_api import FakeApi  # noqa: E402

POLICY = """\
apiVersion: sandgate.io/v1alpha1
kind: SandboxPolicy
defaultProfile: kata
profiles:
  kata: {runtimeClassName: kata, handler: kata, runtimeType: io.containerd.kata.v2,
         overhead: {podFixed: {cpu: 250m, memory: 160Mi}}}
  gvisor: {runtimeClassName: gvisor, handler: runsc, runtimeType: io.containerd.runsc.v1}
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
    """RSS of an interpreter that imported sandgate.core.policy and nothing else."""
    out = subprocess.run([sys.executable, "-c", "import sandgate.core.policy, re; print(re.search(r'VmRSS:\\s+(\\d+)', "
                          "open('/proc/self/status').read()).group(1))"],
                         cwd=REPO, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return int(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--quick", action="store_true", help="5 cycles (smoke run)")
    args = parser.parse_args()
    cycles = 5 if args.quick else args.cycles
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "bench-1", "labels": {}, "annotations": {}},
            "status": {"allocatable": {"memory": "8Gi"}}}
    api = FakeApi(node)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root = fake_host(base)
        policy = base / "policy.yaml"
        policy.write_text(POLICY)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "sandgate", "agent", "--config", str(policy), "--node-name", "bench-1",
             "--root", str(root), "--kubeconfig", str(api.kubeconfig(base)), "--interval", str(args.interval),
             "--metrics-host", "127.0.0.1", "--metrics-port", str(port)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            wait_for(lambda: len(api.calls("POST", LEASES)) >= 1, 60, "the first cycle")
            cpu0, done0 = cpu_seconds(proc.pid), renewals(api)
            wait_for(lambda: renewals(api) >= done0 + cycles, 60 + cycles * 5, f"{cycles} cycles")
            cpu1, done1 = cpu_seconds(proc.pid), renewals(api)
            rss, hwm = status_kib(proc.pid, "VmRSS"), status_kib(proc.pid, "VmHWM")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
            api.close()
    base_rss = baseline_rss_kib()
    measured = done1 - done0
    print(f"agent cycles measured:   {measured} (interval {args.interval:g}s; each: read Node, discover, PATCH if changed, Lease read+renew)")
    print(f"CPU per cycle:           {(cpu1 - cpu0) / measured * 1000:.1f} ms (utime+stime, {CLK_TCK} ticks/s)")
    print(f"agent VmRSS:             {rss / 1024:.1f} MiB  (peak VmHWM {hwm / 1024:.1f} MiB; target <= 50 MiB)")
    print(f"baseline VmRSS:          {base_rss / 1024:.1f} MiB  (interpreter + `import sandgate.core.policy`, full kubernetes import)")
    print(f"agent / baseline RSS:    {rss / base_rss:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
