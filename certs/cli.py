"""`sandgate certs`: generate a CA and serving certificate, print the caBundle."""

from __future__ import annotations

import argparse

HELP = "generate serving certificates and print the webhook caBundle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register `certs generate` and `certs ca-bundle` (a contract: add flags, never rename them)."""
    sub = parser.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    gen = sub.add_parser("generate", help="write ca.crt, tls.crt and tls.key (ECDSA P-256 by default)")
    gen.add_argument("--service", required=True, metavar="NAME", help="Service name (SANs NAME, NAME.NS, NAME.NS.svc, ...)")
    gen.add_argument("--namespace", required=True, metavar="NS", help="Service namespace")
    gen.add_argument("--out", required=True, metavar="DIR", help="output directory")
    gen.add_argument("--dns", action="append", default=[], metavar="NAME", help="extra DNS SAN (repeatable)")
    gen.add_argument("--ip", action="append", default=[], metavar="ADDR", help="extra IP SAN (repeatable)")
    gen.add_argument("--ca-dir", metavar="DIR", help="sign with the CA kept in DIR/ca.crt + DIR/ca.key instead of a "
                     "new one (renewal: caBundle and the scheduler's caData stay as they are)")
    bundle = sub.add_parser("ca-bundle", help="print the base64 caBundle of DIR/ca.crt")
    bundle.add_argument("dir", metavar="DIR")
    install = sub.add_parser("install", help="in a cluster: keep the CA, the webhooks' caBundle and the serving "
                                             "certificates valid (the certgen Job and the renewal CronJob)")
    from certs.install import add_arguments as install_arguments

    install_arguments(install)
    install.add_argument("--kubeconfig", help="kubeconfig (default: the in-cluster service account)")


def run(args: argparse.Namespace) -> int:
    """Run the chosen certs action; returns the exit code."""
    from certs.commands import run_command

    return run_command(args)
