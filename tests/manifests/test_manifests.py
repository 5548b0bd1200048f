"""Render every install with `kubectl kustomize`, validate it against the target Kubernetes schemas,
and check that every key, path, flag and name in the manifests is the one the code uses."""

from __future__ import annotations

import base64
import datetime as dt
import importlib.util
import json
import shutil
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml
from cryptography import x509

import apiserver_validation
import k8s_schemas
from sandgate import __version__
from sandgate.core import keys
from sandgate.cli import build_parser
from sandgate.core.policy import load_policy, parse_policy
from support import REPO

MANIFESTS = REPO / "manifests"
KUBECTL = shutil.which("kubectl")
# What each install targets: (overlay generation, Kubernetes versions whose schemas it must pass).
# Modern: its oldest (1.22), the oldest kubernetes-validate ships (1.25) and the newest. Legacy: the
# real 1.14 and 1.15 schemas (strict: a field those versions do not know is an error).
NEWEST = kubernetes_validate.latest_version()
MODERN_VERSIONS = ["1.22", "1.25", NEWEST]
LEGACY_VERSIONS = ["1.14", "1.15"]
# Intermediate: 1.16 (first admissionregistration/v1), 1.18 (no node.k8s.io/v1 yet; no archive has 1.19),
# 1.20 and 1.21.
INTERMEDIATE_VERSIONS = ["1.16", "1.18", "1.20", "1.21"]
INSTALLS = {
    "install/modern": ("modern", MODERN_VERSIONS),
    "install/modern-cert-manager": ("modern", MODERN_VERSIONS),
    "install/legacy": ("legacy", LEGACY_VERSIONS),
    "install/intermediate": ("intermediate", INTERMEDIATE_VERSIONS),
    "overlays/intermediate": ("intermediate", INTERMEDIATE_VERSIONS),
    "overlays/modern": ("modern", MODERN_VERSIONS),
    "overlays/legacy": ("legacy", LEGACY_VERSIONS),
}
# Not in the Kubernetes schemas: checked structurally below.
NON_CORE_GROUPS = ("cert-manager.io/",)


