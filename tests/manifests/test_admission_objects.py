"""The shipped admission objects against the API server's own validation rules and the code they guard.

Schema validation (test_manifests) cannot see the rules in pkg/apis/admissionregistration/validation:
VAP messages without line breaks, supported reasons and failure policies, CEL identifiers as variable
names, matchCondition names, Deny and Warn never together, webhook names fully qualified, timeouts
1-30 s. Those are checked here on every rendered install, and every CEL expression is compiled.
"""

from __future__ import annotations

import re

import pytest

import vap_cel
from sandgate.core import keys
from sandgate.core.policy.model import DNS_SUBDOMAIN, QUALIFIED_NAME
from test_manifests import INSTALLS, find, one, policy_of, render

FAILURE_POLICIES = {"Fail", "Ignore"}
REASONS = {"Unauthorized", "Forbidden", "Invalid", "RequestEntityTooLarge"}
OPERATIONS = {"CREATE", "UPDATE", "DELETE", "CONNECT", "*"}
ACTIONS = {"Deny", "Warn", "Audit"}
SCOPES = {"Cluster", "Namespaced", "*"}
CEL_IDENTIFIER = re.compile(r"^[_a-zA-Z][_a-zA-Z0-9]*$")
CEL_RESERVED = {"true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if",
                "import", "let", "loop", "package", "namespace", "return", "var", "void", "while"}


@pytest.fixture(scope="module", params=sorted(INSTALLS))
def docs(request):
    return request.param, render(request.param)


def rule_errors(rule: dict, where: str) -> list[str]:
    """validateRuleWithOperations, for the fields sandgate uses."""
    errors = []
    ops = rule.get("operations") or []
    if not ops or not set(ops) <= OPERATIONS:
        errors.append(f"{where}.operations: {ops}")
    for field in ("apiGroups", "apiVersions", "resources"):
        values = rule.get(field) or []
        if not values or ("*" in values and len(values) > 1) or "" in values and field != "apiGroups":
            errors.append(f"{where}.{field}: {values}")
    if rule.get("scope") is not None and rule["scope"] not in SCOPES:
        errors.append(f"{where}.scope: {rule['scope']}")
    return errors


def policy_errors(vap: dict) -> list[str]:
    """validateValidatingAdmissionPolicySpec."""
    spec = vap["spec"]
    errors = []
    if not DNS_SUBDOMAIN.match(vap["metadata"]["name"]):
        errors.append("metadata.name")
    if spec.get("failurePolicy") not in FAILURE_POLICIES:
        errors.append(f"failurePolicy: {spec.get('failurePolicy')}")
    rules = (spec.get("matchConstraints") or {}).get("resourceRules") or []
    if not rules:
        errors.append("matchConstraints.resourceRules: required")
    for i, rule in enumerate(rules):
        errors += rule_errors(rule, f"matchConstraints.resourceRules[{i}]")
    names = [c["name"] for c in spec.get("matchConditions", [])]
    if len(names) != len(set(names)) or len(names) > 64:
        errors.append("matchConditions: duplicate names or more than 64")
    for c in spec.get("matchConditions", []):
        if not QUALIFIED_NAME.match(c["name"]) or not c["expression"].strip():
            errors.append(f"matchConditions[{c['name']}]")
    for v in spec.get("variables", []):
        if not CEL_IDENTIFIER.match(v["name"]) or v["name"] in CEL_RESERVED or not v["expression"].strip():
            errors.append(f"variables[{v['name']}]")
    if not spec.get("validations") and not spec.get("auditAnnotations"):
        errors.append("validations or auditAnnotations must contain at least one item")
    for i, v in enumerate(spec.get("validations", [])):
        if not v["expression"].strip():
            errors.append(f"validations[{i}].expression: required")
        message = v.get("message")
        if message is not None and (not message.strip() or "\n" in message.strip()):
            errors.append(f"validations[{i}].message: empty or has line breaks")
        if "messageExpression" in v and not v["messageExpression"].strip():
            errors.append(f"validations[{i}].messageExpression: empty")
        if v.get("reason") is not None and v["reason"] not in REASONS:
            errors.append(f"validations[{i}].reason: {v['reason']}")
    return errors


