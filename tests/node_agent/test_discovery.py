"""Discovery, capacity and `--once --dry-run` over fake host roots, through the real command."""

from __future__ import annotations

from decimal import Decimal

import pytest

from node_agent.containerd import ConfigSnapshot, ContainerdConfigError, ContainerdVersion, resolve
from node_agent.discovery import capacity, is_vm_runtime, node_patch, patch_is_empty, shim_name
from sandgate.core import keys

KATA_LABEL, RUNSC_LABEL = keys.runtime_label("kata"), keys.runtime_label("runsc")
KATA_CAP, RUNSC_CAP = keys.capacity_annotation("kata"), keys.capacity_annotation("runsc")
# (8Gi - 1Gi reserved) / 160Mi = 44.8 -> 44 kata sandboxes; runsc has no overhead -> maxSandboxes 100.
KATA_CAPACITY, RUNSC_CAPACITY = "44", "100"


UNKNOWN_VERSION = ("containerd version unknown (no CRI answer, no containerd binary under --root): discovery "
                   "trusts only handlers that containerd 1.x and 2.x rules agree on; set agent.containerdVersion")
NO_CRI = ("CRI socket unix:///run/containerd/containerd.sock did not answer (UNAVAILABLE: No such file or directory): "
          "handlers come from the config files")


def by_handler(doc: dict) -> dict:
    return {r["handler"]: r for r in doc["runtimes"]}


def both_v2(root, tables) -> None:
    root.config(tables.V2_HEAD + tables.runtime(tables.V2, "runc", "io.containerd.runc.v2")
                + tables.runtime(tables.V2, "kata", "io.containerd.kata.v2")
                + tables.runtime(tables.V2, "runsc", "io.containerd.runsc.v1"))


def test_shim_names_follow_containerd():
    assert shim_name("io.containerd.kata.v2") == "containerd-shim-kata-v2"
    assert shim_name("io.containerd.runsc.v1") == "containerd-shim-runsc-v1"
    assert shim_name("io.containerd.kata-fc.v2") == "containerd-shim-kata-fc-v2"
    with pytest.raises(ValueError):
        shim_name("kata")


def test_vm_runtimes_are_recognised_by_shim_name():
    assert is_vm_runtime("containerd-shim-kata-v2")
    assert is_vm_runtime("/opt/kata/bin/containerd-shim-kata-fc-v2")
    assert is_vm_runtime("containerd-shim-runv-v1")
    assert not is_vm_runtime("containerd-shim-runsc-v1")
    assert not is_vm_runtime("containerd-shim-runc-v2")


def test_capacity_formula():
    mi = Decimal(2 ** 20)
    assert capacity(8192 * mi, 1024 * mi, 160 * mi, 100) == 44
    assert capacity(8192 * mi, 1024 * mi, 160 * mi, 10) == 10  # maxSandboxes caps it
    assert capacity(512 * mi, 1024 * mi, 160 * mi, 10) == 0  # reserved above allocatable: never negative
    assert capacity(512 * mi, 0, Decimal(0), 7) == 7  # no overhead: maxSandboxes


def test_patch_removes_only_our_stale_keys():
    patch = node_patch({"kata": 3}, {KATA_LABEL: "false", RUNSC_LABEL: "true", "team": "a"},
                       {RUNSC_CAP: "5", "other.io/x": "1"})
    assert patch == {"metadata": {"labels": {KATA_LABEL: "true", RUNSC_LABEL: None},
                                  "annotations": {KATA_CAP: "3", RUNSC_CAP: None}}}
    assert not patch_is_empty(patch)


def test_patch_names_only_changed_keys():
    current = ({KATA_LABEL: "true", "team": "a"}, {KATA_CAP: "3"})
    assert node_patch({"kata": 4}, *current) == {"metadata": {"labels": {}, "annotations": {KATA_CAP: "4"}}}
    assert patch_is_empty(node_patch({"kata": 3}, *current))


def test_2x_merges_tables_and_later_non_empty_scalars_win():
    snapshot = ConfigSnapshot("/c.toml", {"/c.toml": 'imports = ["/d.toml"]\n[a]\nb = 1\nc = 2\nd = 1\n',
                                          "/d.toml": "[a]\nc = 3\nd = 0\n"})
    assert resolve(snapshot, ContainerdVersion(2, 0)).effective["a"] == {"b": 1, "c": 3, "d": 1}


