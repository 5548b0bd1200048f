"""The routing table: which profile a pod gets from namespace labels, path, annotation and runtimeClassName."""

from dataclasses import replace

import pytest

from sandgate.core import keys
from webhooks.review import NamespaceFacts
from webhooks.routing import Outcome, Rule, resolve

from webhook_cases import example_doc, fixture_request, pod_request, policy_from

LABEL = keys.DEFAULT_NAMESPACE_LABEL
ANNOTATION = keys.DEFAULT_POD_ANNOTATION
SANDBOXED = NamespaceFacts(namespace_labels={LABEL: "sandboxed", "team": "payments"})
UNLABELLED = NamespaceFacts(namespace_labels={"team": "payments"})


def pod(annotation=None, runtime_class=None, name="p"):
    meta = {"name": name}
    if annotation is not None:
        meta["annotations"] = {ANNOTATION: annotation}
    spec = {"containers": [{"name": "app", "image": "nginx", "resources": {"requests": {"memory": "64Mi"}}}]}
    if runtime_class is not None:
        spec["runtimeClassName"] = runtime_class
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def routed(decision, profile, rule):
    assert decision.outcome is Outcome.ROUTE, decision
    assert (decision.profile.name, decision.rule) == (profile, rule)
    return True


@pytest.mark.parametrize("labels, profile", [
    ({LABEL: "sandboxed"}, "runv"),
    ({LABEL: "runv"}, "runv"),
    ({LABEL: "gvisor"}, "gvisor"),
])
def test_namespace_label_routes_to_profile(policy, labels, profile):
    decision = resolve(pod_request(pod()), policy, NamespaceFacts(namespace_labels=labels))
    assert routed(decision, profile, Rule.NAMESPACE_LABEL)


def test_unlabelled_namespace_without_annotation_is_left_alone_silently(policy):
    decision = resolve(pod_request(pod()), policy, UNLABELLED)
    assert (decision.outcome, decision.reason, decision.warnings) == (Outcome.SKIP, "not-routed", ())


def test_unknown_namespace_label_value_fails_closed(policy):
    decision = resolve(pod_request(pod()), policy, NamespaceFacts(namespace_labels={LABEL: "kata"}))
    assert decision.outcome is Outcome.DENY
    assert decision.reason == "invalid-namespace-label"
    assert f'{LABEL}="kata"' in decision.message
    assert "valid values: sandboxed, none, runv, gvisor" in decision.message
    assert '"payments-sandbox"' in decision.message


def test_policy_label_and_annotation_names_are_honoured():
    doc = example_doc()
    doc["namespaceLabel"] = "example.com/sandbox"
    doc["podAnnotation"] = "example.com/runtime"
    doc["allowProfileOverride"] = True
    custom = policy_from(doc)
    labels = NamespaceFacts(namespace_labels={"example.com/sandbox": "sandboxed"})
    assert routed(resolve(pod_request(pod()), custom, labels), "runv", Rule.NAMESPACE_LABEL)
    # The default keys mean nothing under this policy.
    assert resolve(pod_request(pod()), custom, SANDBOXED).outcome is Outcome.SKIP
    chooser = pod()
    chooser["metadata"]["annotations"] = {"example.com/runtime": "gvisor"}
    assert routed(resolve(pod_request(chooser), custom, labels), "gvisor", Rule.POD_ANNOTATION)


def test_annotation_chooses_another_profile_in_a_routed_namespace_only_when_the_policy_allows(policy):
    locked = resolve(pod_request(pod("gvisor")), policy, SANDBOXED)
    assert (locked.outcome, locked.reason) == (Outcome.DENY, "profile-locked")
    assert locked.message == (f'metadata.annotations[{ANNOTATION}]: namespace "payments-sandbox" is locked to '
                              f'sandbox profile "runv"; a pod cannot choose "gvisor" (policy allowProfileOverride: '
                              f'false)')
    # Naming the namespace's own profile is no override.
    assert routed(resolve(pod_request(pod("runv")), policy, SANDBOXED), "runv", Rule.POD_ANNOTATION)
    open_policy = replace(policy, allow_profile_override=True)
    assert routed(resolve(pod_request(pod("gvisor")), open_policy, SANDBOXED), "gvisor", Rule.POD_ANNOTATION)


