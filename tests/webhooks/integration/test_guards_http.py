"""The guard endpoints over real TLS and gunicorn, with the pod lookup against a loopback API stand-in."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer

import pytest

from guard_cases import ADMIN, NS_SANDBOXED, TENANT, agent_user, changed, lease, namespace, node, request
from sandgate.core import keys

from support import JsonHandler

BASE = node(labels={keys.runtime_label("runv"): "true"})


class PodAPI:
    """GET /api/v1/namespaces/<ns>/pods/<name> for the agent pods it holds; counts the GETs."""

    def __init__(self, pods: dict[tuple[str, str], dict]):
        self.pods = pods
        self.gets: list[str] = []
        api = self

        class Handler(JsonHandler):
            def do_GET(self):
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
                    api.gets.append(parts[5])
                    pod = api.pods.get((parts[3], parts[5]))
                    if pod is not None:
                        return self.send_json(200, pod)
                self.send_json(404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": "not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def pod_api():
    api = PodAPI({("sandgate-agent", "agent-abc"): {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "agent-abc", "uid": "uid-abc"},
        "spec": {"nodeName": "node-a", "serviceAccountName": "sandgate-agent"}}})
    yield api
    api.close()


@pytest.fixture(scope="module")
def hook(start_webhook, pod_api, tmp_path_factory):
    from webhook_harness import FakeKubeAPI
    kubeconfig = FakeKubeAPI.kubeconfig(pod_api, tmp_path_factory.mktemp("kube") / "config")
    return start_webhook("--cluster-version", "1.24", "--no-namespace-watch", "--kubeconfig", str(kubeconfig))


def answer(hook, path: str, req: dict) -> dict:
    resp = hook.post(path, {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req})
    assert resp.status_code == 200, hook.logs()[-3000:]
    out = resp.json()
    assert out["response"]["uid"] == req["uid"]
    return out["response"]


def test_agent_changes_only_its_own_node_by_the_tokens_node_name(hook):
    own = changed(BASE, metadata__labels={**BASE["metadata"]["labels"], keys.runtime_label("runsc"): "true"})
    assert answer(hook, "/guard/agent", request(own, BASE))["allowed"] is True
    other = answer(hook, "/guard/agent", request(node("node-b", labels={"x": "y"}), node("node-b")))
    assert other["allowed"] is False and other["status"]["code"] == 403
    assert 'may change only its own Node, not "node-b"' in other["status"]["message"]
    spec = answer(hook, "/guard/agent", request(changed(BASE, spec__unschedulable=True), BASE))
    assert spec["allowed"] is False and spec["status"]["message"].startswith("spec:")
    assert answer(hook, "/guard/agent", request(lease("sandgate-agent-node-b", "node-b"), None,
                                                operation="CREATE"))["allowed"] is False


def test_pod_bound_token_is_resolved_through_the_api_once(hook, pod_api):
    user = agent_user(None, ("agent-abc", "uid-abc"))
    before = len(pod_api.gets)
    assert answer(hook, "/guard/agent", request(lease(), lease(), user=user))["allowed"] is True
    assert answer(hook, "/guard/agent", request(lease(), lease(), user=user))["allowed"] is True
    denied = answer(hook, "/guard/agent", request(lease("sandgate-agent-node-b", "node-b"), None, user=user,
                                                  operation="CREATE"))
    assert denied["allowed"] is False and '"sandgate-agent-node-a"' in denied["status"]["message"]
    # gunicorn runs one cache per worker: at most one GET per worker, never one per request.
    assert 1 <= len(pod_api.gets) - before <= 2


def test_a_hand_made_agent_token_is_refused_on_1_24(hook):
    own = changed(BASE, metadata__labels={**BASE["metadata"]["labels"], keys.runtime_label("runsc"): "true"})
    resp = answer(hook, "/guard/agent", request(own, BASE, user=agent_user(None)))
    assert resp["allowed"] is False and "names neither its node nor its pod" in resp["status"]["message"]


def test_unresolvable_pod_is_a_503_denial_not_a_guess(hook):
    resp = answer(hook, "/guard/agent", request(lease(), lease(), user=agent_user(None, ("gone", "uid-x"))))
    assert resp["allowed"] is False and resp["status"]["code"] == 503
    assert "cannot tell which node" in resp["status"]["message"]


def test_namespace_labels_are_guarded(hook):
    removed = answer(hook, "/guard/namespaces", request(namespace(), NS_SANDBOXED, user=TENANT))
    assert removed["allowed"] is False
    assert removed["status"]["message"].startswith(f"metadata.labels[{keys.DEFAULT_NAMESPACE_LABEL}]")
    assert answer(hook, "/guard/namespaces", request(namespace(), NS_SANDBOXED, user=ADMIN))["allowed"] is True


def test_bad_bodies_get_a_400_with_a_reason(hook):
    resp = hook.post("/guard/agent", b"{not json")
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]
    assert hook.post("/guard/other", b"{}").status_code == 404


def test_metrics_carry_the_serving_certificates_expiry(hook):
    from cryptography import x509
    text = hook.get("/metrics").text
    expected = x509.load_pem_x509_certificate(hook.cert.read_bytes()).not_valid_after_utc.timestamp()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("sandgate_certificate_expiry_timestamp_seconds")]
    assert float(line.split()[-1]) == expected