def test_cli_dry_run_both_runtimes_exact(root, tables, dry_run):
    both_v2(root, tables)
    root.shim("containerd-shim-kata-v2", "opt/kata/bin")
    root.shim("containerd-shim-runsc-v1", "usr/bin")
    root.kvm()
    doc = dry_run()
    # No CRI socket under the fake root: no sandboxes, and the document says why.
    assert doc.pop("sandboxes") == [] and "CRI " in doc.pop("sandboxesError")
    assert doc == {
        "node": "n1",
        "nodePatch": {"metadata": {"labels": {KATA_LABEL: "true", RUNSC_LABEL: "true"},
                                   "annotations": {KATA_CAP: KATA_CAPACITY, RUNSC_CAP: RUNSC_CAPACITY}}},
        "containerd": {"config": "/etc/containerd/config.toml", "version": 2, "imports": [], "error": None,
                       "dropIns": [], "mainConfig": None, "edits": [], "skipped": [], "configureError": None,
                       "runtimeManager": "containerd", "containerdVersion": None, "versionSource": None,
                       "criEndpoint": "unix:///run/containerd/containerd.sock", "handlersFrom": "files",
                       "warnings": [UNKNOWN_VERSION, NO_CRI], "problems": []},
        "runtimes": [
            {"handler": "kata", "runtimeType": "io.containerd.kata.v2", "shim": "/opt/kata/bin/containerd-shim-kata-v2",
             "advertised": True, "reason": None},
            {"handler": "runc", "runtimeType": "io.containerd.runc.v2", "shim": None, "advertised": False,
             "reason": "the standard runc handler is not a sandbox runtime"},
            {"handler": "runsc", "runtimeType": "io.containerd.runsc.v1", "shim": "/usr/bin/containerd-shim-runsc-v1",
             "advertised": True, "reason": None},
        ],
    }


def test_kata_only(root, tables, dry_run):
    root.config(tables.V2_HEAD + tables.runtime(tables.V2, "kata", "io.containerd.kata.v2"))
    root.shim("containerd-shim-kata-v2")
    root.kvm()
    doc = dry_run()
    assert doc["nodePatch"]["metadata"] == {"labels": {KATA_LABEL: "true"}, "annotations": {KATA_CAP: KATA_CAPACITY}}
    assert by_handler(doc)["runsc"]["reason"] == "not configured in containerd"


def test_gvisor_only_needs_no_kvm(root, tables, dry_run):
    root.config(tables.V2_HEAD + tables.runtime(tables.V2, "runsc", "io.containerd.runsc.v1"))
    root.shim("containerd-shim-runsc-v1")
    doc = dry_run()
    assert doc["nodePatch"]["metadata"] == {"labels": {RUNSC_LABEL: "true"}, "annotations": {RUNSC_CAP: RUNSC_CAPACITY}}


def test_missing_shim_is_not_advertised(root, tables, dry_run):
    both_v2(root, tables)
    root.shim("containerd-shim-kata-v2")
    root.shim("containerd-shim-runsc-v1", executable=False)  # present but not executable counts as missing
    root.kvm()
    doc = dry_run()
    assert doc["nodePatch"]["metadata"] == {"labels": {KATA_LABEL: "true"}, "annotations": {KATA_CAP: KATA_CAPACITY}}
    runsc = by_handler(doc)["runsc"]
    assert runsc["advertised"] is False
    assert "containerd-shim-runsc-v1 not found" in runsc["reason"]


def test_vm_runtime_without_kvm_is_not_advertised(root, tables, dry_run):
    both_v2(root, tables)
    root.shim("containerd-shim-kata-v2")
    root.shim("containerd-shim-runsc-v1")
    doc = dry_run()
    assert doc["nodePatch"]["metadata"]["labels"] == {RUNSC_LABEL: "true"}
    assert by_handler(doc)["kata"]["reason"] == "VM-based runtime but /sys/class/misc/kvm is missing"


def test_config_version_3(root, tables, dry_run):
    root.config("version = 3\n" + tables.runtime(tables.V3, "kata", "io.containerd.kata.v2")
                + tables.runtime(tables.V3, "runsc", "io.containerd.runsc.v1"))
    root.shim("containerd-shim-kata-v2")
    root.shim("containerd-shim-runsc-v1")
    root.kvm()
    doc = dry_run()
    assert doc["containerd"]["version"] == 3
    assert doc["nodePatch"]["metadata"]["labels"] == {KATA_LABEL: "true", RUNSC_LABEL: "true"}


def test_v2_table_is_ignored_in_a_v3_config(root, tables, dry_run):
    root.config("version = 3\n" + tables.runtime(tables.V2, "kata", "io.containerd.kata.v2"))
    root.shim("containerd-shim-kata-v2")
    root.kvm()
    doc = dry_run()
    assert doc["nodePatch"]["metadata"]["labels"] == {}
    assert by_handler(doc)["kata"]["reason"] == "not configured in containerd"