def test_annotation_sandboxed_keeps_the_namespace_profile(policy):
    decision = resolve(pod_request(pod("sandboxed")), policy, NamespaceFacts(namespace_labels={LABEL: "gvisor"}))
    assert routed(decision, "gvisor", Rule.NAMESPACE_LABEL)


def test_opt_out_is_refused_in_a_routed_namespace(policy):
    decision = resolve(pod_request(pod("none")), policy, SANDBOXED)
    assert decision.outcome is Outcome.DENY
    assert decision.reason == "opt-out-refused"
    assert decision.message.startswith(f"metadata.annotations[{ANNOTATION}]")
    assert "opt-out is not allowed in a sandboxed namespace" in decision.message


def test_unknown_annotation_value_is_refused_in_a_routed_namespace(policy):
    decision = resolve(pod_request(pod("kata")), policy, SANDBOXED)
    assert decision.outcome is Outcome.DENY
    assert decision.message == (f'metadata.annotations[{ANNOTATION}]: unknown sandbox profile "kata" '
                                f"(valid values: sandboxed, runv, gvisor)")


@pytest.mark.parametrize("annotation, profile", [("runv", "runv"), ("gvisor", "gvisor"), ("sandboxed", "runv")])
def test_opt_in_in_an_unlabelled_namespace(policy, annotation, profile):
    assert routed(resolve(pod_request(pod(annotation)), policy, UNLABELLED), profile, Rule.OPT_IN)


def test_opt_in_none_in_an_unlabelled_namespace_is_left_alone(policy):
    decision = resolve(pod_request(pod("none")), policy, UNLABELLED)
    assert (decision.outcome, decision.reason, decision.warnings) == (Outcome.SKIP, "not-routed", ())


def test_unknown_opt_in_value_is_refused(policy):
    decision = resolve(pod_request(pod("kata")), policy, UNLABELLED)
    assert decision.outcome is Outcome.DENY
    assert decision.message == (f'metadata.annotations[{ANNOTATION}]: unknown sandbox profile "kata" '
                                f"(valid values: sandboxed, none, runv, gvisor)")


def test_opt_in_disabled_leaves_the_pod_with_a_warning():
    doc = example_doc()
    doc["allowPodOptIn"] = False
    doc["allowProfileOverride"] = True
    strict = policy_from(doc)
    decision = resolve(pod_request(pod("gvisor")), strict, UNLABELLED)
    assert (decision.outcome, decision.reason) == (Outcome.SKIP, "opt-in-disabled")
    assert len(decision.warnings) == 1
    assert "opt-in is disabled by policy" in decision.warnings[0]
    assert f"metadata.annotations[{ANNOTATION}]" in decision.warnings[0]
    # A routed namespace still routes: opt-in only concerns unlabelled namespaces.
    assert routed(resolve(pod_request(pod("gvisor")), strict, SANDBOXED), "gvisor", Rule.POD_ANNOTATION)
    # A pod that already runs a sandbox runtime is not adopted either.
    assert resolve(pod_request(pod(runtime_class="runv")), strict, UNLABELLED).outcome is Outcome.SKIP


@pytest.mark.parametrize("namespace", ["kube-system", "sandgate-system"])
def test_exempt_namespaces_are_never_touched(policy, namespace):
    for annotation in (None, "none", "kata", "gvisor"):
        decision = resolve(pod_request(pod(annotation), namespace=namespace), policy, SANDBOXED)
        assert (decision.outcome, decision.reason, decision.warnings) == (Outcome.SKIP, "exempt", ())


@pytest.mark.parametrize("segment, profile", [("runv", "runv"), ("gvisor", "gvisor"), ("sandboxed", "runv")])
def test_path_profile_routes_without_namespace_labels(policy, segment, profile):
    assert routed(resolve(pod_request(pod()), policy, NamespaceFacts(path_profile=segment)), profile, Rule.NAMESPACE_LABEL)


