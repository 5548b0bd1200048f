"""Every captured AdmissionReview, both versions, through the real webhook over TLS.

One server per cluster generation (1.24: RuntimeClass mode; 1.15: legacy mode). The answers are
checked for the wire shape the API server accepts, and the decoded patch is applied with jsonpatch
to the captured pod to check the pod the API server would store.
"""

from __future__ import annotations

import base64
import copy

import jsonpatch
import pytest
import yaml

from webhook_harness import ADMISSION_CASES, NAMESPACE, review
from sandgate.core import keys
from support import EXAMPLE_POLICY, HANDMADE_FIXTURES, load_fixture

VERSIONS = ["v1", "v1beta1"]
POLICY = yaml.safe_load(EXAMPLE_POLICY.read_text())


@pytest.fixture(scope="module")
def modern(start_webhook):
    return start_webhook("--cluster-version", "1.24")


@pytest.fixture(scope="module")
def legacy(start_webhook):
    return start_webhook("--cluster-version", "1.15", "--workers", "1")


def expected_profile(case: str) -> str:
    # 03b already names RuntimeClass gvisor, which is a profile of the policy: it keeps it.
    return "gvisor" if case.startswith("03b") else "runv"


def answer(hook, path: str, doc: dict) -> dict:
    res = hook.post(path, doc)
    assert res.status_code == 200, res.text
    assert res.headers["Content-Type"] == "application/json"
    out = res.json()
    assert out["apiVersion"] == doc["apiVersion"]
    assert out["kind"] == "AdmissionReview"
    assert out["response"]["uid"] == doc["request"]["uid"]
    assert set(out) == {"apiVersion", "kind", "response"}
    return out["response"]


def patched(response: dict, pod: dict) -> dict:
    """The pod after the answer's patch; checks patchType travels only with a patch."""
    if "patch" not in response:
        assert "patchType" not in response
        return copy.deepcopy(pod)
    assert response["patchType"] == "JSONPatch"
    ops = jsonpatch.JsonPatch.from_string(base64.b64decode(response["patch"]).decode())
    return ops.apply(pod)


def tolerates(have: dict, want: dict) -> bool:
    """`have` tolerates every taint `want` does (same key/effect, Exists or the same value)."""
    return (have.get("key") == want.get("key") and have.get("effect", "") in ("", want.get("effect", ""))
            and (have.get("operator") == "Exists" or have.get("value") == want.get("value")))


def with_object(doc: dict, pod: dict) -> dict:
    out = copy.deepcopy(doc)
    out["request"]["object"] = pod
    out["request"]["uid"] = doc["request"]["uid"][:-4] + "beef"
    return out


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", ADMISSION_CASES)
@pytest.mark.parametrize("generation", ["modern", "legacy"])
def test_mutate_profile_path_routes_every_captured_pod(request, generation, case, version):
    hook = request.getfixturevalue(generation)
    doc = review(case, version)
    assert doc["request"]["namespace"] == NAMESPACE
    response = answer(hook, "/mutate/runv", doc)
    pod = doc["request"]["object"]

    if doc["request"]["operation"] == "UPDATE":
        # Pods are routed at creation only; an allowed no-op answer is exactly the captured accepted one.
        captured = load_fixture(f"admission/response-{version}-allowed-no-patch.json")
        captured["response"]["uid"] = doc["request"]["uid"]
        assert {"apiVersion": doc["apiVersion"], "kind": "AdmissionReview", "response": response} == captured
        return
    if case.startswith("06"):
        assert response["allowed"] is False
        assert response["status"]["code"] == 403
        assert "spec.hostNetwork" in response["status"]["message"]
        assert "patch" not in response and "patchType" not in response
        return
    if case.startswith("03b"):
        # runtimeClassName gvisor in a runv namespace: the namespace's profile is locked.
        assert response["allowed"] is False
        assert 'is locked to sandbox profile "runv"' in response["status"]["message"]
        assert "patch" not in response
        return

    assert response["allowed"] is True
    profile = POLICY["profiles"][expected_profile(case)]
    after = patched(response, pod)
    assert after["spec"]["runtimeClassName"] == profile["runtimeClassName"]
    assert response["auditAnnotations"][keys.AUDIT_PROFILE] == expected_profile(case)
    if generation == "modern":
        # The API server's RuntimeClass admission adds scheduling and overhead; we must not.
        assert after["spec"].get("overhead") == pod["spec"].get("overhead")
        assert after["spec"].get("nodeSelector") == pod["spec"].get("nodeSelector")
    else:
        for key, value in profile["nodeSelector"].items():
            assert after["spec"]["nodeSelector"][key] == value
        for tol in profile.get("tolerations", []):
            assert any(tolerates(have, tol) for have in after["spec"]["tolerations"]), tol
        if "overhead" in profile:
            assert keys.PADDING_ANNOTATION in after["metadata"]["annotations"]

    # Reinvocation: the webhook run on its own output changes nothing, and the guard accepts it.
    again = answer(hook, "/mutate/runv", with_object(doc, after))
    assert again["allowed"] is True and "patch" not in again
    guard = answer(hook, "/validate/runv", with_object(doc, after))
    assert guard["allowed"] is True, guard


