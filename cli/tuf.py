"""``edgeloop tuf init|status|rotate|rotate-root|resign-root``: the signed-update repository.

These work on files (``edgeloop.server.tuf_repo``), not through the control plane: the root
key is offline and only these commands read it, while the server holds the online keys
(targets, snapshot, timestamp) and re-signs the timestamp itself. A refusal is one line on
stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgeloop.cli.output import when

DEFAULT_TUF_DIR = ".edgeloop/server/tuf"


def register(commands: argparse._SubParsersAction) -> None:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--dir",
        type=Path,
        default=Path(os.environ.get("EDGELOOP_TUF_DIR", DEFAULT_TUF_DIR)),
        help=f"the repository (env EDGELOOP_TUF_DIR; default {DEFAULT_TUF_DIR}, which "
        "`edgeloop serve --workdir .edgeloop/server` uses)",
    )
    root_key = argparse.ArgumentParser(add_help=False)
    root_key.add_argument(
        "--root-key",
        type=Path,
        required=True,
        help="the root private key: kept offline, outside --dir (e.g. a removable disk)",
    )
    tuf = commands.add_parser("tuf", help="the signed-update repository (The Update Framework)")
    actions = tuf.add_subparsers(dest="action", required=True)
    init = actions.add_parser(
        "init",
        parents=[where, root_key],
        help="create the repository: root key (to --root-key), online keys, root v1",
    )
    init.set_defaults(run=_guarded(_init))
    status = actions.add_parser("status", parents=[where], help="versions, expiries, targets")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=_guarded(_status))
    rotate = actions.add_parser(
        "rotate",
        parents=[where, root_key],
        help="replace an online key (a new root version names it)",
    )
    rotate.add_argument("role", choices=["targets", "snapshot", "timestamp"])
    rotate.set_defaults(run=_guarded(_rotate))
    rotate_root = actions.add_parser(
        "rotate-root",
        parents=[where, root_key],
        help="replace the root key: the new root is signed by the old and the new key",
    )
    rotate_root.add_argument("--new-root-key", type=Path, required=True)
    rotate_root.set_defaults(run=_guarded(_rotate_root))
    resign = actions.add_parser(
        "resign-root", parents=[where, root_key], help="renew root's expiry (same keys)"
    )
    resign.set_defaults(run=_guarded(_resign_root))


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from edgeloop.server.tuf_repo import TufRepoError

        try:
            return command(args)
        except TufRepoError as exc:
            print(f"edgeloop: {exc}", file=sys.stderr)
            return 2

    return run


def _init(args: argparse.Namespace) -> int:
    from edgeloop.server.tuf_repo import TufRepository

    TufRepository.init(args.dir, args.root_key)
    print(f"repository in {args.dir}; root key at {args.root_key}: move it offline now")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from edgeloop.server.tuf_repo import TufRepository

    TufRepository.open(args.dir).rotate_online_key(args.role, args.root_key)
    print(f"rotated the {args.role} key; devices trust the new one from their next refresh")
    return 0


def _rotate_root(args: argparse.Namespace) -> int:
    from edgeloop.server.tuf_repo import TufRepository

    TufRepository.open(args.dir).rotate_root_key(args.root_key, args.new_root_key)
    print(f"rotated the root key: new key at {args.new_root_key}; destroy {args.root_key}")
    return 0


def _resign_root(args: argparse.Namespace) -> int:
    from edgeloop.server.tuf_repo import TufRepository

    version = TufRepository.open(args.dir).resign_root(args.root_key)
    print(f"root v{version} signed")
    return 0


def _status(args: argparse.Namespace) -> int:
    from tuf.api.metadata import Metadata

    from edgeloop.server.tuf_repo import TufRepository

    repo = TufRepository.open(args.dir)
    meta = repo.metadata_dir
    timestamp = Metadata.from_bytes(repo.metadata_bytes("timestamp.json")).signed
    snapshot_version = timestamp.snapshot_meta.version
    snapshot = Metadata.from_bytes(repo.metadata_bytes(f"{snapshot_version}.snapshot.json"))
    targets_version = snapshot.signed.meta["targets.json"].version
    targets = Metadata.from_bytes(repo.metadata_bytes(f"{targets_version}.targets.json"))
    root = Metadata.from_bytes((meta / "root.json").read_bytes()).signed
    roles = [
        ("root", root.version, root.expires),
        ("targets", targets.signed.version, targets.signed.expires),
        ("snapshot", snapshot.signed.version, snapshot.signed.expires),
        ("timestamp", timestamp.version, timestamp.expires),
    ]
    listed = targets.signed.targets
    if args.json:
        print(
            json.dumps(
                {
                    "roles": [
                        {"role": r, "version": v, "expires": e.isoformat()} for r, v, e in roles
                    ],
                    "targets": {
                        path: {"length": t.length, "sha256": t.hashes.get("sha256")}
                        for path, t in listed.items()
                    },
                },
                indent=1,
            )
        )
        return 0
    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table("role", "version", "expires")
    for role, version, expires in roles:
        table.add_row(role, str(version), when(expires))
    console.print(table)
    console.print(f"{len(listed)} targets signed")
    return 0
