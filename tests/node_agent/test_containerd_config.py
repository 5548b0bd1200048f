"""`--configure` on containerd 1.6, judged by the real `containerd --config X config dump`.

Each test writes an operator's config under a temp dir (host paths are real paths: --root /), asks
the real agent command for its plan (`--once --dry-run --configure`), writes the files the plan
names, and compares containerd's own effective config before and after: it must be the old one
plus the wanted runtime tables, nothing else moved.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import pytest

import containerd_harness

pytestmark = pytest.mark.skipif(not containerd_harness.available(), reason="containerd not installed")

CRI = "io.containerd.grpc.v1.cri"
POLICY = """\
apiVersion: sandgate.io/v1alpha1
kind: SandboxPolicy
defaultProfile: runv
profiles:
  runv:
    runtimeClassName: runv
    runtimeType: io.containerd.kata.v2
  gvisor:
    runtimeClassName: gvisor
    runtimeType: io.containerd.runsc.v1
    runtimeOptions: {TypeUrl: io.containerd.runsc.v1.options, ConfigPath: /etc/containerd/runsc.toml}
agent:
  containerdConfig: %(config)s
  dropInDir: %(dir)s/conf.d
  criEndpoint: unix://%(dir)s/no-such.sock
%(extra)s
"""
OPERATOR_V2 = """\
# the operator's config: comments and layout must survive
version = 2

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "/etc/containerd/certs.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = true
"""
WANTED = {"runv": "io.containerd.kata.v2", "gvisor": "io.containerd.runsc.v1"}


def dump(config: Path) -> dict:
    """containerd's effective config (the list of files it loaded left out)."""
    done = subprocess.run([containerd_harness.CONTAINERD, "--config", str(config), "config", "dump"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    doc = tomllib.loads(done.stdout)
    doc.pop("imports")
    return doc


def plan(agent_cmd, d: Path, config: Path, extra: str = '  containerdVersion: "1.6"') -> dict:
    policy = d / "policy.yaml"
    policy.write_text(POLICY % {"config": config, "dir": d, "extra": extra})
    done = agent_cmd("--config", str(policy), "--node-name", "n1", "--root", "/", "--once", "--dry-run",
                     "--configure", "--node-allocatable-memory", "8Gi")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["containerd"]


def write(doc: dict) -> list[str]:
    """Write the files a dry-run plan names (what the real run writes); their paths."""
    changes = doc["dropIns"] + doc["edits"] + ([doc["mainConfig"]] if doc["mainConfig"] else [])
    for change in changes:
        Path(change["path"]).parent.mkdir(parents=True, exist_ok=True)
        Path(change["path"]).write_text(change["content"])
    return [c["path"] for c in changes]


def assert_only_handlers_added(before: dict, after: dict) -> None:
    runtimes = after["plugins"][CRI]["containerd"]["runtimes"]
    assert {h: runtimes[h]["runtime_type"] for h in WANTED} == WANTED
    assert runtimes["gvisor"]["options"] == {"TypeUrl": "io.containerd.runsc.v1.options",
                                             "ConfigPath": "/etc/containerd/runsc.toml"}
    for handler in WANTED:
        del runtimes[handler]
    assert after == before  # runc, its options, sandbox_image, registry, every other plugin: unchanged


@pytest.fixture
def d(tmp_path) -> Path:
    return tmp_path


def test_issue_scenario_keeps_runc_options_sandbox_image_and_registry(d, agent_cmd):
    config = d / "config.toml"
    config.write_text(OPERATOR_V2)
    before = dump(config)
    doc = plan(agent_cmd, d, config)
    assert doc["containerdVersion"] == "1.6" and doc["versionSource"] == "policy agent.containerdVersion"
    assert doc["dropIns"] == [] and doc["edits"] == []  # 1.x: a drop-in would replace the whole CRI section
    assert doc["mainConfig"]["content"].startswith(OPERATOR_V2)  # the operator's text stays byte for byte
    assert Path(doc["mainConfig"]["backup"]).name.startswith("config.toml.sandgate-")
    assert write(doc) == [str(config)]
    after = dump(config)
    assert after["plugins"][CRI]["sandbox_image"] == "registry.k8s.io/pause:3.9"
    assert after["plugins"][CRI]["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is True
    assert_only_handlers_added(before, after)
    again = plan(agent_cmd, d, config)  # idempotent: nothing left to do
    assert again["mainConfig"] is None and again["dropIns"] == [] and again["edits"] == []


def test_auto_version_from_the_containerd_binary_under_root(d, agent_cmd):
    """--root / holds Debian's containerd 1.6 in /usr/bin: `auto` runs it and follows 1.x rules."""
    config = d / "config.toml"
    config.write_text(OPERATOR_V2)
    before = dump(config)
    doc = plan(agent_cmd, d, config, extra="")
    assert doc["containerdVersion"] == "1.6"
    assert doc["versionSource"] == "/usr/bin/containerd --version"
    write(doc)
    assert_only_handlers_added(before, dump(config))


def test_split_config_edits_the_file_whose_cri_section_is_in_effect(d, agent_cmd):
    config = d / "config.toml"
    config.write_text(f'version = 2\nimports = ["{d}/conf.d/*.toml"]\n\n'
                      '[plugins."io.containerd.gc.v1.scheduler"]\n  pause_threshold = 0.05\n')
    (d / "conf.d").mkdir()
    # Both name the CRI section; 20-cri-site.toml loads later and replaces 10-cri.toml's section whole.
    (d / "conf.d/10-cri.toml").write_text('version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n'
                                          '  sandbox_image = "ignored:1"\n')
    (d / "conf.d/20-cri-site.toml").write_text(OPERATOR_V2.replace("# the operator", "# site"))
    (d / "conf.d/30-opt.toml").write_text('version = 2\n[plugins."io.containerd.internal.v1.opt"]\n'
                                          '  path = "/opt/site"\n')
    before = dump(config)
    assert before["plugins"][CRI]["sandbox_image"] == "registry.k8s.io/pause:3.9"
    doc = plan(agent_cmd, d, config)
    assert doc["mainConfig"] is None and doc["dropIns"] == []
    assert [e["path"] for e in doc["edits"]] == [str(d / "conf.d/20-cri-site.toml")]
    write(doc)
    assert_only_handlers_added(before, dump(config))


def test_config_version_1_is_handled(d, agent_cmd):
    config = d / "config.toml"
    config.write_text('[plugins.cri]\n  sandbox_image = "registry.k8s.io/pause:3.9"\n'
                      '[plugins.cri.containerd.runtimes.runc]\n  runtime_type = "io.containerd.runc.v2"\n'
                      '[plugins.cri.containerd.runtimes.runc.options]\n  SystemdCgroup = true\n')
    before = dump(config)
    doc = plan(agent_cmd, d, config)
    assert doc["version"] == 1
    assert "[plugins.cri.containerd.runtimes.runv]" in doc["mainConfig"]["content"]
    write(doc)
    assert_only_handlers_added(before, dump(config))


def test_config_without_a_cri_section_restates_the_default_runc(d, agent_cmd):
    """A new runtimes table replaces containerd's default runtimes: the agent restates runc as the default is."""
    config = d / "config.toml"
    config.write_text("version = 2\n")
    before = dump(config)
    doc = plan(agent_cmd, d, config)
    assert "containerd.runtimes.runc]" in doc["mainConfig"]["content"]
    write(doc)
    assert_only_handlers_added(before, dump(config))


def test_containerd_2_plan_is_a_drop_in_with_only_the_runtime_table(d, agent_cmd):
    config = d / "config.toml"
    config.write_text(OPERATOR_V2)
    doc = plan(agent_cmd, d, config, extra='  containerdVersion: "2.0"')
    drop_ins = {Path(x["path"]).name: tomllib.loads(x["content"]) for x in doc["dropIns"]}
    assert drop_ins["sandgate-runv.toml"] == {
        "version": 2, "plugins": {CRI: {"containerd": {"runtimes": {"runv": {"runtime_type": "io.containerd.kata.v2"}}}}}}
    assert tomllib.loads(doc["mainConfig"]["content"])["imports"] == [
        str(d / "conf.d/sandgate-gvisor.toml"), str(d / "conf.d/sandgate-runv.toml")]


def test_split_1x_discovery_advertises_only_the_effective_handlers(d, agent_cmd, tmp_path):
    """kata and runsc in the main file, a later drop-in naming the CRI section for another handler:
    on 1.x containerd has only that one (and no runc, so its CRI plugin would not even start)."""
    config = d / "config.toml"
    config.write_text(f'imports = ["{d}/gpu.toml"]\n' + OPERATOR_V2 +
                      '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runv]\n'
                      '  runtime_type = "io.containerd.kata.v2"\n')
    (d / "gpu.toml").write_text('version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]\n'
                                '  runtime_type = "io.containerd.runc.v2"\n')
    effective = dump(config)["plugins"][CRI]["containerd"]["runtimes"]
    assert set(effective) == {"nvidia"}  # containerd's own view: runv and runc are gone
    policy = d / "policy.yaml"
    policy.write_text(POLICY % {"config": config, "dir": d, "extra": '  containerdVersion: "1.7"'})
    done = agent_cmd("--config", str(policy), "--node-name", "n1", "--root", "/", "--once", "--dry-run",
                     "--configure", "--node-allocatable-memory", "8Gi")
    result = json.loads(done.stdout)
    runtimes = {r["handler"]: r for r in result["runtimes"]}
    assert runtimes["runv"]["advertised"] is False and runtimes["runv"]["reason"] == "not configured in containerd"
    assert result["containerd"]["problems"] and "default runtime \"runc\"" in result["containerd"]["problems"][0]
    assert "refusing to configure" in result["containerd"]["configureError"]
    assert result["containerd"]["mainConfig"] is None


def test_unknown_version_discovers_but_refuses_to_configure(d, agent_cmd):
    config = d / "config.toml"
    config.write_text(OPERATOR_V2)
    policy = d / "policy.yaml"
    policy.write_text(POLICY % {"config": config, "dir": d, "extra": ""})
    root = d / "host"  # no containerd binary under this root, no CRI socket
    (root / str(config.parent).lstrip("/")).mkdir(parents=True)
    (root / str(config).lstrip("/")).write_text(OPERATOR_V2)
    done = agent_cmd("--config", str(policy), "--node-name", "n1", "--root", str(root), "--once", "--dry-run",
                     "--configure", "--node-allocatable-memory", "8Gi")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)["containerd"]
    assert doc["containerdVersion"] is None and doc["versionSource"] is None
    assert "agent.containerdVersion" in doc["configureError"]
    assert any("containerd version unknown" in w for w in doc["warnings"])
    assert doc["mainConfig"] is None and doc["dropIns"] == []
    assert not list(root.rglob("*.bak"))


def test_an_inline_runtimes_table_is_rewritten_whole_and_still_only_adds(d, agent_cmd):
    """TOML cannot extend an inline table: the file is re-serialised (comments lost), the effect still exact."""
    config = d / "config.toml"
    config.write_text('version = 2\n'
                      '[plugins."io.containerd.grpc.v1.cri".containerd]\n'
                      '  runtimes = { runc = { runtime_type = "io.containerd.runc.v2", options = { SystemdCgroup = true } } }\n'
                      '[plugins."io.containerd.grpc.v1.cri".registry]\n'
                      '  config_path = "/etc/containerd/certs.d"\n')
    before = dump(config)
    doc = plan(agent_cmd, d, config)
    assert not doc["mainConfig"]["content"].startswith("version = 2\n[plugins")  # re-serialised, not appended
    write(doc)
    assert_only_handlers_added(before, dump(config))
