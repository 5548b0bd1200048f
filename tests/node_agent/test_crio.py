"""CRI-O: handlers from crio.conf and crio.conf.d (lexical order, key by key), configured with a drop-in.

No CRI-O package exists here: the tests follow crio.conf(5) / crio.conf.d(5) - the main file first,
then every drop-in sorted by name, each overriding only the keys it sets.
"""

from __future__ import annotations

import tomllib

from node_agent import crio
from sandgate.core import keys

POLICY = """\
apiVersion: sandgate.io/v1alpha1
kind: SandboxPolicy
defaultProfile: kata
profiles:
  kata:
    runtimeClassName: kata
    runtimeType: vm
    runtimeOptions: {runtime_path: /usr/bin/containerd-shim-kata-v2, runtime_config_path: /etc/kata/configuration.toml}
  gvisor:
    runtimeClassName: gvisor
    handler: runsc
    runtimeType: oci
    runtimeOptions: {runtime_path: /usr/local/bin/runsc}
agent:
%s
"""
MAIN = """\
[crio.runtime]
default_runtime = "runc"
[crio.runtime.runtimes.runc]
runtime_path = "/usr/bin/runc"
"""


def test_drop_ins_merge_key_by_key_in_lexical_order():
    config = crio.resolve({
        "/etc/crio/crio.conf": MAIN,
        "/etc/crio/crio.conf.d/10-kata.conf": '[crio.runtime.runtimes.kata]\nruntime_path = "/opt/old"\n'
                                              'runtime_type = "vm"\n',
        "/etc/crio/crio.conf.d/20-kata-path.conf": '[crio.runtime.runtimes.kata]\nruntime_path = "/opt/new"\n',
    })
    assert config.runtimes() == {"runc": {"runtime_path": "/usr/bin/runc"},
                                 "kata": {"runtime_path": "/opt/new", "runtime_type": "vm"}}


def test_files_are_read_main_first_then_the_directory_sorted():
    texts = {"/c/crio.conf": "a", "/c/d/b.conf": "b", "/c/d/a.conf": "c", "/c/d/10": "d"}
    files = crio.read_files(texts.get, lambda d: sorted(n.rsplit("/", 1)[1] for n in texts if n.startswith(d + "/")),
                            "/c/crio.conf", "/c/d")
    assert list(files) == ["/c/crio.conf", "/c/d/10", "/c/d/a.conf", "/c/d/b.conf"]


def test_auto_detects_crio_discovers_and_plans_a_drop_in(root, tmp_path, dry_run):
    root.write("etc/crio/crio.conf", MAIN)
    root.write("etc/crio/crio.conf.d/10-gvisor.conf", '[crio.runtime.runtimes.runsc]\n'
                                                       'runtime_path = "/usr/local/bin/runsc"\nruntime_type = "oci"\n')
    root.shim("runsc")
    root.shim("containerd-shim-kata-v2", "usr/bin")
    root.kvm()
    policy = tmp_path / "crio-policy.yaml"
    policy.write_text(POLICY % "  maxSandboxes: 10")
    doc = dry_run("--configure", policy=policy)
    assert doc["containerd"]["runtimeManager"] == "crio"
    assert doc["containerd"]["criEndpoint"] == "unix:///var/run/crio/crio.sock"  # the default means CRI-O's own
    assert doc["containerd"]["crioFiles"] == ["/etc/crio/crio.conf", "/etc/crio/crio.conf.d/10-gvisor.conf"]
    [drop_in] = doc["containerd"]["dropIns"]
    assert drop_in["path"] == "/etc/crio/crio.conf.d/50-sandgate-kata.conf"
    assert tomllib.loads(drop_in["content"]) == {"crio": {"runtime": {"runtimes": {"kata": {
        "runtime_type": "vm", "runtime_path": "/usr/bin/containerd-shim-kata-v2",
        "runtime_config_path": "/etc/kata/configuration.toml"}}}}}
    # The dry run discovers over the planned drop-in: both handlers are advertised.
    assert doc["nodePatch"]["metadata"]["labels"] == {keys.runtime_label("kata"): "true",
                                                      keys.runtime_label("runsc"): "true"}
    assert not (root.path / "etc/crio/crio.conf.d/50-sandgate-kata.conf").exists()


def test_crio_vm_runtime_needs_kvm_and_its_binary(root, tmp_path, dry_run):
    root.write("etc/crio/crio.conf", MAIN + '[crio.runtime.runtimes.kata]\nruntime_type = "vm"\n'
                                            'runtime_path = "/usr/bin/containerd-shim-kata-v2"\n')
    root.shim("containerd-shim-kata-v2", "usr/bin")
    policy = tmp_path / "crio-policy.yaml"
    policy.write_text(POLICY % "  runtimeManager: crio")
    kata = {r["handler"]: r for r in dry_run(policy=policy)["runtimes"]}["kata"]
    assert kata["advertised"] is False and kata["reason"] == "VM-based runtime but /sys/class/misc/kvm is missing"
    runsc = {r["handler"]: r for r in dry_run(policy=policy)["runtimes"]}["runsc"]
    assert runsc["reason"] == "not configured in CRI-O"


def test_a_containerd_runtime_type_is_not_written_for_crio(root, tmp_path, dry_run):
    root.write("etc/crio/crio.conf", MAIN)
    policy = tmp_path / "crio-policy.yaml"
    policy.write_text(POLICY.replace("runtimeType: vm", "runtimeType: io.containerd.kata.v2") % "  maxSandboxes: 10")
    doc = dry_run("--configure", policy=policy)
    assert [d["path"] for d in doc["containerd"]["dropIns"]] == ["/etc/crio/crio.conf.d/50-sandgate-runsc.conf"]
    assert doc["containerd"]["skipped"] == [{"handler": "kata", "reason": "missing from CRI-O and the profile's "
                                             "runtimeType 'io.containerd.kata.v2' is not a CRI-O runtime_type "
                                             '("oci" or "vm")'}]


def test_unparsable_crio_drop_in_is_reported_and_nothing_advertised(root, tmp_path, dry_run):
    root.write("etc/crio/crio.conf", MAIN)
    root.write("etc/crio/crio.conf.d/10-broken.conf", "[crio.runtime\n")
    policy = tmp_path / "crio-policy.yaml"
    policy.write_text(POLICY % "  runtimeManager: crio")
    doc = dry_run(policy=policy)
    assert doc["containerd"]["error"].startswith("/etc/crio/crio.conf.d/10-broken.conf: not valid TOML")
    assert all(r["reason"].startswith("CRI-O configuration unusable") for r in doc["runtimes"])
    assert doc["nodePatch"]["metadata"]["labels"] == {}