def test_path_profile_wins_over_labels(policy):
    both = NamespaceFacts(namespace_labels={LABEL: "runv"}, path_profile="gvisor")
    assert routed(resolve(pod_request(pod()), policy, both), "gvisor", Rule.NAMESPACE_LABEL)


def test_opt_in_path_means_unlabelled(policy):
    optin = NamespaceFacts(path_profile=keys.OPT_IN_PATH_SEGMENT)
    assert resolve(pod_request(pod()), policy, optin).reason == "not-routed"
    assert routed(resolve(pod_request(pod("gvisor")), policy, optin), "gvisor", Rule.OPT_IN)
    assert resolve(pod_request(pod("none")), policy, optin).outcome is Outcome.SKIP


def test_unknown_path_profile_is_refused(policy):
    decision = resolve(pod_request(pod()), policy, NamespaceFacts(path_profile="kata"))
    assert decision.outcome is Outcome.DENY
    assert decision.reason == "unknown-path-profile"
    assert '"kata"' in decision.message and "runv, gvisor" in decision.message


def test_unknown_namespace_routing_fails_closed(policy):
    decision = resolve(pod_request(pod()), policy, NamespaceFacts())
    assert decision.outcome is Outcome.DENY
    assert decision.reason == "namespace-routing-unknown"
    assert decision.code == 503
    assert "namespace cache is not ready" in decision.message


@pytest.mark.parametrize("changes", [
    {"operation": "UPDATE"}, {"operation": "DELETE"}, {"operation": "CONNECT"},
    {"kind": "Deployment", "group": "apps"}, {"kind": "Pod", "group": "example.com"},
    {"sub_resource": "ephemeralcontainers"}, {"sub_resource": "status"},
])
def test_only_pod_creation_is_routed(policy, changes):
    # Even a request that would otherwise be refused (no routing known) is not applicable.
    decision = resolve(pod_request(pod("none"), **changes), policy, NamespaceFacts())
    assert (decision.outcome, decision.reason) == (Outcome.SKIP, "not-applicable")


def test_update_fixtures_are_not_applicable(policy):
    for name in ("v1-08a-update-kubectl-label", "v1beta1-08b-update-kubectl-replace", "v1-08c-update-dry-run-server"):
        assert resolve(fixture_request(name), policy, SANDBOXED).reason == "not-applicable"


def test_runtime_class_of_a_profile_picks_that_profile(policy):
    locked = resolve(fixture_request("v1-03b-create-runtimeclass-gvisor"), policy, SANDBOXED)
    assert (locked.outcome, locked.reason) == (Outcome.DENY, "profile-locked")
    assert locked.message.startswith("spec.runtimeClassName: ")
    policy = replace(policy, allow_profile_override=True)
    decision = resolve(fixture_request("v1-03b-create-runtimeclass-gvisor"), policy, SANDBOXED)
    assert routed(decision, "gvisor", Rule.RUNTIME_CLASS)
    assert routed(resolve(pod_request(pod(runtime_class="runv")), policy, NamespaceFacts(namespace_labels={LABEL: "gvisor"})),
                  "runv", Rule.RUNTIME_CLASS)


def test_runtime_class_opts_in_in_an_unlabelled_namespace(policy):
    assert routed(resolve(pod_request(pod(runtime_class="gvisor")), policy, UNLABELLED), "gvisor", Rule.RUNTIME_CLASS)
    assert resolve(pod_request(pod(runtime_class="runc")), policy, UNLABELLED).outcome is Outcome.SKIP


def test_foreign_runtime_class_is_refused_in_a_routed_namespace(policy):
    decision = resolve(pod_request(pod(runtime_class="runc")), policy, SANDBOXED)
    assert decision.outcome is Outcome.DENY
    assert decision.reason == "runtime-class-mismatch"
    assert decision.message.startswith('spec.runtimeClassName: "runc" does not match sandbox profile "runv"')
    assert 'requires runtimeClassName "runv"' in decision.message


