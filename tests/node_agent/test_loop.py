"""The long-running agent: cycles every --interval, /metrics and /healthz, survives API errors, exits on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import requests

from node_agent.metrics import AgentMetrics, MetricsServer
from agent_proc import agent, free_port, metrics_until
from support import REPO


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def test_loop_publishes_serves_metrics_and_stops_on_sigterm(root, tables, policy_file, fake_api, tmp_path):
    root.config(tables.V2_HEAD + tables.runtime(tables.V2, "runc", "io.containerd.runc.v2")
                + tables.runtime(tables.V2, "kata", "io.containerd.kata.v2")
                + tables.runtime(tables.V2, "runsc", "io.containerd.runsc.v1"))
    root.shim("containerd-shim-kata-v2")
    root.kvm()  # runsc has no shim: found, not healthy
    fake_api.fail = {"PATCH": [500, 500]}  # with 2 attempts per call the first cycle fails; the loop goes on
    port = free_port()
    log_path = tmp_path / "agent.log"
    with open(log_path, "w") as log_file:
        proc = agent("--config", str(policy_file()), "--node-name", "n1", "--root", str(root.path),
                     "--kubeconfig", str(fake_api.kubeconfig(tmp_path)), "--interval", "0.5", "--api-attempts", "2",
                     "--metrics-host", "127.0.0.1", "--metrics-port", str(port), stdout=log_file, stderr=subprocess.STDOUT)
    try:
        body = metrics_until(port, lambda body: (metric(body, "sandgate_agent_last_publish_timestamp_seconds") or 0) > 0
                             and len(fake_api.calls("PUT", "/apis/coordination.k8s.io")) >= 2, proc=proc, log=log_path)
        assert metric(body, 'sandgate_agent_sandbox_capacity{handler="kata"}') == 44
        assert metric(body, 'sandgate_agent_runtime_healthy{handler="kata"}') == 1
        assert metric(body, 'sandgate_agent_runtime_found{handler="runsc"}') == 1
        assert metric(body, 'sandgate_agent_runtime_healthy{handler="runsc"}') == 0
        assert metric(body, 'sandgate_agent_sandbox_capacity{handler="runsc"}') is None
        assert 'sandgate_agent_runtime_problem{handler="runsc",reason="shim containerd-shim-runsc-v1 not found' in body
        assert metric(body, "sandgate_agent_containerd_config_error") == 0
        assert metric(body, "sandgate_agent_publish_errors_total") == 1
        assert metric(body, "sandgate_agent_last_publish_timestamp_seconds") > time.time() - 600
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        assert requests.get(f"http://127.0.0.1:{port}/other", timeout=2).status_code == 404
        assert len(fake_api.calls("PUT", "/apis/coordination.k8s.io")) >= 1  # renewed after the first create
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
            raise
    assert code == 0, log_path.read_text()
    assert '"msg":"agent stopped"' in log_path.read_text()


def test_healthz_fails_once_cycles_stop_succeeding():
    metrics = AgentMetrics()
    server = MetricsServer(metrics, "127.0.0.1", 0, stale_after=30)
    server.start()
    url = f"http://127.0.0.1:{server.httpd.server_address[1]}/healthz"
    try:
        assert requests.get(url, timeout=2).status_code == 200
        metrics.last_success -= 31  # as if every cycle of the last 31 s had failed
        answer = requests.get(url, timeout=2)
        assert answer.status_code == 503 and "no successful cycle" in answer.text
    finally:
        server.stop()


def test_skipping_the_kubernetes_init_loads_only_what_the_agent_uses():
    heavy = ("kubernetes.dynamic", "kubernetes.watch", "jsonschema", "kubernetes.config.kube_config",
             "kubernetes.client.api_client", "pydantic", "requests", "oauthlib", "cryptography", "jsonpatch",
             "gunicorn")
    # `sandgate agent ...` builds only the agent's subcommand: another command's flags (the servers' need
    # gunicorn, certs' cryptography) cost the agent nothing.
    code = textwrap.dedent(f"""
        import contextlib, io, sys
        from sandgate.cli import main
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            main(["agent", "--help"])
        from node_agent.skip_kubernetes_init import skip_kubernetes_package_init as skip
        assert skip()
        import sandgate.core.policy, sandgate.core.rawapi, node_agent.main, node_agent.publish
        import node_agent.sandbox_metrics, node_agent.metrics
        from kubernetes.config.incluster_config import load_incluster_config
        assert not skip()
        print(sorted(m for m in {heavy!r} if m in sys.modules))
        """)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