@pytest.mark.parametrize("version", VERSIONS)
def test_validate_denies_a_pod_that_skipped_the_mutating_webhook(modern, version):
    response = answer(modern, "/validate/runv", review("01-create-bare-pod", version))
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert "runtimeClassName" in response["status"]["message"]


def test_dry_run_is_answered_and_logged(modern):
    doc = review("07-create-dry-run-server")
    assert answer(modern, "/mutate/runv", doc)["allowed"] is True
    records = [r for r in modern.log_records() if r.get("msg") == "admission" and r.get("uid") == doc["request"]["uid"]]
    assert records and records[-1]["dry_run"] is True


def test_admission_log_line_carries_the_pod_facts(modern):
    doc = review("04-create-by-replicaset-controller", "v1beta1")
    answer(modern, "/mutate/runv", doc)
    record = next(r for r in modern.log_records() if r.get("msg") == "admission" and r.get("uid") == doc["request"]["uid"])
    assert record["namespace"] == NAMESPACE
    assert record["pod"].endswith("<generated>")  # generateName pod: no name yet
    assert record["operation"] == "CREATE"
    assert record["profile"] == "runv" and record["verdict"] == "patched" and record["reason"]
    assert isinstance(record["latency_ms"], float) and record["dry_run"] is False


@pytest.mark.parametrize("version", VERSIONS)
def test_mutate_without_profile_and_without_api_denies_clearly(modern, version):
    response = answer(modern, "/mutate", review("01-create-bare-pod", version))
    assert response["allowed"] is False
    message = response["status"]["message"]
    assert "namespace cache" in message and "no Kubernetes credentials" in message
    guard = answer(modern, "/validate", review("01-create-bare-pod", version))
    assert guard["allowed"] is False


def test_opt_in_path_leaves_a_pod_without_annotation_alone(modern):
    response = answer(modern, f"/mutate/{keys.OPT_IN_PATH_SEGMENT}", review("01-create-bare-pod"))
    assert response == {"uid": review("01-create-bare-pod")["request"]["uid"], "allowed": True}


def test_unknown_path_profile_is_denied_not_admitted(modern):
    response = answer(modern, "/mutate/no-such-profile", review("01-create-bare-pod"))
    assert response["allowed"] is False
    assert "no-such-profile" in response["status"]["message"]


@pytest.mark.parametrize("version", VERSIONS)
def test_reinvocation_after_a_sidecar_was_injected_patches_only_the_padding_difference(modern, version):
    doc = review("01-create-bare-pod", version)
    first = patched(answer(modern, "/mutate/runv", doc), doc["request"]["object"])
    # A mesh webhook adds its proxy sidecar after sandgate; the API server reinvokes sandgate.
    meshed = copy.deepcopy(first)
    meshed["spec"]["initContainers"] = [{"name": "proxy", "image": "envoy", "restartPolicy": "Always",
                                         "resources": {"requests": {"memory": "4Gi"}}}]
    response = answer(modern, "/mutate/runv", with_object(doc, meshed))
    final = patched(response, meshed)
    ops = jsonpatch.JsonPatch.from_string(base64.b64decode(response["patch"]).decode()).patch
    assert [op["path"] for op in ops] == ["/spec/containers/0/resources/requests/memory",
                                          "/metadata/annotations/sandgate.io~1overhead-padding"]
    # 128Mi app + 4Gi sidecar = 4224Mi; 2% of it is 88583700.48 bytes (above memoryMin, beyond podFixed).
    assert final["spec"]["containers"][0]["resources"]["requests"]["memory"] == str(128 * 2**20 + 88583701)
    again = answer(modern, "/mutate/runv", with_object(doc, final))
    assert again["allowed"] is True and "patch" not in again
    assert answer(modern, "/validate/runv", with_object(doc, final))["allowed"] is True