def binding_errors(binding: dict, policies: dict) -> list[str]:
    """validateValidatingAdmissionPolicyBindingSpec, plus: the policy it names is shipped."""
    spec = binding["spec"]
    errors = []
    actions = spec.get("validationActions") or []
    if not actions or not set(actions) <= ACTIONS or len(actions) != len(set(actions)):
        errors.append(f"validationActions: {actions}")
    if {"Deny", "Warn"} <= set(actions):
        errors.append("validationActions: must not contain both Deny and Warn")
    if spec.get("policyName") not in policies:
        errors.append(f"policyName: {spec.get('policyName')} is not shipped")
    return errors


def webhook_errors(config: dict) -> list[str]:
    """validateValidatingWebhook / validateMutatingWebhook for the fields sandgate uses."""
    errors = []
    names = [w["name"] for w in config["webhooks"]]
    if len(names) != len(set(names)):
        errors.append("webhooks: duplicate names")
    for w in config["webhooks"]:
        if not re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+$", w["name"]):
            errors.append(f"{w['name']}: not fully qualified")
        if w.get("failurePolicy") not in FAILURE_POLICIES | {None}:
            errors.append(f"{w['name']}.failurePolicy")
        if w.get("sideEffects") not in ("None", "NoneOnDryRun"):
            errors.append(f"{w['name']}.sideEffects must be None or NoneOnDryRun")
        if not 1 <= w.get("timeoutSeconds", 10) <= 30:
            errors.append(f"{w['name']}.timeoutSeconds")
        if not (set(w.get("admissionReviewVersions") or ["v1beta1"]) & {"v1", "v1beta1"}):
            errors.append(f"{w['name']}.admissionReviewVersions")
        for i, rule in enumerate(w.get("rules", [])):
            errors += rule_errors(rule, f"{w['name']}.rules[{i}]")
        for c in w.get("matchConditions", []):
            vap_cel.compile_expression(c["expression"])
    return errors


def test_every_admission_object_passes_the_api_servers_validation_rules(docs):
    target, rendered = docs
    policies = {d["metadata"]["name"]: d for d in find(rendered, "ValidatingAdmissionPolicy")}
    problems = []
    for vap in policies.values():
        problems += [f"{vap['metadata']['name']}: {e}" for e in policy_errors(vap)]
    for binding in find(rendered, "ValidatingAdmissionPolicyBinding"):
        problems += [f"{binding['metadata']['name']}: {e}" for e in binding_errors(binding, policies)]
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        for config in find(rendered, kind):
            problems += [f"{config['metadata']['name']}: {e}" for e in webhook_errors(config)]
    assert not problems, f"{target}: {problems}"


def test_every_cel_expression_compiles(docs):
    _, rendered = docs
    for vap in find(rendered, "ValidatingAdmissionPolicy"):
        spec = vap["spec"]
        for item in spec.get("matchConditions", []) + spec.get("variables", []):
            vap_cel.compile_expression(item["expression"])
        for v in spec["validations"]:
            vap_cel.compile_expression(v["expression"])
            if "messageExpression" in v:
                vap_cel.compile_expression(v["messageExpression"])


