"""The admission guards: the agent's node scope and the namespace-label guard.

Every example request runs through both implementations of each rule: the webhook's pure decision
(webhooks.guards, for clusters without ValidatingAdmissionPolicy) and the shipped policy's CEL
(manifests/components/admission-policies, 1.30+, evaluated by tests/vap_cel.py). Both must agree
with the expected answer.
"""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import vap_cel
from guard_cases import (ADMIN, AGENT, POLICIES, TENANT, agent_user, changed, lease, namespace, node, parsed,
                         request)
from sandgate.core import keys
from sandgate.core.policy import load_policy
from webhooks import guards

from support import EXAMPLE_POLICY

@pytest.fixture(scope="module")
def policy():
    return load_policy(EXAMPLE_POLICY)


@pytest.fixture(scope="module")
def vaps() -> dict[str, dict]:
    out = {}
    for path in POLICIES.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ValidatingAdmissionPolicy":
                out[doc["metadata"]["name"]] = doc
    return out


SANDGATE_LABEL = keys.runtime_label("runv")
BASE = node(labels={SANDGATE_LABEL: "true"}, annotations={keys.capacity_annotation("runv"): "10",
                                                           "node.alpha.kubernetes.io/ttl": "0"})

# (case, request, allowed, words in the webhook's denial)
AGENT_CASES = [
    ("own node, sandgate label", request(changed(BASE, metadata__labels={**BASE["metadata"]["labels"],
                                                                         keys.runtime_label("runsc"): "true"}), BASE),
     True, ""),
    ("own node, sandgate annotation", request(changed(BASE, metadata__annotations={
        **BASE["metadata"]["annotations"], keys.capacity_annotation("runv"): "12"}), BASE), True, ""),
    ("own node, removes its sandgate label", request(changed(BASE, metadata__labels={
        "kubernetes.io/hostname": "node-a"}), BASE), True, ""),
    ("another node", request(node("node-b", labels={SANDGATE_LABEL: "true"}), node("node-b")), False,
     'may change only its own Node, not "node-b"'),
    ("own node, spec (taint)", request(changed(BASE, spec={"podCIDR": "10.0.0.0/24", "taints": [
        {"key": "x", "effect": "NoSchedule"}]}), BASE), False, "spec:"),
    ("own node, cordon", request(changed(BASE, spec__unschedulable=True), BASE), False, "spec:"),
    ("own node, control-plane label", request(changed(BASE, metadata__labels={
        **BASE["metadata"]["labels"], "node-role.kubernetes.io/control-plane": ""}), BASE), False,
     "metadata.labels[node-role.kubernetes.io/control-plane]"),
    ("own node, foreign annotation removed", request(changed(BASE, metadata__annotations={
        keys.capacity_annotation("runv"): "10"}), BASE), False, "metadata.annotations[node.alpha.kubernetes.io/ttl]"),
    ("own node, finalizer", request(changed(BASE, metadata__finalizers=["x/y"]), BASE), False, "finalizers"),
    ("node status", request(BASE, BASE, sub_resource="status"), False, "status"),
    ("delete a node", request(None, BASE, operation="DELETE"), False, "DELETE"),
    ("own lease, create", request(lease(), None, operation="CREATE"), True, ""),
    ("own lease, renew", request(lease(), lease()), True, ""),
    ("another node's lease", request(lease("sandgate-agent-node-b", "node-b"), lease("sandgate-agent-node-b", "node-b")),
     False, 'only its own heartbeat Lease "sandgate-agent-node-a"'),
    ("own lease, other holder", request(lease(holder="node-b"), lease()), False, "spec.holderIdentity"),
    ("lease delete", request(None, lease(), operation="DELETE"), False, "not DELETE"),
    ("lease in another namespace", request(lease(namespace="sandgate-system"), None, operation="CREATE"), False,
     "only in sandgate-agent"),
    ("someone else's node change", request(node("node-b", spec={"unschedulable": True}), node("node-b"),
                                           user=ADMIN), True, ""),
]


@pytest.mark.parametrize("case, req, allowed, words", AGENT_CASES, ids=[c[0] for c in AGENT_CASES])
def test_agent_guard_webhook_and_policy_agree(policy, vaps, case, req, allowed, words):
    user = req["userInfo"]
    node_name = (user.get("extra") or {}).get(keys.EXTRA_NODE_NAME, [None])[0] if user["username"] == AGENT else None
    verdict = guards.guard_agent(parsed(req), policy, node_name)
    assert verdict.allowed is allowed, verdict
    assert words in verdict.message
    result = vap_cel.evaluate(vaps["sandgate-agent-scope"], req)
    assert result.allowed is allowed, result.messages
    assert result.applies is (user["username"] == AGENT)


def test_policy_denies_an_agent_token_that_names_no_node(policy, vaps):
    req = request(changed(BASE, metadata__labels={**BASE["metadata"]["labels"], SANDGATE_LABEL: "false"}), BASE,
                  user=agent_user(node=None))
    result = vap_cel.evaluate(vaps["sandgate-agent-scope"], req)
    assert not result.allowed and "names no node" in result.messages[0]
    # The webhook keeps the key scope for such (legacy) tokens and says what it could not check.
    verdict = guards.guard_agent(parsed(req), policy, None)
    assert verdict.allowed and verdict.reason == "agent-node-node-unknown" and verdict.warnings
    # From 1.22 every pod's token names its pod: one that names nothing was made by hand.
    refused = guards.guard_agent(parsed(req), policy, None, tokens_are_pod_bound=True)
    assert (refused.allowed, refused.reason) == (False, "agent-token-unbound")
    other = request(changed(BASE, spec__unschedulable=True), BASE, user=agent_user(node=None))
    assert not guards.guard_agent(parsed(other), policy, None).allowed
    assert not guards.guard_agent(parsed(request(lease("kube-scheduler"), lease("kube-scheduler"),
                                                 user=agent_user(None))), policy, None).allowed


