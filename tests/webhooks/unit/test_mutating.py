"""admit on the captured pods in both modes: exact patches, denials, idempotency and JSON Pointer escaping."""

import copy
import json
from dataclasses import replace

import jsonpatch
import pytest

from sandgate.core import keys
from sandgate.core.clusterversion import Mode
from webhooks.review import NamespaceFacts
from webhooks.mutating import admit
from webhooks.scheduling import merge_node_selector, merge_tolerations

from webhook_cases import CASES, FIXTURES, example_doc, fixture_request, policy_from, pod_request, with_object

SANDBOXED = NamespaceFacts(namespace_labels={keys.DEFAULT_NAMESPACE_LABEL: "sandboxed"})
RUNTIMECLASS_ONLY = [{"op": "add", "path": "/spec/runtimeClassName", "value": "runv"}]
SLOT = keys.sandbox_resource("runv")


def slot_ops(handler="runv", limits_exist=False):
    """The operations asking for one slot in the first app container, which has requests."""
    resource = keys.sandbox_resource(handler).replace("/", "~1")
    limit = ({"op": "add", "path": f"/spec/containers/0/resources/limits/{resource}", "value": "1"} if limits_exist
             else {"op": "add", "path": "/spec/containers/0/resources/limits", "value": {keys.sandbox_resource(handler): "1"}})
    return [{"op": "add", "path": f"/spec/containers/0/resources/requests/{resource}", "value": "1"}, limit]
CREATES = [f for f in FIXTURES if "-08" not in f]
RUNTIME_TOLERATION = {"key": "sandbox.io/runtime", "operator": "Equal", "value": "runv", "effect": "NoSchedule"}


def patched(pod, verdict):
    return jsonpatch.apply_patch(pod, verdict.patch) if verdict.patch else copy.deepcopy(pod)


def api_server_runtimeclass_admission(pod, policy):
    """What kube-apiserver's RuntimeClass plugin does to the pod after the webhook (1.18+)."""
    pod = copy.deepcopy(pod)
    profile = policy.profile_for_runtime_class(pod["spec"].get("runtimeClassName"))
    if profile.overhead:
        pod["spec"]["overhead"] = dict(profile.overhead.pod_fixed)
    if profile.node_selector or profile.tolerations:
        pod["spec"]["nodeSelector"] = merge_node_selector(pod["spec"].get("nodeSelector"), profile.node_selector)
        pod["spec"]["tolerations"] = merge_tolerations(pod["spec"].get("tolerations") or [],
                                                       [t.to_k8s() for t in profile.tolerations])
    return pod


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("name", CREATES)
def test_every_create_fixture_is_decided_and_the_patch_applies(policy, mode, name):
    req = fixture_request(name)
    verdict = admit(req, policy, mode, SANDBOXED)
    if "06-create-hostnetwork" in name:
        assert (verdict.allowed, verdict.reason, verdict.patch) == (False, "forbidden", [])
        assert verdict.message.startswith('spec.hostNetwork is forbidden by sandbox profile "runv"')
        return
    if "03b-create-runtimeclass-gvisor" in name:
        assert (verdict.allowed, verdict.reason, verdict.patch) == (False, "profile-locked", [])
        return
    assert verdict.allowed and verdict.reason == "routed"
    result = patched(req.object, verdict)
    profile = policy.profiles[verdict.profile]
    assert result["spec"]["runtimeClassName"] == profile.runtime_class_name
    assert verdict.audit_annotations[keys.AUDIT_PROFILE] == profile.name
    assert verdict.warnings[0] == (f'sandgate: routed to sandbox profile "{profile.name}" '
                                   f"(runtimeClassName {profile.runtime_class_name})")
    if mode is Mode.APISERVER_MERGES:
        # Never the API server's part: overhead, scheduling.
        assert result["spec"].get("overhead") == req.object["spec"].get("overhead")
        assert result["spec"].get("nodeSelector") == req.object["spec"].get("nodeSelector")
    else:
        assert profile.node_selector.items() <= result["spec"]["nodeSelector"].items()


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("name", FIXTURES)
def test_admit_on_its_own_output_returns_no_patch(policy, fixed_overhead_policy, mode, name):
    for pol in (policy, fixed_overhead_policy):
        req = fixture_request(name)
        first = admit(req, pol, mode, SANDBOXED)
        second = admit(with_object(req, patched(req.object, first)), pol, mode, SANDBOXED)
        assert second.patch == []
        assert (second.allowed, second.reason, second.profile) == (first.allowed, first.reason, first.profile)


