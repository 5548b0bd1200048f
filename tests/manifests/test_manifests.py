"""Render every install with `kubectl kustomize`, validate it against the target Kubernetes schemas,
and check that every key, path, flag and name in the manifests is the one the code uses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

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
    "install/modern-1.30": ("modern", ["1.30", NEWEST]),
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


def render_with_components(workdir: Path, target: str, *components: str) -> list[dict]:
    """`kubectl kustomize` of a kustomization in the new directory `workdir` that adds the
    manifests/components/<component>s to manifests/<target>, the way a user opts in to one."""
    if KUBECTL is None:
        pytest.fail("kubectl is not installed: the manifest tests render with `kubectl kustomize`")
    workdir.mkdir()
    manifests = os.path.relpath(MANIFESTS, workdir)  # kustomize refuses absolute paths
    (workdir / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [f"{manifests}/{target}"], "components": [f"{manifests}/components/{c}" for c in components]}))
    proc = subprocess.run([KUBECTL, "kustomize", str(workdir)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"kubectl kustomize {target} + {components} failed:\n{proc.stderr}"
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
    # One copy for the webhook and extender, one for the agent in its own namespace: the same policy.
    assert sorted(c["metadata"]["namespace"] for c in cms) == ["sandgate-agent", "sandgate-system"]
    assert cms[0]["data"] == cms[1]["data"]
    return parse_policy(yaml.safe_load(cms[0]["data"]["policy.yaml"]), "ConfigMap sandgate-policy")


def pod_templates(docs: list[dict]):
    for d in docs:
        if d["kind"] in ("Deployment", "DaemonSet", "Job"):
            yield d, d["spec"]["template"]
        elif d["kind"] == "CronJob":
            yield d, d["spec"]["jobTemplate"]["spec"]["template"]


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
    names = {(d["kind"], d["metadata"]["name"]) for d in configs}
    assert names - {("ValidatingWebhookConfiguration", "sandgate-guards")} == {
        ("MutatingWebhookConfiguration", "sandgate"), ("ValidatingWebhookConfiguration", "sandgate")}
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


def _tls_secret(docs, deployment: str) -> str:
    volumes = {v["name"]: v for v in one(docs, "Deployment", deployment)["spec"]["template"]["spec"]["volumes"]}
    return volumes["tls"]["secret"]["secretName"]


def test_webhook_and_extender_serve_separate_certificates(rendered):
    _, docs = rendered
    assert _tls_secret(docs, "sandgate-webhook") == "sandgate-webhook-tls"
    assert _tls_secret(docs, "sandgate-extender") == "sandgate-extender-tls"


def test_cert_manager_objects_are_well_formed():
    docs = render("install/modern-cert-manager")
    assert not find(docs, "Job") and not find(docs, "CronJob"), "cert-manager replaces the certificate jobs"
    issuers = {d["metadata"]["name"]: d for d in find(docs, "Issuer")}
    certs = {d["metadata"]["name"]: d for d in find(docs, "Certificate")}
    ca = certs["sandgate-ca"]["spec"]
    assert ca["isCA"] is True and ca["issuerRef"]["name"] in issuers
    assert ca["privateKey"]["rotationPolicy"] == "Never", "the CA key is kept: caData never changes"
    assert issuers["sandgate-ca"]["spec"]["ca"]["secretName"] == ca["secretName"]
    for name in ("sandgate-webhook", "sandgate-extender"):
        serving = certs[name]["spec"]
        assert serving["issuerRef"] == {"kind": "Issuer", "name": "sandgate-ca"}
        assert serving["secretName"] == _tls_secret(docs, name)
        assert serving["dnsNames"] == [name, f"{name}.sandgate-system", f"{name}.sandgate-system.svc",
                                       f"{name}.sandgate-system.svc.cluster.local"]
    cert_ref = f"{certs['sandgate-webhook']['metadata']['namespace']}/sandgate-webhook"
    for kind, name in (("MutatingWebhookConfiguration", "sandgate"), ("ValidatingWebhookConfiguration", "sandgate"),
                       ("ValidatingWebhookConfiguration", "sandgate-guards")):
        assert one(docs, kind, name)["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == cert_ref


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
                # Fail closed only where matchConditions (1.28+) keep every other pod away from it.
                assert w["failurePolicy"] == ("Fail" if w.get("matchConditions") else "Ignore")
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


@pytest.mark.parametrize("name, level", [("sandgate-system", "restricted"), ("sandgate-agent", "privileged")])
def test_sandgate_namespaces_are_kept_out_of_the_opt_in_entry_and_carry_psa_labels(rendered, name, level):
    _, docs = rendered
    ns = one(docs, "Namespace", name)
    assert keys.IGNORE_NAMESPACE_LABEL in ns["metadata"]["labels"]
    assert policy_of(docs).namespace_label not in ns["metadata"]["labels"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == level
    assert name in policy_of(docs).exempt_namespaces


def test_the_agent_lives_alone_in_its_namespace(rendered):
    _, docs = rendered
    ns = policy_of(docs).agent.namespace
    assert ns == keys.DEFAULT_AGENT_NAMESPACE
    kinds = sorted(d["kind"] for d in docs if d["metadata"].get("namespace") == ns)
    # No Secret, no Service, no other workload: the agent's token can reach only its own Leases there.
    assert kinds == ["ConfigMap", "DaemonSet", "ResourceQuota", "Role", "Role", "Role", "RoleBinding", "RoleBinding",
                     "RoleBinding", "ServiceAccount"]
    assert one(docs, "DaemonSet", "sandgate-agent")["metadata"]["namespace"] == ns


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
    templates = list(pod_templates(docs))
    # The webhook, the extender and the agent at least: an empty render must not pass for secure.
    assert {"sandgate-webhook", "sandgate-extender", "sandgate-agent"} <= {obj["metadata"]["name"] for obj, _ in templates}
    for obj, template in templates:
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
            # The kubelet refuses a container whose effective runAsNonRoot is true and runAsUser 0.
            pod_sc = spec["securityContext"]
            if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
                assert sc.get("runAsUser", pod_sc.get("runAsUser")) != 0, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "limits" in c["resources"] and "requests" in c["resources"], where
        if obj["kind"] not in ("Job", "CronJob"):
            assert spec["priorityClassName"] == _priority_class(docs, obj), obj["metadata"]["name"]


def _priority_class(docs, obj) -> str:
    """1.17+: the system classes; legacy: our own, which the quota scope keeps to sandgate's namespaces."""
    if find(docs, "PriorityClass"):
        return one(docs, "PriorityClass", "sandgate-critical")["metadata"]["name"]
    return "system-node-critical" if obj["kind"] == "DaemonSet" else "system-cluster-critical"


