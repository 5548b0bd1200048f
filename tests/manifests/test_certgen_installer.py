"""The certgen Job's installer against a small in-process fake of the API server, through the real
kubernetes client: a legacy (v1beta1-only) cluster, a first run, a re-run and a renewal."""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import importlib.util
import subprocess
import threading
from http.server import ThreadingHTTPServer

import jsonpatch
import pytest
from kubernetes import client

from support import REPO, JsonHandler

SECRET_PATH = "/api/v1/namespaces/sandgate-system/secrets"
WEBHOOKS = {"mutatingwebhookconfigurations": "MutatingWebhookConfiguration",
            "validatingwebhookconfigurations": "ValidatingWebhookConfiguration"}


GROUP = "admissionregistration.k8s.io"
DISCOVERY = {
    "/version": {"major": "1", "minor": "14", "gitVersion": "v1.14.10"},
    "/api": {"kind": "APIVersions", "versions": ["v1"]},
    "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": []},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [{
        "name": GROUP, "versions": [{"groupVersion": f"{GROUP}/v1beta1", "version": "v1beta1"}],
        "preferredVersion": {"groupVersion": f"{GROUP}/v1beta1", "version": "v1beta1"}}]},
    f"/apis/{GROUP}/v1beta1": {"kind": "APIResourceList", "groupVersion": f"{GROUP}/v1beta1", "resources": [
        {"name": plural, "singularName": "", "namespaced": False, "kind": kind,
         "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
        for plural, kind in (("mutatingwebhookconfigurations", "MutatingWebhookConfiguration"),
                             ("validatingwebhookconfigurations", "ValidatingWebhookConfiguration"))]},
}


def _installer():
    spec = importlib.util.spec_from_file_location("install_certs",
                                                  REPO / "manifests/components/certgen/install_certs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeAPI:
    """Secrets plus the two webhook configurations, served only as admissionregistration v1beta1."""

    def __init__(self):
        self.secret: dict | None = None
        self.configs = {plural: {"apiVersion": "admissionregistration.k8s.io/v1beta1", "kind": kind,
                               "metadata": {"name": "sandgate", "resourceVersion": "1"},
                               "webhooks": [{"name": f"{n}.x.sandgate.io", "clientConfig": {"service": {}}}
                                            for n in ("runv", "gvisor")]}
                        for plural, kind in WEBHOOKS.items()}
        self.patch_types: list[str] = []


def _handler(api: FakeAPI):
    class Handler(JsonHandler):

        def _config(self):
            parts = self.path.split("?")[0].split("/")  # /apis/group/version/kind/name
            if parts[3] != "v1beta1" or parts[4] not in api.configs:
                return None
            return parts[4]

        def do_GET(self):
            path = self.path.split("?")[0]
            if path in DISCOVERY:
                return self.send_json(200, DISCOVERY[path])
            if path == f"{SECRET_PATH}/sandgate-webhook-tls":
                return self.send_json(200, api.secret) if api.secret else self.send_json(404, {"kind": "Status", "code": 404})
            kind = self._config() if path.startswith("/apis/") else None
            if kind:
                return self.send_json(200, api.configs[kind])
            self.send_json(404, {"kind": "Status", "code": 404})

        def do_POST(self):
            api.secret = self.read_json()
            self.send_json(201, api.secret)

        def do_PUT(self):
            api.secret = self.read_json()
            self.send_json(200, api.secret)

        def do_PATCH(self):
            kind = self._config()
            api.patch_types.append(self.headers["Content-Type"])
            obj = jsonpatch.apply_patch(api.configs[kind], self.read_json())
            obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
            api.configs[kind] = obj
            self.send_json(200, obj)
    return Handler


@pytest.fixture
def fake_api():
    api = FakeAPI()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    conf = client.Configuration()
    conf.host = f"http://127.0.0.1:{server.server_address[1]}"
    yield api, client.ApiClient(conf)
    server.shutdown()
    server.server_close()


def _generate(out):
    subprocess.run(["python3", "-m", "sandgate", "certs", "generate", "--service", "sandgate-webhook",
                    "--namespace", "sandgate-system", "--out", str(out)], check=True, capture_output=True,
                   cwd=REPO, timeout=60)
    return (out / "ca.crt").read_bytes()


def _args(directory) -> argparse.Namespace:
    return _installer().build_parser().parse_args(
        [f"--dir={directory}", "--secret=sandgate-webhook-tls", "--namespace=sandgate-system",
         "--mutating=sandgate", "--validating=sandgate", "--attempts=2", "--delay=0"])


def _bundles(api: FakeAPI) -> set[str]:
    return {w["clientConfig"]["caBundle"] for c in api.configs.values() for w in c["webhooks"]}


def test_first_run_rerun_and_renewal_on_a_v1beta1_cluster(fake_api, tmp_path):
    api, api_client = fake_api
    mod = _installer()
    now = dt.datetime.now(dt.timezone.utc)
    first_ca = _generate(tmp_path / "one")

    summary = mod.install(mod.Cluster(api_client, str(tmp_path / "discovery.json")), _args(tmp_path / "one"), now)
    assert summary["action"] == "created"
    assert set(summary["patched"].values()) == {"v1beta1"}
    assert api.secret["type"] == "kubernetes.io/tls"
    assert base64.b64decode(api.secret["data"]["ca.crt"]) == first_ca
    assert {base64.b64decode(b) for b in _bundles(api)} == {first_ca.strip() + b"\n"}
    assert set(api.patch_types) == {"application/json-patch+json"}

    # A re-run (new files generated by the Job's first step) keeps the valid certificate.
    _generate(tmp_path / "two")
    assert mod.install(mod.Cluster(api_client, str(tmp_path / "discovery.json")), _args(tmp_path / "two"), now)["action"] == "kept"
    assert base64.b64decode(api.secret["data"]["ca.crt"]) == first_ca

    # Close to expiry: replaced, and the caBundle trusts both CAs while the pods switch over.
    second_ca = (tmp_path / "two" / "ca.crt").read_bytes()
    later = now + dt.timedelta(days=3650)
    assert mod.install(mod.Cluster(api_client, str(tmp_path / "discovery.json")), _args(tmp_path / "two"), later)["action"] == "replaced"
    assert base64.b64decode(api.secret["data"]["ca.crt"]) == second_ca
    (bundle,) = _bundles(api)
    assert base64.b64decode(bundle) == second_ca.strip() + b"\n" + first_ca.strip() + b"\n"


def test_missing_webhook_configuration_is_a_clear_error(fake_api, tmp_path):
    api, api_client = fake_api
    mod = _installer()
    _generate(tmp_path)
    del api.configs["validatingwebhookconfigurations"]
    with pytest.raises(mod.InstallError, match="ValidatingWebhookConfiguration/sandgate not found"):
        mod.install(mod.Cluster(api_client, str(tmp_path / "discovery.json")), _args(tmp_path), dt.datetime.now(dt.timezone.utc))
    assert api.secret is None, "the Secret must not be written before the caBundle trusts it"
