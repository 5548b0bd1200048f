"""Discovery through CRI Status(verbose): the handlers containerd really runs, cross-checked with its files.

A real containerd runs with its own config; the agent's host root holds the config files it would
read on the node (etc/containerd/config.toml), the shims and /sys/class/misc/kvm, and the socket at the
default endpoint (a link to the daemon's socket).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess

import pytest

import containerd_harness
from containerd_harness import Containerd
from sandgate.core import keys
from agent_proc import agent, free_port, metrics_until

pytestmark = pytest.mark.skipif(not containerd_harness.available(), reason="containerd not installed")

RUNTIMES = {"runc": "io.containerd.runc.v2", "kata": "io.containerd.kata.v2", "runsc": "io.containerd.runsc.v1"}


def tables(names, table='plugins."io.containerd.grpc.v1.cri".containerd.runtimes') -> str:
    return "".join(f'\n[{table}.{n}]\n  runtime_type = "{RUNTIMES[n]}"\n' for n in names)


@contextlib.contextmanager
def running_node(root, names):
    """A running containerd with the runtimes `names`, its socket at the host root's default endpoint, and the
    kata and runsc shims (and /dev/kvm) on the host."""
    daemon = Containerd.start(cri_extra=tables(names))
    try:
        link = root.path / "run/containerd/containerd.sock"
        link.parent.mkdir(parents=True)
        link.symlink_to(daemon.socket)
        root.shim("containerd-shim-kata-v2")
        root.shim("containerd-shim-runsc-v1")
        root.kvm()
        yield daemon
    finally:
        daemon.close()


@pytest.fixture
def node(root):
    """A running containerd with runc, kata and runsc."""
    with running_node(root, RUNTIMES) as daemon:
        yield daemon


def test_handlers_come_from_cri_and_agree_with_the_files(node, root, dry_run):
    root.config("version = 2\n" + tables(RUNTIMES))
    doc = dry_run()
    assert doc["containerd"]["handlersFrom"] == "cri"
    assert doc["containerd"]["containerdVersion"] == "1.6"
    assert doc["containerd"]["versionSource"].startswith("CRI Version RPC (1.6.")
    assert doc["containerd"]["warnings"] == []
    assert doc["nodePatch"]["metadata"]["labels"] == {keys.runtime_label("kata"): "true",
                                                      keys.runtime_label("runsc"): "true"}


def test_a_handler_the_files_lost_is_not_advertised(node, root, dry_run):
    """The running daemon still has runsc, but the files no longer do: it vanishes at the next restart."""
    root.config("version = 2\n" + tables(["runc", "kata"]))
    doc = dry_run()
    runtimes = {r["handler"]: r for r in doc["runtimes"]}
    assert runtimes["kata"]["advertised"] is True
    assert runtimes["runsc"]["advertised"] is False
    assert "not in its config files" in runtimes["runsc"]["reason"]
    assert any(w.startswith("handler runsc: in containerd's running config") for w in doc["containerd"]["warnings"])
    assert doc["nodePatch"]["metadata"]["labels"] == {keys.runtime_label("kata"): "true"}


def test_a_handler_only_in_the_files_is_not_advertised(node, root, dry_run):
    """The files name a handler containerd does not run (edited, not restarted): pods sent there would hang."""
    root.config("version = 2\n" + tables(RUNTIMES) + '\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.'
                'kata-fc]\n  runtime_type = "io.containerd.kata-fc.v2"\n')
    root.shim("containerd-shim-kata-fc-v2")
    policy = root.path.parent / "policy.yaml"
    policy.write_text(POLICY_WITH_FC)
    doc = dry_run(policy=policy)
    runtimes = {r["handler"]: r for r in doc["runtimes"]}
    assert runtimes["kata-fc"]["advertised"] is False
    assert "not in its running config" in runtimes["kata-fc"]["reason"]


POLICY_WITH_FC = """\
apiVersion: sandgate.io/v1alpha1
kind: SandboxPolicy
defaultProfile: kata
profiles:
  kata: {runtimeClassName: kata, handler: kata}
  fc: {runtimeClassName: kata-fc, handler: kata-fc}
"""


def test_mismatch_is_a_metric(node, root, policy_file, fake_api, tmp_path):
    root.config("version = 2\n" + tables(["runc", "kata"]))
    port = free_port()
    proc = agent("--config", str(policy_file()), "--node-name", "n1", "--root", str(root.path),
                 "--kubeconfig", str(fake_api.kubeconfig(tmp_path)), "--interval", "0.5",
                 "--metrics-host", "127.0.0.1", "--metrics-port", str(port),
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = metrics_until(port, lambda body: "sandgate_agent_cycles_total 1" in body, proc=proc)
        assert 'sandgate_agent_runtime_config_mismatch{handler="runsc"} 1.0' in body
        assert 'sandgate_agent_runtime_config_mismatch{handler="kata"}' not in body
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def test_dry_run_configure_counts_the_planned_handlers_beside_the_running_ones(root, policy_file, dry_run):
    """containerd runs only runc; the plan adds kata and runsc, and the dry-run patch already names them
    (the CRI cross-check expects them only after the reload)."""
    with running_node(root, ["runc"]):
        root.config("version = 2\n" + tables(["runc"]))
        doc = dry_run("--configure")
    assert doc["containerd"]["handlersFrom"] == "cri" and doc["containerd"]["warnings"] == []
    assert doc["containerd"]["mainConfig"]["content"].endswith(
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runsc]\nruntime_type = "io.containerd.runsc.v1"\n')
    assert doc["nodePatch"]["metadata"]["labels"] == {keys.runtime_label("kata"): "true",
                                                      keys.runtime_label("runsc"): "true"}
