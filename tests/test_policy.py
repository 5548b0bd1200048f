"""The policy file contract: the documented shape loads; every kind of mistake is refused by key."""

from decimal import Decimal

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from sandgate.core.clusterversion import ClusterVersion, Mode, VersionError
from sandgate.core.policy import PolicyError, PolicyStore, load_policy, parse_policy

import apiserver_validation
from support import EXAMPLE_POLICY


def example_doc() -> dict:
    return yaml.safe_load(EXAMPLE_POLICY.read_text())


def errors_of(doc) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(doc)
    return info.value.errors


def test_documented_example_loads_with_every_field():
    policy = load_policy(EXAMPLE_POLICY)
    assert policy.cluster_version is None
    assert policy.default_profile == "runv"
    assert policy.allow_pod_opt_in is True
    assert policy.exempt_namespaces == {"kube-system", "sandgate-system", "sandgate-agent"}
    runv = policy.profiles["runv"]
    assert runv.handler == "runv"
    assert runv.overhead.pod_fixed == {"cpu": "100m", "memory": "50Mi"}
    assert runv.tolerations[0].to_k8s() == {
        "key": "sandbox.io/runtime", "operator": "Equal", "value": "runv", "effect": "NoSchedule"}
    assert runv.edge_toleration_seconds == 86400
    assert policy.profiles["gvisor"].node_selector == {"sandbox.io/gvisor": "true"}
    assert policy.profile_for_runtime_class("gvisor").name == "gvisor"


def test_memory_overhead_is_fixed_plus_percent_clamped():
    overhead = load_policy(EXAMPLE_POLICY).profiles["runv"].overhead
    mi = Decimal(1024 * 1024)
    assert overhead.memory_total(Decimal(0)) == 64 * mi  # 50Mi raised to memoryMin
    assert overhead.memory_total(1000 * mi) == 70 * mi  # 50Mi + 2% of 1000Mi
    assert overhead.memory_total(100000 * mi) == 512 * mi  # capped at memoryMax


@pytest.mark.parametrize("mutate, key", [
    (lambda d: d.update(defaultProfile="kata"), "defaultProfile"),
    (lambda d: d["profiles"]["runv"]["overhead"]["podFixed"].update(cpu="lots"), "profiles.runv.overhead.podFixed.cpu"),
    (lambda d: d["profiles"]["runv"]["tolerations"][0].update(operator="Equals"), "profiles.runv.tolerations[0].operator"),
    (lambda d: d["profiles"]["gvisor"]["nodeSelector"].update({"sandbox.io/gvisor": True}), "profiles.gvisor.nodeSelector.sandbox.io/gvisor"),
    (lambda d: d["profiles"]["gvisor"].update(forbid=["hostNetwork", "sudo"]), "profiles.gvisor.forbid[1]"),
    (lambda d: d.update(namespaceLable="x"), "namespaceLable"),
    (lambda d: d.update(clusterVersion="1.12"), "clusterVersion"),
    (lambda d: d["profiles"]["runv"]["overhead"].update(memoryMin="1Gi"), "profiles.runv.overhead.memoryMin"),
    (lambda d: d["profiles"].update(none={"runtimeClassName": "x"}), "profiles.none"),
    (lambda d: d["profiles"]["gvisor"].update(runtimeClassName="runv"), "profiles.gvisor.runtimeClassName"),
])
def test_invalid_policy_is_refused_naming_the_key(mutate, key):
    doc = example_doc()
    mutate(doc)
    errors = errors_of(doc)
    assert any(e.startswith(key + ":") for e in errors), errors


@pytest.mark.parametrize("tolerations", [True, 3, "NoSchedule", {"key": "a"}])
def test_tolerations_that_are_not_a_list_are_one_clear_error(tolerations):
    # Not a crash (a bool or int was iterated), nor errors about the characters of a string.
    doc = example_doc()
    doc["profiles"]["runv"]["tolerations"] = tolerations
    assert errors_of(doc) == ["profiles.runv.tolerations: must be a list"]


def test_all_errors_are_reported_at_once():
    doc = example_doc()
    doc["defaultProfile"] = "kata"
    doc["allowPodOptIn"] = "yes"
    assert len(errors_of(doc)) == 2


