"""`sandgate certs install` against a loopback stand-in of the API server, through the real kubernetes
client: a v1beta1-only (1.14) cluster, install, re-run, renewal, the CronJob's run, and the job's RBAC
removed when it is done. The CA, and so what caBundle and kube-scheduler's caData trust, never changes."""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import threading
from http.server import ThreadingHTTPServer

import jsonpatch
import pytest
from cryptography import x509
from kubernetes import client

from certs import install as mod
from sandgate.cli import build_parser

from support import JsonHandler

NS = "sandgate-system"
SECRETS = f"/api/v1/namespaces/{NS}/secrets/"
GROUP = "admissionregistration.k8s.io"
WEBHOOKS = {"mutatingwebhookconfigurations": "MutatingWebhookConfiguration",
            "validatingwebhookconfigurations": "ValidatingWebhookConfiguration"}
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
        for plural, kind in WEBHOOKS.items()]},
}


def empty_tls(name):
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": NS, "resourceVersion": "1"}, "data": {"tls.crt": "", "tls.key": ""}}


class FakeAPI:
    """The Secrets the manifests pre-create, the webhook configurations (v1beta1 only), two bindings."""

    def __init__(self):
        self.secrets = {"sandgate-ca": {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                                        "metadata": {"name": "sandgate-ca", "namespace": NS, "resourceVersion": "1"}},
                        "sandgate-webhook-tls": empty_tls("sandgate-webhook-tls"),
                        "sandgate-extender-tls": empty_tls("sandgate-extender-tls")}
        self.configs = {plural: {"apiVersion": f"{GROUP}/v1beta1", "kind": kind,
                                 "metadata": {"name": "sandgate", "resourceVersion": "1"},
                                 "webhooks": [{"name": f"{n}.x.sandgate.io", "clientConfig": {"service": {}}}
                                              for n in ("runv", "gvisor")]}
                        for plural, kind in WEBHOOKS.items()}
        self.bindings = {f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings/sandgate-certgen",
                         "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/sandgate-certgen"}
        self.creates = 0
        self.writes: list[str] = []


def handler(api: FakeAPI):
    class Handler(JsonHandler):
        def _config(self):
            parts = self.path.split("?")[0].split("/")
            return parts[4] if len(parts) > 5 and parts[3] == "v1beta1" and parts[4] in api.configs else None

        def do_GET(self):
            path = self.path.split("?")[0]
            if path in DISCOVERY:
                return self.send_json(200, DISCOVERY[path])
            if path.startswith(SECRETS) and path[len(SECRETS):] in api.secrets:
                return self.send_json(200, api.secrets[path[len(SECRETS):]])
            kind = self._config() if path.startswith("/apis/") else None
            if kind:
                return self.send_json(200, api.configs[kind])
            self.send_json(404, {"kind": "Status", "code": 404})

        def do_POST(self):
            api.creates += 1
            self.send_json(403, {"kind": "Status", "code": 403, "message": "create is not granted"})

        def do_PUT(self):
            name = self.path.split("?")[0][len(SECRETS):]
            body = self.read_json()
            current = api.secrets[name]
            if body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]:
                return self.send_json(409, {"kind": "Status", "code": 409, "reason": "Conflict"})
            body["metadata"]["resourceVersion"] = str(int(current["metadata"]["resourceVersion"]) + 1)
            api.secrets[name] = body
            api.writes.append(name)
            self.send_json(200, body)

        def do_PATCH(self):
            kind = self._config()
            obj = jsonpatch.apply_patch(api.configs[kind], self.read_json())
            obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
            api.configs[kind] = obj
            api.writes.append(kind)
            self.send_json(200, obj)

        def do_DELETE(self):
            path = self.path.split("?")[0]
            if path in api.bindings:
                api.bindings.discard(path)
                return self.send_json(200, {"kind": "Status", "status": "Success"})
            self.send_json(404, {"kind": "Status", "code": 404})
    return Handler


