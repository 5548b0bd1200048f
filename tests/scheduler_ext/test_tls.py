"""Serving over TLS (1.2 minimum)."""

from __future__ import annotations

import ssl
import urllib.request

import pytest
import requests
from cryptography import x509

from sandgate.core.serving import build_context
from support import load_fixture


def test_serves_https_with_tls_1_2_minimum(extender, k8s, tls_files, tmp_path):
    crt, key = tls_files
    nodes = k8s.manifest_nodes()
    server = extender(k8s.snapshot_list(nodes, k8s.fresh_leases(nodes)), "--cert-file", str(crt),
                      "--key-file", str(key), tls=crt)
    request = load_fixture("extender/filter-ncc-true-runv-pod.json")
    body = requests.post(f"{server.url}/filter", json=request, verify=str(crt), timeout=10).json()
    assert body["NodeNames"] == request["NodeNames"]
    # kube-scheduler's Go client may stop at TLS 1.2: the server must accept it
    tls12 = ssl.create_default_context(cafile=str(crt))
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with urllib.request.urlopen(f"{server.url}/healthz", context=tls12, timeout=5) as resp:
        assert resp.read() == b"ok\n"


def test_tls_context_refuses_versions_before_1_2(tls_files):
    context = build_context(*map(str, tls_files))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_cert_and_key_go_together(extender, k8s, tls_files):
    with pytest.raises(AssertionError, match="--cert-file and --key-file go together"):
        extender(k8s.snapshot_list(k8s.manifest_nodes()), "--cert-file", str(tls_files[0]))


def test_metrics_carry_the_serving_certificates_expiry(extender, k8s, tls_files):
    crt, key = tls_files
    nodes = k8s.manifest_nodes()
    server = extender(k8s.snapshot_list(nodes, k8s.fresh_leases(nodes)), "--cert-file", str(crt),
                      "--key-file", str(key), tls=crt)
    text = requests.get(f"{server.url}/metrics", verify=str(crt), timeout=10).text
    expected = x509.load_pem_x509_certificate(crt.read_bytes()).not_valid_after_utc.timestamp()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("sandgate_certificate_expiry_timestamp_seconds ")]
    assert float(line.split()[1]) == expected