def test_annotation_and_runtime_class_must_agree(policy):
    policy = replace(policy, allow_profile_override=True)
    decision = resolve(pod_request(pod("gvisor", runtime_class="runv")), policy, SANDBOXED)
    assert decision.outcome is Outcome.DENY
    assert 'spec.runtimeClassName: "runv"' in decision.message and '"gvisor"' in decision.message
    decision = resolve(pod_request(pod("runv", runtime_class="gvisor")), policy, UNLABELLED)
    assert decision.outcome is Outcome.DENY and decision.reason == "runtime-class-mismatch"
    assert routed(resolve(pod_request(pod("gvisor", runtime_class="gvisor")), policy, SANDBOXED),
                  "gvisor", Rule.POD_ANNOTATION)


def test_create_without_a_pod_object_is_refused(policy):
    req = pod_request(pod())
    decision = resolve(replace(req, object=None), policy, SANDBOXED)
    assert (decision.outcome, decision.code) == (Outcome.DENY, 400)
    assert decision.message.startswith("request.object")


def test_non_string_annotation_value_is_an_unknown_value_not_a_crash(policy):
    odd = pod()
    odd["metadata"]["annotations"] = {ANNOTATION: ["runv"]}
    decision = resolve(pod_request(odd), policy, SANDBOXED)
    assert (decision.outcome, decision.reason) == (Outcome.DENY, "invalid-annotation")
    assert "['runv']" in decision.message


# ---- secure-by-default namespaces, trusted label, placement ----------------------------------

@pytest.mark.parametrize("routing", [UNLABELLED, NamespaceFacts(path_profile=keys.OPT_IN_PATH_SEGMENT)])
def test_unlabelled_namespaces_sandboxed_routes_to_the_default_profile(policy, routing):
    secure = replace(policy, unlabelled_namespaces="sandboxed")
    assert routed(resolve(pod_request(pod()), secure, routing), "runv", Rule.UNLABELLED)
    # The opt-out annotation is a tenant's choice: refused, as in any sandboxed namespace.
    assert resolve(pod_request(pod("none")), secure, routing).reason == "opt-out-refused"
    # The default mode keeps today's behaviour: unlabelled = trusted.
    assert resolve(pod_request(pod()), policy, routing).outcome is Outcome.SKIP


def test_namespace_label_none_marks_a_namespace_trusted_in_both_modes(policy):
    trusted = NamespaceFacts(namespace_labels={LABEL: "none"})
    for mode in ("trusted", "sandboxed"):
        pol = replace(policy, unlabelled_namespaces=mode)
        assert resolve(pod_request(pod()), pol, trusted).reason == "not-routed"
        # Pods there may still opt in.
        assert routed(resolve(pod_request(pod("gvisor")), pol, trusted), "gvisor", Rule.OPT_IN)


def test_routed_pod_with_a_preset_node_name_is_refused(policy):
    preset = pod()
    preset["spec"]["nodeName"] = "edge-1"
    decision = resolve(pod_request(preset), policy, SANDBOXED)
    assert (decision.outcome, decision.reason) == (Outcome.DENY, "node-name-preset")
    assert decision.message.startswith('spec.nodeName: "edge-1" is preset')
    # An unrouted pod may still name its node.
    assert resolve(pod_request(preset), policy, UNLABELLED).outcome is Outcome.SKIP


@pytest.mark.parametrize("scheduler, allowed", [(None, True), ("default-scheduler", True), ("my-scheduler", False)])
def test_routed_pod_scheduler_name_must_be_allowed(policy, scheduler, allowed):
    p = pod("gvisor")
    if scheduler is not None:
        p["spec"]["schedulerName"] = scheduler
    decision = resolve(pod_request(p), policy, UNLABELLED)
    if allowed:
        assert routed(decision, "gvisor", Rule.OPT_IN)
    else:
        assert (decision.outcome, decision.reason) == (Outcome.DENY, "scheduler-name-refused")
        assert decision.message.startswith('spec.schedulerName: "my-scheduler" is not allowed for sandboxed pods')
        extended = replace(policy, scheduling=replace(policy.scheduling,
                                                      allowed_scheduler_names=frozenset({"my-scheduler"})))
        assert routed(resolve(pod_request(p), extended, UNLABELLED), "gvisor", Rule.OPT_IN)