def test_only_sandgates_namespaces_have_a_quota_for_its_priority(rendered):
    target, docs = rendered
    classes = sorted({_priority_class(docs, d) for d, _ in pod_templates(docs) if d["kind"] in ("Deployment", "DaemonSet")})
    quotas = find(docs, "ResourceQuota")
    assert sorted(q["metadata"]["namespace"] for q in quotas) == ["sandgate-agent", "sandgate-system"]
    for q in quotas:
        (expr,) = q["spec"]["scopeSelector"]["matchExpressions"]
        assert (expr["scopeName"], expr["operator"]) == ("PriorityClass", "In") and sorted(expr["values"]) == classes


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
    for needed in ("/sys/class/misc", "/usr/local/bin", "/usr/bin", "/opt", "/proc", "/sys/fs/cgroup"):
        assert needed in host_mounts
    assert "/dev" not in host_mounts, "KVM is detected through /sys/class/misc/kvm"
    from node_agent.host import KVM_DEVICE
    assert any(KVM_DEVICE.startswith(p + "/") for p in host_mounts)
    # Never create a directory on the node.
    assert {v["hostPath"].get("type") for v in volumes.values() if "hostPath" in v} == {"Directory"}
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
    # Nothing about pods: a compromised node's agent token must not read other nodes' pods (the
    # overhead ratio's inputs come over CRI, docs/agent.md).
    assert _rules(docs, "ClusterRole", "sandgate-agent") == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}]
    agent_role = one(docs, "Role", "sandgate-agent")
    assert agent_role["metadata"]["namespace"] == ns
    assert agent_role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                                    "verbs": ["create", "get", "update"]}]
    agent_pods = one(docs, "Role", "sandgate-webhook-agent-pods")
    assert agent_pods["metadata"]["namespace"] == ns
    assert agent_pods["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
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
            assert subject["kind"] == "ServiceAccount"
            sa = one(docs, "ServiceAccount", subject["name"])
            assert subject["namespace"] == sa["metadata"]["namespace"]
            assert sa["metadata"]["namespace"] == (ns if subject["name"] == keys.AGENT_SERVICE_ACCOUNT
                                                   else "sandgate-system")


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

@pytest.mark.parametrize("target", ["install/modern", "install/intermediate", "install/legacy", "install/modern-1.30"])
def test_certificate_jobs_keep_every_served_certificate_and_caBundle(target):
    docs = render(target)
    secrets = {d["metadata"]["name"]: d for d in find(docs, "Secret")}
    # Pre-created and empty: no job may create a Secret.
    assert secrets["sandgate-ca"]["type"] == "Opaque" and "data" not in secrets["sandgate-ca"]
    for name in ("sandgate-webhook-tls", "sandgate-extender-tls"):
        assert secrets[name]["type"] == "kubernetes.io/tls" and secrets[name]["data"] == {"tls.crt": "", "tls.key": ""}
    job = one(docs, "Job", "sandgate-certgen")["spec"]["template"]["spec"]
    (install,) = job["containers"]
    args = build_parser().parse_args(install["args"])
    assert (args.certs_command, args.namespace, args.create_ca) == ("install", "sandgate-system", True)
    served = {(leaf.secret, leaf.service) for leaf in args.leaf}
    assert served == {(_tls_secret(docs, "sandgate-webhook"), one(docs, "Service", "sandgate-webhook")["metadata"]["name"]),
                      (_tls_secret(docs, "sandgate-extender"), one(docs, "Service", "sandgate-extender")["metadata"]["name"])}
    configs = {(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"].endswith("WebhookConfiguration")}
    named = {("MutatingWebhookConfiguration", n) for n in args.mutating} | \
            {("ValidatingWebhookConfiguration", n) for n in args.validating}
    assert named == configs, "every webhook configuration gets the caBundle, and only those that ship"
    # The job's own bindings go, the ClusterRoleBinding (which grants deleting itself) last.
    assert args.drop_binding == ["rolebinding/sandgate-system/sandgate-certgen", "clusterrolebinding/sandgate-certgen"]
    one(docs, "RoleBinding", "sandgate-certgen")
    one(docs, "ClusterRoleBinding", "sandgate-certgen")
    role = one(docs, "Role", "sandgate-certgen")["rules"]
    assert role[0] == {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "update"],
                       "resourceNames": ["sandgate-ca", "sandgate-webhook-tls", "sandgate-extender-tls"]}
    cluster_role = one(docs, "ClusterRole", "sandgate-certgen")["rules"]
    assert set(cluster_role[0]["resourceNames"]) >= {name for _, name in configs}
    for d in docs:
        for rule in d.get("rules", []) if d["kind"] in ("Role", "ClusterRole") else []:
            assert not ("secrets" in rule["resources"] and "create" in rule["verbs"]), d["metadata"]["name"]
    # The CronJob renews leaves only: no CA creation, no caBundle, no RBAC beyond the leaf Secrets.
    cron = one(docs, "CronJob", "sandgate-cert-renewal")
    assert cron["apiVersion"] == ("batch/v1beta1" if target in ("install/legacy", "install/intermediate") else "batch/v1")
    spec = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    renew = build_parser().parse_args(spec["containers"][0]["args"])
    assert not renew.create_ca and not renew.mutating and not renew.validating and not renew.drop_binding
    assert {(leaf.secret, leaf.service) for leaf in renew.leaf} == served
    assert spec["serviceAccountName"] == "sandgate-cert-renewal"
    assert [r["verbs"] for r in one(docs, "Role", "sandgate-cert-renewal")["rules"]] == [["get"], ["get", "update"]]


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


def test_image_dependencies_are_hash_locked():
    """The Dockerfile installs requirements.lock with --require-hashes, then the project without deps."""
    import re

    import tomllib
    text = (REPO / "Dockerfile").read_text()
    assert "--require-hashes" in text and "-r requirements.lock" in text and "--no-deps ." in text
    lock = (REPO / "requirements.lock").read_text()
    pinned = {m.group(1).lower(): m.group(2) for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", lock, re.M)}
    entries = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", lock.split("\n\n", 1)[1])
    assert all("--hash=sha256:" in e for e in entries if "==" in e), "every pinned package carries its hashes"
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name = re.match(r"[A-Za-z0-9_.-]+", dep).group(0).lower().replace("_", "-")
        assert name in pinned, f"{name} (pyproject dependency) is not in requirements.lock: re-run pip-compile"


def test_agent_liveness_probe_hits_its_metrics_port(rendered):
    _, docs = rendered
    c = one(docs, "DaemonSet", "sandgate-agent")["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(_args(c))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    probe = c["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and ports[probe["port"]] == args.metrics_port