def test_cluster_version_accepts_yaml_float_and_string():
    doc = example_doc()
    doc["clusterVersion"] = 1.15
    assert parse_policy(doc).cluster_version == ClusterVersion(1, 15)
    doc["clusterVersion"] = "1.24"
    assert parse_policy(doc).cluster_version == ClusterVersion(1, 24)


@pytest.mark.parametrize("version, overhead, mode", [
    ("1.14", None, Mode.WEBHOOK_MERGES), ("1.15", None, Mode.WEBHOOK_MERGES), ("1.16", None, Mode.WEBHOOK_MERGES),
    ("1.17", True, Mode.APISERVER_MERGES), ("1.18", None, Mode.APISERVER_MERGES), ("v1.24.1", None, Mode.APISERVER_MERGES),
    ("1.30", False, Mode.WEBHOOK_MERGES),
])
def test_mode_follows_version_and_pod_overhead(version, overhead, mode):
    assert ClusterVersion.parse(version).mode(overhead) is mode


def test_version_from_api_server_info():
    assert ClusterVersion.from_version_info({"major": "1", "minor": "24+", "gitVersion": "v1.24.1-gke.1"}) == ClusterVersion(1, 24)
    assert ClusterVersion.from_version_info({"major": "1", "minor": "15+"}) == ClusterVersion(1, 15)
    with pytest.raises(VersionError):
        ClusterVersion.parse("banana")


def test_store_reloads_a_changed_file_and_keeps_the_last_good_one(tmp_path):
    path = tmp_path / "policy.yaml"
    doc = example_doc()
    path.write_text(yaml.safe_dump(doc))
    store = PolicyStore(path, check_interval=0, settle=0)  # settling: tests/test_reloading.py
    assert store.current.default_profile == "runv"
    doc["defaultProfile"] = "gvisor"
    path.write_text(yaml.safe_dump(doc) + "\n")
    assert store.current.default_profile == "gvisor"
    path.write_text("apiVersion: nope\n")
    assert store.current.default_profile == "gvisor"
    assert "apiVersion" in store.last_error


def test_profile_named_resolves_label_and_annotation_values():
    policy = load_policy(EXAMPLE_POLICY)
    assert policy.profile_named("sandboxed").name == "runv"  # the defaultProfile
    assert policy.profile_named("gvisor").name == "gvisor"
    assert policy.profile_named("none") is None
    assert policy.profile_named("kata") is None
    assert policy.profile_named(None) is None


def test_forbid_defaults_to_every_host_feature_and_an_explicit_empty_list_allows_them():
    from sandgate.core.policy.model import FORBIDDABLE
    doc = example_doc()
    del doc["profiles"]["gvisor"]["forbid"]
    doc["profiles"]["runv"]["forbid"] = []
    policy = parse_policy(doc)
    assert policy.profiles["gvisor"].forbid == set(FORBIDDABLE)
    assert policy.profiles["runv"].forbid == set()


def test_every_shipped_profile_forbids_all_six_host_features():
    from sandgate.core.policy.model import FORBIDDABLE
    from support import REPO
    for path in ("manifests/base/policy.yaml", "manifests/overlays/legacy/policy.yaml", "examples/policy.yaml"):
        policy = load_policy(REPO / path)
        for profile in policy.profiles.values():
            assert profile.forbid == set(FORBIDDABLE), (path, profile.name)


def test_security_switches_parse_with_safe_defaults():
    policy = load_policy(EXAMPLE_POLICY)
    assert (policy.unlabelled_namespaces, policy.allow_profile_override) == ("trusted", False)
    assert policy.namespace_admin_groups == ("system:masters", "sandgate.io:namespace-admins")
    assert policy.scheduling.allowed_scheduler_names == {"default-scheduler"}
    assert policy.agent.namespace == "sandgate-agent"
    doc = example_doc()
    doc.update(unlabelledNamespaces="sandboxed", allowProfileOverride=True, namespaceAdminGroups=["platform"])
    doc["scheduling"] = {"allowedSchedulerNames": ["default-scheduler", "edge"]}
    policy = parse_policy(doc)
    assert (policy.unlabelled_namespaces, policy.allow_profile_override) == ("sandboxed", True)
    assert policy.namespace_admin_groups == ("platform",)
    assert policy.scheduling.allowed_scheduler_names == {"default-scheduler", "edge"}
    doc["unlabelledNamespaces"] = "open"
    assert errors_of(doc) == ['unlabelledNamespaces: must be one of trusted, sandboxed, got "open"']