def render(target: str) -> list[dict]:
    """`kubectl kustomize manifests/<target>`, decoded."""
    if KUBECTL is None:
        pytest.fail("kubectl is not installed: the manifest tests render with `kubectl kustomize` "
                    "(install kubectl, e.g. from the Kubernetes apt repository)")
    proc = subprocess.run([KUBECTL, "kustomize", str(MANIFESTS / target)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, f"kubectl kustomize {target} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module", params=sorted(INSTALLS))
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def policy_of(docs: list[dict]):
    cms = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"].startswith("sandgate-policy")]
    assert len(cms) == 1
    return parse_policy(yaml.safe_load(cms[0]["data"]["policy.yaml"]), "ConfigMap sandgate-policy")


def pod_templates(docs: list[dict]):
    for d in docs:
        if d["kind"] in ("Deployment", "DaemonSet", "Job"):
            yield d, d["spec"]["template"]


# ---- schema validation ----------------------------------------------------------------------

def validate_for(doc: dict, version: str) -> None:
    """Strict schema validation for Kubernetes `version`, from kubernetes-validate or an older release's schemas."""
    if tuple(map(int, version.split("."))) >= (1, 25):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{exc.message} at {list(exc.path)}") from None
        return
    try:
        k8s_schemas.validate(doc, version)
    except jsonschema.ValidationError as exc:
        raise AssertionError(f"{exc.message} at {list(exc.absolute_path)}") from None
    except k8s_schemas.SchemaUnavailable as exc:
        pytest.fail(str(exc))


def test_every_object_validates_against_its_target_schemas(rendered):
    target, docs = rendered
    generation, versions = INSTALLS[target]
    for version in versions:
        for doc in docs:
            if doc["apiVersion"].startswith(NON_CORE_GROUPS):
                continue
            try:
                validate_for(doc, version)
            except AssertionError as exc:
                pytest.fail(f"{target}: {doc['kind']}/{doc['metadata']['name']} invalid for {version}: {exc}")


# The API server versions whose semantic validation each generation's webhook configurations must pass.
API_SERVER_VERSIONS = {"modern": ["1.22", "1.24", "1.32", NEWEST], "intermediate": INTERMEDIATE_VERSIONS,
                       "legacy": LEGACY_VERSIONS}
WEBHOOK_CONFIGURATION_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")


def test_webhook_configurations_pass_the_api_servers_own_validation(rendered):
    """What kube-apiserver checks beyond the schema (pkg/apis/admissionregistration/validation)."""
    target, docs = rendered
    generation, _ = INSTALLS[target]
    configs = [d for d in docs if d["kind"] in WEBHOOK_CONFIGURATION_KINDS]
    assert len(configs) == 2
    for version in API_SERVER_VERSIONS[generation]:
        for config in configs:
            errors = apiserver_validation.validate_webhook_configuration(config, version)
            assert not errors, f"{target}: {config['kind']}/{config['metadata']['name']} refused by {version}: {errors}"


def _entry(**changes) -> dict:
    hook = {"name": "runv.mutate.sandgate.io", "admissionReviewVersions": ["v1", "v1beta1"], "sideEffects": "None",
            "clientConfig": {"service": {"name": "s", "namespace": "n", "path": "/mutate/runv"}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchExpressions": [{"key": "sandgate.io/isolation", "operator": "Exists"}]}}
    hook.update(changes)
    return hook


def _refusals(*hooks: dict, version: str = "1.32", api: str = "admissionregistration.k8s.io/v1") -> list[str]:
    config = {"apiVersion": api, "kind": "MutatingWebhookConfiguration", "metadata": {"name": "sandgate"},
              "webhooks": list(hooks)}
    return apiserver_validation.validate_webhook_configuration(config, version)


@pytest.mark.parametrize("change, message", [
    # The error real 1.14, 1.24 and 1.32 API servers gave for the path shipped before (issue 15).
    ({"clientConfig": {"service": {"name": "s", "namespace": "n", "path": "/mutate/_optin"}}},
     "clientConfig.service.path: Invalid value: '/mutate/_optin': segment[1]: a lowercase RFC 1123 subdomain"),
    ({"clientConfig": {"service": {"name": "s", "namespace": "n", "path": "/mutate//x"}}}, "segment[1] may not be empty"),
    ({"clientConfig": {"service": {"name": "s", "namespace": "n", "path": "mutate"}}}, "must start with a '/'"),
    ({"clientConfig": {"service": {"name": "s", "namespace": "n", "port": 0}}}, "port is not valid"),
    ({"clientConfig": {}}, "exactly one of url or service is required"),
    ({"name": "sandgate.io"}, "at least three segments"),
    ({"timeoutSeconds": 31}, "between 1 and 30 seconds"),
    ({"sideEffects": "Some"}, "sideEffects: Unsupported value"),
    ({"sideEffects": None}, "sideEffects: Required value"),
    ({"failurePolicy": "Retry"}, "failurePolicy: Unsupported value"),
    ({"matchPolicy": "Fuzzy"}, "matchPolicy: Unsupported value"),
    ({"reinvocationPolicy": "Always"}, "reinvocationPolicy: Unsupported value"),
    ({"admissionReviewVersions": ["v2"]}, "must include at least one of v1, v1beta1"),
    ({"admissionReviewVersions": ["v1", "v1"]}, "duplicate version"),
    ({"rules": [{"operations": ["CREATE", "*"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}]},
     "if '*' is present, must not specify other operations"),
    ({"rules": [{"operations": ["PATCH"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}]},
     "Unsupported value: 'PATCH'"),
    ({"rules": [{"operations": ["UPDATE"], "apiGroups": [""], "apiVersions": ["v1"],
                 "resources": ["pods/*", "pods/resize"]}]}, "if 'pods/*' is present, must not specify pods/resize"),
    ({"rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                 "scope": "Node"}]}, "scope: Unsupported value"),
    ({"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}, "must be specified when"),
    ({"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}},
     "may not be specified"),
    ({"namespaceSelector": {"matchExpressions": [{"key": "a_/b", "operator": "Exists"}]}}, "key: Invalid value"),
    ({"matchConditions": [{"name": "x", "expression": "true"}, {"name": "x", "expression": "true"}]},
     "matchConditions[1].name: Duplicate value"),
])
def test_the_ported_validation_refuses_what_the_api_server_refuses(change, message):
    refusals = _refusals(_entry(**{k: v for k, v in change.items() if v is not None}))
    if change.get("sideEffects", "") is None:
        hook = _entry()
        del hook["sideEffects"]
        refusals = _refusals(hook)
    assert any(message in r for r in refusals), refusals
    assert _refusals(_entry()) == []


def test_the_ported_validation_knows_each_versions_review_versions_and_defaults():
    assert any("Duplicate value" in r for r in _refusals(_entry(), _entry()))
    # 1.14-1.16 API servers accept only v1beta1 AdmissionReviews.
    only_v1 = _entry(admissionReviewVersions=["v1"])
    assert any("must include at least one of v1beta1" in r for r in _refusals(only_v1, version="1.16"))
    assert _refusals(only_v1, version="1.17") == []
    # v1beta1 defaults sideEffects to Unknown, which creating a configuration no longer accepts.
    beta = _entry()
    del beta["sideEffects"], beta["admissionReviewVersions"]
    assert any("sideEffects: Unsupported value: 'Unknown'" in r for r in
               _refusals(beta, version="1.14", api="admissionregistration.k8s.io/v1beta1"))


def test_legacy_uses_only_legacy_api_versions():
    for target in ("install/legacy", "overlays/legacy"):
        api_versions = {d["apiVersion"] for d in render(target)}
        assert {"admissionregistration.k8s.io/v1beta1", "node.k8s.io/v1beta1", "policy/v1beta1"} <= api_versions
        assert not api_versions & {"admissionregistration.k8s.io/v1", "node.k8s.io/v1", "policy/v1"}


def test_old_schemas_refuse_what_the_version_lacks():
    """The 1.14 schema must catch a field added in 1.15, else the legacy check proves nothing."""
    webhook_config = one(render("overlays/legacy"), "MutatingWebhookConfiguration", "sandgate")
    webhook_config["webhooks"][0]["reinvocationPolicy"] = "IfNeeded"
    with pytest.raises(AssertionError, match="reinvocationPolicy"):
        validate_for(webhook_config, "1.14")
    validate_for(webhook_config, "1.15")


def test_before_1_19_the_default_seccomp_profile_is_set_by_annotation():
    for target in ("install/legacy", "install/intermediate"):
        for _, template in pod_templates(render(target)):
            assert template["metadata"]["annotations"]["seccomp.security.alpha.kubernetes.io/pod"] == "runtime/default"
            assert "seccompProfile" not in template["spec"]["securityContext"]


def test_intermediate_is_the_modern_install_in_the_api_versions_1_16_to_1_21_serve():
    modern, intermediate = render("install/modern"), render("install/intermediate")
    assert {d["apiVersion"] for d in find(intermediate, "RuntimeClass")} == {"node.k8s.io/v1beta1"}
    assert {d["apiVersion"] for d in find(intermediate, "PodDisruptionBudget")} == {"policy/v1beta1"}
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        assert one(intermediate, kind, "sandgate") == one(modern, kind, "sandgate")
    strip = lambda d: {k: v for k, v in d.items() if k != "apiVersion"}  # noqa: E731
    assert [strip(d) for d in find(intermediate, "RuntimeClass")] == [strip(d) for d in find(modern, "RuntimeClass")]


def test_cert_manager_objects_are_well_formed():
    docs = render("install/modern-cert-manager")
    assert not find(docs, "Job"), "cert-manager replaces the certificate Job"
    issuers = {d["metadata"]["name"]: d for d in find(docs, "Issuer")}
    certs = {d["metadata"]["name"]: d for d in find(docs, "Certificate")}
    assert certs["sandgate-ca"]["spec"]["isCA"] is True
    assert certs["sandgate-ca"]["spec"]["issuerRef"]["name"] in issuers
    assert issuers["sandgate-ca"]["spec"]["ca"]["secretName"] == certs["sandgate-ca"]["spec"]["secretName"]
    serving = certs["sandgate-webhook"]["spec"]
    assert serving["issuerRef"] == {"kind": "Issuer", "name": "sandgate-ca"}
    webhook = one(docs, "Deployment", "sandgate-webhook")
    secret = {v["name"]: v for v in webhook["spec"]["template"]["spec"]["volumes"]}["tls"]["secret"]["secretName"]
    assert serving["secretName"] == secret
    for name in ("sandgate-webhook", "sandgate-extender"):
        assert f"{name}.sandgate-system.svc" in serving["dnsNames"]
    cert_ref = f"{certs['sandgate-webhook']['metadata']['namespace']}/sandgate-webhook"
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        assert one(docs, kind, "sandgate")["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == cert_ref


# ---- contracts with the code ---------------------------------------------------------------

def test_policy_configmaps_load_with_load_policy(tmp_path):
    for target, (generation, _) in INSTALLS.items():
        docs = render(target)
        cm = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"].startswith("sandgate-policy")][0]
        path = tmp_path / "policy.yaml"
        path.write_text(cm["data"]["policy.yaml"])
        policy = load_policy(path)
        if generation == "legacy":
            assert str(policy.cluster_version) in ("1.14", "1.15")
        else:
            assert policy.cluster_version is None  # auto: asks the API server


def test_legacy_policy_differs_from_base_only_in_cluster_version():
    base = yaml.safe_load((MANIFESTS / "base/policy.yaml").read_text())
    legacy = yaml.safe_load((MANIFESTS / "overlays/legacy/policy.yaml").read_text())
    assert {k: v for k, v in base.items() if k != "clusterVersion"} == \
        {k: v for k, v in legacy.items() if k != "clusterVersion"}


def _webhook_entries(docs: list[dict], kind: str) -> dict[str, dict]:
    config = one(docs, kind, "sandgate")
    return {w["clientConfig"]["service"]["path"]: w for w in config["webhooks"]}


def test_webhook_entries_match_the_policy(rendered):
    target, docs = rendered
    generation, _ = INSTALLS[target]
    policy = policy_of(docs)
    service = one(docs, "Service", "sandgate-webhook")
    for kind, verb in (("MutatingWebhookConfiguration", "mutate"), ("ValidatingWebhookConfiguration", "validate")):
        entries = _webhook_entries(docs, kind)
        expected = {f"/{verb}/{name}" for name in policy.profiles}
        if policy.allow_pod_opt_in:
            expected.add(f"/{verb}/{keys.OPT_IN_PATH_SEGMENT}")
        if verb == "validate":
            expected.add("/validate")
        assert set(entries) == expected, f"{target} {kind}"
        for path, w in entries.items():
            svc = w["clientConfig"]["service"]
            assert (svc["name"], svc["namespace"]) == (service["metadata"]["name"], service["metadata"]["namespace"])
            assert svc.get("port", 443) == service["spec"]["ports"][0]["port"] == 443
            assert w["sideEffects"] == "None" and w["timeoutSeconds"] <= 10
            create = {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                      "scope": "Namespaced"}
            # The guard also checks kubectl debug and in-place resize of sandboxed pods where they exist.
            updates = {"operations": ["UPDATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods/ephemeralcontainers", "pods/resize"], "scope": "Namespaced"}
            checks_updates = verb == "validate" and path != "/validate" and generation != "legacy"
            assert w["rules"] == ([create, updates] if checks_updates else [create]), path
            exprs = w["namespaceSelector"]["matchExpressions"]
            by_key: dict[str, list[dict]] = {}
            for e in exprs:
                by_key.setdefault(e["key"], []).append(e)
            label_exprs = by_key.pop(policy.namespace_label)
            segment = path.rsplit("/", 1)[1] if path.count("/") == 2 else None
            if segment == keys.OPT_IN_PATH_SEGMENT:
                assert w["failurePolicy"] == "Ignore"
                assert label_exprs == [{"key": policy.namespace_label, "operator": "DoesNotExist"}]
                assert by_key.pop(keys.IGNORE_NAMESPACE_LABEL) == [
                    {"key": keys.IGNORE_NAMESPACE_LABEL, "operator": "DoesNotExist"}]
            elif segment in policy.profiles:
                assert w["failurePolicy"] == "Fail", f"{path} must fail closed"
                values = [segment] + ([keys.SANDBOXED_VALUE] if segment == policy.default_profile else [])
                assert label_exprs == [{"key": policy.namespace_label, "operator": "In", "values": values}]
            else:  # /validate: a label value naming no profile is refused
                assert w["failurePolicy"] == "Fail"
                known = sorted([*policy.profiles, keys.SANDBOXED_VALUE])
                assert {"key": policy.namespace_label, "operator": "Exists"} in label_exprs
                not_in = [e for e in label_exprs if e["operator"] == "NotIn"]
                assert len(not_in) == 1 and sorted(not_in[0]["values"]) == known
            if generation != "legacy":
                assert w["admissionReviewVersions"] == ["v1", "v1beta1"]
                assert w.get("reinvocationPolicy") == ("IfNeeded" if verb == "mutate" else None)
                names = by_key.pop("kubernetes.io/metadata.name")
                assert names[0]["operator"] == "NotIn"
                assert {"kube-system", "sandgate-system"} | policy.exempt_namespaces <= set(names[0]["values"])
            else:
                assert w["admissionReviewVersions"] == ["v1beta1"]
            assert not by_key, f"{path}: unexpected selector keys {sorted(by_key)}"


def test_sandgate_namespace_is_kept_out_of_the_opt_in_entry(rendered):
    _, docs = rendered
    ns = one(docs, "Namespace", "sandgate-system")
    assert keys.IGNORE_NAMESPACE_LABEL in ns["metadata"]["labels"]
    assert policy_of(docs).namespace_label not in ns["metadata"]["labels"]


def test_runtimeclasses_equal_the_policy_profiles(rendered):
    target, docs = rendered
    generation, _ = INSTALLS[target]
    policy = policy_of(docs)
    classes = {d["metadata"]["name"]: d for d in find(docs, "RuntimeClass")}
    assert set(classes) == {p.runtime_class_name for p in policy.profiles.values()}
    for profile in policy.profiles.values():
        rc = classes[profile.runtime_class_name]
        assert rc["handler"] == profile.handler
        if generation == "legacy":
            assert set(rc) == {"apiVersion", "kind", "metadata", "handler"}
            continue
        assert rc.get("overhead", {}).get("podFixed") == (profile.overhead.pod_fixed if profile.overhead else None)
        scheduling = rc.get("scheduling", {})
        assert scheduling.get("nodeSelector", {}) == profile.node_selector
        assert scheduling.get("tolerations", []) == [t.to_k8s() for t in profile.tolerations]


def _args(container: dict) -> list[str]:
    return container.get("args", [])


def test_container_args_parse_with_the_real_cli(rendered):
    _, docs = rendered
    parser = build_parser()
    seen = set()
    for obj, template in pod_templates(docs):
        for c in template["spec"].get("initContainers", []) + template["spec"]["containers"]:
            if c.get("command"):
                continue  # runs a script, not the sandgate entrypoint
            args = parser.parse_args(_args(c))
            seen.add(args.command)
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            for attr in ("config", "cert_file", "key_file"):
                value = getattr(args, attr, None)
                if value:
                    assert any(value.startswith(p + "/") for p in mounts), f"{obj['metadata']['name']}: {value} not mounted"
    assert {"webhook", "extender", "agent"} <= seen


def test_webhook_service_ports_and_probes(rendered):
    _, docs = rendered
    parser = build_parser()
    for name, component in (("sandgate-webhook", "webhook"), ("sandgate-extender", "extender")):
        deploy = one(docs, "Deployment", name)
        container = deploy["spec"]["template"]["spec"]["containers"][0]
        args = parser.parse_args(_args(container))
        assert args.command == component
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        service = one(docs, "Service", name)
        target = service["spec"]["ports"][0]["targetPort"]
        assert ports[target] == args.port
        assert service["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        for probe in (container["readinessProbe"], container["livenessProbe"]):
            assert probe["httpGet"]["scheme"] == "HTTPS" and probe["httpGet"]["port"] == target
    webhook = one(docs, "Deployment", "sandgate-webhook")
    assert webhook["spec"]["replicas"] == 3
    pdbs = {p["metadata"]["name"]: p for p in find(docs, "PodDisruptionBudget")}
    assert pdbs["sandgate-webhook"]["spec"]["minAvailable"] == 2


def test_every_container_is_non_root_and_read_only(rendered):
    _, docs = rendered
    for obj, template in pod_templates(docs):
        spec = template["spec"]
        if obj["metadata"]["name"] == "sandgate-agent":
            # The device plugin API needs root's ownership of the kubelet's socket directory, and nothing
            # more: uid 0 without any capability (checked below), every other host mount read-only.
            assert (spec["securityContext"]["runAsNonRoot"], spec["securityContext"]["runAsUser"]) == (False, 0)
        else:
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["securityContext"]["runAsUser"] != 0
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            where = f"{obj['metadata']['name']}/{c['name']}"
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "limits" in c["resources"] and "requests" in c["resources"], where
        if obj["kind"] != "Job":
            assert spec["priorityClassName"] == one(docs, "PriorityClass", "sandgate-critical")["metadata"]["name"]


def test_agent_daemonset_host_access(rendered):
    target, docs = rendered
    ds = one(docs, "DaemonSet", "sandgate-agent")
    spec = ds["spec"]["template"]["spec"]
    c = spec["containers"][0]
    args = build_parser().parse_args(_args(c))
    assert args.root == "/host" and not args.configure
    env = {e["name"]: e for e in c["env"]}
    assert args.node_name == "$(NODE_NAME)"
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert {"operator": "Exists"} in spec["tolerations"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    host_mounts = {}
    device_plugins = [m for m in c["volumeMounts"] if m["mountPath"] == args.device_plugin_dir]
    assert [volumes[m["name"]]["hostPath"]["path"] for m in device_plugins] == ["/var/lib/kubelet/device-plugins"]
    assert not device_plugins[0].get("readOnly")  # the agent's plugin sockets live there
    for m in c["volumeMounts"]:
        if "hostPath" in volumes[m["name"]] and m not in device_plugins:
            assert m.get("readOnly") is True, f"{m['mountPath']} must be read-only without --configure"
            assert m["mountPath"] == "/host" + volumes[m["name"]]["hostPath"]["path"]
            host_mounts[volumes[m["name"]]["hostPath"]["path"]] = m
    policy = policy_of(docs)
    assert any(policy.agent.containerd_config.startswith(p + "/") for p in host_mounts)
    for needed in ("/dev", "/usr/local/bin", "/usr/bin", "/opt", "/proc", "/sys/fs/cgroup"):
        assert needed in host_mounts
    # The sandbox inventory reaches the default CRI socket through a host mount.
    assert any(policy.agent.cri_endpoint.removeprefix("unix://").startswith(p + "/") for p in host_mounts)
    assert not spec.get("hostNetwork") and not spec.get("hostPID")


def _rules(docs, kind, name):
    return one(docs, kind, name)["rules"]


def test_rbac_is_least_privilege(rendered):
    _, docs = rendered
    policy = policy_of(docs)
    ns = policy.agent.namespace
    assert _rules(docs, "ClusterRole", "sandgate-webhook") == [
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["node.k8s.io"], "resources": ["runtimeclasses"], "verbs": ["get", "list", "watch"]}]
    assert _rules(docs, "ClusterRole", "sandgate-agent") == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
    agent_role = one(docs, "Role", "sandgate-agent")
    assert agent_role["metadata"]["namespace"] == ns
    assert agent_role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                                    "verbs": ["create", "get", "update"]}]
    # The extender only reads: kube-scheduler binds, so no pods/binding and no Lease writes.
    assert _rules(docs, "ClusterRole", "sandgate-extender") == [
        {"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "list", "watch"]}]
    ext_role = one(docs, "Role", "sandgate-extender")
    assert ext_role["metadata"]["namespace"] == ns
    assert ext_role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                                  "verbs": ["get", "list", "watch"]}]
    for d in docs:
        for rule in d.get("rules", []) if d["kind"] in ("Role", "ClusterRole") else []:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], d["metadata"]["name"]
    for binding in find(docs, "ClusterRoleBinding") + find(docs, "RoleBinding"):
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount" and subject["namespace"] == "sandgate-system"
            one(docs, "ServiceAccount", subject["name"])


def test_scheduler_configs_point_at_the_extender_service():
    docs = render("overlays/modern")
    service = one(docs, "Service", "sandgate-extender")
    url = f"https://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{service['spec']['ports'][0]['port']}"
    configs = sorted((MANIFESTS / "scheduler").glob("kube-scheduler-config.*.yaml"))
    assert configs, "manifests/scheduler/ has no KubeSchedulerConfiguration"
    v1 = [yaml.safe_load(p.read_text()) for p in configs if p.name.endswith(".v1.yaml")]
    assert v1 and v1[0]["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    for path in configs:
        cfg = yaml.safe_load(path.read_text())
        assert cfg["kind"] == "KubeSchedulerConfiguration"
        (ext,) = cfg["extenders"]
        assert ext["urlPrefix"] == url and ext["nodeCacheCapable"] is True and "caData" in ext["tlsConfig"]
    legacy = json.loads((MANIFESTS / "scheduler/scheduler-policy.legacy.json").read_text())
    assert legacy["kind"] == "Policy" and legacy["extenders"][0]["urlPrefix"] == url


# ---- the certificate Job ---------------------------------------------------------------------

def _installer():
    spec = importlib.util.spec_from_file_location("install_certs", MANIFESTS / "components/certgen/install_certs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_certgen_job_wires_the_generated_files_to_the_installer():
    docs = render("install/modern")
    job = one(docs, "Job", "sandgate-certgen")
    spec = job["spec"]["template"]["spec"]
    gen = build_parser().parse_args(spec["initContainers"][0]["args"])
    webhook_svc = one(docs, "Service", "sandgate-webhook")["metadata"]
    assert (gen.certs_command, gen.service, gen.namespace) == ("generate", webhook_svc["name"], webhook_svc["namespace"])
    assert "sandgate-extender.sandgate-system.svc" in gen.dns
    install = spec["containers"][0]
    inst = _installer().build_parser().parse_args(install["args"])
    assert inst.dir == gen.out
    tls_volume = {v["name"]: v for v in one(docs, "Deployment", "sandgate-webhook")["spec"]["template"]["spec"]["volumes"]}
    assert inst.secret == tls_volume["tls"]["secret"]["secretName"]
    assert inst.mutating == one(docs, "MutatingWebhookConfiguration", "sandgate")["metadata"]["name"]
    assert inst.validating == one(docs, "ValidatingWebhookConfiguration", "sandgate")["metadata"]["name"]
    script = install["command"][-1]
    mount = {m["name"]: m["mountPath"] for m in install["volumeMounts"]}["scripts"]
    cm = {v["name"]: v for v in spec["volumes"]}["scripts"]["configMap"]["name"]
    assert script == f"{mount}/install_certs.py" and "install_certs.py" in one(docs, "ConfigMap", cm)["data"]
    role = one(docs, "ClusterRole", "sandgate-certgen")["rules"][0]
    assert role["resourceNames"] == ["sandgate"] and role["verbs"] == ["get", "patch"]


def _generated(tmp_path):
    subprocess.run(["python3", "-m", "sandgate", "certs", "generate", "--service", "s", "--namespace", "n",
                    "--out", str(tmp_path)], check=True, capture_output=True, cwd=REPO, timeout=60)
    return {n: (tmp_path / n).read_bytes() for n in ("ca.crt", "tls.crt", "tls.key")}


def test_installer_keeps_a_valid_secret_and_renews_an_expiring_one(tmp_path):
    mod = _installer()
    files = _generated(tmp_path)
    data = {k: base64.b64encode(v).decode() for k, v in files.items()}
    expires = x509.load_pem_x509_certificate(files["tls.crt"]).not_valid_after_utc
    assert mod.keep_existing(data, expires - dt.timedelta(days=31), 30)
    assert not mod.keep_existing(data, expires - dt.timedelta(days=29), 30)
    assert not mod.keep_existing({**data, "tls.key": ""}, expires - dt.timedelta(days=90), 30)
    assert not mod.keep_existing(None, expires, 30)


def test_installer_patch_sets_every_ca_bundle_and_rolls_old_ca():
    mod = _installer()
    obj = {"metadata": {"name": "sandgate", "resourceVersion": "7"},
           "webhooks": [{"name": "a", "clientConfig": {"service": {"name": "s"}}},
                        {"name": "b", "clientConfig": {"service": {"name": "s"}, "caBundle": "b2xk"}}]}
    ca = mod.bundle(b"NEW\n", b"OLD\n", b"NEW")
    assert base64.b64decode(ca) == b"NEW\nOLD\n"
    ops = mod.ca_bundle_patch(obj, ca)
    assert ops[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "7"}
    import jsonpatch
    patched = jsonpatch.apply_patch(obj, ops)
    assert [w["clientConfig"]["caBundle"] for w in patched["webhooks"]] == [ca, ca]
    assert mod.ca_bundle_patch(patched, ca) == []


# ---- docs ------------------------------------------------------------------------------------

def test_every_key_is_documented_in_contracts():
    text = (REPO / "docs/contracts.md").read_text()
    for name, value in vars(keys).items():
        if name.isupper() and isinstance(value, str):
            assert value in text, f"keys.{name} = {value!r} is not in docs/contracts.md"
            assert name in text, f"keys.{name} is not named in docs/contracts.md"


def test_dockerfile_matches_the_manifests():
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()]
    user = [line.split()[1] for line in lines if line.startswith("USER ")][-1]
    entrypoint = [json.loads(line[len("ENTRYPOINT "):]) for line in lines if line.startswith("ENTRYPOINT ")][-1]
    assert entrypoint == ["sandgate"], "container args start with the subcommand"
    uid, gid = (int(x) for x in user.split(":"))
    assert uid != 0
    images = set()
    for obj, template in pod_templates(render("install/modern")):
        spec = template["spec"]
        if obj["metadata"]["name"] != "sandgate-agent":  # the agent runs as uid 0 (device plugin API)
            assert (spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"]) == (uid, gid)
        images |= {c["image"] for c in spec.get("initContainers", []) + spec["containers"]}
    assert images == {f"ghcr.io/sandgate/sandgate:{__version__}"}, "the image tag follows the package version"
    for package in ("sandgate", "webhooks", "scheduler_ext", "node_agent", "certs"):
        assert f"COPY {package} ./{package}" in lines, f"the image must contain {package}/"


def test_agent_liveness_probe_hits_its_metrics_port(rendered):
    _, docs = rendered
    c = one(docs, "DaemonSet", "sandgate-agent")["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(_args(c))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    probe = c["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and ports[probe["port"]] == args.metrics_port
