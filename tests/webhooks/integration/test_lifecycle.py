"""Changes while running (certificate rotation, policy reload) and start-up refusals, through the
real command."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys

import pytest
import requests
import yaml
from cryptography import x509

from support import EXAMPLE_POLICY, REPO
from webhook_harness import generate_pki, review, wait_for


def served_certificate(port: int) -> x509.Certificate:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def test_rotated_certificate_reaches_new_connections_without_restart(start_webhook, tmp_path):
    hook = start_webhook("--cluster-version", "1.24", "--workers", "1")
    old = served_certificate(hook.port)
    kept = requests.Session()
    assert hook.post("/mutate/runv", review("01-create-bare-pod"), session=kept).status_code == 200

    new_pki = generate_pki(tmp_path / "rotated")
    # Replace the files the way a Secret volume update does: new files renamed into place.
    for name, target in (("tls.key", hook.key), ("tls.crt", hook.cert)):
        shutil.copy(new_pki / name, str(target) + ".new")
        os.replace(str(target) + ".new", target)
    new = x509.load_pem_x509_certificate((new_pki / "tls.crt").read_bytes())

    assert wait_for(lambda: served_certificate(hook.port) == new, timeout=15), "new certificate never served"
    assert served_certificate(hook.port) != old
    # A new client trusting only the new CA works; one trusting only the old CA does not.
    fresh = requests.post(hook.url + "/mutate/runv", json=review("01-create-bare-pod"),
                          verify=str(new_pki / "ca.crt"), timeout=10)
    assert fresh.status_code == 200 and fresh.json()["response"]["allowed"] is True
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(hook.url + "/healthz", verify=hook.ca, timeout=10)
    assert hook.proc.poll() is None  # same process: no restart


def test_half_rotated_files_keep_the_old_certificate_serving(start_webhook, tmp_path):
    hook = start_webhook("--cluster-version", "1.24", "--workers", "1")
    other = generate_pki(tmp_path / "other")
    shutil.copy(other / "tls.crt", hook.cert)  # certificate replaced, key not (yet)
    # The files are checked when a new connection arrives.
    assert wait_for(lambda: hook.get("/healthz") and "certificate reload failed" in hook.logs(), timeout=15)
    assert hook.get("/healthz").status_code == 200  # still served with the old pair, old CA
    assert "reload failed" in hook.get("/readyz").json()["checks"]["certificate"]["detail"]


def test_policy_file_change_takes_effect_and_a_bad_change_is_refused(start_webhook):
    hook = start_webhook("--cluster-version", "1.24", "--workers", "1")
    doc = review("01-create-bare-pod")
    assert hook.post("/mutate/runv", doc).json()["response"]["allowed"] is True

    policy = yaml.safe_load(EXAMPLE_POLICY.read_text())
    policy["exemptNamespaces"].append(doc["request"]["namespace"])
    hook.policy.write_text(yaml.safe_dump(policy))
    exempt = wait_for(lambda: "patch" not in (r := hook.post("/mutate/runv", doc).json()["response"]) and r, timeout=15)
    assert exempt and exempt["allowed"] is True

    hook.policy.write_text("apiVersion: sandgate.io/v1alpha1\nkind: SandboxPolicy\ndefaultProfile: nope\n")
    assert wait_for(lambda: hook.post("/mutate/runv", doc) and "policy reload failed" in hook.logs(), timeout=15)
    assert "patch" not in hook.post("/mutate/runv", doc).json()["response"]  # last good policy still in force
    assert "last change refused" in hook.get("/readyz").json()["checks"]["policy"]["detail"]


def run_webhook(tmp_path, *args: str) -> subprocess.CompletedProcess:
    pki = generate_pki(tmp_path / "pki")
    return subprocess.run(
        [sys.executable, "-m", "sandgate", "webhook", "--cert-file", str(pki / "tls.crt"),
         "--key-file", str(pki / "tls.key"), "--host", "127.0.0.1", "--port", "1", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "KUBERNETES_SERVICE_HOST": ""})


def test_invalid_policy_refuses_to_start_naming_the_key(tmp_path):
    policy = yaml.safe_load(EXAMPLE_POLICY.read_text())
    policy["profiles"]["runv"]["tolerations"][0]["operator"] = "Maybe"
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    res = run_webhook(tmp_path, "--config", str(tmp_path / "policy.yaml"), "--cluster-version", "1.24")
    assert res.returncode != 0
    assert "profiles.runv.tolerations[0].operator" in res.stderr
    assert "Traceback" not in res.stderr


def test_auto_version_without_api_refuses_to_start(tmp_path):
    res = run_webhook(tmp_path, "--config", str(EXAMPLE_POLICY))  # clusterVersion: auto, no credentials
    assert res.returncode != 0
    assert "clusterVersion is auto" in res.stderr and "no Kubernetes credentials" in res.stderr


def test_auto_version_with_unreachable_api_refuses_to_start(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    res = run_webhook(tmp_path, "--config", str(EXAMPLE_POLICY), "--kubeconfig", str(kubeconfig))
    assert res.returncode != 0
    assert "/version could not be read" in res.stderr


def test_bad_certificate_and_bad_version_refuse_to_start(tmp_path):
    res = run_webhook(tmp_path, "--config", str(EXAMPLE_POLICY), "--cluster-version", "1.13")
    assert res.returncode != 0 and "--cluster-version" in res.stderr and "not supported" in res.stderr
    (tmp_path / "bad.crt").write_text("garbage")
    res = subprocess.run([sys.executable, "-m", "sandgate", "webhook", "--config", str(EXAMPLE_POLICY),
                          "--cert-file", str(tmp_path / "bad.crt"), "--key-file", str(tmp_path / "bad.crt"),
                          "--cluster-version", "1.24", "--port", "1"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode != 0 and "serving certificate" in res.stderr and "Traceback" not in res.stderr