@pytest.fixture
def fake(tmp_path):
    api = FakeAPI()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(api))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conf = client.Configuration()
    conf.host = f"http://127.0.0.1:{server.server_address[1]}"
    cluster = mod.Cluster(client.ApiClient(conf), str(tmp_path / "discovery.json"))
    yield api, cluster
    server.shutdown()
    server.server_close()


INSTALL = ["certs", "install", f"--namespace={NS}", "--ca-secret=sandgate-ca", "--create-ca",
           "--leaf=sandgate-webhook-tls=sandgate-webhook", "--leaf=sandgate-extender-tls=sandgate-extender",
           "--mutating=sandgate", "--validating=sandgate", f"--drop-binding=rolebinding/{NS}/sandgate-certgen",
           "--drop-binding=clusterrolebinding/sandgate-certgen", "--attempts=2", "--delay=0"]
RENEW = ["certs", "install", f"--namespace={NS}", "--ca-secret=sandgate-ca",
         "--leaf=sandgate-webhook-tls=sandgate-webhook", "--leaf=sandgate-extender-tls=sandgate-extender",
         "--attempts=2", "--delay=0"]


def args(argv) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def data(api, name, key) -> bytes:
    return base64.b64decode(api.secrets[name]["data"][key])


def bundles(api) -> set[bytes]:
    return {base64.b64decode(w["clientConfig"]["caBundle"]) for c in api.configs.values() for w in c["webhooks"]}


def test_install_rerun_renewal_keep_one_ca_and_drop_the_jobs_bindings(fake):
    api, cluster = fake
    now = dt.datetime.now(dt.timezone.utc)
    summary = mod.install(cluster, args(INSTALL), now)
    assert summary["ca"] == "created" and set(summary["patched"].values()) == {"v1beta1"}
    ca_pem = data(api, "sandgate-ca", "ca.crt")
    ca = x509.load_pem_x509_certificate(ca_pem)
    assert bundles(api) == {ca_pem.strip() + b"\n"}
    leaves = {}
    for secret, service in (("sandgate-webhook-tls", "sandgate-webhook"), ("sandgate-extender-tls", "sandgate-extender")):
        leaf = x509.load_pem_x509_certificate(data(api, secret, "tls.crt"))
        leaf.verify_directly_issued_by(ca)
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        assert f"{service}.{NS}.svc" in names and not any(n.startswith("sandgate-e" if "webhook" in service
                                                                          else "sandgate-w") for n in names)
        assert data(api, secret, "ca.crt") == ca_pem
        leaves[secret] = data(api, secret, "tls.crt")
    assert leaves["sandgate-webhook-tls"] != leaves["sandgate-extender-tls"]  # one key per server
    assert api.bindings == set() and api.creates == 0

    # A re-run keeps everything: no Secret written, no patch.
    api.writes.clear()
    assert mod.install(cluster, args(INSTALL), now)["leaves"] == {"sandgate-webhook-tls": "kept",
                                                                  "sandgate-extender-tls": "kept"}
    assert api.writes == []

    # The renewal CronJob near expiry: new leaves, the same CA, no webhook configuration touched.
    later = now + dt.timedelta(days=340)
    summary = mod.install(cluster, args(RENEW), later)
    assert summary["ca"] == "kept" and summary["patched"] == {}
    assert all(v.startswith("issued (expires") for v in summary["leaves"].values())
    assert data(api, "sandgate-ca", "ca.crt") == ca_pem and bundles(api) == {ca_pem.strip() + b"\n"}
    renewed = x509.load_pem_x509_certificate(data(api, "sandgate-webhook-tls", "tls.crt"))
    renewed.verify_directly_issued_by(ca)
    assert data(api, "sandgate-webhook-tls", "tls.crt") != leaves["sandgate-webhook-tls"]
    assert set(api.writes) == {"sandgate-webhook-tls", "sandgate-extender-tls"}


