"""sandgate.core.rawapi: the agent's raw-JSON API client and its kubeconfig reading."""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer

import pytest
from kubernetes.client.exceptions import ApiException

from sandgate.core.rawapi import RawApi, RawApiConfigError, load_configuration
from support import JsonHandler, self_signed_localhost


@pytest.fixture
def server():
    seen = []

    class Handler(JsonHandler):
        def do_PATCH(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "auth": self.headers.get("Authorization"),
                         "type": self.headers.get("Content-Type"), "body": body})
            self.send_json(200, {"ok": True})

        def do_GET(self):  # noqa: N802
            seen.append({"path": self.path, "auth": self.headers.get("Authorization")})
            self.send_json(404, {"kind": "Status", "reason": "NotFound"})

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()
    httpd.server_close()


def kubeconfig(tmp_path, user: dict, cluster: dict) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "other", "cluster": {"server": "https://wrong"}}, {"name": "k", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    return str(path)


def test_a_token_kubeconfig_sends_the_body_as_given_with_the_bearer_token(server, tmp_path):
    url, seen = server
    api = RawApi(load_configuration(kubeconfig(tmp_path, {"token": "s3cret"}, {"server": url + "/"})))
    answer = api.request("PATCH", "/api/v1/nodes/n1", {"metadata": {"labels": {"a": None}}},
                         "application/merge-patch+json")
    assert json.loads(answer) == {"ok": True}
    assert seen == [{"path": "/api/v1/nodes/n1", "auth": "Bearer s3cret", "type": "application/merge-patch+json",
                     "body": {"metadata": {"labels": {"a": None}}}}]


def test_a_non_2xx_answer_raises_with_its_status(server, tmp_path):
    url, _ = server
    (tmp_path / "token").write_text("from-file\n")
    api = RawApi(load_configuration(kubeconfig(tmp_path, {"tokenFile": "token"}, {"server": url})))
    with pytest.raises(ApiException) as raised:
        api.request("GET", "/api/v1/nodes/gone")
    assert raised.value.status == 404 and "NotFound" in raised.value.body


def test_relative_files_are_relative_to_the_kubeconfig(tmp_path):
    cfg = load_configuration(kubeconfig(tmp_path, {"client-certificate": "c.crt", "client-key": "c.key"},
                                        {"server": "https://api:6443", "certificate-authority": "ca.crt"}))
    assert (cfg.host, cfg.ssl_ca_cert, cfg.cert_file, cfg.key_file, cfg.verify_ssl) == (
        "https://api:6443", str(tmp_path / "ca.crt"), str(tmp_path / "c.crt"), str(tmp_path / "c.key"), True)


def test_other_kubeconfigs_go_through_the_full_loader(tmp_path):
    # Embedded data is one of the things only the library's loader handles: it writes it to a file.
    cfg = load_configuration(kubeconfig(tmp_path, {"token": "t"}, {
        "server": "https://api:6443", "certificate-authority-data": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="}))
    with open(cfg.ssl_ca_cert) as f:
        assert f.read().startswith("-----BEGIN CERTIFICATE-----")
    assert cfg.auth_settings()["BearerToken"]["value"] == "Bearer t"


@pytest.mark.parametrize("content", ["", "not: [a, kubeconfig", json.dumps({"current-context": "none"})])
def test_an_unusable_kubeconfig_is_a_clear_error(tmp_path, content):
    (tmp_path / "kc").write_text(content)
    with pytest.raises(RawApiConfigError, match="cannot load Kubernetes credentials from kubeconfig"):
        load_configuration(str(tmp_path / "kc"))


def test_a_missing_token_file_is_named(tmp_path):
    with pytest.raises(RawApiConfigError, match="tokenFile"):
        load_configuration(kubeconfig(tmp_path, {"tokenFile": "absent"}, {"server": "https://api"}))


def test_in_cluster_the_service_account_token_goes_over_verified_tls(server, tmp_path, monkeypatch):
    import ssl

    from kubernetes.config import incluster_config

    url, seen = server
    crt, key = map(str, self_signed_localhost(tmp_path, "kube-apiserver"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(crt, key)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (JsonHandler,), {
        "do_GET": lambda self: (seen.append({"auth": self.headers.get("Authorization")}),
                                self.send_json(200, {"kind": "Node"}))}))
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        (tmp_path / "token").write_text("sa-token")
        monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
        monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", crt)
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(httpd.server_address[1]))
        api = RawApi(load_configuration())
        assert json.loads(api.request("GET", "/api/v1/nodes/n1")) == {"kind": "Node"}
        assert seen[-1]["auth"].lower() == "bearer sa-token"  # the library writes the scheme in lower case
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_outside_a_cluster_without_a_kubeconfig_the_error_says_what_to_do(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(RawApiConfigError, match="in-cluster service account .use --kubeconfig outside a cluster."):
        load_configuration()