@pytest.mark.parametrize("name", CREATES)
def test_no_patch_after_the_api_server_completed_the_runtimeclass(policy, name):
    """Reinvocation (IfNeeded) sees the pod after the RuntimeClass plugin added overhead and scheduling."""
    req = fixture_request(name)
    first = admit(req, policy, Mode.APISERVER_MERGES, SANDBOXED)
    if not first.allowed:
        return
    completed = api_server_runtimeclass_admission(patched(req.object, first), policy)
    assert admit(with_object(req, completed), policy, Mode.APISERVER_MERGES, SANDBOXED).patch == []


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
@pytest.mark.parametrize("case", ["01-create-bare-pod", "02-create-nodeselector-tolerations",
                                  "04-create-by-replicaset-controller", "05a-create-init-limits-special-keys",
                                  "05b-create-tilde-in-keys-rejected-by-validation", "07-create-dry-run-server"])
def test_runtimeclass_mode_sets_only_runtime_class_name(fixed_overhead_policy, version, case):
    req = fixture_request(f"{version}-{case}")
    verdict = admit(req, fixed_overhead_policy, Mode.APISERVER_MERGES, SANDBOXED)
    limits_exist = "limits" in req.object["spec"]["containers"][0]["resources"]
    assert verdict.patch == RUNTIMECLASS_ONLY + slot_ops(limits_exist=limits_exist)
    assert len(verdict.warnings) == 1


def test_gvisor_without_overhead_gets_exactly_one_op(policy):
    req = fixture_request("v1-01-create-bare-pod")
    verdict = admit(req, policy, Mode.APISERVER_MERGES, NamespaceFacts(namespace_labels={keys.DEFAULT_NAMESPACE_LABEL: "gvisor"}))
    assert verdict.patch == [{"op": "add", "path": "/spec/runtimeClassName", "value": "gvisor"}] + slot_ops("gvisor")


@pytest.mark.parametrize("mode", list(Mode))
def test_pod_already_in_its_runtime_class_gets_no_patch(fixed_overhead_policy, mode):
    # 03a: runtimeClassName runv, the plugin already set overhead, nodeSelector and toleration.
    req = fixture_request("v1-03a-create-runtimeclass-runv")
    verdict = admit(req, fixed_overhead_policy, mode, SANDBOXED)
    assert (verdict.allowed, verdict.patch, verdict.profile) == (True, slot_ops(), "runv")
    verdict = admit(with_object(req, patched(req.object, verdict)), fixed_overhead_policy, mode, SANDBOXED)
    assert (verdict.allowed, verdict.patch, verdict.profile) == (True, [], "runv")
    assert verdict.audit_annotations == {keys.AUDIT_PROFILE: "runv", keys.AUDIT_RULE: "runtime-class"}


def test_runtimeclass_mode_pads_the_request_dependent_memory(policy):
    req = fixture_request("v1-01-create-bare-pod")  # one container, 250m / 128Mi
    verdict = admit(req, policy, Mode.APISERVER_MERGES, SANDBOXED)
    edge = [dict(t, tolerationSeconds=86400) for t in req.object["spec"]["tolerations"]]
    assert verdict.patch == [
        {"op": "add", "path": "/spec/runtimeClassName", "value": "runv"},
        {"op": "add", "path": "/spec/tolerations", "value": edge},
        {"op": "replace", "path": "/spec/containers/0/resources/requests/memory", "value": "142Mi"},
        slot_ops()[0], slot_ops()[1],
        {"op": "add", "path": "/metadata/annotations", "value": {keys.PADDING_ANNOTATION: (
            '{"memory":"14Mi","basis":{"memory":"128Mi"},"containers":["web"],"initContainers":[]}')}},
    ]
    assert verdict.warnings[1] == ("sandgate: requests padded for sandbox overhead (memory +14Mi); "
                                   f"see annotation {keys.PADDING_ANNOTATION}")
    # 03a already runs runv: the API server set podFixed; only the 64Mi - 50Mi extra and edge seconds remain.
    verdict = admit(fixture_request("v1-03a-create-runtimeclass-runv"), policy, Mode.APISERVER_MERGES, SANDBOXED)
    assert [op["path"] for op in verdict.patch] == [
        "/spec/tolerations", "/spec/containers/0/resources/requests/memory",
        "/spec/containers/0/resources/requests/sandgate.io~1sandbox-runv", "/spec/containers/0/resources/limits",
        "/metadata/annotations"]


def test_legacy_mode_on_the_bare_pod_does_the_whole_job(policy):
    req = fixture_request("v1-01-create-bare-pod")
    verdict = admit(req, policy, Mode.WEBHOOK_MERGES, SANDBOXED)
    spec = patched(req.object, verdict)["spec"]
    assert spec["runtimeClassName"] == "runv"
    assert spec["nodeSelector"] == {"runtime": "runv"}
    assert spec["tolerations"] == [
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 86400},
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
         "tolerationSeconds": 86400},
        RUNTIME_TOLERATION]
    # 250m + 100m; 128Mi + max(50Mi + 2% of 128Mi, 64Mi).
    assert spec["containers"][0]["resources"] == {"requests": {"cpu": "350m", "memory": "192Mi", SLOT: "1"},
                                                  "limits": {SLOT: "1"}}
    assert "overhead" not in spec


