"""Fake host roots (containerd config, shims, /sys/class/misc/kvm) and policies for the agent tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from support import REPO

# --import-mode=importlib puts no test directory on sys.path; fake_api is shared with bench/agent.py.
sys.path.insert(0, str(Path(__file__).parent))
from fake_api import FakeApi  # noqa: E402

POLICY = """\
apiVersion: sandgate.io/v1alpha1
kind: SandboxPolicy
defaultProfile: kata
profiles:
  kata:
    runtimeClassName: kata
    handler: kata
    runtimeType: io.containerd.kata.v2
    overhead: {podFixed: {cpu: 250m, memory: 160Mi}}
  gvisor:
    runtimeClassName: gvisor
    handler: runsc
    runtimeType: io.containerd.runsc.v1
%s
agent:
  maxSandboxes: 100
  reservedMemory: 1Gi
%s
"""

V2_HEAD = 'version = 2\n'
V2_TABLE = 'plugins."io.containerd.grpc.v1.cri".containerd.runtimes'
V3_TABLE = 'plugins."io.containerd.cri.v1.runtime".containerd.runtimes'


def runtime_toml(table: str, handler: str, runtime_type: str, extra: str = "") -> str:
    return f'\n[{table}.{handler}]\n  runtime_type = "{runtime_type}"\n{extra}'


class FakeRoot:
    """A host filesystem tree under tmp_path."""

    def __init__(self, path: Path):
        self.path = path
        (path / "etc/containerd").mkdir(parents=True)

    def write(self, rel: str, text: str) -> Path:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return target

    def config(self, text: str) -> Path:
        return self.write("etc/containerd/config.toml", text)

    def shim(self, name: str, directory: str = "usr/local/bin", executable: bool = True) -> Path:
        target = self.write(f"{directory}/{name}", "#!/bin/sh\nexit 0\n")
        target.chmod(0o755 if executable else 0o644)
        return target

    def kvm(self) -> Path:
        # As sysfs shows it: a symlink whose target is outside the mounted /sys/class/misc.
        link = self.path / "sys/class/misc/kvm"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("../../devices/virtual/misc/kvm")
        return link


@pytest.fixture
def root(tmp_path) -> FakeRoot:
    return FakeRoot(tmp_path / "host")


@pytest.fixture
def policy_file(tmp_path):
    """policy_file(agent_extra="", gvisor_extra="") -> a policy with kata (160Mi overhead) and gvisor (runsc)."""

    def make(agent_extra: str = "", gvisor_extra: str = "") -> Path:
        path = tmp_path / "policy.yaml"
        path.write_text(POLICY % (gvisor_extra, agent_extra))
        return path

    return make


def run_agent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The real command: python3 -m sandgate agent ARGS."""
    return subprocess.run([sys.executable, "-m", "sandgate", "agent", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture
def agent_cmd():
    """The real command runner: agent_cmd(*args) -> CompletedProcess."""
    return run_agent


@pytest.fixture
def dry_run(policy_file, root):
    """dry_run(*extra, policy=None) -> the parsed JSON of `--once --dry-run --node-allocatable-memory 8Gi`."""

    def run(*extra: str, policy: Path | None = None) -> dict:
        done = run_agent("--config", str(policy or policy_file()), "--node-name", "n1", "--root", str(root.path),
                         "--once", "--dry-run", "--node-allocatable-memory", "8Gi", *extra)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    return run


@pytest.fixture
def tables():
    return SimpleNamespace(V2_HEAD=V2_HEAD, V2=V2_TABLE, V3=V3_TABLE, runtime=runtime_toml)


@pytest.fixture
def fake_api():
    """A FakeApi serving Node n1 (8Gi allocatable, a foreign label and a stale sandgate label)."""
    node = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "resourceVersion": "7",
                         "labels": {"kubernetes.io/hostname": "n1", "sandgate.io/runtime.runv": "true"},
                         "annotations": {"sandgate.io/sandbox-capacity.runv": "9", "node.alpha.kubernetes.io/ttl": "0"}},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi"}}}
    api = FakeApi(node)
    yield api
    api.close()
