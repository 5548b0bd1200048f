"""Build a private CA and a serving certificate for an in-cluster Service with `cryptography`.

The webhook and the extender are reached by the API server / scheduler through a Service DNS name,
so the leaf carries every name those clients may use (NAME, NAME.NS, NAME.NS.svc,
NAME.NS.svc.cluster.local) plus operator-supplied extras. The CA is self-signed and only ever
signs this leaf; its certificate is what goes into `caBundle` / `tlsConfig.caData`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_FILE = "ca.crt"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"

# The CA outlives several leaf rotations; the leaf stays well under the 825-day limit clients enforce.
CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=365)
# Tolerate clock skew between the machine that generates and the API server that verifies.
BACKDATE = dt.timedelta(minutes=5)


class CertError(ValueError):
    """Bad input for certificate generation (e.g. an IP SAN that is not an address)."""


@dataclass(frozen=True)
class Generated:
    """PEM bytes of the generated CA certificate, serving certificate and serving key."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def service_dns_names(service: str, namespace: str, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The Service's DNS names in the order clients try them, then the extras, without duplicates."""
    names = [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
             f"{service}.{namespace}.svc.cluster.local", *extra]
    return list(dict.fromkeys(names))


def _ip_addresses(ips: list[str] | tuple[str, ...]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    out = []
    for text in ips:
        try:
            out.append(ipaddress.ip_address(text))
        except ValueError as exc:
            raise CertError(f'--ip "{text}" is not an IPv4 or IPv6 address') from exc
    return out


def generate(service: str, namespace: str, dns: list[str] | tuple[str, ...] = (),
             ips: list[str] | tuple[str, ...] = (), now: dt.datetime | None = None) -> Generated:
    """A new ECDSA P-256 CA and a leaf for `service`.`namespace` signed by it."""
    if not service or not namespace:
        raise CertError("--service and --namespace must not be empty")
    now = (now or dt.datetime.now(dt.timezone.utc)) - BACKDATE
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"sandgate-ca {service}.{namespace}")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    names = service_dns_names(service, namespace, dns)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ip) for ip in _ip_addresses(ips)]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[2])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + LEAF_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return Generated(
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
        cert_pem=leaf.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically (temp file + rename) so a running server never reads half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write(generated: Generated, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ca.crt, tls.crt (0644) and tls.key (0600) into `out_dir` (created if missing)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {CA_FILE: out / CA_FILE, CERT_FILE: out / CERT_FILE, KEY_FILE: out / KEY_FILE}
    # Key first: a server watching tls.crt must never pair a new certificate with the old key.
    _write(paths[KEY_FILE], generated.key_pem, 0o600)
    _write(paths[CERT_FILE], generated.cert_pem, 0o644)
    _write(paths[CA_FILE], generated.ca_pem, 0o644)
    return paths