@pytest.mark.parametrize("version", VERSIONS)
def test_kubectl_debug_with_a_privileged_container_is_refused(modern, version):
    doc = load_fixture(f"admission/{version}-09-update-ephemeralcontainers-privileged.json", HANDMADE_FIXTURES)
    response = answer(modern, "/validate/runv", doc)
    assert response["allowed"] is False and response["status"]["code"] == 403
    assert response["status"]["message"] == (
        'spec.ephemeralContainers[0].securityContext.privileged is forbidden by sandbox profile "runv"')
    del doc["request"]["object"]["spec"]["ephemeralContainers"][0]["securityContext"]
    assert answer(modern, "/validate/runv", doc)["allowed"] is True


@pytest.mark.parametrize("version", VERSIONS)
def test_a_resize_the_padding_cannot_cover_is_refused(modern, version):
    doc = load_fixture(f"admission/{version}-10-update-resize-memory.json", HANDMADE_FIXTURES)
    response = answer(modern, "/validate/runv", doc)
    assert response["allowed"] is False
    assert response["status"]["message"].startswith("spec.containers[0].resources.requests.memory: this resize")


@pytest.mark.parametrize("version", VERSIONS)
def test_pod_level_requests_are_padded_at_pod_level(modern, version):
    doc = review("01-create-bare-pod", version)
    doc["request"]["object"]["spec"]["resources"] = {"requests": {"memory": "4Gi"}}
    after = patched(answer(modern, "/mutate/runv", doc), doc["request"]["object"])
    # 2% of 4Gi = 81.92Mi, above memoryMin: 85899346 bytes beyond podFixed, on the pod-level request.
    assert after["spec"]["resources"] == {"requests": {"memory": str(4 * 2**30 + 85899346)}}
    assert after["spec"]["containers"][0]["resources"]["requests"]["memory"] == "128Mi"
    assert answer(modern, "/validate/runv", with_object(doc, after))["allowed"] is True


@pytest.mark.parametrize("version", VERSIONS)
def test_a_wildcard_toleration_cannot_shorten_the_edge_grace(modern, version):
    doc = review("01-create-bare-pod", version)
    doc["request"]["object"]["spec"]["tolerations"].insert(
        0, {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60})
    after = patched(answer(modern, "/mutate/runv", doc), doc["request"]["object"])
    assert [t.get("tolerationSeconds") for t in after["spec"]["tolerations"]] == [86400, 86400, 86400]


@pytest.mark.parametrize("version", VERSIONS)
def test_a_routed_pod_without_its_sandbox_slot_is_refused(modern, version):
    doc = review("01-create-bare-pod", version)
    after = patched(answer(modern, "/mutate/runv", doc), doc["request"]["object"])
    assert after["spec"]["containers"][0]["resources"]["limits"] == {keys.sandbox_resource("runv"): "1"}
    del after["spec"]["containers"][0]["resources"]["requests"][keys.sandbox_resource("runv")]
    del after["spec"]["containers"][0]["resources"]["limits"]
    response = answer(modern, "/validate/runv", with_object(doc, after))
    assert response["allowed"] is False and "exactly one sandbox slot" in response["status"]["message"]


@pytest.mark.parametrize("path", ["/mutate/runv", "/validate/runv"])
def test_an_absurd_quantity_the_api_server_accepts_gets_a_clear_denial_not_an_internal_error(modern, path):
    doc = review("01-create-bare-pod")
    doc["request"]["object"]["spec"]["containers"][0]["resources"]["requests"]["memory"] = "1e999990"
    doc["request"]["object"]["spec"]["runtimeClassName"] = "runv"
    response = answer(modern, path, doc)
    assert response["allowed"] is False and response["status"]["code"] in (400, 403)
    assert response["status"]["message"].startswith("spec.containers[0].resources.")
    assert "internal error" not in response["status"]["message"]
