"""The demo's API-server and scheduler emulation, without servers: selectors, RuntimeClass admission, filters."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import random

import pytest
import yaml

from sandgate.core import keys
from sandgate.core.clusterversion import ClusterVersion
from sandgate.demo import apiserver, changes, scenario as scenarios, scheduler, snapshot
from sandgate.demo.runtimeclass import Forbidden, RuntimeClassAdmission, runtime_classes
from sandgate.demo.scheduler import NodeState, Scheduler, in_tree_filter, least_allocated, pod_request, tolerates
from sandgate.demo.webhookconfig import (MUTATE, VALIDATE, SelectorError, entries_for_namespace, namespace_labels,
                                         selector_matches, webhook_entries)
from sandgate.demo.httpclient import RequestFailed
from sandgate.core.policy import load_policy, parse_policy
from support import EXAMPLE_POLICY, REPO, load_fixture

V124 = ClusterVersion(1, 24)
V115 = ClusterVersion(1, 15)
LABEL = keys.DEFAULT_NAMESPACE_LABEL


@pytest.fixture(scope="module")
def policy():
    return parse_policy(scenarios.demo_policy_document("1.24"))


# --- namespaceSelector emulation ---------------------------------------------------------------

@pytest.mark.parametrize("selector,labels,expected", [
    ({}, {}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"}, True),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": ""}, False),
    ({"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "Exists"}]}, {"a": "1"}, False),
])
def test_label_selector_semantics(selector, labels, expected):
    assert selector_matches(selector, labels) is expected


def test_unknown_selector_operator_is_an_error():
    with pytest.raises(SelectorError, match="Gt"):
        selector_matches({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}, {"a": "2"})


@pytest.mark.parametrize("version", [V124, V115])
@pytest.mark.parametrize("labels,mutate_paths,validate_paths", [
    ({LABEL: "sandboxed"}, ["/mutate/runv"], ["/validate/runv"]),
    ({LABEL: "runv"}, ["/mutate/runv"], ["/validate/runv"]),
    ({LABEL: "gvisor"}, ["/mutate/gvisor"], ["/validate/gvisor"]),
    ({}, ["/mutate/opt-in"], ["/validate/opt-in"]),
    ({keys.IGNORE_NAMESPACE_LABEL: "true"}, [], []),
    # A label naming no profile: no mutation, and the fail-closed validating entry refuses it.
    ({LABEL: "kata"}, [], ["/validate"]),
])
def test_namespace_selection(policy, version, labels, mutate_paths, validate_paths):
    ns_labels = namespace_labels("team", labels, version)
    assert [e.path for e in entries_for_namespace(webhook_entries(policy, MUTATE, version), ns_labels)] == mutate_paths
    assert [e.path for e in entries_for_namespace(webhook_entries(policy, VALIDATE, version), ns_labels)] \
        == validate_paths


def test_exempt_namespaces_are_excluded_by_name_from_1_21(policy):
    labels = namespace_labels("kube-system", {}, V124)
    assert labels["kubernetes.io/metadata.name"] == "kube-system"
    assert entries_for_namespace(webhook_entries(policy, MUTATE, V124), labels) == []
    # Before 1.21 there is no name label: only the install's ignore label keeps kube-system out.
    assert [e.path for e in entries_for_namespace(webhook_entries(policy, MUTATE, V115),
                                                  namespace_labels("kube-system", {}, V115))] == ["/mutate/opt-in"]


def test_opt_in_entry_only_when_the_policy_allows_it(policy):
    doc = scenarios.demo_policy_document("1.24")
    doc["allowPodOptIn"] = False
    strict = parse_policy(doc)
    assert [e.path for e in webhook_entries(strict, MUTATE, V124)] == ["/mutate/runv", "/mutate/gvisor"]
    assert webhook_entries(policy, MUTATE, V124)[-1].failure_policy == "Ignore"


@pytest.mark.parametrize("overlay,version", [("modern", V124), ("legacy", V115)])
@pytest.mark.parametrize("kind,phase", [("mutatingwebhook", MUTATE), ("validatingwebhook", VALIDATE)])
def test_emulated_entries_are_the_shipped_configuration(overlay, version, kind, phase):
    """The demo calls exactly what the install manifests configure for the example policy."""
    shipped = yaml.safe_load((REPO / "manifests" / "overlays" / overlay / f"{kind}.yaml").read_text())
    expected = [(w["name"], w["clientConfig"]["service"]["path"], w["namespaceSelector"], w["failurePolicy"],
                 w.get("reinvocationPolicy"), w["timeoutSeconds"]) for w in shipped["webhooks"]]
    emulated = [(e.name, e.path, e.namespace_selector, e.failure_policy, e.reinvocation_policy, e.timeout_seconds)
                for e in webhook_entries(load_policy(EXAMPLE_POLICY), phase, version)]
    assert emulated == expected


def test_scheduler_emulation_uses_the_shipped_extender_configuration():
    shipped = yaml.safe_load((REPO / "manifests" / "scheduler" / "kube-scheduler-config.v1.yaml").read_text())
    extender = shipped["extenders"][0]
    assert extender["nodeCacheCapable"] is True and extender["enableHTTPS"] is True
    assert (extender["filterVerb"], extender["prioritizeVerb"]) == ("filter", "prioritize")
    assert "bindVerb" not in extender  # kube-scheduler binds; so does the emulated one
    assert {r["name"] for r in extender["managedResources"]} == \
        {keys.sandbox_resource(p.handler) for p in load_policy(EXAMPLE_POLICY).profiles.values()}
    assert extender["weight"] == scheduler.EXTENDER_WEIGHT
    assert extender["httpTimeout"] == f"{scheduler.EXTENDER_HTTP_TIMEOUT_SECONDS}s"


# --- RuntimeClass admission ----------------------------------------------------------------------

def _admission(policy, version):
    return RuntimeClassAdmission(runtime_classes(policy, version), version)


def test_runtimeclass_admission_matches_the_captured_api_server():
    """The 1.24 fixture pod was admitted by the real plugin: undo its additions, redo them, same pod."""
    captured = load_fixture("admission/v1-03a-create-runtimeclass-runv.json")["request"]["object"]
    submitted = copy.deepcopy(captured)
    spec = submitted["spec"]
    del spec["overhead"]
    del spec["nodeSelector"]
    spec["tolerations"] = [t for t in spec["tolerations"] if t["key"] != "sandbox.io/runtime"]
    assert _admission(load_policy(EXAMPLE_POLICY), V124).admit(submitted) == captured


def test_conflicting_node_selector_is_forbidden_with_the_builtin_text(policy):
    pod = {"metadata": {"name": "p"}, "spec": {"runtimeClassName": "runv", "nodeSelector": {"runtime": "runc"}}}
    with pytest.raises(Forbidden) as err:
        _admission(policy, V124).admit(pod)
    assert str(err.value) == ('pods "p" is forbidden: conflict: runtimeClass.scheduling.nodeSelector[runtime] = runv; '
                              'pod.spec.nodeSelector[runtime] = runc')


def test_overhead_rules(policy):
    rc = _admission(policy, V124)
    wrong = {"metadata": {"name": "p"}, "spec": {"runtimeClassName": "runv", "overhead": {"cpu": "1"}}}
    with pytest.raises(Forbidden, match="Pod's Overhead doesn't match RuntimeClass's defined Overhead"):
        rc.admit(wrong)
    with pytest.raises(Forbidden, match="Pod's Overhead doesn't match"):
        rc.validate(wrong)
    # Equal by value, not by spelling.
    same = {"metadata": {"name": "p"}, "spec": {"runtimeClassName": "runv",
                                                "overhead": {"cpu": "0.1", "memory": "52428800"}}}
    rc.validate(same)
    with pytest.raises(Forbidden, match="Pod Overhead set without corresponding RuntimeClass defined Overhead"):
        rc.validate({"metadata": {"name": "p"}, "spec": {"runtimeClassName": "gvisor", "overhead": {"cpu": "1"}}})
    with pytest.raises(Forbidden, match='RuntimeClass "kata" not found'):
        rc.admit({"metadata": {"name": "p"}, "spec": {"runtimeClassName": "kata"}})


def test_plugin_by_version(policy):
    pod = {"metadata": {"name": "p"}, "spec": {"runtimeClassName": "runv"}}
    assert _admission(policy, V115).admit(pod) == pod  # no plugin before 1.16
    v116 = _admission(policy, ClusterVersion(1, 16)).admit(pod)
    assert v116["spec"]["nodeSelector"] == {"runtime": "runv"} and "overhead" not in v116["spec"]
    v118 = _admission(policy, ClusterVersion(1, 18)).admit(pod)
    assert v118["spec"]["overhead"] == {"cpu": "100m", "memory": "50Mi"}


# --- API server: defaulting, AdmissionReview -----------------------------------------------------

def test_defaulted_pod_has_the_captured_shape():
    captured = load_fixture("admission/v1-01-create-bare-pod.json")["request"]
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-basic", "namespace": "payments-sandbox"},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.25",
                                         "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}}}]}}
    pod = apiserver.default_pod(manifest, V124, random.Random(1))
    want = copy.deepcopy(captured["object"])
    del want["metadata"]["managedFields"]
    volume = pod["spec"]["volumes"][0]["name"]
    assert volume.startswith("kube-api-access-")
    want["spec"]["volumes"][0]["name"] = volume
    want["spec"]["containers"][0]["volumeMounts"][0]["name"] = volume
    assert pod == want
    review = apiserver.admission_review(pod, apiserver.V1, "uid-1")
    assert list(review["request"]) == list(captured)
    assert review["request"]["oldObject"] is None and review["request"]["dryRun"] is False


class FakeWebhook:
    """Answers AdmissionReviews from a list of (allowed, patch ops, message); records the paths called."""

    def __init__(self, *answers, fail: bool = False):
        self.answers = list(answers)
        self.fail = fail
        self.calls = []

    def post(self, path, review):
        self.calls.append((path, review))
        if self.fail:
            raise RequestFailed("connection refused")
        allowed, ops, message = self.answers.pop(0) if self.answers else (True, [], "")
        response = {"uid": review["request"]["uid"], "allowed": allowed}
        if ops:
            response.update(patchType="JSONPatch", patch=base64.b64encode(json.dumps(ops).encode()).decode())
        if not allowed:
            response["status"] = {"code": 403, "message": message}
        response["auditAnnotations"] = {"call": str(len(self.calls))}
        return {"apiVersion": review["apiVersion"], "kind": "AdmissionReview", "response": response}


def _apiserver(policy, webhook, version=V124):
    return apiserver.ApiServer(version, webhook, webhook_entries(policy, MUTATE, version),
                               webhook_entries(policy, VALIDATE, version), _admission(policy, version),
                               {"tenant": namespace_labels("tenant", {LABEL: "sandboxed"}, version),
                                "plain": namespace_labels("plain", {}, version)})


def _manifest(namespace="tenant"):
    return scenarios.DemoPod("p", namespace, "test").manifest()


NOW = dt.datetime(2026, 11, 24, tzinfo=dt.timezone.utc)


def test_chain_reruns_runtimeclass_admission_and_reinvokes_the_webhook(policy):
    webhook = FakeWebhook((True, [{"op": "add", "path": "/spec/runtimeClassName", "value": "runv"}], ""))
    result = _apiserver(policy, webhook).create(_manifest(), NOW)
    assert result.allowed
    spec = result.pod["spec"]
    assert spec["runtimeClassName"] == "runv" and spec["nodeSelector"] == {"runtime": "runv"}
    assert spec["overhead"] == {"cpu": "100m", "memory": "50Mi"}
    assert result.pod["metadata"]["uid"] and result.pod["status"]["phase"] == "Pending"
    assert [p for p, _ in webhook.calls] == ["/mutate/runv?timeout=10s", "/mutate/runv?timeout=10s",
                                            "/validate/runv?timeout=10s"]
    # The reinvocation sees what RuntimeClass admission added.
    assert webhook.calls[1][1]["request"]["object"]["spec"]["overhead"] == {"cpu": "100m", "memory": "50Mi"}
    assert [(s.actor, s.reinvoked) for s in result.steps] == [
        ("webhook runv.mutate.sandgate.io", False), ("RuntimeClass admission", False),
        ("webhook runv.mutate.sandgate.io", True)]
    assert webhook.calls[0][1]["apiVersion"] == "admission.k8s.io/v1"
    # Why the pod was routed is the first call's answer, not the reinvocation's.
    assert result.audit["runv.mutate.sandgate.io/call"] == "1"


def test_legacy_cluster_gets_v1beta1_and_no_builtin_plugin(policy):
    webhook = FakeWebhook((True, [{"op": "add", "path": "/spec/runtimeClassName", "value": "runv"}], ""))
    result = _apiserver(policy, webhook, V115).create(_manifest(), NOW)
    assert result.allowed and "nodeSelector" not in result.pod["spec"]
    assert [p for p, _ in webhook.calls] == ["/mutate/runv?timeout=10s", "/validate/runv?timeout=10s"]
    assert webhook.calls[0][1]["apiVersion"] == "admission.k8s.io/v1beta1"


def test_webhook_denial_stops_the_chain_with_the_api_servers_text(policy):
    webhook = FakeWebhook((False, [], "spec.hostNetwork is forbidden"))
    result = _apiserver(policy, webhook).create(_manifest(), NOW)
    assert not result.allowed and result.pod is None
    assert result.message == 'admission webhook "runv.mutate.sandgate.io" denied the request: ' \
                             "spec.hostNetwork is forbidden"
    assert len(webhook.calls) == 1


def test_unreachable_webhook_follows_the_failure_policy(policy):
    closed = _apiserver(policy, FakeWebhook(fail=True)).create(_manifest("tenant"), NOW)
    assert not closed.allowed and 'failed calling webhook "runv.mutate.sandgate.io"' in closed.message
    ignored = _apiserver(policy, FakeWebhook(fail=True)).create(_manifest("plain"), NOW)
    assert ignored.allowed and "failurePolicy Ignore" in ignored.warnings[0]


def test_webhook_answer_for_another_request_is_refused(policy):
    class WrongUid(FakeWebhook):
        def post(self, path, review):
            answer = super().post(path, review)
            answer["response"]["uid"] = "other"
            return answer

    result = _apiserver(policy, WrongUid()).create(_manifest(), NOW)
    assert not result.allowed and "expected response.uid" in result.message


def test_review_version_follows_the_cluster():
    assert apiserver.ApiServer.review_version_for(V124) == "admission.k8s.io/v1"
    assert apiserver.ApiServer.review_version_for(V115) == "admission.k8s.io/v1beta1"


def test_change_descriptions():
    before = {"metadata": {}, "spec": {"containers": [{"name": "c", "resources": {"requests": {"memory": "2Gi"}}}]}}
    after = copy.deepcopy(before)
    after["spec"]["runtimeClassName"] = "runv"
    after["spec"]["containers"][0]["resources"]["requests"]["memory"] = str(2 * 1024 ** 3 + 40 * 1024 ** 2)
    after["spec"]["tolerations"] = [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}]
    after["metadata"]["annotations"] = {"a": "b"}
    assert changes.describe(before, after) == ["runtimeClassName=runv", "tolerations k=v:NoSchedule",
                                               "c requests memory 2Gi -> 2088.0Mi", "annotation a=b"]


# --- scheduler -------------------------------------------------------------------------------------

RUNV_SLOT = keys.sandbox_resource("runv")


def _node(**kw) -> NodeState:
    base = dict(name="n", labels={"zone": "a"}, taints=[], unschedulable=False, cpu_millis=1000,
                memory_bytes=1024 ** 3, max_pods=10, slots={RUNV_SLOT: 4})
    base.update(kw)
    return NodeState(**base)


def _pod(cpu="100m", memory="100Mi", slot="1", **spec) -> dict:
    """A pod; by default a sandboxed one, requesting one runv slot as the webhook routes it."""
    requests = {"cpu": cpu, "memory": memory, **({RUNV_SLOT: slot} if slot else {})}
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"containers": [{"name": "c", "resources": {"requests": requests}}], **spec}}


@pytest.mark.parametrize("toleration,taint,expected", [
    ({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}, {"key": "k", "value": "v",
                                                                               "effect": "NoSchedule"}, True),
    ({"key": "k", "operator": "Equal", "value": "x"}, {"key": "k", "value": "v", "effect": "NoSchedule"}, False),
    ({"key": "k", "operator": "Exists"}, {"key": "k", "value": "v", "effect": "NoExecute"}, True),
    ({"operator": "Exists"}, {"key": "any", "value": "v", "effect": "NoSchedule"}, True),
    ({"key": "k", "operator": "Exists", "effect": "NoExecute"}, {"key": "k", "effect": "NoSchedule"}, False),
])
def test_tolerates(toleration, taint, expected):
    assert tolerates(toleration, taint) is expected


def test_in_tree_filters():
    tainted = _node(taints=[{"key": "sandbox.io/runtime", "value": "runv", "effect": "NoSchedule"}])
    assert in_tree_filter(_pod(), tainted, True) == "node(s) had untolerated taint {sandbox.io/runtime: runv}"
    assert in_tree_filter(_pod(tolerations=[{"key": "sandbox.io/runtime", "operator": "Exists"}]), tainted, True) \
        is None
    assert in_tree_filter(_pod(nodeSelector={"zone": "b"}), _node(), True) == \
        "node(s) didn't match Pod's node affinity/selector"
    assert in_tree_filter(_pod(), _node(unschedulable=True), True) == "node(s) were unschedulable"
    assert in_tree_filter(_pod(cpu="2"), _node(), True) == "Insufficient cpu"
    assert in_tree_filter(_pod(memory="2Gi"), _node(), True) == "Insufficient memory"
    assert in_tree_filter(_pod(), _node(max_pods=1, pod_count=1), True) == "Too many pods"


def test_resource_fit_counts_what_is_placed_and_the_overhead_only_with_pod_overhead():
    node = _node()
    node.place((900, 0), {})
    overhead = _pod(cpu="50m", overhead={"cpu": "100m"})
    assert pod_request(overhead, True) == (150, 100 * 1024 ** 2)
    assert pod_request(overhead, False) == (50, 100 * 1024 ** 2)
    assert in_tree_filter(overhead, node, True) == "Insufficient cpu"
    assert in_tree_filter(overhead, node, False) is None
    assert least_allocated(_pod(cpu="500m", memory="512Mi"), _node(), True) == 50


class FakeExtender:
    """Records calls and answers from a table, as the real extender would."""

    def __init__(self, filter_answer, scores=None):
        self.filter_answer = filter_answer
        self.scores = scores or []
        self.calls = []

    def post(self, path, body):
        self.calls.append((path, body))
        if path == "/filter":
            return self.filter_answer
        if path == "/prioritize":
            return self.scores
        return {"Error": ""}


def test_scheduling_cycle_filters_prioritizes_and_binds():
    nodes = [_node(name="a"), _node(name="b"), _node(name="c", labels={})]
    extender = FakeExtender({"NodeNames": ["a", "b"], "FailedNodes": {}, "Error": ""},
                            [{"Host": "a", "Score": 2}, {"Host": "b", "Score": 9}])
    result = Scheduler(nodes, extender, True).schedule({"apiVersion": "v1", "kind": "Pod",
                                                        **_pod(nodeSelector={"zone": "a"})})
    assert result.node == "b"
    assert result.in_tree_failed == {"c": "node(s) didn't match Pod's node affinity/selector"}
    path, args = extender.calls[0]
    assert path == "/filter" and args["Nodes"] is None and args["NodeNames"] == ["a", "b"]
    assert "kind" not in args["Pod"]
    assert [c[0] for c in extender.calls] == ["/filter", "/prioritize"]  # no bind verb: the scheduler binds
    assert nodes[1].used_slots == {RUNV_SLOT: 1}


def test_only_pods_requesting_a_slot_reach_the_extender_and_slots_are_counted():
    unused = FakeExtender({})
    plain = Scheduler([_node(name="a"), _node(name="b")], unused, True).schedule(_pod(slot=None))
    assert plain.node == "a" and unused.calls == [] and not plain.extender_called
    full = _node(name="a", slots={RUNV_SLOT: 1})
    extender = FakeExtender({"NodeNames": ["a"], "Error": ""})
    scheduler = Scheduler([full], extender, True)
    assert scheduler.schedule(_pod()).node == "a"
    second = scheduler.schedule(_pod())
    assert second.node is None and second.in_tree_failed == {"a": f"Insufficient {RUNV_SLOT}"}
    assert in_tree_filter(_pod(), _node(slots={}), True) == f"Insufficient {RUNV_SLOT}"


def test_prioritize_is_skipped_for_one_node_and_lowercase_answers_are_read():
    extender = FakeExtender({"nodenames": ["a"], "failednodes": {"b": "full"}, "error": ""})
    result = Scheduler([_node(name="a"), _node(name="b")], extender, True).schedule(_pod())
    assert result.node == "a" and result.prioritize_skipped
    assert result.extender_failed == {"b": "full"}
    assert [c[0] for c in extender.calls] == ["/filter"]


def test_unschedulable_and_broken_extender_answers():
    full = FakeExtender({"NodeNames": [], "FailedNodes": {"a": "no slot"},
                         "FailedAndUnresolvableNodes": {"b": "no runtime"}, "Error": ""})
    result = Scheduler([_node(name="a"), _node(name="b")], full, True).schedule(_pod())
    assert result.node is None
    assert result.diagnosis(2) == "0/2 nodes are available: 1 no runtime, 1 no slot."
    liar = FakeExtender({"NodeNames": ["zzz"], "Error": ""})
    result = Scheduler([_node(name="a")], liar, True).schedule(_pod())
    assert result.node is None and "not found in the input node list" in result.error
    # Nothing passes the in-tree filters: the extender is not called at all.
    unused = FakeExtender({})
    assert Scheduler([_node(name="a")], unused, True).schedule(_pod(cpu="5")).node is None
    assert unused.calls == []


@pytest.mark.parametrize("answer", [
    [{"Host": "a", "Score": {"value": 3}}],
    [{"Host": 1, "Score": 3}],
    {"Host": "a", "Score": 3},
    ["a"],
])
def test_malformed_prioritize_answer_is_a_scheduling_error_not_a_crash(answer):
    extender = FakeExtender({"NodeNames": ["a", "b"]}, answer)
    result = Scheduler([_node(name="a"), _node(name="b")], extender, True).schedule(_pod())
    assert result.node is None and result.error.startswith("extender answer cannot be decoded: ")


@pytest.mark.parametrize("answer", [None, [], {"NodeNames": "a"}, {"NodeNames": ["a"], "FailedNodes": ["b"]},
                                    {"NodeNames": ["a"], "Error": 3}])
def test_malformed_filter_answer_is_a_scheduling_error(answer):
    result = Scheduler([_node(name="a")], FakeExtender(answer), True).schedule(_pod())
    assert result.node is None and "cannot be decoded" in result.error


# --- scenario and snapshot ------------------------------------------------------------------------

def test_snapshot_uses_the_contract_keys_and_fresh_or_stale_leases(policy):
    now = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.timezone.utc)
    items = snapshot.snapshot(scenarios.builtin(), policy, "1.24", now)["items"]
    nodes = {o["metadata"]["name"]: o for o in items if o["kind"] == "Node"}
    kata = nodes["edge-kata-1"]["metadata"]
    assert kata["labels"][keys.runtime_label("runv")] == keys.RUNTIME_LABEL_VALUE
    assert kata["annotations"][keys.capacity_annotation("runsc")] == "2"
    assert not any(k.startswith(keys.RUNTIME_LABEL_PREFIX) for k in nodes["edge-gw-1"]["metadata"]["labels"])
    leases = {o["metadata"]["name"]: o for o in items if o["kind"] == "Lease"}
    assert set(leases) == {keys.agent_lease_name(n) for n in nodes}
    stale = leases[keys.agent_lease_name("edge-kata-2")]
    assert stale["metadata"]["namespace"] == policy.agent.namespace
    renewed = dt.datetime.strptime(stale["spec"]["renewTime"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)
    assert (now - renewed).total_seconds() > stale["spec"]["leaseDurationSeconds"]
    fresh = leases[keys.agent_lease_name("edge-kata-1")]["spec"]["renewTime"]
    assert (now - dt.datetime.strptime(fresh, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)
            ).total_seconds() < policy.agent.lease_duration_seconds


def test_full_node_is_full_in_the_snapshot():
    scenario = scenarios.builtin()
    full = next(n for n in scenario.nodes if n.name == "cloud-kata-2")
    assert sum(p.node == full.name and p.runtime_class == "runv" for p in scenario.existing) \
        == full.runtimes[scenarios.RUNV_HANDLER]


def test_synthetic_workload_is_reproducible_and_sized():
    a, b = scenarios.synthetic(40), scenarios.synthetic(40)
    assert a == b and len(a.pods) == 40 and len({p.ref for p in a.pods}) == 40
    assert len(a.nodes) == 3 * len(scenarios.builtin().nodes)
    assert {p.namespace for p in a.pods} <= {ns.name for ns in a.namespaces}
    with pytest.raises(ValueError):
        scenarios.synthetic(0)
