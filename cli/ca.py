"""``edgeloop ca init|issue|revoke|ls``: the fleet's certificate authority, on this machine.

These commands work on files (``edgeloop.server.pki``), not through the control plane: the
CA key should live where the server cannot reach it. A refusal is one line on stderr and
exit 2, as for the commands that talk to the server.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgeloop.cli.output import when
from edgeloop.server.pki import (
    LEAF_VALIDITY,
    SERVER_COMMON_NAME,
    SERVER_HOSTS,
    CaDir,
    CertKind,
    PkiError,
    init_ca,
    issue,
    load_index,
    revoke,
)

DEFAULT_CA_DIR = "/etc/edgeloop/pki"
"""Where ``deploy/mosquitto-secure.conf`` reads ca.crt, crl.pem and the broker's files."""


def register(commands: argparse._SubParsersAction) -> None:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--dir",
        type=Path,
        default=Path(os.environ.get("EDGELOOP_CA_DIR", DEFAULT_CA_DIR)),
        help=f"the CA directory (env EDGELOOP_CA_DIR, default {DEFAULT_CA_DIR})",
    )
    where.add_argument(
        "--ca-key",
        type=Path,
        default=Path(os.environ["EDGELOOP_CA_KEY"]) if os.environ.get("EDGELOOP_CA_KEY") else None,
        help="the CA's private key, if not DIR/ca.key, e.g. on an offline disk "
        "(env EDGELOOP_CA_KEY)",
    )
    ca = commands.add_parser("ca", help="the fleet's certificate authority (broker identities)")
    actions = ca.add_subparsers(dest="action", required=True)

    init = actions.add_parser(
        "init", parents=[where], help="create the CA: key, certificate, empty CRL"
    )
    init.add_argument("--name", default="edgeloop fleet CA", help="the CA's common name")
    init.set_defaults(run=_on_ca(_init))

    issued = actions.add_parser(
        "issue", parents=[where], help="a key and certificate for a device or the server"
    )
    issued.add_argument("name", help=f"device id, or the server's name ({SERVER_COMMON_NAME})")
    issued.add_argument(
        "--kind", choices=[kind.value for kind in CertKind], default=CertKind.DEVICE.value
    )
    issued.add_argument(
        "--host",
        action="append",
        default=[],
        help="server: an IP address or DNS name clients reach the broker by (repeat; "
        f"default {', '.join(SERVER_HOSTS)})",
    )
    issued.add_argument(
        "--days", type=int, default=LEAF_VALIDITY.days, help="validity in days (default 5 y)"
    )
    issued.set_defaults(run=_on_ca(_issue))

    revoked = actions.add_parser(
        "revoke", parents=[where], help="put a certificate on the revocation list"
    )
    revoked.add_argument("target", help="a certificate's name (CN) or serial (hex)")
    revoked.set_defaults(run=_on_ca(_revoke))

    listing = actions.add_parser("ls", parents=[where], help="certificates this CA issued")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(run=_on_ca(_ls))


def _on_ca(command: Callable[[CaDir, argparse.Namespace], int]) -> Callable[..., int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(CaDir.at(args.dir, args.ca_key), args)
        except PkiError as exc:
            print(f"edgeloop: {exc}", file=sys.stderr)
            return 2

    return run


def _init(ca: CaDir, args: argparse.Namespace) -> int:
    cert = init_ca(ca, args.name)
    print(
        f"CA {args.name!r} in {ca.root}, until {cert.not_valid_after_utc:%Y-%m-%d}; its key is "
        f"{ca.key} (mode 0600: keep it there or offline, and back it up)"
    )
    return 0


def _issue(ca: CaDir, args: argparse.Namespace) -> int:
    cert = issue(
        ca,
        args.name,
        CertKind(args.kind),
        hosts=args.host or SERVER_HOSTS,
        validity=timedelta(days=args.days),
    )
    print(
        f"issued {cert.kind} {cert.common_name} (serial {cert.serial}, until "
        f"{cert.not_after:%Y-%m-%d}): {ca.issued_cert(cert.common_name)} and "
        f"{ca.issued_key(cert.common_name)}; install both on its owner with {ca.cert}"
    )
    return 0


def _revoke(ca: CaDir, args: argparse.Namespace) -> int:
    revoked = revoke(ca, args.target)
    if not revoked:
        print(f"{args.target} was revoked already; {ca.crl} unchanged")
        return 0
    for cert in revoked:
        print(f"revoked {cert.kind} {cert.common_name} (serial {cert.serial})")
    print(
        f"{ca.crl} rewritten. Mosquitto reads it at start and on SIGHUP: run "
        "`systemctl reload mosquitto`. A connection already open stays open until it drops; "
        "`systemctl restart mosquitto` ends it at once (every client reconnects)."
    )
    return 0


def _ls(ca: CaDir, args: argparse.Namespace) -> int:
    index = load_index(ca)
    if args.json:
        print(json.dumps(index.model_dump(mode="json")["certs"], indent=1))
        return 0
    table = Table(title=f"{len(index.certs)} certificates, CRL #{index.crl_number}")
    for column in ("name", "kind", "serial", "from", "until", "status"):
        table.add_column(column)
    for cert in index.certs:
        status = cert.status()
        table.add_row(
            cert.common_name,
            cert.kind,
            cert.serial,
            when(cert.not_before),
            when(cert.not_after),
            status if status == "active" else f"[red]{status}[/]",
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    return 0
