"""Serving over TLS (1.2 minimum)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import urllib.request

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sandgate.core.serving import build_context
from support import load_fixture


@pytest.fixture
def tls_files(tmp_path):
    """A self-signed serving certificate for 127.0.0.1 (it is its own CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sandgate-extender")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    crt, pem_key = tmp_path / "tls.crt", tmp_path / "tls.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem_key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return crt, pem_key


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
