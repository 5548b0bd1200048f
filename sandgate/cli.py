"""The `sandgate` command. Each component registers its own subcommand from its `cli` module.

Component cli modules import only argparse-level code at import time and load their heavy modules
inside `run`, so `sandgate --help` stays fast and one broken component cannot break the others.
A command line naming a subcommand imports and registers only that subcommand: whatever another
component's cli module or flags need (gunicorn for the servers' flags, cryptography for certs') stays
out of a long-running process such as the node agent, whose resident memory is budgeted
(docs/benchmarks.md).
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


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with every component's subcommand, or with `only` that one."""
    parser = argparse.ArgumentParser(
        prog="sandgate",
        description="Route untrusted Kubernetes workloads into sandboxed container runtimes.",
    )
    parser.add_argument("--version", action="version", version=f"sandgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        if only is not None and name != only:
            continue
        module = importlib.import_module(module_name)
        sp = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sp)
        sp.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv and argv[0] in SUBCOMMANDS else None)
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
