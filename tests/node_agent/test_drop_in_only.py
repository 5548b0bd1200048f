"""`sandgate agent --once --configure --drop-in-only`: the one-shot init container that may write only the
drop-in directory and has no Kubernetes API access.

Every run is the real command. No API server is reachable: the in-cluster variables point at a loopback
listener that must never see a connection, and no token exists. containerd 1.x plans are judged by the
real `containerd --config X config dump` before and after (the effective config must be the old one plus
the new handlers); the main config must stay byte for byte as it was.
"""

from __future__ import annotations

import json
import socket
import tomllib
from pathlib import Path

import pytest

import containerd_harness
from test_containerd_config import CRI, OPERATOR_V2, POLICY, assert_only_handlers_added, dump

needs_containerd = pytest.mark.skipif(not containerd_harness.available(), reason="containerd not installed")
V16 = '  containerdVersion: "1.6"'


@pytest.fixture
def api_trap():
    """A loopback listener posing as the in-cluster API server; yields (env, connections-seen())."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(listener.getsockname()[1])}

    def connections() -> int:
        seen = 0
        while True:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                return seen
            conn.close()
            seen += 1

    yield env, connections
    listener.close()


@pytest.fixture
def init_run(tmp_path, agent_cmd, api_trap, monkeypatch):
    """init_run(config, extra=V16, *flags) -> (CompletedProcess, outcome JSON line or None), run as the init container."""
    env, connections = api_trap
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("KUBECONFIG", raising=False)

    def run(config: Path, extra: str = V16, *flags: str):
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY % {"config": config, "dir": config.parent, "extra": extra})
        done = agent_cmd("--config", str(policy), "--node-name", "n1", "--root", "/", "--once", "--configure",
                         "--drop-in-only", *flags)
        assert connections() == 0, "the init container mode contacted the API server"
        outcomes = [json.loads(line) for line in done.stderr.splitlines() if '"outcome"' in line]
        assert len(outcomes) <= 1, done.stderr
        return done, (outcomes[0] if outcomes else None)

    return run


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())} if directory.exists() else {}


@needs_containerd
def test_1x_drop_in_carries_the_whole_cri_section_and_only_adds_handlers(tmp_path, init_run):
    config = tmp_path / "config.toml"
    config.write_text(f'imports = ["{tmp_path}/conf.d/*.toml"]\n' + OPERATOR_V2)
    (tmp_path / "conf.d").mkdir()
    main_before = config.read_bytes()
    before = dump(config)
    done, outcome = init_run(config)
    assert done.returncode == 0, done.stderr
    assert outcome["outcome"] == "configured" and outcome["level"] == "info"
    assert outcome["files"] == [str(tmp_path / "conf.d/sandgate-cri.toml")]
    assert sorted(outcome["handlers"]) == ["gvisor", "runv"]
    assert config.read_bytes() == main_before  # the read-only main config is never written
    assert list(files(tmp_path / "conf.d")) == ["sandgate-cri.toml"]
    drop_in = tomllib.loads((tmp_path / "conf.d/sandgate-cri.toml").read_text())
    assert drop_in["plugins"][CRI]["sandbox_image"] == "registry.k8s.io/pause:3.9"  # the whole section
    after = dump(config)
    assert after["plugins"][CRI]["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is True
    assert_only_handlers_added(before, after)
    # Run again (every pod restart runs the init container): nothing to do, nothing written.
    written = files(tmp_path / "conf.d")
    done, outcome = init_run(config)
    assert done.returncode == 0, done.stderr
    assert outcome["outcome"] == "unchanged" and outcome["files"] == []
    assert files(tmp_path / "conf.d") == written


@needs_containerd
def test_1x_split_config_the_drop_in_follows_the_section_in_effect(tmp_path, init_run):
    """The CRI section in effect is a drop-in's (20-cri-site.toml, replacing 10-cri.toml's): that one is carried."""
    config = tmp_path / "config.toml"
    config.write_text(f'version = 2\nimports = ["{tmp_path}/conf.d/*.toml"]\n')
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d/10-cri.toml").write_text('version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n'
                                                 '  sandbox_image = "ignored:1"\n')
    (tmp_path / "conf.d/20-cri-site.toml").write_text(OPERATOR_V2)
    before = dump(config)
    done, outcome = init_run(config)
    assert done.returncode == 0, done.stderr
    assert_only_handlers_added(before, dump(config))


@needs_containerd
def test_1x_default_runtimes_are_restated_when_no_section_names_them(tmp_path, init_run):
    config = tmp_path / "config.toml"
    config.write_text(f'version = 2\nimports = ["{tmp_path}/conf.d/*.toml"]\n')
    (tmp_path / "conf.d").mkdir()
    before = dump(config)
    done, _ = init_run(config)
    assert done.returncode == 0, done.stderr
    assert_only_handlers_added(before, dump(config))


@pytest.mark.parametrize("head, line", [
    ("", 'add as its first line: imports = ["{d}/conf.d/*.toml"]'),
    ('imports = ["{d}/site.toml"]\n', 'replace its top-level imports line with: '
                                      'imports = ["{d}/site.toml", "{d}/conf.d/*.toml"]'),
])
@pytest.mark.parametrize("version", ["1.6", "2.0"])
def test_refuses_naming_the_imports_line_when_the_directory_is_not_imported(tmp_path, init_run, head, line, version):
    config = tmp_path / "config.toml"
    (tmp_path / "site.toml").write_text("version = 2\n")
    config.write_text(head.format(d=tmp_path) + OPERATOR_V2)
    (tmp_path / "conf.d").mkdir()
    main_before = config.read_bytes()
    done, outcome = init_run(config, f'  containerdVersion: "{version}"')
    assert done.returncode == 1
    assert outcome["outcome"] == "refused" and outcome["level"] == "error"
    assert f"{config} does not import {tmp_path}/conf.d" in outcome["reason"]
    assert line.format(d=tmp_path) in outcome["reason"]
    assert config.read_bytes() == main_before and files(tmp_path / "conf.d") == {}


def test_1x_refuses_when_a_later_file_would_replace_its_cri_section(tmp_path, init_run):
    config = tmp_path / "config.toml"
    config.write_text(f'version = 2\nimports = ["{tmp_path}/conf.d/*.toml"]\n')
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d/zz-site.toml").write_text(OPERATOR_V2)
    before = files(tmp_path / "conf.d")
    done, outcome = init_run(config)
    assert done.returncode == 1 and outcome["outcome"] == "refused"
    assert f"{tmp_path}/conf.d/zz-site.toml names the CRI section and loads after" in outcome["reason"]
    assert files(tmp_path / "conf.d") == before


def test_2x_writes_drop_ins_with_only_the_runtime_table(tmp_path, init_run):
    config = tmp_path / "config.toml"
    config.write_text(f'imports = ["{tmp_path}/conf.d/*.toml"]\n' + OPERATOR_V2)
    (tmp_path / "conf.d").mkdir()
    main_before = config.read_bytes()
    done, outcome = init_run(config, '  containerdVersion: "2.0"')
    assert done.returncode == 0, done.stderr
    assert outcome["outcome"] == "configured"
    assert config.read_bytes() == main_before
    written = {name: tomllib.loads(text.decode()) for name, text in files(tmp_path / "conf.d").items()}
    assert written == {
        "sandgate-gvisor.toml": {"version": 2, "plugins": {CRI: {"containerd": {"runtimes": {"gvisor": {
            "runtime_type": "io.containerd.runsc.v1",
            "options": {"TypeUrl": "io.containerd.runsc.v1.options", "ConfigPath": "/etc/containerd/runsc.toml"}}}}}}},
        "sandgate-runv.toml": {"version": 2, "plugins": {CRI: {"containerd": {"runtimes": {"runv": {
            "runtime_type": "io.containerd.kata.v2"}}}}}},
    }


def test_a_failing_reload_rolls_the_drop_in_back(tmp_path, init_run):
    config = tmp_path / "config.toml"
    config.write_text(f'imports = ["{tmp_path}/conf.d/*.toml"]\n' + OPERATOR_V2)
    (tmp_path / "conf.d").mkdir()
    done, outcome = init_run(config, V16 + "\n  reloadCommand: [sh, -c, 'exit 3']")
    assert done.returncode == 1
    assert outcome["outcome"] == "rolled-back" and "exited 3" in outcome["reason"]
    assert files(tmp_path / "conf.d") == {}


@pytest.mark.parametrize("flags, message", [
    (["--configure", "--drop-in-only"], "--drop-in-only needs --once and --configure"),
    (["--once", "--drop-in-only"], "--drop-in-only needs --once and --configure"),
    (["--once", "--configure", "--drop-in-only", "--kubeconfig", "/nonexistent"],
     "--drop-in-only never contacts the Kubernetes API"),
])
def test_inconsistent_flags_are_refused(tmp_path, agent_cmd, flags, message):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY % {"config": tmp_path / "config.toml", "dir": tmp_path, "extra": V16})
    done = agent_cmd("--config", str(policy), "--node-name", "n1", *flags)
    assert done.returncode == 2 and message in done.stderr


DAEMON_POLICY = """\
apiVersion: sandgate.io/v1alpha1
kind: SandboxPolicy
defaultProfile: kata
profiles:
  kata:
    runtimeClassName: kata
    runtimeType: io.containerd.kata.v2