def test_legacy_mode_merges_into_existing_node_selector_and_tolerations(policy):
    req = fixture_request("v1beta1-02-create-nodeselector-tolerations")
    verdict = admit(req, policy, Mode.WEBHOOK_MERGES, SANDBOXED)
    spec = patched(req.object, verdict)["spec"]
    assert spec["nodeSelector"] == {"disktype": "ssd", "topology.kubernetes.io/zone": "zone-a", "runtime": "runv"}
    # The pod's "sandbox.io/runtime Exists" already covers the profile's toleration: not added twice.
    assert [t["key"] for t in spec["tolerations"]] == [
        "dedicated", "sandbox.io/runtime", "node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"]
    assert spec["tolerations"][1] == {"key": "sandbox.io/runtime", "operator": "Exists", "effect": "NoSchedule"}
    assert spec["containers"][0]["resources"]["requests"] == {"cpu": "600m", "memory": "320Mi", SLOT: "1"}


def test_legacy_node_selector_conflict_is_denied_with_the_builtin_text(policy):
    req = fixture_request("v1-02-create-nodeselector-tolerations")
    pod = copy.deepcopy(req.object)
    pod["spec"]["nodeSelector"]["runtime"] = "runc"
    verdict = admit(with_object(req, pod), policy, Mode.WEBHOOK_MERGES, SANDBOXED)
    assert (verdict.allowed, verdict.code, verdict.reason) == (False, 403, "node-selector-conflict")
    assert verdict.message == ("conflict: runtimeClass.scheduling.nodeSelector[runtime] = runv; "
                               "pod.spec.nodeSelector[runtime] = runc")
    assert verdict.patch == []
    # RuntimeClass mode leaves the merge (and this refusal) to the API server.
    assert admit(with_object(req, pod), policy, Mode.APISERVER_MERGES, SANDBOXED).allowed


def test_invalid_quantity_is_a_denial_naming_the_field_and_nothing_is_patched(policy):
    req = fixture_request("v1-01-create-bare-pod")
    pod = copy.deepcopy(req.object)
    pod["spec"]["containers"][0]["resources"]["requests"]["memory"] = "abc"
    for mode in Mode:
        verdict = admit(with_object(req, pod), policy, mode, SANDBOXED)
        assert (verdict.allowed, verdict.code, verdict.patch) == (False, 400, [])
        assert verdict.message == 'spec.containers[0].resources.requests.memory: invalid quantity "abc"'


def test_pod_without_spec_is_denied_not_raised(policy):
    verdict = admit(pod_request({"metadata": {"name": "x"}}), policy, Mode.WEBHOOK_MERGES, SANDBOXED)
    assert (verdict.allowed, verdict.code) == (False, 400)
    assert verdict.message.startswith("spec")


def test_edge_toleration_seconds(policy):
    tolerations = [
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},  # forever: kept
        {"key": "example.com/other", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5},
    ]
    pod = {"metadata": {"name": "edge"}, "spec": {"containers": [{"name": "c", "image": "i"}],
                                                 "tolerations": tolerations}}
    verdict = admit(pod_request(pod), policy, Mode.APISERVER_MERGES, SANDBOXED)
    assert patched(pod, verdict)["spec"]["tolerations"] == tolerations + [
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
         "tolerationSeconds": 86400}]
    longer = copy.deepcopy(pod)
    longer["spec"]["tolerations"] = [
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 90000},
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}]
    spec = patched(longer, admit(pod_request(longer), policy, Mode.APISERVER_MERGES, SANDBOXED))["spec"]
    assert [t["tolerationSeconds"] for t in spec["tolerations"]] == [90000, 86400]


def test_profile_without_edge_seconds_keeps_the_default_300(fixed_overhead_policy):
    req = fixture_request("v1-01-create-bare-pod")
    spec = patched(req.object, admit(req, fixed_overhead_policy, Mode.WEBHOOK_MERGES, SANDBOXED))["spec"]
    assert [t.get("tolerationSeconds") for t in spec["tolerations"]] == [300, 300, None]


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("case", ["05a-create-init-limits-special-keys", "05b-create-tilde-in-keys-rejected-by-validation"])
def test_json_pointer_escaping_with_slash_and_tilde_keys(policy, mode, case):
    req = fixture_request(f"v1-{case}")
    verdict = admit(req, policy, mode, SANDBOXED)
    result = jsonpatch.apply_patch(req.object, verdict.patch)
    expected = copy.deepcopy(req.object)
    expected["metadata"]["annotations"][keys.PADDING_ANNOTATION] = result["metadata"]["annotations"][
        keys.PADDING_ANNOTATION]
    # Every key the pod had, with "/" and "~", is still there with its value.
    assert result["metadata"]["annotations"] == expected["metadata"]["annotations"]
    assert result["metadata"]["labels"] == req.object["metadata"]["labels"]
    assert {"op": "add", "path": "/metadata/annotations/sandgate.io~1overhead-padding",
            "value": expected["metadata"]["annotations"][keys.PADDING_ANNOTATION]} in verdict.patch


