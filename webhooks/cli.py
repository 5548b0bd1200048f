"""`sandgate webhook`: serve the admission webhooks with gunicorn over TLS."""

from __future__ import annotations

import argparse

HELP = "serve the mutating and validating admission webhooks (gunicorn, TLS)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the webhook command's flags (a contract: add flags, never rename them)."""
    parser.add_argument("--config", required=True, metavar="POLICY", help="SandboxPolicy file (reloaded on change)")
    parser.add_argument("--cert-file", required=True, metavar="CRT", help="serving certificate (PEM), reloaded on change")
    parser.add_argument("--key-file", required=True, metavar="KEY", help="serving private key (PEM)")
    parser.add_argument("--host", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8443, help="listen port (default 8443)")
    parser.add_argument("--cluster-version", metavar="X.Y",
                        help="Kubernetes version; overrides the policy's clusterVersion (no API call needed)")
    parser.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig (default: in-cluster service account)")


def run(args: argparse.Namespace) -> int:
    """Start the server; returns the exit code."""
    from webhooks.server import serve

    return serve(args)
