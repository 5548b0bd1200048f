"""`sandgate agent`: the per-node DaemonSet agent."""

from __future__ import annotations

import argparse

HELP = "discover, configure and advertise this node's sandbox runtimes (DaemonSet agent)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the agent command's flags (a contract: add flags, never rename them)."""
    parser.add_argument("--config", required=True, metavar="POLICY", help="SandboxPolicy file (reloaded on change)")
    parser.add_argument("--node-name", required=True, metavar="NAME", help="this node's name (downward API spec.nodeName)")
    parser.add_argument("--root", default="/", help="host filesystem root (default /)")
    parser.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig (default: in-cluster service account)")
    parser.add_argument("--interval", type=float, default=30, help="seconds between cycles (default 30)")
    parser.add_argument("--configure", action="store_true", help="add missing runtime handlers to containerd's or CRI-O's config "
                                                                 "(backed up, reloaded, rolled back if not ready)")
    parser.add_argument("--once", action="store_true", help="run one cycle and exit")
    parser.add_argument("--dry-run", action="store_true",
                        help="with --once: change nothing; print the Node patch and config changes as JSON")
    parser.add_argument("--drop-in-only", action="store_true",
                        help="with --once --configure: the one-shot init container mode; write only agent.dropInDir "
                             "(agent.crioDropInDir on CRI-O), never contact the Kubernetes API (no token needed), "
                             "publish nothing; exit 0 configured or nothing to do, 1 refused or rolled back")
    parser.add_argument("--node-allocatable-memory", metavar="QUANTITY",
                        help="node allocatable memory (skips reading the Node from the API)")
    parser.add_argument("--metrics-port", type=int, default=9464, help="port of /metrics and /healthz (default 9464)")
    parser.add_argument("--metrics-host", default="0.0.0.0", help="address of /metrics and /healthz (default 0.0.0.0)")
    parser.add_argument("--device-plugin-dir", default="/var/lib/kubelet/device-plugins", metavar="DIR",
                        help="kubelet device plugin directory: advertise sandbox slots as the extended resources "
                             "sandgate.io/sandbox-<handler> (default /var/lib/kubelet/device-plugins; '' turns it off)")
    parser.add_argument("--api-attempts", type=int, default=5,
                        help="attempts per API call before a cycle gives up (backoff with jitter; default 5)")


def run(args: argparse.Namespace) -> int:
    """Run the agent; returns the exit code."""
    from node_agent.skip_kubernetes_init import skip_kubernetes_package_init

    skip_kubernetes_package_init()  # before anything imports kubernetes (see node_agent/skip_kubernetes_init.py)
    from node_agent.main import run_agent

    return run_agent(args)