def test_each_install_guards_the_agent_and_the_namespace_labels_once(docs):
    """Before 1.30 the webhook's sandgate-guards entries, from 1.30 the policies: never neither."""
    target, rendered = docs
    policy = policy_of(rendered)
    vaps = {d["metadata"]["name"] for d in find(rendered, "ValidatingAdmissionPolicy")}
    guards = find(rendered, "ValidatingWebhookConfiguration", "sandgate-guards")
    if target == "install/modern-1.30":
        assert vaps == {"sandgate-agent-scope", "sandgate-namespace-labels", "sandgate-certgen-scope"} and not guards
        bindings = {d["spec"]["policyName"]: d for d in find(rendered, "ValidatingAdmissionPolicyBinding")}
        assert set(bindings) == vaps
        assert all(b["spec"]["validationActions"] == ["Deny"] for b in bindings.values())
        return
    assert not vaps
    entries = {w["name"]: w for w in one(rendered, "ValidatingWebhookConfiguration", "sandgate-guards")["webhooks"]}
    paths = {name: w["clientConfig"]["service"]["path"] for name, w in entries.items()}
    namespace_entries = {n: w for n, w in entries.items() if n.endswith("namespaces.guard.sandgate.io")}
    assert {n: p for n, p in paths.items() if n not in namespace_entries} == {
        "agent.guard.sandgate.io": "/guard/agent", "heartbeat.guard.sandgate.io": "/guard/agent"}
    assert {paths[n] for n in namespace_entries} == {"/guard/namespaces"}
    assert entries["heartbeat.guard.sandgate.io"]["failurePolicy"] == "Fail"
    assert {w["failurePolicy"] for w in namespace_entries.values()} == {"Fail"}
    if target.endswith("legacy"):  # 1.14 has no objectSelector: one entry sees every namespace
        assert set(namespace_entries) == {"namespaces.guard.sandgate.io"}
    else:  # one entry per guarded label, each only for namespaces that have (or had) it
        selected = {w["objectSelector"]["matchExpressions"][0]["key"] for w in namespace_entries.values()}
        assert selected == {policy.namespace_label, keys.IGNORE_NAMESPACE_LABEL}
        assert all(w["objectSelector"]["matchExpressions"][0]["operator"] == "Exists"
                   for w in namespace_entries.values())
    selector = entries["heartbeat.guard.sandgate.io"]["namespaceSelector"]["matchExpressions"]
    assert selector == [{"key": keys.AGENT_NAMESPACE_LABEL, "operator": "Exists"}]
    agent_ns = one(rendered, "Namespace", policy.agent.namespace)
    assert keys.AGENT_NAMESPACE_LABEL in agent_ns["metadata"]["labels"]
    assert entries["agent.guard.sandgate.io"]["rules"][0]["resources"] == ["nodes"]
    assert all(w["rules"][0]["resources"] == ["namespaces"] for w in namespace_entries.values())


def test_policies_name_the_same_agent_namespace_groups_and_labels_as_the_policy():
    rendered = render("install/modern-1.30")
    policy = policy_of(rendered)
    agent = one(rendered, "ValidatingAdmissionPolicy", "sandgate-agent-scope")
    text = str(agent["spec"])
    assert f"'system:serviceaccount:{policy.agent.namespace}:{keys.AGENT_SERVICE_ACCOUNT}'" in text
    assert f"'{keys.EXTRA_NODE_NAME}'" in text and f"'{keys.AGENT_KEY_PREFIX}'" in text
    assert f"'{keys.AGENT_LEASE_PREFIX}'" in text and f"request.namespace == '{policy.agent.namespace}'" in text
    labels = one(rendered, "ValidatingAdmissionPolicy", "sandgate-namespace-labels")["spec"]
    groups = re.search(r"g in \[(.*?)\]", labels["matchConditions"][0]["expression"]).group(1)
    assert [g.strip(" '") for g in groups.split(",")] == list(policy.namespace_admin_groups)
    guarded = re.search(r"\[(.*?)\]\.all", labels["validations"][0]["expression"]).group(1)
    assert [g.strip(" '") for g in guarded.split(",")] == [policy.namespace_label, keys.IGNORE_NAMESPACE_LABEL]


