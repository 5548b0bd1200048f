"""`sandgate certs` through the real command: files, SANs, key type, chain, caBundle, errors."""

from __future__ import annotations

import base64
import ipaddress
import stat
import subprocess
import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from support import REPO


def sandgate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sandgate", "certs", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_generate_writes_ca_chain_sans_and_private_key(tmp_path):
    out = tmp_path / "pki"
    res = sandgate("generate", "--service", "sandgate-webhook", "--namespace", "sandgate-system",
                   "--out", str(out), "--dns", "webhook.example.com", "--ip", "127.0.0.1", "--ip", "::1")
    assert res.returncode == 0, res.stderr
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    leaf = x509.load_pem_x509_certificate((out / "tls.crt").read_bytes())
    key = serialization.load_pem_private_key((out / "tls.key").read_bytes(), password=None)

    assert stat.S_IMODE((out / "tls.key").stat().st_mode) == 0o600
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert key.public_key().public_numbers() == leaf.public_key().public_numbers()

    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [
        "sandgate-webhook", "sandgate-webhook.sandgate-system", "sandgate-webhook.sandgate-system.svc",
        "sandgate-webhook.sandgate-system.svc.cluster.local", "webhook.example.com"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                        ipaddress.ip_address("::1")]

    # The CA can sign, the leaf cannot, and the leaf is for serving.
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is True
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert leaf.issuer == ca.subject
    leaf.verify_directly_issued_by(ca)
    assert leaf.not_valid_before_utc < leaf.not_valid_after_utc <= ca.not_valid_after_utc


def test_ca_bundle_prints_base64_of_ca_crt_on_one_line(tmp_path):
    assert sandgate("generate", "--service", "wh", "--namespace", "ns", "--out", str(tmp_path)).returncode == 0
    res = sandgate("ca-bundle", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("\n") == 1
    assert base64.b64decode(res.stdout.strip(), validate=True) == (tmp_path / "ca.crt").read_bytes()


def test_each_generate_makes_a_new_ca(tmp_path):
    for name in ("a", "b"):
        assert sandgate("generate", "--service", "wh", "--namespace", "ns", "--out", str(tmp_path / name)).returncode == 0
    assert (tmp_path / "a" / "ca.crt").read_bytes() != (tmp_path / "b" / "ca.crt").read_bytes()


def test_ca_bundle_errors_are_clear(tmp_path):
    missing = sandgate("ca-bundle", str(tmp_path / "nope"))
    assert missing.returncode == 1
    assert "no such directory" in missing.stderr and "Traceback" not in missing.stderr

    no_ca = sandgate("ca-bundle", str(tmp_path))
    assert no_ca.returncode == 1 and "ca.crt" in no_ca.stderr and "Traceback" not in no_ca.stderr

    (tmp_path / "ca.crt").write_text("not a certificate")
    garbage = sandgate("ca-bundle", str(tmp_path))
    assert garbage.returncode == 1 and "not a PEM certificate" in garbage.stderr


def test_generate_rejects_a_bad_ip_and_an_unwritable_dir(tmp_path):
    bad_ip = sandgate("generate", "--service", "wh", "--namespace", "ns", "--out", str(tmp_path), "--ip", "10.0.0")
    assert bad_ip.returncode == 1 and '"10.0.0" is not an IPv4 or IPv6 address' in bad_ip.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    unwritable = sandgate("generate", "--service", "wh", "--namespace", "ns", "--out", str(blocker / "sub"))
    assert unwritable.returncode == 1 and "cannot write" in unwritable.stderr and "Traceback" not in unwritable.stderr


def test_renewal_with_ca_dir_keeps_the_ca_that_clients_trust(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert sandgate("generate", "--service", "s", "--namespace", "n", "--out", str(first)).returncode == 0
    assert stat.S_IMODE((first / "ca.key").stat().st_mode) == 0o600
    res = sandgate("generate", "--service", "s", "--namespace", "n", "--out", str(second), "--ca-dir", str(first))
    assert res.returncode == 0, res.stderr
    assert (second / "ca.crt").read_bytes() == (first / "ca.crt").read_bytes()
    assert sandgate("ca-bundle", str(second)).stdout == sandgate("ca-bundle", str(first)).stdout
    ca = x509.load_pem_x509_certificate((first / "ca.crt").read_bytes())
    old = x509.load_pem_x509_certificate((first / "tls.crt").read_bytes())
    new = x509.load_pem_x509_certificate((second / "tls.crt").read_bytes())
    assert new.serial_number != old.serial_number
    new.verify_directly_issued_by(ca)
    assert (second / "tls.key").read_bytes() != (first / "tls.key").read_bytes()


def test_ca_dir_without_a_key_is_a_clear_error(tmp_path):
    (tmp_path / "ca.crt").write_bytes(b"x")
    res = sandgate("generate", "--service", "s", "--namespace", "n", "--out", str(tmp_path / "o"),
                   "--ca-dir", str(tmp_path))
    assert res.returncode == 1 and "cannot read the CA" in res.stderr and "ca.key" in res.stderr
