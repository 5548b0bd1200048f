"""The `sandgate` command. Each component registers its own subcommand from its `cli` module.

Component cli modules import only argparse-level code at import time and load their heavy modules
inside `run`, so `sandgate --help` stays fast and one broken component cannot break the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sandgate import __version__

# subcommand -> module exposing add_arguments(parser) and run(args) -> int, plus HELP.
SUBCOMMANDS = {
    "webhook": "webhooks.cli",
    "certs": "certs.cli",
    "extender": "scheduler_ext.cli",
    "agent": "node_agent.cli",
    "demo": "sandgate.demo.cli",
}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every component's subcommand."""
    parser = argparse.ArgumentParser(
        prog="sandgate",
        description="Route untrusted Kubernetes workloads into sandboxed container runtimes.",
    )
    parser.add_argument("--version", action="version", version=f"sandgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sp = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sp)
        sp.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