def test_drop_ins_via_imports_relative_and_glob(root, tables, dry_run, policy_file):
    root.config('version = 2\nimports = ["conf.d/*.toml", "/etc/containerd/extra.toml"]\n'
                + tables.runtime(tables.V2, "kata", "io.containerd.kata.v2"))
    # Drop-ins load in order and merge: the later one overrides kata's runtime_type scalar.
    root.write("etc/containerd/conf.d/10-runsc.toml", "version = 2\n" + tables.runtime(tables.V2, "runsc",
                                                                                       "io.containerd.runsc.v1"))
    root.write("etc/containerd/extra.toml", "version = 2\n" + tables.runtime(tables.V2, "kata", "io.containerd.kata-qemu.v2"))
    root.shim("containerd-shim-kata-qemu-v2")
    root.shim("containerd-shim-runsc-v1")
    root.kvm()
    doc = dry_run(policy=policy_file('  containerdVersion: "2.0"'))  # 2.x merges drop-ins into the CRI section
    assert doc["containerd"]["imports"] == ["/etc/containerd/conf.d/10-runsc.toml", "/etc/containerd/extra.toml"]
    assert doc["nodePatch"]["metadata"]["labels"] == {KATA_LABEL: "true", RUNSC_LABEL: "true"}
    assert by_handler(doc)["kata"]["shim"] == "/usr/local/bin/containerd-shim-kata-qemu-v2"


def test_unparsable_config_is_reported_and_nothing_advertised(root, dry_run):
    root.config('version = 2\n[plugins."io.containerd.grpc.v1.cri"\n')
    root.shim("containerd-shim-kata-v2")
    root.kvm()
    doc = dry_run()
    assert doc["nodePatch"]["metadata"] == {"labels": {}, "annotations": {}}
    assert doc["containerd"]["error"].startswith("/etc/containerd/config.toml: not valid TOML")
    assert all(not r["advertised"] and "containerd configuration unusable" in r["reason"] for r in doc["runtimes"])


def test_missing_config_file_is_reported(root, dry_run):
    doc = dry_run()
    assert doc["containerd"]["error"] == "/etc/containerd/config.toml: file not found"
    assert doc["nodePatch"]["metadata"]["labels"] == {}


def test_probe_failure_keeps_handler_off(root, tables, dry_run, policy_file):
    root.config(tables.V2_HEAD + tables.runtime(tables.V2, "runsc", "io.containerd.runsc.v1"))
    root.shim("containerd-shim-runsc-v1")
    policy = policy_file(gvisor_extra="    probe: [sh, -c, 'echo broken >&2; exit 3']")
    runsc = by_handler(dry_run(policy=policy))["runsc"]
    assert runsc["advertised"] is False
    assert runsc["reason"] == "probe sh -c echo broken >&2; exit 3 exited 3: broken"


def test_resolve_rejects_unknown_config_version():
    with pytest.raises(ContainerdConfigError, match="unsupported config version 9"):
        resolve(ConfigSnapshot("/c.toml", {"/c.toml": "version = 9\n"}), ContainerdVersion(1, 6))


def test_probe_success_advertises(root, tables, dry_run, policy_file):
    root.config(tables.V2_HEAD + tables.runtime(tables.V2, "runsc", "io.containerd.runsc.v1"))
    root.shim("containerd-shim-runsc-v1")
    doc = dry_run(policy=policy_file(gvisor_extra="    probe: [sh, -c, 'exit 0']"))
    assert by_handler(doc)["runsc"]["advertised"] is True


def test_bad_policy_exits_2(root, tmp_path, agent_cmd):
    run_agent = agent_cmd
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: sandgate.io/v1alpha1\nkind: SandboxPolicy\n")
    done = run_agent("--config", str(bad), "--node-name", "n1", "--root", str(root.path), "--once", "--dry-run",
                     "--node-allocatable-memory", "8Gi")
    assert done.returncode == 2
    assert "profiles: at least one profile is required" in done.stderr
    assert done.stdout == ""


def test_dry_run_without_once_is_refused(root, policy_file, agent_cmd):
    done = agent_cmd("--config", str(policy_file()), "--node-name", "n1", "--root", str(root.path), "--dry-run",
                     "--node-allocatable-memory", "8Gi")
    assert done.returncode == 2
    assert "--dry-run needs --once" in done.stderr and done.stdout == ""