@pytest.mark.parametrize("name, reason", [
    ("opt-in", "the webhook path segment of the pod opt-in entry (/mutate/opt-in)"),
    ("sandboxed", "selects defaultProfile"),
    ("none", "asks to stay unsandboxed"),
    ("_optin", "must be a DNS-1123 label"),
    ("Kata", "must be a DNS-1123 label"),
    ("kata.v2", "must be a DNS-1123 label"),
    ("k" * 64, "must be a DNS-1123 label"),
])
def test_profile_names_are_dns_labels_and_not_reserved(name, reason):
    doc = example_doc()
    doc["profiles"][name] = doc["profiles"].pop("gvisor")
    errors = errors_of(doc)
    assert any(e.startswith(f"profiles.{name}: ") and reason in e for e in errors), errors


@given(st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z"))
def test_every_accepted_profile_name_makes_webhook_paths_the_api_server_accepts(name):
    doc = example_doc()
    doc["profiles"][name] = doc["profiles"].pop("gvisor")
    try:
        policy = parse_policy(doc)
    except PolicyError as exc:
        assert name in ("runv", "sandboxed", "none", "opt-in"), exc.errors
        return
    for profile in policy.profiles:
        for verb in ("mutate", "validate"):
            service = {"name": "s", "namespace": "n", "path": f"/{verb}/{profile}"}
            assert apiserver_validation.validate_service(service, "service") == []


def test_agent_runtime_settings_default_and_parse():
    agent = load_policy(EXAMPLE_POLICY).agent
    assert (agent.containerd_version, agent.cri_endpoint, agent.runtime_manager) == (
        "auto", "unix:///run/containerd/containerd.sock", "auto")
    assert agent.reload_timeout_seconds == 30
    doc = example_doc()
    doc.setdefault("agent", {}).update(containerdVersion="1.7", criEndpoint="unix:///run/k3s/containerd/containerd.sock",
                                       runtimeManager="crio", reloadTimeoutSeconds=10)
    agent = parse_policy(doc).agent
    assert (agent.containerd_version, agent.cri_endpoint, agent.runtime_manager, agent.reload_timeout_seconds) == (
        "1.7", "unix:///run/k3s/containerd/containerd.sock", "crio", 10)


@pytest.mark.parametrize("key, value, reason", [
    ("containerdVersion", 1.7, "quote it in YAML"),  # YAML reads 1.10 as 1.1: only strings are accepted
    ("containerdVersion", "1.x", 'must be "auto" or a containerd release'),
    ("containerdVersion", "latest", 'must be "auto" or a containerd release'),
    ("criEndpoint", "tcp://10.0.0.1:1234", "must be unix:///<absolute path>"),
    ("runtimeManager", "docker", "must be one of auto, containerd, crio"),
    ("reloadTimeoutSeconds", 0, ""),
])
def test_invalid_agent_runtime_settings_are_refused_by_key(key, value, reason):
    doc = example_doc()
    doc.setdefault("agent", {})[key] = value
    errors = errors_of(doc)
    assert any(e.startswith(f"agent.{key}:") and reason in e for e in errors), errors


@pytest.mark.parametrize("options, error", [
    ({"TypeUrl": "io.containerd.runsc.v1.options", "ConfigPath": "/etc/containerd/runsc.toml",
      "SystemdCgroup": True}, None),
    ({"runtime_path": "/usr/bin/kata-runtime", "runtime_config_path": "/etc/kata/configuration.toml"}, None),
    ({"BinaryName": "/tmp/evil"}, "runtimeOptions.BinaryName: not an allowed runtime option"),
    ({"privileged_without_host_devices": True}, "not an allowed runtime option"),
    ({"runtime_path": "/tmp/evil"}, "runtimeOptions.runtime_path: names a program: it must be in /usr/bin/"),
    ({"runtime_path": "/usr/bin/../../tmp/evil"}, 'without "." or ".." segments'),
    ({"ConfigPath": "relative.toml"}, "must be an absolute path"),
    ({"SystemdCgroup": "yes"}, "must be true or false"),
])
def test_runtime_options_are_an_allow_list(options, error):
    doc = example_doc()
    doc["profiles"]["gvisor"]["runtimeOptions"] = options
    if error is None:
        assert parse_policy(doc).profiles["gvisor"].runtime_options == options
    else:
        assert any(error in e for e in errors_of(doc)), errors_of(doc)