def test_json_pointer_escaping_in_node_selector_keys():
    doc = example_doc()
    doc["profiles"]["gvisor"]["nodeSelector"] = {"sandbox.io/gvisor": "true", "example.com/tier": "a~b"}
    doc["allowProfileOverride"] = True
    pol = policy_from(doc)
    pod = {"metadata": {"name": "p", "annotations": {"a/b~c": "x", keys.DEFAULT_POD_ANNOTATION: "gvisor"}},
           "spec": {"containers": [{"name": "c", "image": "i"}], "nodeSelector": {"x~1y/z~0": "keep"}}}
    verdict = admit(pod_request(pod), pol, Mode.WEBHOOK_MERGES, SANDBOXED)
    assert {"op": "add", "path": "/spec/nodeSelector/sandbox.io~1gvisor", "value": "true"} in verdict.patch
    assert {"op": "add", "path": "/spec/nodeSelector/example.com~1tier", "value": "a~b"} in verdict.patch
    result = jsonpatch.apply_patch(pod, verdict.patch)
    assert result["spec"]["nodeSelector"] == {"x~1y/z~0": "keep", "sandbox.io/gvisor": "true", "example.com/tier": "a~b"}
    assert result["metadata"]["annotations"] == pod["metadata"]["annotations"]


def test_dry_run_gets_the_same_decision(policy):
    req = fixture_request("v1-07-create-dry-run-server")
    assert req.dry_run
    dry, wet = admit(req, policy, Mode.WEBHOOK_MERGES, SANDBOXED), admit(replace(req, dry_run=False), policy, Mode.WEBHOOK_MERGES,
                                                                  SANDBOXED)
    assert (dry.allowed, dry.patch) == (wet.allowed, wet.patch)


def test_unrouted_pods_get_no_patch_no_warning_no_audit(policy):
    req = fixture_request("v1-01-create-bare-pod")
    for routing in (NamespaceFacts(namespace_labels={}), NamespaceFacts(path_profile=keys.OPT_IN_PATH_SEGMENT)):
        verdict = admit(req, policy, Mode.WEBHOOK_MERGES, routing)
        assert (verdict.allowed, verdict.patch, verdict.warnings, verdict.audit_annotations, verdict.reason) == (
            True, [], [], {}, "not-routed")
    exempt = admit(replace(req, namespace="kube-system"), policy, Mode.WEBHOOK_MERGES, SANDBOXED)
    assert (exempt.allowed, exempt.patch, exempt.warnings, exempt.reason) == (True, [], [], "exempt")


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("08")])
def test_updates_are_allowed_unchanged(policy, case):
    verdict = admit(fixture_request(f"v1-{case}"), policy, Mode.WEBHOOK_MERGES, SANDBOXED)
    assert (verdict.allowed, verdict.patch, verdict.reason) == (True, [], "not-applicable")


def test_opt_in_pod_is_routed_with_its_rule(policy):
    req = fixture_request("v1-05a-create-init-limits-special-keys")  # annotated sandgate.io/runtime: runv
    verdict = admit(req, policy, Mode.APISERVER_MERGES, NamespaceFacts(path_profile=keys.OPT_IN_PATH_SEGMENT))
    assert verdict.allowed and RUNTIMECLASS_ONLY[0] in verdict.patch
    assert verdict.audit_annotations == {keys.AUDIT_PROFILE: "runv", keys.AUDIT_RULE: "opt-in"}
    padding = json.loads(patched(req.object, verdict)["metadata"]["annotations"][keys.PADDING_ANNOTATION])
    assert padding == {"memory": "14Mi", "basis": {"memory": "512Mi"}, "containers": ["etl"],
                       "initContainers": ["fetch"]}


def test_denials_from_routing_carry_no_patch(policy):
    req = fixture_request("v1-01-create-bare-pod")
    verdict = admit(req, policy, Mode.WEBHOOK_MERGES, NamespaceFacts(namespace_labels={keys.DEFAULT_NAMESPACE_LABEL: "kata"}))
    assert (verdict.allowed, verdict.patch, verdict.reason) == (False, [], "invalid-namespace-label")
    verdict = admit(req, policy, Mode.WEBHOOK_MERGES, NamespaceFacts())
    assert (verdict.allowed, verdict.code, verdict.reason) == (False, 503, "namespace-routing-unknown")
