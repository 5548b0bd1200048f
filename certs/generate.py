"""Build a private CA and a serving certificate for an in-cluster Service with `cryptography`.

The webhook and the extender are reached by the API server / scheduler through a Service DNS name,
so the leaf carries every name those clients may use (NAME, NAME.NS, NAME.NS.svc,
NAME.NS.svc.cluster.local) plus operator-supplied extras. The CA is self-signed, long-lived
(CA_VALIDITY) and kept: it signs each renewed leaf, so its certificate, which goes into `caBundle` /
`tlsConfig.caData`, is set up once and does not change when leaves are renewed.
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
CA_KEY_FILE = "ca.key"
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
    ca_key_pem: bytes = b""


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


@dataclass(frozen=True)
class CA:
    """A CA certificate and its private key, PEM. Kept (Secret sandgate-ca, or ca.key beside ca.crt), it
    signs every later leaf, so what the webhooks' caBundle and kube-scheduler's caData trust never changes."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertError("the CA key is not an ECDSA key")
        if key.public_key().public_numbers() != self.certificate.public_key().public_numbers():
            raise CertError("the CA key does not belong to the CA certificate")
        return key


def new_ca(common_name: str, now: dt.datetime | None = None) -> CA:
    """A new self-signed ECDSA P-256 CA, valid CA_VALIDITY, allowed to sign leaves only."""
    now = (now or dt.datetime.now(dt.timezone.utc)) - BACKDATE
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return CA(ca_cert.public_bytes(serialization.Encoding.PEM),
              ca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def issue(ca: CA, service: str, namespace: str, dns: list[str] | tuple[str, ...] = (),
          ips: list[str] | tuple[str, ...] = (), now: dt.datetime | None = None) -> Generated:
    """A new leaf key and certificate for `service`.`namespace`, signed by `ca`."""
    if not service or not namespace:
        raise CertError("--service and --namespace must not be empty")
    now = (now or dt.datetime.now(dt.timezone.utc)) - BACKDATE
    ca_cert = ca.certificate
    ca_key = ca.private_key()
    key = ec.generate_private_key(ec.SECP256R1())
    names = service_dns_names(service, namespace, dns)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ip) for ip in _ip_addresses(ips)]
    not_after = min(now + LEAF_VALIDITY, ca_cert.not_valid_after_utc)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[2])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return Generated(
        ca_pem=ca.cert_pem,
        cert_pem=leaf.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
        ca_key_pem=ca.key_pem,
    )


def generate(service: str, namespace: str, dns: list[str] | tuple[str, ...] = (),
             ips: list[str] | tuple[str, ...] = (), now: dt.datetime | None = None,
             ca: CA | None = None) -> Generated:
    """A leaf for `service`.`namespace`, signed by `ca`, or by a new ECDSA P-256 CA when none is given."""
    if not service or not namespace:
        raise CertError("--service and --namespace must not be empty")
    return issue(ca or new_ca(f"sandgate-ca {service}.{namespace}", now), service, namespace, dns, ips, now)


def read_ca(directory: str | os.PathLike) -> CA:
    """The CA kept in DIR/ca.crt and DIR/ca.key (as `certs generate` writes them)."""
    folder = Path(directory)
    try:
        ca = CA((folder / CA_FILE).read_bytes(), (folder / CA_KEY_FILE).read_bytes())
    except OSError as exc:
        raise CertError(f"cannot read the CA: {exc.filename}: {exc.strerror or exc}") from exc
    try:
        ca.private_key()
    except ValueError as exc:
        raise CertError(f"{folder}: not a CA certificate and key pair: {exc}") from exc
    return ca


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
    """Write ca.crt, tls.crt (0644), tls.key and ca.key (0600) into `out_dir` (created if missing).

    ca.key is kept so that `certs generate --ca-dir` can renew the leaf under the same CA: what
    clients trust (caBundle, the scheduler's caData) then never changes on renewal.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {CA_FILE: out / CA_FILE, CERT_FILE: out / CERT_FILE, KEY_FILE: out / KEY_FILE}
    if generated.ca_key_pem:
        paths[CA_KEY_FILE] = out / CA_KEY_FILE
        _write(paths[CA_KEY_FILE], generated.ca_key_pem, 0o600)
    # Key first: a server watching tls.crt must never pair a new certificate with the old key.
    _write(paths[KEY_FILE], generated.key_pem, 0o600)
    _write(paths[CERT_FILE], generated.cert_pem, 0o644)
    _write(paths[CA_FILE], generated.ca_pem, 0o644)
    return paths
