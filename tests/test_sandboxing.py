"""One rule for "is this pod sandboxed, and in which profile": the webhook and the extender agree.

The webhooks decide with namespace labels; the extender sees only the pod the webhooks admitted.
For every routing case (namespace label, exemption, opt-in on or off, annotation, runtime class,
slot requests), a pod the validating webhook admits is sandboxed for the extender in exactly the
profile the webhook routed it to, and not sandboxed when the webhook left it alone.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import replace

import jsonpatch
import pytest

from sandgate.core import keys
from sandgate.core.clusterversion import Mode
from sandgate.core.policy import load_policy
from sandgate.core.sandboxing import SandboxingError, disagreement, profile_of, sandbox_facts
from scheduler_ext.objects import pod_info
from support import EXAMPLE_POLICY
from webhooks.mutating import admit
from webhooks.review import AdmissionRequest, NamespaceFacts
from webhooks.validating import validate

LABEL = keys.DEFAULT_NAMESPACE_LABEL
NAMESPACES = {
    "labelled-sandboxed": ("team-a", NamespaceFacts(namespace_labels={LABEL: keys.SANDBOXED_VALUE})),
    "labelled-gvisor": ("team-b", NamespaceFacts(namespace_labels={LABEL: "gvisor"})),
    "unlabelled": ("team-c", NamespaceFacts(namespace_labels={"team": "c"})),
    "exempt": ("kube-system", NamespaceFacts(namespace_labels={})),
    "path-runv": ("team-d", NamespaceFacts(path_profile="runv")),
    "path-opt-in": ("team-e", NamespaceFacts(path_profile=keys.OPT_IN_PATH_SEGMENT)),
}
ANNOTATIONS = [None, keys.SANDBOXED_VALUE, "gvisor", keys.OPT_OUT_VALUE]
RUNTIME_CLASSES = [None, "runv", "gvisor", "runc"]
SLOTS = [{}, {"runv": "1"}, {"gvisor": "1"}, {"runv": "2"}]


def make_pod(annotation, runtime_class, slots) -> dict:
    resources: dict = {"requests": {"cpu": "100m", "memory": "64Mi"}}
    for handler, count in slots.items():
        for kind in ("requests", "limits"):
            resources.setdefault(kind, {})[keys.sandbox_resource(handler)] = count
    pod: dict = {"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": "p", "uid": "u-1", "annotations": {}},
                 "spec": {"containers": [{"name": "app", "image": "alpine:3.19", "resources": resources}]}}
    if annotation is not None:
        pod["metadata"]["annotations"][keys.DEFAULT_POD_ANNOTATION] = annotation
    if runtime_class is not None:
        pod["spec"]["runtimeClassName"] = runtime_class
    return pod


def request(pod: dict, namespace: str) -> AdmissionRequest:
    pod = copy.deepcopy(pod)
    pod["metadata"]["namespace"] = namespace
    return AdmissionRequest(uid="uid-1", api_version="admission.k8s.io/v1", kind="Pod", group="",
                            operation="CREATE", namespace=namespace, name="p", dry_run=False, object=pod)


def extender_profile(pod: dict, policy) -> str | None:
    info = pod_info(pod)
    info.classify(policy, overhead_in_scheduler=True)
    return info.profile


@pytest.fixture(params=[True, False], ids=["opt-in-on", "opt-in-off"])
def policy(request):
    return replace(load_policy(EXAMPLE_POLICY), allow_pod_opt_in=request.param)


CASES = list(itertools.product(NAMESPACES, ANNOTATIONS, RUNTIME_CLASSES, range(len(SLOTS))))


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_every_admitted_pod_is_sandboxed_for_the_extender_exactly_as_routed(policy, namespace):
    name, facts = NAMESPACES[namespace]
    admitted = routed = 0
    for annotation, runtime_class, slots in itertools.product(ANNOTATIONS, RUNTIME_CLASSES, SLOTS):
        req = request(make_pod(annotation, runtime_class, slots), name)
        mutated = admit(req, policy, Mode.APISERVER_MERGES, facts)
        if not mutated.allowed:
            continue
        pod = jsonpatch.apply_patch(req.object, mutated.patch) if mutated.patch else copy.deepcopy(req.object)
        verdict = validate(replace(req, object=pod), policy, Mode.APISERVER_MERGES, facts)
        if not verdict.allowed:
            continue
        admitted += 1
        routed += verdict.profile is not None
        expected = verdict.profile
        case = (namespace, annotation, runtime_class, slots)
        assert expected == mutated.profile, case
        core = profile_of(pod, policy)
        assert (core.name if core else None) == expected, case
        assert extender_profile(pod, policy) == expected, case
    assert admitted > 0
    if namespace != "exempt" and (namespace not in ("unlabelled", "path-opt-in") or policy.allow_pod_opt_in):
        assert routed > 0, "no routed pod was admitted: the case would prove nothing"


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_a_pod_left_alone_that_looks_sandboxed_is_refused(policy, namespace):
    """Bypassing the mutating webhook: whatever validate admits unrouted, the extender treats as unsandboxed."""
    name, facts = NAMESPACES[namespace]
    for annotation, runtime_class, slots in itertools.product(ANNOTATIONS, RUNTIME_CLASSES, SLOTS):
        req = request(make_pod(annotation, runtime_class, slots), name)
        verdict = validate(req, policy, Mode.APISERVER_MERGES, facts)
        if verdict.allowed and verdict.profile is None:
            assert profile_of(req.object, policy) is None, (namespace, annotation, runtime_class, slots)
            assert extender_profile(req.object, policy) is None
        if verdict.reason == "unrouted-sandbox-slot":
            assert "does not route it" in verdict.message and keys.SANDBOX_RESOURCE_PREFIX in verdict.message


def test_the_rule_itself(policy):
    runv = policy.profiles["runv"]
    assert profile_of(make_pod(None, "runv", {"runv": "1"}), policy) == runv
    assert profile_of(make_pod(None, "runv", {"runv": "1000m"}), policy) == runv  # the same quantity
    assert profile_of(make_pod(None, "runv", {}), policy) is None
    assert profile_of(make_pod(None, "runv", {"runv": "2"}), policy) is None
    assert profile_of(make_pod(None, "runv", {"gvisor": "1"}), policy) is None
    assert profile_of(make_pod(None, "runc", {"runv": "1"}), policy) is None
    assert profile_of(make_pod(keys.SANDBOXED_VALUE, None, {"runv": "1"}), policy) is None
    both = make_pod(None, "runv", {"runv": "1", "gvisor": "1"})
    assert profile_of(both, policy) is None
    assert "may only request slots of its own runtime handler" in disagreement(both, policy, runv)
    zero = make_pod(None, "runv", {"runv": "0"})
    assert "got 0" in disagreement(zero, policy, runv)


def test_init_containers_and_sidecars_count_as_the_scheduler_counts(policy):
    pod = make_pod(None, "runv", {})
    slot = {"requests": {keys.sandbox_resource("runv"): "1"}}
    pod["spec"]["initContainers"] = [{"name": "init", "resources": slot}]
    assert profile_of(pod, policy) is not None  # max(init 1, app 0) = 1
    pod["spec"]["initContainers"].append({"name": "proxy", "restartPolicy": "Always", "resources": slot})
    pod["spec"]["containers"][0]["resources"] = slot
    assert sandbox_facts(pod).slots == {keys.sandbox_resource("runv"): 2}  # app 1 + sidecar 1
    assert profile_of(pod, policy) is None


@pytest.mark.parametrize("value", ["NaN", "Inf", "1e999990", "-1", "lots", "\u00b2", True, None, [1]])
def test_hostile_slot_values_are_errors_naming_the_field(policy, value):
    pod = make_pod(None, "runv", {})
    pod["spec"]["containers"][0]["resources"]["requests"][keys.sandbox_resource("runv")] = value
    for read in (sandbox_facts, lambda p: disagreement(p, policy, None), lambda p: profile_of(p, policy)):
        with pytest.raises(SandboxingError, match=r"^spec.containers\[0\].resources.requests.sandgate.io/sandbox-runv"):
            read(pod)


def test_the_validating_webhook_refuses_an_unrouted_pod_that_looks_sandboxed():
    """Opt-in off, unlabelled namespace: the webhook leaves the pod alone, so it must not carry a slot."""
    policy = replace(load_policy(EXAMPLE_POLICY), allow_pod_opt_in=False)
    facts = NAMESPACES["unlabelled"][1]
    looks_sandboxed = request(make_pod(None, "runv", {"runv": "1"}), "team-c")
    verdict = validate(looks_sandboxed, policy, Mode.APISERVER_MERGES, facts)
    assert (verdict.allowed, verdict.reason) == (False, "unrouted-sandbox-slot")
    assert verdict.message.startswith("spec.containers[*].resources: the pod requests sandbox slots "
                                      "(sandgate.io/sandbox-runv: 1)")
    # the same pod without the slot is simply not sandboxed, for both
    plain = request(make_pod(None, "runv", {}), "team-c")
    assert validate(plain, policy, Mode.APISERVER_MERGES, facts).allowed
    assert profile_of(plain.object, policy) is None
    # an update of a running pod is not re-judged (its runtime class and resources are immutable)
    update = replace(looks_sandboxed, operation="UPDATE")
    assert validate(update, policy, Mode.APISERVER_MERGES, facts).allowed