agent:
  containerdConfig: {config}
  dropInDir: {dir}/conf.d
  criEndpoint: unix://{socket}
  reloadCommand: {reload}
"""


@needs_containerd
def test_a_running_containerd_1_6_loads_the_drop_in_with_its_cri_settings(tmp_path, agent_cmd, api_trap, monkeypatch):
    """The real daemon, version found over CRI: after the reload the CRI plugin is up with the new handler and
    the settings of the section it replaced (restrict_oom_score_adj, the harness's CNI paths) still in effect."""
    env, connections = api_trap
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ctd = containerd_harness.Containerd.prepare()
    try:
        ctd.config.write_text(f'imports = ["{ctd.dir}/conf.d/*.toml"]\n' + ctd.config.read_text())
        (ctd.dir / "conf.d").mkdir()
        ctd.launch()
        with ctd.cri() as client:
            before = client.status(verbose=True).info["config"]
        main_before = ctd.config.read_bytes()
        policy = tmp_path / "policy.yaml"
        policy.write_text(DAEMON_POLICY.format(config=ctd.config, dir=ctd.dir, socket=ctd.socket,
                                               reload=json.dumps(ctd.reload_command())))
        done = agent_cmd("--config", str(policy), "--node-name", "n1", "--root", "/", "--once", "--configure",
                         "--drop-in-only")
        assert connections() == 0
        assert done.returncode == 0, done.stderr
        [outcome] = [json.loads(line) for line in done.stderr.splitlines() if '"outcome"' in line]
        assert outcome["outcome"] == "configured" and outcome["handlers"] == ["kata"]
        assert ctd.config.read_bytes() == main_before
        plugins = ctd.ctr("plugins", "ls")
        assert any(line.split()[:2] == ["io.containerd.grpc.v1", "cri"] and line.split()[-1] == "ok"
                   for line in plugins.stdout.splitlines()), plugins.stdout
        with ctd.cri() as client:
            after = client.status(verbose=True).info["config"]
        assert set(after["containerd"]["runtimes"]) == {"runc", "kata"}
        del after["containerd"]["runtimes"]["kata"]
        assert after == before  # the whole CRI config in effect, the new handler aside
    finally:
        ctd.close()


def test_crio_writes_only_its_drop_in_directory(root, tmp_path, agent_cmd, api_trap, monkeypatch):
    """On a CRI-O node (the conftest's fake host root) the same mode writes only agent.crioDropInDir."""
    from test_crio import MAIN as CRIO_MAIN, POLICY as CRIO_POLICY

    env, connections = api_trap
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    main = root.write("etc/crio/crio.conf", CRIO_MAIN)
    (root.path / "etc/crio/crio.conf.d").mkdir()
    policy = tmp_path / "policy.yaml"
    policy.write_text(CRIO_POLICY % "  maxSandboxes: 10")
    done = agent_cmd("--config", str(policy), "--node-name", "n1", "--root", str(root.path), "--once", "--configure",
                     "--drop-in-only")
    assert connections() == 0
    assert done.returncode == 0, done.stderr
    [outcome] = [json.loads(line) for line in done.stderr.splitlines() if '"outcome"' in line]
    assert outcome["outcome"] == "configured" and outcome["runtimeManager"] == "crio"
    assert all(f.startswith("/etc/crio/crio.conf.d/") for f in outcome["files"]) and len(outcome["files"]) == 2
    assert main.read_text() == CRIO_MAIN
    assert sorted(files(root.path / "etc/crio/crio.conf.d")) == sorted(Path(f).name for f in outcome["files"])
