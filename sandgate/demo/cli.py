"""`sandgate demo`: run the webhook and extender for real on a built-in cluster snapshot."""

from __future__ import annotations

import argparse

HELP = "run the real webhook and extender on a built-in edge cluster and print a report (no cluster needed)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the demo command's flags (a contract: add flags, never rename them)."""
    parser.add_argument("--cluster-version", default="1.24", metavar="X.Y",
                        help='Kubernetes version to emulate, e.g. "1.15" for legacy behaviour (default 1.24)')
    parser.add_argument("--pods", type=int, metavar="N", help="schedule N synthetic pods instead of the built-in set")
    parser.add_argument("--html", metavar="FILE", help="also write a report page to FILE")


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit code."""
    from sandgate.demo.main import run_demo

    return run_demo(args)