def _certgen_request(new, old, operation="UPDATE", user="system:serviceaccount:sandgate-system:sandgate-certgen"):
    return {"uid": "u", "operation": operation, "subResource": "", "name": "sandgate", "namespace": "",
            "kind": {"group": "admissionregistration.k8s.io", "version": "v1", "kind": "ValidatingWebhookConfiguration"},
            "resource": {"group": "admissionregistration.k8s.io", "version": "v1",
                         "resource": "validatingwebhookconfigurations"},
            "userInfo": {"username": user, "groups": ["system:serviceaccounts"]}, "object": new, "oldObject": old}


@pytest.mark.parametrize("edit, allowed", [
    (lambda c: c["webhooks"][0]["clientConfig"].update(caBundle="TkVX"), True),
    (lambda c: [w["clientConfig"].update(caBundle="TkVX") for w in c["webhooks"]], True),
    (lambda c: c["webhooks"][0].update(failurePolicy="Ignore"), False),
    (lambda c: c["webhooks"].pop(), False),
    (lambda c: c["webhooks"][0]["namespaceSelector"].update(matchLabels={"never": "x"}), False),
    (lambda c: c["webhooks"][0]["clientConfig"]["service"].update(name="elsewhere"), False),
    (lambda c: c["metadata"].setdefault("labels", {}).update(x="y"), False),
])
def test_certgen_may_change_only_the_ca_bundle(edit, allowed):
    import copy
    rendered = render("install/modern-1.30")
    vap = one(rendered, "ValidatingAdmissionPolicy", "sandgate-certgen-scope")
    old = one(rendered, "ValidatingWebhookConfiguration", "sandgate")
    for w in old["webhooks"]:  # as stored: the API server's defaults filled in
        w.setdefault("matchPolicy", "Equivalent")
        w.setdefault("objectSelector", {})
    new = copy.deepcopy(old)
    edit(new)
    result = vap_cel.evaluate(vap, _certgen_request(new, old))
    assert result.applies and result.allowed is allowed, result.messages
    # Anyone else is not this policy's business; deleting is never the certgen job's.
    assert not vap_cel.evaluate(vap, _certgen_request(new, old, user="admin")).applies
    assert not vap_cel.evaluate(vap, _certgen_request(None, old, operation="DELETE")).allowed


@pytest.mark.parametrize("annotations, runtime_class, sent", [
    ({keys.DEFAULT_POD_ANNOTATION: "gvisor"}, None, True),
    ({keys.DEFAULT_POD_ANNOTATION: "kata"}, None, True),  # an unknown value is sent, and refused by name
    ({keys.DEFAULT_POD_ANNOTATION: "none"}, None, False),
    ({"team": "a"}, None, False),
    (None, "runv", True),
    (None, "runc", False),
    (None, None, False),
])
def test_opt_in_entries_see_only_pods_that_ask_for_a_sandbox(annotations, runtime_class, sent):
    rendered = render("install/modern-1.30")
    policy = policy_of(rendered)
    assert policy.unlabelled_namespaces == "trusted", "under 'sandboxed' every unlabelled pod must reach the webhook"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}
    if annotations is not None:
        pod["metadata"]["annotations"] = annotations
    if runtime_class is not None:
        pod["spec"]["runtimeClassName"] = runtime_class
    for kind, name in (("MutatingWebhookConfiguration", "optin.mutate.sandgate.io"),
                       ("ValidatingWebhookConfiguration", "optin.validate.sandgate.io")):
        (entry,) = [w for w in one(rendered, kind, "sandgate")["webhooks"] if w["name"] == name]
        assert entry["failurePolicy"] == "Fail"
        (condition,) = entry["matchConditions"]
        expression = condition["expression"]
        assert f"'{policy.pod_annotation}'" in expression and f"!= '{keys.OPT_OUT_VALUE}'" in expression
        classes = re.search(r"runtimeClassName in \[(.*?)\]", expression).group(1)
        assert sorted(c.strip(" '") for c in classes.split(",")) == sorted(
            p.runtime_class_name for p in policy.profiles.values())
        import celpy
        value = vap_cel.compile_expression(expression)({"object": celpy.json_to_cel(pod)})
        assert bool(value) is sent
