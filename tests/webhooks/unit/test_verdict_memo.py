"""The verdict memo (the repeat-call fast path) answers exactly what the full decision answers.

Sequences of admission requests built from the captured fixtures, with repeats (a new uid only:
replicas of one ReplicaSet), small edits (what another webhook or the RuntimeClass admission
changes) and reinvocations with the webhook's own patch applied, go through two Reviewers: one
with the memo, one that decides every request. Every answer must be byte for byte the same.
"""

from __future__ import annotations

import base64
import copy
import io
import json

import jsonpatch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandgate.core.clusterversion import ClusterVersion
from sandgate.core.policy import PolicyStore
from sandgate.demo.runtimeclass import Forbidden, RuntimeClassAdmission, runtime_classes
from support import EXAMPLE_POLICY, load_fixture
from webhooks.app import Reviewer, VerdictMemo, WebhookState
from webhooks.metrics import Metrics

VERSION = ClusterVersion.parse("1.24")
CASES = ["01-create-bare-pod", "02-create-nodeselector-tolerations", "03a-create-runtimeclass-runv",
         "03b-create-runtimeclass-gvisor", "04-create-by-replicaset-controller",
         "05a-create-init-limits-special-keys", "06-create-hostnetwork-privileged", "08a-update-kubectl-label"]
PATHS = ["/mutate/runv", "/mutate/gvisor", "/validate/runv", "/validate/gvisor"]

# Edits another webhook, a user or the RuntimeClass admission could make between two calls.
EDITS = {
    "sidecar": lambda spec, meta: spec.setdefault("initContainers", []).append(
        {"name": "mesh", "image": "proxy", "restartPolicy": "Always",
         "resources": {"requests": {"memory": "256Mi", "cpu": "50m"}}}),
    "init": lambda spec, meta: spec.setdefault("initContainers", []).append(
        {"name": "setup", "image": "busybox", "resources": {"requests": {"memory": "2Gi"}}}),
    "container": lambda spec, meta: spec["containers"].append(
        {"name": "extra", "image": "x", "resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": "1Gi"}}}),
    "more-memory": lambda spec, meta: spec["containers"][0].setdefault("resources", {}).setdefault(
        "requests", {}).update(memory="3Gi"),
    "privileged": lambda spec, meta: spec["containers"][0].setdefault("securityContext", {}).update(privileged=True),
    "host-network": lambda spec, meta: spec.update(hostNetwork=True),
    "runtime-class-gvisor": lambda spec, meta: spec.update(runtimeClassName="gvisor"),
    "runtime-class-null": lambda spec, meta: spec.update(runtimeClassName=None),
    "no-runtime-class": lambda spec, meta: spec.pop("runtimeClassName", None),
    "opt-in": lambda spec, meta: meta.setdefault("annotations", {}).update({"sandgate.io/runtime": "runv"}),
    "forged-padding": lambda spec, meta: meta.setdefault("annotations", {}).update(
        {"sandgate.io/overhead-padding": '{"memory":"1Gi","basis":{},"containers":["app"],"initContainers":[]}'}),
    "drop-annotations": lambda spec, meta: meta.pop("annotations", None),
    "wildcard-toleration": lambda spec, meta: spec.setdefault("tolerations", []).append(
        {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}),
    "node-selector": lambda spec, meta: spec.setdefault("nodeSelector", {}).update(zone="a"),
    "overhead": lambda spec, meta: spec.update(overhead={"cpu": "100m", "memory": "50Mi"}),
    "bad-quantity": lambda spec, meta: spec["containers"][0].setdefault("resources", {}).setdefault(
        "requests", {}).update(cpu="lots"),
}

STEP = st.one_of(
    st.tuples(st.just("new"), st.sampled_from(CASES), st.sampled_from(PATHS), st.booleans()),
    st.tuples(st.just("repeat"), st.integers(0, 1000), st.sampled_from(PATHS), st.just(False)),
    st.tuples(st.just("edit"), st.integers(0, 1000), st.sampled_from(sorted(EDITS)), st.just(False)),
    st.tuples(st.just("reinvoke"), st.integers(0, 1000), st.just(""), st.just(False)),
)


def _reviewer(memo: VerdictMemo) -> Reviewer:
    state = WebhookState(policies=PolicyStore(EXAMPLE_POLICY), start_version=VERSION, metrics=Metrics())
    return Reviewer(state, memo)


