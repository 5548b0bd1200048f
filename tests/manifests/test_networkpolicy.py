"""The shipped NetworkPolicies: the webhook and extender pods accept connections only on their serving
port, only from the operator's control-plane CIDR (the Pod CIDR excepted), in every install."""

from __future__ import annotations

import ipaddress

import pytest

from test_manifests import INSTALLS, find, one, render


@pytest.fixture(scope="module", params=sorted(INSTALLS))
def docs(request):
    return render(request.param)


def _port_of(deployment: dict) -> int:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert f"--port={ports['https']}" in container["args"]
    return ports["https"]


@pytest.mark.parametrize("component, deployment", [("webhook", "sandgate-webhook"),
                                                    ("extender", "sandgate-extender")])
def test_only_the_serving_port_from_the_control_plane_cidr(docs, component, deployment):
    policy = one(docs, "NetworkPolicy", f"sandgate-{component}")
    pods = one(docs, "Deployment", deployment)
    assert policy["metadata"]["namespace"] == pods["metadata"]["namespace"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pods["spec"]["template"]["metadata"]["labels"].items()
    # no other workload of the install is selected
    for other in find(docs, "Deployment") + find(docs, "DaemonSet"):
        if other is not pods:
            assert not selector.items() <= other["spec"]["template"]["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": _port_of(pods)}]
    assert rule["from"] and all(set(peer) == {"ipBlock"} for peer in rule["from"])
    for peer in rule["from"]:
        # what networking/validation.ValidateIPBlock requires: a CIDR, each except strictly inside it
        cidr = ipaddress.ip_network(peer["ipBlock"]["cidr"])
        for excluded in peer["ipBlock"].get("except", []):
            inner = ipaddress.ip_network(excluded)
            assert inner.subnet_of(cidr) and inner != cidr