def test_blanked_leaf_is_reissued_from_the_kept_ca(fake):
    api, cluster = fake
    now = dt.datetime.now(dt.timezone.utc)
    mod.install(cluster, args(INSTALL), now)
    ca_pem = data(api, "sandgate-ca", "ca.crt")
    # `kubectl apply` of the manifests again writes the empty tls.crt/tls.key back.
    api.secrets["sandgate-extender-tls"]["data"] = {"tls.crt": "", "tls.key": ""}
    summary = mod.install(cluster, args(RENEW), now)
    assert summary["leaves"] == {"sandgate-webhook-tls": "kept", "sandgate-extender-tls": "issued (empty)"}
    x509.load_pem_x509_certificate(data(api, "sandgate-extender-tls", "tls.crt")).verify_directly_issued_by(
        x509.load_pem_x509_certificate(ca_pem))


def test_renewal_never_creates_a_ca_and_a_missing_secret_is_named(fake):
    api, cluster = fake
    with pytest.raises(mod.InstallError, match="holds no CA yet"):
        mod.install(cluster, args(RENEW), dt.datetime.now(dt.timezone.utc))
    assert "data" not in api.secrets["sandgate-ca"]
    del api.secrets["sandgate-webhook-tls"]
    with pytest.raises(mod.InstallError, match="sandgate-webhook-tls does not exist; it is created empty by the manifests"):
        mod.install(cluster, args(INSTALL), dt.datetime.now(dt.timezone.utc))
    assert api.creates == 0


def test_a_corrupt_ca_is_never_replaced(fake):
    api, cluster = fake
    api.secrets["sandgate-ca"]["data"] = {"ca.crt": base64.b64encode(b"junk").decode(), "ca.key": ""}
    with pytest.raises(Exception, match="never replaced automatically"):
        mod.install(cluster, args(INSTALL), dt.datetime.now(dt.timezone.utc))


def test_missing_webhook_configuration_leaves_the_leaves_alone(fake):
    api, cluster = fake
    del api.configs["validatingwebhookconfigurations"]
    with pytest.raises(mod.InstallError, match="ValidatingWebhookConfiguration/sandgate not found"):
        mod.install(cluster, args(INSTALL), dt.datetime.now(dt.timezone.utc))
    assert api.secrets["sandgate-webhook-tls"]["data"] == {"tls.crt": "", "tls.key": ""}
    assert len(api.bindings) == 2


def test_ca_bundle_patch_is_guarded_by_the_resource_version():
    obj = {"metadata": {"name": "sandgate", "resourceVersion": "7"},
           "webhooks": [{"name": "a", "clientConfig": {"service": {"name": "s"}}}]}
    ops = mod.ca_bundle_patch(obj, mod.bundle(b"NEW\n", b"OLD", b"NEW"))
    assert ops[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "7"}
    patched = jsonpatch.apply_patch(obj, ops)
    assert base64.b64decode(patched["webhooks"][0]["clientConfig"]["caBundle"]) == b"NEW\nOLD\n"
    assert mod.ca_bundle_patch(patched, mod.bundle(b"NEW", b"OLD")) == []


@pytest.mark.parametrize("bad", ["rolebinding/x", "clusterrolebinding/ns/x", "secret/x"])
def test_drop_binding_refers_to_a_binding(bad, capsys):
    with pytest.raises(SystemExit):
        args([*RENEW, f"--drop-binding={bad}"])
    assert "is not rolebinding/NAMESPACE/NAME or clusterrolebinding/NAME" in capsys.readouterr().err


def test_the_command_installs_and_logs_one_json_line(fake, tmp_path):
    import json
    import subprocess
    import sys

    import yaml

    from support import REPO

    api, cluster = fake
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": cluster.core.api_client.configuration.host}}],
        "users": [{"name": "fake", "user": {"token": "t"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}))
    run = subprocess.run([sys.executable, "-m", "sandgate", *INSTALL, f"--kubeconfig={kubeconfig}"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    (line,) = [json.loads(ln) for ln in run.stderr.splitlines() if '"certificates installed"' in ln]
    assert line["ca"] == "created" and set(line["leaves"].values()) == {"issued (empty)"}
    assert api.bindings == set()
    again = subprocess.run([sys.executable, "-m", "sandgate", *RENEW[:2], f"--namespace={NS}", "--ca-secret=nope",
                            "--attempts=1", f"--kubeconfig={kubeconfig}"], cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 1 and "Secret sandgate-system/nope does not exist" in again.stderr
