"""validate: the fail-closed guard refuses routed pods outside their runtime or with forbidden features."""

import copy
from dataclasses import replace

import jsonpatch
import pytest

from sandgate.core import keys
from sandgate.core.clusterversion import Mode
from webhooks.review import NamespaceFacts
from webhooks.mutating import admit
from webhooks.validating import validate

from webhook_cases import FIXTURES, VERSIONS, example_doc, fixture_request, handmade_request, policy_from, \
    with_object

LABEL = keys.DEFAULT_NAMESPACE_LABEL
SLOT = keys.sandbox_resource("runv")
MI = 1024 * 1024
SANDBOXED = NamespaceFacts(namespace_labels={LABEL: "sandboxed"})


@pytest.mark.parametrize("mode", list(Mode))
def test_pod_the_mutating_webhook_skipped_is_refused(policy, mode):
    verdict = validate(fixture_request("v1-01-create-bare-pod"), policy, mode, SANDBOXED)
    assert (verdict.allowed, verdict.reason, verdict.patch) == (False, "runtime-class-mismatch", [])
    assert verdict.message.startswith('spec.runtimeClassName: sandbox profile "runv" requires "runv", it is not set')
    assert verdict.audit_annotations == {keys.AUDIT_PROFILE: "runv", keys.AUDIT_RULE: "namespace-label"}


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("name", FIXTURES)
def test_every_admitted_pod_passes_the_guard(policy, mode, name):
    req = fixture_request(name)
    mutated = admit(req, policy, mode, SANDBOXED)
    if not mutated.allowed:
        return
    pod = jsonpatch.apply_patch(req.object, mutated.patch) if req.object and mutated.patch else req.object
    verdict = validate(with_object(req, pod), policy, mode, SANDBOXED)
    assert (verdict.allowed, verdict.patch, verdict.profile) == (True, [], mutated.profile)


def test_runtime_class_changed_after_mutation_is_refused(policy):
    # A later webhook cannot swap the sandbox: runv's namespace, pod now runs runc.
    req = fixture_request("v1-01-create-bare-pod")
    pod = copy.deepcopy(req.object)
    pod["spec"]["runtimeClassName"] = "runc"
    verdict = validate(with_object(req, pod), policy, Mode.APISERVER_MERGES, SANDBOXED)
    assert not verdict.allowed
    assert verdict.message.startswith('spec.runtimeClassName: "runc" does not match sandbox profile "runv"')


def test_another_profiles_runtime_class_is_accepted_as_the_users_choice_only_when_the_policy_allows(policy):
    req = fixture_request("v1beta1-03b-create-runtimeclass-gvisor")
    assert validate(req, policy, Mode.APISERVER_MERGES, SANDBOXED).reason == "profile-locked"
    policy = replace(policy, allow_profile_override=True)
    mutated = admit(req, policy, Mode.APISERVER_MERGES, SANDBOXED)
    req = with_object(req, jsonpatch.apply_patch(req.object, mutated.patch))
    verdict = validate(req, policy, Mode.APISERVER_MERGES, SANDBOXED)
    assert (verdict.allowed, verdict.profile) == (True, "gvisor")


def test_forbidden_feature_is_refused_even_in_the_right_runtime(policy):
    req = fixture_request("v1-06-create-hostnetwork-privileged")
    pod = copy.deepcopy(req.object)
    pod["spec"]["runtimeClassName"] = "runv"
    verdict = validate(with_object(req, pod), policy, Mode.WEBHOOK_MERGES, SANDBOXED)
    assert (verdict.allowed, verdict.reason) == (False, "forbidden")
    assert verdict.message.startswith('spec.hostNetwork is forbidden by sandbox profile "runv"')


def test_opted_in_pod_without_its_runtime_is_refused(policy):
    req = fixture_request("v1-05a-create-init-limits-special-keys")  # annotation sandgate.io/runtime: runv
    verdict = validate(req, policy, Mode.APISERVER_MERGES, NamespaceFacts(path_profile=keys.OPT_IN_PATH_SEGMENT))
    assert (verdict.allowed, verdict.reason) == (False, "runtime-class-mismatch")
    assert verdict.audit_annotations[keys.AUDIT_RULE] == "opt-in"