def _call(reviewer: Reviewer, path: str, doc: dict) -> tuple[int, bytes]:
    body = json.dumps(doc).encode()
    endpoint, _, profile = path[1:].partition("/")
    return reviewer(endpoint, profile, "application/json", len(body), io.BytesIO(body), path, "127.0.0.1")


def _reinvocation(doc: dict, answer: bytes) -> dict | None:
    """The review the API server sends on reinvocation: our patch applied, then the RuntimeClass admission."""
    response = json.loads(answer)["response"]
    pod = doc["request"].get("object")
    if not response.get("patch") or not isinstance(pod, dict):
        return None
    patched = jsonpatch.JsonPatch(json.loads(base64.b64decode(response["patch"]))).apply(pod)
    store = PolicyStore(EXAMPLE_POLICY)
    try:
        pod = RuntimeClassAdmission(runtime_classes(store.current, VERSION), VERSION).admit(patched)
    except Forbidden:
        return None
    return {**doc, "request": {**doc["request"], "object": pod}}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=25), version=st.sampled_from(["v1", "v1beta1"]))
def test_memo_answers_exactly_like_the_full_decision(steps, version):
    remembered, decided = _reviewer(VerdictMemo()), _reviewer(VerdictMemo(size=0))
    history: list[tuple[str, dict, bytes]] = []
    for number, (kind, arg, extra, unnamed) in enumerate(steps):
        if kind == "new" or not history:
            case, path = (arg, extra) if kind == "new" else (CASES[0], PATHS[0])
            doc = load_fixture(f"admission/{version}-{case}.json")
            if unnamed and isinstance(doc["request"].get("object"), dict):
                # As a controller creates pods (generateName): the memo keys only these.
                doc["request"].pop("name", None)
                meta = doc["request"]["object"].setdefault("metadata", {})
                meta["generateName"] = f"{meta.pop('name', 'pod')}-"
        else:
            path, doc, answer = history[arg % len(history)]
            doc = copy.deepcopy(doc)
            if kind == "repeat":
                path = extra
            elif kind == "edit":
                pod = doc["request"].get("object") or {}
                if not isinstance(pod.get("spec"), dict) or not pod["spec"].get("containers"):
                    continue
                EDITS[extra](pod["spec"], pod.setdefault("metadata", {}))
            else:
                doc = _reinvocation(doc, answer)
                if doc is None:
                    continue
        doc["request"]["uid"] = f"uid-{number}"
        got = _call(remembered, path, doc)
        want = _call(decided, path, doc)
        assert got == want, (path, doc)
        history.append((path, doc, got[1]))


def test_a_repeat_differing_only_in_uid_is_answered_from_the_memo():
    """Control for the test above: the memo is really used (else it would prove nothing)."""
    memo = VerdictMemo()
    reviewer = _reviewer(memo)
    doc = load_fixture("admission/v1-04-create-by-replicaset-controller.json")
    first = _call(reviewer, "/mutate/runv", doc)
    assert len(memo._entries) == 1
    doc["request"]["uid"] = "another-replica"
    second = _call(reviewer, "/mutate/runv", doc)
    assert len(memo._entries) == 1
    assert json.loads(second[1])["response"]["uid"] == "another-replica"
    assert json.loads(first[1])["response"]["patch"] == json.loads(second[1])["response"]["patch"]
    doc["request"]["object"]["metadata"]["labels"]["tier"] = "batch"
    _call(reviewer, "/mutate/runv", doc)
    assert len(memo._entries) == 2
    # Named pods and validating calls do not recur: they are decided without a key.
    _call(reviewer, "/validate/runv", doc)
    doc["request"]["name"] = doc["request"]["object"]["metadata"]["name"] = "named"
    _call(reviewer, "/mutate/runv", doc)
    assert len(memo._entries) == 2


def test_a_reloaded_policy_clears_the_memo():
    memo = VerdictMemo()
    reviewer = _reviewer(memo)
    doc = load_fixture("admission/v1-04-create-by-replicaset-controller.json")
    _call(reviewer, "/mutate/runv", doc)
    assert memo._entries
    assert memo.get(object(), ("any",)) is None and not memo._entries
