"""`--configure` against a running containerd 1.6: write, reload, check through CRI, roll back when it breaks.

The daemon is the real one (tests/containerd_harness.py); the agent's reload command restarts it
the way `systemctl restart containerd` would. The agent finds the version (1.6) through the CRI
Version RPC on the daemon's socket.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess

import pytest
import requests

import containerd_harness
from containerd_harness import Containerd
from node_agent.apply import BACKUPS_KEPT, atomic_write, prune_backups
from sandgate.core import keys
from agent_proc import agent, free_port, metrics_until

pytestmark = pytest.mark.skipif(not containerd_harness.available(), reason="containerd not installed")

POLICY = """\
apiVersion: sandgate.io/v1alpha1
kind: SandboxPolicy
defaultProfile: kata
profiles:
  kata:
    runtimeClassName: kata
    runtimeType: io.containerd.kata.v2
  gvisor:
    runtimeClassName: gvisor
    handler: runsc
    runtimeType: io.containerd.runsc.v1
agent:
  containerdConfig: {config}
  criEndpoint: unix://{socket}
  reloadCommand: {reload}
  reloadTimeoutSeconds: {timeout}
"""


@pytest.fixture
def ctd():
    daemon = Containerd.start()
    yield daemon
    daemon.close()


def agent_args(ctd: Containerd, tmp_path, fake_api, fail_first: bool = False) -> tuple[str, ...]:
    """The agent's --once --configure arguments; a reload meant to fail gets a short readiness timeout."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(config=ctd.config, socket=ctd.socket, timeout=4 if fail_first else 30,
                                    reload=json.dumps(ctd.reload_command(fail_first=fail_first))))
    return ("--config", str(policy), "--node-name", "n1", "--root", "/", "--once", "--configure",
            "--kubeconfig", str(fake_api.kubeconfig(tmp_path)))


def handlers(ctd: Containerd) -> set[str]:
    with ctd.cri() as client:
        return set(client.status(verbose=True).info["config"]["containerd"]["runtimes"])


def backups(ctd: Containerd) -> list:
    return sorted(ctd.dir.glob("config.toml.sandgate-*.bak"))


def test_configure_reload_adds_handlers_and_keeps_the_cri_plugin_up(ctd, tmp_path, fake_api, agent_cmd):
    os.chmod(ctd.config, 0o640)
    original = ctd.config.read_text()
    assert handlers(ctd) == {"runc"}
    pid = ctd.pid()
    done = agent_cmd(*agent_args(ctd, tmp_path, fake_api))
    assert done.returncode == 0, done.stderr
    assert ctd.pid() != pid and ctd.running()  # reloaded
    plugins = ctd.ctr("plugins", "ls")
    assert any(line.split()[:2] == ["io.containerd.grpc.v1", "cri"] and line.split()[-1] == "ok"
               for line in plugins.stdout.splitlines()), plugins.stdout
    assert handlers(ctd) == {"runc", "kata", "runsc"}
    assert ctd.config.read_text().startswith(original)  # appended, the operator's text untouched
    assert stat.S_IMODE(ctd.config.stat().st_mode) == 0o640
    [backup] = backups(ctd)
    assert backup.read_text() == original and stat.S_IMODE(backup.stat().st_mode) == 0o640
    changed = [json.loads(line) for line in done.stderr.splitlines() if "configuration changed" in line]
    assert changed and changed[0]["handlers"] == ["kata", "runsc"]
    # Shims are not installed here: the handlers exist in containerd but are not advertised.
    assert fake_api.calls("PATCH")[-1]["body"]["metadata"]["labels"] == {keys.runtime_label("runv"): None}

    pid, configured = ctd.pid(), ctd.config.read_text()
    done = agent_cmd(*agent_args(ctd, tmp_path, fake_api))
    assert done.returncode == 0, done.stderr
    assert ctd.pid() == pid and ctd.config.read_text() == configured and len(backups(ctd)) == 1  # idempotent


def test_broken_reload_rolls_back(ctd, tmp_path, fake_api, agent_cmd):
    original = ctd.config.read_bytes()
    done = agent_cmd(*agent_args(ctd, tmp_path, fake_api, fail_first=True))
    assert done.returncode == 1
    assert ctd.config.read_bytes() == original  # restored from the backup
    assert ctd.running() and handlers(ctd) == {"runc"}  # reloaded again on the old config
    [line] = [json.loads(line) for line in done.stderr.splitlines() if "rolled back" in line and "reason" in line]
    assert line["level"] == "error" and "not ready 4s after the reload" in line["reason"]
    assert "configuration rolled back" in done.stderr.splitlines()[-1]
    assert all(not (c["body"]["metadata"]["labels"] or {}) or
               all(v is None for v in c["body"]["metadata"]["labels"].values()) for c in fake_api.calls("PATCH"))
    assert len(backups(ctd)) == 1  # the backup of the attempt is kept for the operator


def test_a_rolled_back_change_is_not_retried_every_cycle(ctd, tmp_path, fake_api):
    """In loop mode the same failing change must not restart containerd every --interval."""
    args = list(agent_args(ctd, tmp_path, fake_api, fail_first=True))
    args.remove("--once")
    port = free_port()
    proc = agent(*args, "--interval", "0.5", "--metrics-host", "127.0.0.1", "--metrics-port", str(port),
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = metrics_until(port, lambda body: "sandgate_agent_cycles_total 4.0" in body, timeout=60, proc=proc)
        assert "sandgate_agent_cycles_total 4.0" in body
        assert "sandgate_agent_configure_rollbacks_total 1.0" in body
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    assert (ctd.dir / "restarts").read_text() == "restart\nrestart\n"  # the broken reload and the rollback's
    assert handlers(ctd) == {"runc"}


def test_only_the_last_backups_are_kept(tmp_path):
    target = tmp_path / "config.toml"
    target.write_text("version = 2\n")
    for n in range(BACKUPS_KEPT + 3):
        (tmp_path / f"config.toml.sandgate-2026010{n}T000000Z.bak").write_text(str(n))
    (tmp_path / "other.toml.sandgate-20260101T000000Z.bak").write_text("other file's backup")
    deleted = prune_backups(target)
    left = sorted(p.name for p in tmp_path.glob("config.toml.sandgate-*.bak"))
    assert left == [f"config.toml.sandgate-2026010{n}T000000Z.bak" for n in range(3, BACKUPS_KEPT + 3)]
    assert len(deleted) == 3 and (tmp_path / "other.toml.sandgate-20260101T000000Z.bak").exists()


def test_atomic_write_keeps_mode_and_owner_and_refuses_invalid_toml(tmp_path):
    target = tmp_path / "config.toml"
    target.write_text("version = 2\n")
    os.chmod(target, 0o600)
    os.chown(target, 1234, 4321)
    atomic_write(target, b"version = 2\n# new\n", target.stat())
    info = target.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o600, 1234, 4321)
    with pytest.raises(ValueError):
        atomic_write(target, b"[broken\n", target.stat())
    assert target.read_text() == "version = 2\n# new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]  # no temp file left behind
