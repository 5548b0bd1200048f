"""The `sandgate certs` actions: `generate` writes the files, `ca-bundle` prints the caBundle."""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

from cryptography import x509

from certs.generate import CA_FILE, CertError, generate, write


def ca_bundle(directory: str) -> str:
    """Base64 of DIR/ca.crt on one line, after checking it holds a PEM certificate."""
    path = Path(directory)
    if not path.is_dir():
        raise CertError(f"{directory}: no such directory (run `sandgate certs generate --out {directory}` first)")
    ca_path = path / CA_FILE
    try:
        data = ca_path.read_bytes()
    except OSError as exc:
        raise CertError(f"cannot read {ca_path}: {exc.strerror or exc}") from exc
    try:
        x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise CertError(f"{ca_path} is not a PEM certificate: {exc}") from exc
    return base64.b64encode(data).decode("ascii")


def run_command(args: argparse.Namespace) -> int:
    """Run `certs generate` or `certs ca-bundle`; errors print one clear line and return 1."""
    try:
        if args.certs_command == "generate":
            generated = generate(args.service, args.namespace, args.dns, args.ip)
            paths = write(generated, args.out)
            for path in paths.values():
                print(f"wrote {path}")
            return 0
        print(ca_bundle(args.dir))
        return 0
    except CertError as exc:
        print(f"sandgate certs: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"sandgate certs: cannot write to {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
