"""`--configure` plans on file trees (containerd 2.x: drop-ins; see test_containerd_config.py for 1.x, judged by
the real `containerd config dump`, and test_configure_daemon.py for writing, reloading and rolling back)."""

from __future__ import annotations

import json
import re
import tomllib

from sandgate.core import keys

MAIN = """\
# operator's containerd config: comments must survive
version = 2

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
"""
V2_RULES = '  containerdVersion: "2.0"'
GVISOR_OPTIONS = "    runtimeOptions: {TypeUrl: io.containerd.runsc.v1.options, ConfigPath: /etc/containerd/runsc.toml}"


def snapshot(root) -> dict[str, bytes]:
    return {str(p.relative_to(root.path)): p.read_bytes() for p in sorted(root.path.rglob("*")) if p.is_file()}


def setup(root, policy_file, tmp_path):
    root.config(MAIN)
    root.shim("containerd-shim-kata-v2")
    root.shim("containerd-shim-runsc-v1")
    root.kvm()
    reloads = tmp_path / "reloads"
    policy = policy_file(f"  reloadCommand: [sh, -c, 'echo reload >> {reloads}']\n" + V2_RULES, GVISOR_OPTIONS)
    return policy, reloads


def test_dry_run_shows_changes_without_writing(root, policy_file, tmp_path, dry_run):
    policy, reloads = setup(root, policy_file, tmp_path)
    before = snapshot(root)
    doc = dry_run("--configure", policy=policy)
    assert snapshot(root) == before
    assert not reloads.exists()
    drop_ins = {d["path"]: tomllib.loads(d["content"]) for d in doc["containerd"]["dropIns"]}
    cri = "io.containerd.grpc.v1.cri"
    assert drop_ins == {
        "/etc/containerd/conf.d/sandgate-kata.toml": {
            "version": 2, "plugins": {cri: {"containerd": {"runtimes": {"kata": {"runtime_type": "io.containerd.kata.v2"}}}}}},
        "/etc/containerd/conf.d/sandgate-runsc.toml": {
            "version": 2, "plugins": {cri: {"containerd": {"runtimes": {"runsc": {
                "runtime_type": "io.containerd.runsc.v1",
                "options": {"TypeUrl": "io.containerd.runsc.v1.options", "ConfigPath": "/etc/containerd/runsc.toml"}}}}}}},
    }
    main = doc["containerd"]["mainConfig"]
    assert main["path"] == "/etc/containerd/config.toml"
    assert re.fullmatch(r"/etc/containerd/config\.toml\.sandgate-\d{8}T\d{6}Z\.bak", main["backup"])
    assert tomllib.loads(main["content"])["imports"] == ["/etc/containerd/conf.d/sandgate-kata.toml",
                                                         "/etc/containerd/conf.d/sandgate-runsc.toml"]
    assert main["content"].startswith("imports = [")  # prepended: the operator's text follows unchanged
    assert main["content"].endswith("]\n" + MAIN)



def test_dry_run_node_patch_is_what_the_configured_run_publishes(root, policy_file, tmp_path, dry_run):
    """With --configure the handlers the drop-ins add are advertised in the same cycle, so the
    dry-run patch must count them too, although it writes nothing."""
    policy, _ = setup(root, policy_file, tmp_path)
    doc = dry_run("--configure", policy=policy)
    assert doc["nodePatch"]["metadata"]["labels"] == {
        keys.runtime_label("kata"): "true", keys.runtime_label("runsc"): "true"}
    assert set(doc["nodePatch"]["metadata"]["annotations"]) == {
        keys.capacity_annotation("kata"), keys.capacity_annotation("runsc")}
    assert not (root.path / "etc/containerd/conf.d").exists()
    unconfigured = dry_run(policy=policy)["nodePatch"]["metadata"]  # without --configure nothing is advertisable
    assert unconfigured == {"labels": {}, "annotations": {}}

def test_existing_glob_import_is_reused(root, policy_file, tmp_path, dry_run):
    root.config('imports = ["conf.d/*.toml"]\n' + MAIN)
    policy = policy_file(V2_RULES)
    doc = dry_run("--configure", policy=policy)
    assert doc["containerd"]["mainConfig"] is None
    assert [d["path"] for d in doc["containerd"]["dropIns"]] == [
        "/etc/containerd/conf.d/sandgate-kata.toml", "/etc/containerd/conf.d/sandgate-runsc.toml"]


def test_existing_imports_array_is_extended_in_place(root, policy_file, dry_run):
    root.config(MAIN.replace("version = 2\n", 'version = 2\nimports = [\n  "/etc/containerd/site.toml",\n]\n'))
    root.write("etc/containerd/site.toml", "")
    doc = dry_run("--configure", policy=policy_file(V2_RULES))
    content = doc["containerd"]["mainConfig"]["content"]
    assert tomllib.loads(content)["imports"] == ["/etc/containerd/site.toml", "/etc/containerd/conf.d/sandgate-kata.toml",
                                                 "/etc/containerd/conf.d/sandgate-runsc.toml"]
    assert content.startswith("# operator's containerd config")


def test_version_3_drop_in_uses_the_v3_table(root, policy_file, dry_run):
    root.config("version = 3\n")
    doc = dry_run("--configure", policy=policy_file(V2_RULES))
    kata = tomllib.loads(doc["containerd"]["dropIns"][0]["content"])
    assert kata["version"] == 3
    assert kata["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["kata"] == {
        "runtime_type": "io.containerd.kata.v2"}


def test_unparsable_config_is_left_untouched(root, policy_file, tmp_path, fake_api, agent_cmd):
    policy, reloads = setup(root, policy_file, tmp_path)
    broken = MAIN + "[plugins.broken\n"
    root.config(broken)
    before = snapshot(root)
    done = agent_cmd("--config", str(policy), "--node-name", "n1", "--root", str(root.path), "--once", "--configure",
                     "--kubeconfig", str(fake_api.kubeconfig(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert snapshot(root) == before
    assert not reloads.exists()
    errors = [json.loads(line) for line in done.stderr.splitlines() if "unusable" in line]
    assert errors and "not valid TOML" in errors[0]["error"]
    assert fake_api.calls("PATCH")[-1]["body"]["metadata"]["labels"] == {keys.runtime_label("runv"): None}


def test_once_configure_with_an_unknown_containerd_version_fails_naming_the_key(root, policy_file, tmp_path, fake_api,
                                                                                agent_cmd):
    root.config(MAIN)
    before = snapshot(root)
    done = agent_cmd("--config", str(policy_file()), "--node-name", "n1", "--root", str(root.path), "--once",
                     "--configure", "--kubeconfig", str(fake_api.kubeconfig(tmp_path)))
    assert done.returncode == 1
    assert "cannot configure: refusing to configure: the containerd version is unknown" in done.stderr
    assert "set agent.containerdVersion" in done.stderr.splitlines()[-1]
    assert snapshot(root) == before
    assert fake_api.calls("PUT", "/apis/coordination.k8s.io") or fake_api.calls("POST", "/apis/coordination.k8s.io")