def test_node_of_a_pod_bound_token_is_looked_up_once_per_pod(policy):
    calls = []
    pods = {("sandgate-agent", "agent-x1"): {"metadata": {"uid": "u1"},
                                             "spec": {"nodeName": "node-a", "serviceAccountName": "sandgate-agent"}},
            ("sandgate-agent", "agent-x2"): {"metadata": {"uid": "u2"},
                                             "spec": {"nodeName": "node-b", "serviceAccountName": "default"}}}

    def get_pod(ns, name):
        calls.append(name)
        return pods[(ns, name)]

    resolver = guards.PodNodes(get_pod)
    user = parsed(request(BASE, BASE, user=agent_user(None, ("agent-x1", "u1")))).user
    assert guards.agent_node(user, policy, resolver) == "node-a"
    assert guards.agent_node(user, policy, resolver) == "node-a"
    assert calls == ["agent-x1"]
    # A recycled name with another uid, a pod of another service account, an API error: unknown, never guessed.
    for pod in (("agent-x1", "u-old"), ("agent-x2", "u2"), ("gone", "u3")):
        with pytest.raises(guards.PodNodeUnknown):
            guards.agent_node(parsed(request(BASE, BASE, user=agent_user(None, pod))).user, policy, resolver)
    # The token's own node name wins: no lookup at all.
    assert guards.agent_node(parsed(request(BASE, BASE, user=agent_user("node-c", ("agent-x1", "u1")))).user,
                             policy, None) == "node-c"


NS = namespace({keys.DEFAULT_NAMESPACE_LABEL: "sandboxed"})
NAMESPACE_CASES = [
    ("tenant removes the isolation label", request(namespace(), NS, user=TENANT), False,
     f"metadata.labels[{keys.DEFAULT_NAMESPACE_LABEL}]: only members of system:masters, "
     f"sandgate.io:namespace-admins may remove this label"),
    ("tenant changes the isolation label", request(namespace({keys.DEFAULT_NAMESPACE_LABEL: "none"}), NS,
                                                   user=TENANT), False, "may change this label"),
    ("tenant adds the ignore label", request(changed(NS, metadata__labels={**NS["metadata"]["labels"],
                                                                           keys.IGNORE_NAMESPACE_LABEL: "true"}),
                                             NS, user=TENANT), False, "may add this label"),
    ("tenant creates a namespace with ignore", request(namespace({keys.IGNORE_NAMESPACE_LABEL: "x"}), None,
                                                       user=TENANT, operation="CREATE"), False, "may add"),
    ("tenant edits another label", request(changed(NS, metadata__labels={**NS["metadata"]["labels"], "team": "a"}),
                                           NS, user=TENANT), True, ""),
    ("tenant creates an unlabelled namespace", request(namespace(), None, user=TENANT, operation="CREATE"), True, ""),
    ("admin removes the isolation label", request(namespace(), NS, user=ADMIN), True, ""),
    ("admin creates a sandboxed namespace", request(NS, None, user=ADMIN, operation="CREATE"), True, ""),
]


@pytest.mark.parametrize("case, req, allowed, words", NAMESPACE_CASES, ids=[c[0] for c in NAMESPACE_CASES])
def test_namespace_guard_webhook_and_policy_agree(policy, vaps, case, req, allowed, words):
    verdict = guards.guard_namespace(parsed(req), policy)
    assert verdict.allowed is allowed, verdict
    assert words in verdict.message
    result = vap_cel.evaluate(vaps["sandgate-namespace-labels"], req)
    assert result.allowed is allowed, result.messages


def test_namespace_guard_follows_the_policys_label_and_groups(policy):
    from dataclasses import replace
    custom = replace(policy, namespace_label="example.com/sandbox", namespace_admin_groups=("platform",))
    req = request(namespace(), namespace({"example.com/sandbox": "runv"}), user=ADMIN)
    assert not guards.guard_namespace(parsed(req), custom).allowed
    req["userInfo"] = {"username": "p", "groups": ["platform"]}
    assert guards.guard_namespace(parsed(req), custom).allowed


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(obj=JSON, old=JSON, user=JSON, kind=st.sampled_from(["Node", "Lease", "Namespace", "Pod"]),
       operation=st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT"]))
def test_guards_answer_any_request_without_raising(policy, obj, old, user, kind, operation):
    import json as _json
    from webhooks import wire
    group = "coordination.k8s.io" if kind == "Lease" else ""
    body = {"apiVersion": wire.V1, "kind": "AdmissionReview", "request": {
        "uid": "u", "kind": {"group": group, "version": "v1", "kind": kind}, "operation": operation,
        "namespace": "sandgate-agent", "name": "node-a", "object": obj, "oldObject": old, "userInfo": user}}
    try:
        req = wire.parse_review(_json.dumps(body).encode())
    except wire.WireError:
        return  # a 400 with a reason, checked elsewhere
    for node in ("node-a", None):
        verdict = guards.guard_agent(req, policy, node)
        assert verdict.allowed or verdict.message
    verdict = guards.guard_namespace(req, policy)
    assert verdict.allowed or verdict.message
