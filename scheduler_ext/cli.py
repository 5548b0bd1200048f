"""`sandgate extender`: serve the kube-scheduler extender."""

from __future__ import annotations

import argparse

from sandgate.core import serving

HELP = "serve the kube-scheduler extender (filter, prioritize, preempt) for sandboxed pods"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the extender command's flags (a contract: add flags, never rename them)."""
    parser.add_argument("--config", required=True, metavar="POLICY", help="SandboxPolicy file (reloaded on change)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--snapshot", metavar="FILE",
                        help="serve from a Kubernetes List (YAML/JSON, as kubectl get nodes,pods,leases -A -o yaml)")
    source.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig (default: in-cluster service account)")
    parser.add_argument("--host", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8888, help="listen port (default 8888)")
    parser.add_argument("--cert-file", metavar="CRT", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--key-file", metavar="KEY", help="private key for --cert-file (PEM)")
    parser.add_argument("--cluster-version", metavar="X.Y",
                        help="Kubernetes version; overrides the policy's clusterVersion (needed in snapshot mode "
                             "unless the policy or the snapshot's kubelet versions say it)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                        help="log level (default info)")
    # Accepted so that upgraded Deployments keep starting; the extender no longer binds, so every
    # replica answers every verb and there is nothing to elect (docs/extender.md, "Upgrading").
    parser.add_argument("--leader-election", action=argparse.BooleanOptionalAction, default=False,
                        help="ignored: the extender no longer binds, every replica serves every verb")
    parser.add_argument("--leader-election-namespace", metavar="NS", help="ignored (see --leader-election)")
    parser.add_argument("--threads", type=int, default=8, help="request threads of the server (default 8)")
    serving.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Start the extender; returns the exit code."""
    from scheduler_ext.server import serve

    return serve(args)
