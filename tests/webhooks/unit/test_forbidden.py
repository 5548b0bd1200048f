"""Forbidden pod features are refused naming the exact field."""

import dataclasses

import pytest

from sandgate.core.policy import FORBIDDABLE
from webhooks.forbidden import forbidden_fields, forbidden_message

from webhook_cases import example_doc, fixture_request, policy_from


@pytest.fixture
def strict_profile():
    doc = example_doc()
    doc["profiles"]["runv"]["forbid"] = list(FORBIDDABLE)
    return policy_from(doc).profiles["runv"]


def container(name, **extra):
    return {"name": name, "image": "busybox", **extra}


def pod(**spec):
    base = {"containers": [container("app")]}
    base.update(spec)
    return {"metadata": {"name": "p"}, "spec": base}


@pytest.mark.parametrize("spec, field", [
    ({"hostNetwork": True}, "spec.hostNetwork"),
    ({"hostPID": True}, "spec.hostPID"),
    ({"hostIPC": True}, "spec.hostIPC"),
    ({"containers": [container("a"), container("b", securityContext={"privileged": True})]},
     "spec.containers[1].securityContext.privileged"),
    ({"initContainers": [container("init", securityContext={"privileged": True})]},
     "spec.initContainers[0].securityContext.privileged"),
    ({"ephemeralContainers": [container("debug", securityContext={"privileged": True})]},
     "spec.ephemeralContainers[0].securityContext.privileged"),
    ({"volumes": [{"name": "t", "emptyDir": {}}, {"name": "h", "hostPath": {"path": "/"}}]},
     "spec.volumes[1].hostPath"),
    ({"containers": [container("a", ports=[{"containerPort": 80}, {"containerPort": 81, "hostPort": 8081}])]},
     "spec.containers[0].ports[1].hostPort"),
    ({"initContainers": [container("i", ports=[{"containerPort": 80, "hostPort": 80}])]},
     "spec.initContainers[0].ports[0].hostPort"),
])
def test_each_forbidden_feature_is_named(strict_profile, spec, field):
    assert forbidden_fields(pod(**spec), strict_profile) == [field]
    assert forbidden_message(pod(**spec), strict_profile) == f'{field} is forbidden by sandbox profile "runv"'


@pytest.mark.parametrize("spec", [
    {"hostNetwork": False, "hostPID": False, "hostIPC": False},
    {"containers": [container("a", securityContext={"privileged": False, "runAsNonRoot": True})]},
    {"containers": [container("a", ports=[{"containerPort": 80, "hostPort": 0}])]},
    {"volumes": [{"name": "c", "configMap": {"name": "x"}}]},
])
def test_harmless_settings_pass(strict_profile, spec):
    assert forbidden_message(pod(**spec), strict_profile) is None


def test_only_the_profiles_features_are_checked(policy):
    # A profile that lists only the namespace-sharing features lets hostPath and hostPort through.
    gvisor = dataclasses.replace(policy.profiles["gvisor"], forbid=frozenset({"hostNetwork", "hostPID", "hostIPC"}))
    risky = pod(volumes=[{"name": "h", "hostPath": {"path": "/"}}],
                containers=[container("a", ports=[{"containerPort": 1, "hostPort": 1}])])
    assert forbidden_message(risky, gvisor) is None
    assert forbidden_message(pod(hostPID=True), gvisor) == 'spec.hostPID is forbidden by sandbox profile "gvisor"'


def test_first_field_leads_and_the_rest_are_listed(policy):
    req = fixture_request("v1-06-create-hostnetwork-privileged")
    message = forbidden_message(req.object, policy.profiles["runv"])
    assert message == ('spec.hostNetwork is forbidden by sandbox profile "runv" '
                       "(also: spec.containers[0].securityContext.privileged)")


def test_every_forbiddable_feature_is_detected(strict_profile):
    everything = pod(hostNetwork=True, hostPID=True, hostIPC=True,
                     containers=[container("a", securityContext={"privileged": True},
                                           ports=[{"containerPort": 1, "hostPort": 1}])],
                     volumes=[{"name": "h", "hostPath": {"path": "/"}}])
    assert forbidden_fields(everything, strict_profile) == [
        "spec.hostNetwork", "spec.hostPID", "spec.hostIPC", "spec.containers[0].securityContext.privileged",
        "spec.volumes[0].hostPath", "spec.containers[0].ports[0].hostPort"]


def test_malformed_pod_content_does_not_raise(strict_profile):
    odd = {"spec": {"containers": "nope", "volumes": [None, 3], "initContainers": [{"securityContext": None}]}}
    assert forbidden_fields(odd, strict_profile) == []
    assert forbidden_fields({"spec": None}, strict_profile) == []