def test_routing_denials_are_the_same_as_admits(policy):
    req = fixture_request("v1-01-create-bare-pod")
    for routing in (NamespaceFacts(namespace_labels={LABEL: "kata"}), NamespaceFacts(), NamespaceFacts(path_profile="kata")):
        mutating = admit(req, policy, Mode.WEBHOOK_MERGES, routing)
        validating = validate(req, policy, Mode.WEBHOOK_MERGES, routing)
        assert not validating.allowed
        assert (validating.message, validating.code, validating.reason) == (
            mutating.message, mutating.code, mutating.reason)
    pod = copy.deepcopy(req.object)
    pod["metadata"]["annotations"] = {keys.DEFAULT_POD_ANNOTATION: "none"}
    verdict = validate(with_object(req, pod), policy, Mode.WEBHOOK_MERGES, SANDBOXED)
    assert (verdict.allowed, verdict.reason) == (False, "opt-out-refused")


def test_pods_outside_routing_pass_without_noise(policy):
    req = fixture_request("v1-01-create-bare-pod")
    for routing in (NamespaceFacts(namespace_labels={}), NamespaceFacts(path_profile=keys.OPT_IN_PATH_SEGMENT)):
        verdict = validate(req, policy, Mode.WEBHOOK_MERGES, routing)
        assert (verdict.allowed, verdict.warnings, verdict.reason) == (True, [], "not-routed")
    assert validate(replace(req, namespace="kube-system"), policy, Mode.WEBHOOK_MERGES, SANDBOXED).reason == "exempt"
    for name in ("v1-08a-update-kubectl-label", "v1beta1-08c-update-dry-run-server"):
        verdict = validate(fixture_request(name), policy, Mode.WEBHOOK_MERGES, SANDBOXED)
        assert (verdict.allowed, verdict.reason) == (True, "not-applicable")


def test_opt_in_disabled_pod_passes_the_guard_silently():
    doc = example_doc()
    doc["allowPodOptIn"] = False
    strict = policy_from(doc)
    req = fixture_request("v1-05a-create-init-limits-special-keys")
    verdict = validate(req, strict, Mode.WEBHOOK_MERGES, NamespaceFacts(namespace_labels={}))
    assert (verdict.allowed, verdict.warnings, verdict.reason) == (True, [], "opt-in-disabled")


@pytest.mark.parametrize("name", FIXTURES)
def test_validate_never_patches(policy, name):
    for mode in Mode:
        assert validate(fixture_request(name), policy, mode, SANDBOXED).patch == []


# ---- sandbox slots -------------------------------------------------------------------------------------

def admitted(policy, name="v1-01-create-bare-pod", mode=Mode.APISERVER_MERGES):
    req = fixture_request(name)
    return with_object(req, jsonpatch.apply_patch(req.object, admit(req, policy, mode, SANDBOXED).patch))


@pytest.mark.parametrize("change, message", [
    (lambda c: c["resources"]["requests"].pop(SLOT), "must request exactly one sandbox slot"),
    (lambda c: c["resources"]["requests"].update({SLOT: "2"}), "got 2"),
    (lambda c: c["resources"]["requests"].update({keys.sandbox_resource("gvisor"): "1"}),
     "may only request slots of its own runtime handler (sandgate.io/sandbox-runv)"),
])
def test_routed_pod_without_exactly_one_slot_of_its_handler_is_refused(policy, change, message):
    req = admitted(policy)
    change(req.object["spec"]["containers"][0])
    verdict = validate(req, policy, Mode.APISERVER_MERGES, SANDBOXED)
    assert (verdict.allowed, verdict.reason) == (False, "sandbox-slot")
    assert message in verdict.message and verdict.message.startswith("spec.containers[")


def test_a_sidecar_with_another_slot_makes_two(policy):
    req = admitted(policy)
    req.object["spec"]["initContainers"] = [{"name": "proxy", "image": "envoy", "restartPolicy": "Always",
                                             "resources": {"requests": {SLOT: "1"}, "limits": {SLOT: "1"}}}]
    verdict = validate(req, policy, Mode.APISERVER_MERGES, SANDBOXED)
    assert (verdict.allowed, verdict.reason) == (False, "sandbox-slot") and "got 2" in verdict.message


# ---- ephemeral containers (kubectl debug) ----------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_privileged_ephemeral_container_in_a_sandboxed_pod_is_refused(policy, version):
    req = handmade_request(f"{version}-09-update-ephemeralcontainers-privileged")
    assert (req.operation, req.sub_resource) == ("UPDATE", "ephemeralcontainers")
    # Whatever the URL: the pod's runtimeClassName says it runs in a sandbox.
    for routing in (SANDBOXED, NamespaceFacts(path_profile=keys.OPT_IN_PATH_SEGMENT), NamespaceFacts()):
        verdict = validate(req, policy, Mode.APISERVER_MERGES, routing)
        assert (verdict.allowed, verdict.reason, verdict.profile) == (False, "forbidden", "runv")
        assert verdict.message == ('spec.ephemeralContainers[0].securityContext.privileged is forbidden by sandbox '
                                   'profile "runv"')


