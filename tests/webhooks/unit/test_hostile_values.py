"""What a tenant can put in a pod the API server accepts: never a routed pod without its
runtimeClassName, never a stall on a quantity, never an exception out of the decision."""

from __future__ import annotations

import copy
from dataclasses import replace

import jsonpatch
import pytest

from sandgate.core import keys
from sandgate.core.clusterversion import Mode
from webhooks.review import NamespaceFacts
from webhooks.mutating import admit
from webhooks.wire import parse_review

from webhook_cases import fixture_request, with_object

SANDBOXED = NamespaceFacts(namespace_labels={keys.DEFAULT_NAMESPACE_LABEL: "sandboxed"})


@pytest.mark.parametrize("mode", list(Mode))
def test_a_null_runtime_class_name_is_replaced_by_the_profiles(policy, mode):
    req = fixture_request("v1-01-create-bare-pod")
    pod = copy.deepcopy(req.object)
    pod["spec"]["runtimeClassName"] = None
    verdict = admit(with_object(req, pod), policy, mode, SANDBOXED)
    assert verdict.allowed
    assert jsonpatch.apply_patch(pod, verdict.patch)["spec"]["runtimeClassName"] == "runv"


@pytest.mark.parametrize("value", ["", "runc", 7, ["runv"], {"name": "runv"}, True])
def test_any_other_runtime_class_value_is_denied(policy, value):
    req = fixture_request("v1-01-create-bare-pod")
    pod = copy.deepcopy(req.object)
    pod["spec"]["runtimeClassName"] = value
    verdict = admit(with_object(req, pod), policy, Mode.APISERVER_MERGES, SANDBOXED)
    assert not verdict.allowed and verdict.patch == []
    assert verdict.message.startswith("spec.runtimeClassName: ")


def test_duplicate_keys_are_read_as_the_decoder_keeps_them_and_still_routed(policy):
    raw = fixture_request("v1-01-create-bare-pod")
    body = ('{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u1", '
            '"kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE", '
            f'"namespace": "{raw.namespace}", "object": {{"metadata": {{"name": "p"}}, "spec": '
            '{"runtimeClassName": "runv", "containers": [{"name": "c"}], "runtimeClassName": null}}}}').encode()
    req = parse_review(body)
    verdict = admit(req, policy, Mode.APISERVER_MERGES, SANDBOXED)
    assert verdict.allowed
    assert jsonpatch.apply_patch(req.object, verdict.patch)["spec"]["runtimeClassName"] == "runv"


@pytest.mark.parametrize("value, field", [
    ("1e999990", "spec.containers[0].resources.requests.cpu"),
    ("NaN", "spec.containers[0].resources.requests.cpu"),
    ("Infinity", "spec.containers[0].resources.requests.cpu"),
    (float("nan"), "spec.containers[0].resources.requests.cpu"),
    ("8Ei", "spec.containers[0].resources.requests.cpu"),
])
@pytest.mark.parametrize("where", ["requests", "limits"])
@pytest.mark.parametrize("mode", list(Mode))
def test_an_absurd_quantity_is_a_denial_naming_the_field(policy, mode, value, field, where):
    req = fixture_request("v1-01-create-bare-pod")
    pod = copy.deepcopy(req.object)
    pod["spec"]["containers"][0]["resources"] = {where: {"cpu": value, "memory": "64Mi"}}
    field = field.replace("requests", where)
    verdict = admit(with_object(req, pod), policy, mode, SANDBOXED)
    assert (verdict.allowed, verdict.code, verdict.patch) == (False, 400, [])
    assert verdict.message.startswith(f"{field}: ")


def test_an_absurd_overhead_or_init_container_quantity_is_denied(policy):
    req = fixture_request("v1-01-create-bare-pod")
    pod = copy.deepcopy(req.object)
    pod["spec"]["overhead"] = {"memory": "1e999990"}
    verdict = admit(with_object(req, pod), policy, Mode.APISERVER_MERGES, SANDBOXED)
    assert not verdict.allowed and verdict.message.startswith("spec.overhead.memory: ")
    pod = copy.deepcopy(req.object)
    pod["spec"]["initContainers"] = [{"name": "i", "resources": {"limits": {"nvidia.com/gpu": "Infinity"}}}]
    verdict = admit(with_object(req, pod), policy, Mode.APISERVER_MERGES, SANDBOXED)
    assert not verdict.allowed
    assert verdict.message.startswith("spec.initContainers[0].resources.limits.nvidia.com/gpu: ")


@pytest.mark.parametrize("metadata", [{"generateName": 5}, {"generateName": ["a"]}, {"name": 3}, "oops", None])
def test_pod_name_for_logs_never_raises(metadata):
    req = fixture_request("v1-01-create-bare-pod")
    pod = copy.deepcopy(req.object)
    pod["metadata"] = metadata
    assert isinstance(replace(with_object(req, pod), name=None).pod_name, str)


@pytest.mark.parametrize("field, value, named", [
    ("tolerations", [None], "spec.tolerations[0]: "),
    ("containers", [None], "spec.containers[0]: "),
    ("initContainers", [None], "spec.initContainers[0]: "),
    ("initContainers", [7], "spec.initContainers[0]: "),
])
@pytest.mark.parametrize("mode", list(Mode))
def test_malformed_lists_are_denials_naming_the_element_not_internal_errors(policy, mode, field, value, named):
    """Found by tests/fuzz: the API server never sends these, a direct caller may."""
    req = fixture_request("v1-01-create-bare-pod")
    pod = copy.deepcopy(req.object)
    pod["spec"][field] = value
    verdict = admit(with_object(req, pod), policy, mode, SANDBOXED)
    assert (verdict.allowed, verdict.code, verdict.patch) == (False, 400, [])
    assert verdict.message.startswith(named), verdict.message
