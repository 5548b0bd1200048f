"""Test helpers importable from any test module: captured wire fixtures in tests/fixtures, the example policy."""

from __future__ import annotations

import json
import os
import subprocess
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_POLICY = REPO / "examples" / "policy.yaml"
# Real kube-apiserver / kube-scheduler 1.24 traffic, kept in the repository (tests/fixtures/README.md).
FIXTURES = REPO / "tests" / "fixtures" / "k8s-1.24"
# Requests no capture exists for, written from the Go types (tests/fixtures/handmade/README.md).
HANDMADE_FIXTURES = REPO / "tests" / "fixtures" / "handmade"


def fixture_path(relative: str, root: Path = FIXTURES) -> Path:
    """Path of a fixture under `root` (the 1.24 capture by default); fails (never skips) when it is missing."""
    path = root / relative
    if not path.is_file():
        pytest.fail(f"captured fixture {path} is missing")
    return path


def load_fixture(relative: str, root: Path = FIXTURES) -> dict:
    """Decode a fixture, e.g. load_fixture("admission/v1-01-create-bare-pod.json")."""
    return json.loads(fixture_path(relative, root).read_text())


class JsonHandler(BaseHTTPRequestHandler):
    """Base of the loopback stand-ins for kube-apiserver: JSON in and out, no access log on stderr."""

    def log_message(self, *args) -> None:
        return None

    def send_json(self, code: int, body: dict, close: bool = False) -> None:
        """Answer `code` with `body` as JSON and a Content-Length (so keep-alive clients read it whole)."""
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def start_watch(self) -> None:
        """Begin a watch answer: chunked, one JSON event per chunk, as kube-apiserver streams it."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def send_event(self, event: dict) -> None:
        """One watch event ({"type": ..., "object": ...}) as its own chunk, flushed at once."""
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_watch(self) -> None:
        """Close the watch stream (the client then re-watches from its last resourceVersion)."""
        self.wfile.write(b"0\r\n\r\n")

    def read_json(self):
        """The request body decoded, or None when there is none."""
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length)) if length else None


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM `proc`, and SIGKILL it if it is still running after `timeout` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def self_signed_localhost(directory: Path, common_name: str = "sandgate-test") -> tuple[Path, Path]:
    """A serving certificate for 127.0.0.1 that is its own CA, and its key: (tls.crt, tls.key) in `directory`."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    crt, pem_key = directory / "tls.crt", directory / "tls.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem_key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return crt, pem_key