@pytest.mark.parametrize("version", VERSIONS)
def test_unprivileged_ephemeral_container_or_unsandboxed_pod_is_allowed(policy, version):
    req = handmade_request(f"{version}-09-update-ephemeralcontainers-privileged")
    plain = copy.deepcopy(req.object)
    del plain["spec"]["ephemeralContainers"][0]["securityContext"]
    assert validate(with_object(req, plain), policy, Mode.APISERVER_MERGES, SANDBOXED).allowed
    unsandboxed = copy.deepcopy(req.object)
    del unsandboxed["spec"]["runtimeClassName"]
    verdict = validate(with_object(req, unsandboxed), policy, Mode.APISERVER_MERGES, SANDBOXED)
    assert (verdict.allowed, verdict.reason) == (True, "not-sandboxed")


# ---- in-place resize -----------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_resize_that_leaves_the_padding_short_is_refused(policy, version):
    req = handmade_request(f"{version}-10-update-resize-memory")
    verdict = validate(req, policy, Mode.APISERVER_MERGES, SANDBOXED)
    assert (verdict.allowed, verdict.reason) == (False, "resize-padding-short")
    # Without the recorded 14Mi the pod asks 4Gi - 14Mi; 50Mi + 2% of that is 131.64Mi, 81.64Mi beyond podFixed.
    needed = policy.profiles["runv"].overhead.memory_total(4 * 1024 * MI - 14 * MI) - 50 * MI
    assert verdict.message == (
        'spec.containers[0].resources.requests.memory: this resize raises the requests the sandbox overhead of '
        'profile "runv" depends on beyond what the pod\'s padding covers (it carries 14Mi of memory, the new '
        f"requests need {needed}); the padding cannot follow an in-place resize: recreate the pod with the new "
        "requests")


@pytest.mark.parametrize("version", VERSIONS)
def test_resize_within_what_the_padding_covers_is_allowed(policy, version):
    req = handmade_request(f"{version}-10-update-resize-memory")
    for memory in ("100Mi", "142Mi", "700Mi"):  # 50Mi + 2% of 686Mi is still below memoryMin 64Mi
        resized = copy.deepcopy(req.object)
        resized["spec"]["containers"][0]["resources"]["requests"]["memory"] = memory
        verdict = validate(with_object(req, resized), policy, Mode.APISERVER_MERGES, SANDBOXED)
        assert (verdict.allowed, verdict.reason) == (True, "routed"), memory


# ---- RuntimeClass existence where no built-in plugin checks it (1.14-1.15) ------------------------------

class StubLookup:
    def __init__(self, existing):
        self.existing, self.asked = existing, []

    def exists(self, name):
        self.asked.append(name)
        return self.existing.get(name)


@pytest.mark.parametrize("version, refused", [("1.14", True), ("1.15", True), ("1.16", False), ("1.32", False)])
def test_missing_runtime_class_is_refused_only_where_no_builtin_plugin_does(policy, version, refused):
    from sandgate.core.clusterversion import ClusterVersion
    from webhooks.app import WebhookState
    from webhooks.review import Verdict

    lookup = StubLookup({"runv": True, "kata": False, "unknown": None})
    state = WebhookState(policies=None, start_version=ClusterVersion.parse(version), metrics=None,
                         runtime_classes=lookup)
    req = fixture_request("v1-01-create-bare-pod")
    allowed = Verdict(allowed=True, reason="not-routed")
    for name, denied in (("runv", False), ("kata", refused), ("unknown", False)):
        pod = copy.deepcopy(req.object)
        pod["spec"]["runtimeClassName"] = name
        verdict = state.runtime_class_check(with_object(req, pod), policy, allowed)
        assert (not verdict.allowed) == denied
        if denied:
            assert (verdict.code, verdict.message) == (403, 'pod rejected: RuntimeClass "kata" not found')
    assert state.runtime_class_check(req, policy, allowed) is allowed  # no runtimeClassName: nothing to look up
    assert lookup.asked == ([] if not refused else ["runv", "kata", "unknown"])
