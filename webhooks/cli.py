"""`sandgate webhook`: serve the admission webhooks with gunicorn over TLS."""

from __future__ import annotations

import argparse

from sandgate.core import serving

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
    parser.add_argument("--workers", type=_positive, default=2, metavar="N",
                        help="gunicorn worker processes (default 2: one can restart while the other serves)")
    parser.add_argument("--threads", type=_positive, default=4, metavar="N",
                        help="request threads per worker (default 4); kept-alive connections hold no thread")
    parser.add_argument("--no-namespace-watch", action="store_true",
                        help="do not watch namespaces: only the /mutate/<profile> and /validate/<profile> paths "
                             "route; /mutate and /validate without a profile deny")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="log level (default info); logs are JSON lines on stderr")
    serving.add_arguments(parser)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    """Start the server; returns the exit code."""
    from webhooks.server import serve

    return serve(args)
