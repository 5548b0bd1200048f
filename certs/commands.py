"""The `sandgate certs` actions: `generate` writes the files, `ca-bundle` prints the caBundle."""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

from cryptography import x509

from certs.generate import CA_FILE, CertError, generate, read_ca, write


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


def run_install(args: argparse.Namespace) -> int:
    """`certs install`: one JSON log line with what was kept, issued and patched; exit 1 with the reason."""
    import datetime as dt
    import logging

    from kubernetes.client.rest import ApiException
    from kubernetes.dynamic.exceptions import DynamicApiError

    from certs.install import Cluster, InstallError, install
    from sandgate.core import jsonlog
    from sandgate.core.kube import KubeConfigError, load_api_client

    jsonlog.configure("INFO")
    log = logging.getLogger("sandgate.certs")
    try:
        summary = install(Cluster(load_api_client(args.kubeconfig)), args, dt.datetime.now(dt.timezone.utc))
    except (ApiException, DynamicApiError, InstallError, CertError, KubeConfigError) as exc:
        log.error("certificate install failed", extra={"error": getattr(exc, "body", None) or str(exc)})
        return 1
    log.info("certificates installed", extra=summary)
    return 0


def run_command(args: argparse.Namespace) -> int:
    """Run `certs generate`, `certs ca-bundle` or `certs install`; errors print one clear line and return 1."""
    if args.certs_command == "install":
        return run_install(args)
    try:
        if args.certs_command == "generate":
            ca = read_ca(args.ca_dir) if args.ca_dir else None
            generated = generate(args.service, args.namespace, args.dns, args.ip, ca=ca)
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
