"""``edgeloop tokens create|ls|revoke``: API tokens, on the database itself; ``edgeloop audit``:
who changed what, over the API.

Tokens are managed on the database (``--workdir`` or ``--database-url``, as ``edgeloop db``),
not through the API: the first operator token cannot come from a server that refuses every
request without one. The server writes that first token to ``<workdir>/operator.token`` on its
first start. A refusal is one line on stderr and exit 2, as for every command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from edgeloop.cli.output import api_options, over_api, print_json, when
from edgeloop.cli.serve import database_options, database_url
from edgeloop.server.client import ApiClient
from edgeloop.server.schemas import Role

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    Sessions = sessionmaker[Session]

TOKEN_ROLES = (Role.OPERATOR, Role.VIEWER, Role.DEVICE)
"""The roles of tokens people hold (other roles' tokens are made by their own commands)."""


def register(commands: argparse._SubParsersAction) -> None:
    tokens = commands.add_parser(
        "tokens", help="API tokens: create, list, revoke (on the server's database)"
    )
    actions = tokens.add_subparsers(dest="action", required=True)

    create = actions.add_parser("create", help="a new token; its secret is printed this once")
    create.add_argument("name", help="who holds it, e.g. grafana, ci-deploy, alice")
    create.add_argument("--role", required=True, choices=[role.value for role in TOKEN_ROLES])
    create.add_argument("--device", help="a device token: the device id it is bound to")
    create.add_argument(
        "--expires-days", type=_days, help="it stops working after this many days (default never)"
    )
    database_options(create)
    create.set_defaults(run=_on_database(_create))

    listing = actions.add_parser("ls", help="every token, without secrets")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    database_options(listing)
    listing.set_defaults(run=_on_database(_ls))

    revoke = actions.add_parser("revoke", help="stop a token (or every token of a device)")
    revoke.add_argument("id", nargs="?", type=int, help="the token's id (`edgeloop tokens ls`)")
    revoke.add_argument("--device", help="instead: every token of this device")
    database_options(revoke)
    revoke.set_defaults(run=_on_database(_revoke))

    audit = commands.add_parser("audit", help="who changed what through the API, newest first")
    audit.add_argument("--limit", type=int, default=50, help="newest N entries (default 50)")
    audit.add_argument("--actor", help="only changes by this token name")
    audit.add_argument("--action", help="only this action, e.g. rollout.create")
    api_options(audit)
    audit.set_defaults(run=over_api(_audit))


def _on_database(
    command: Callable[[Sessions, argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """Run ``command`` with sessions on the database ``--database-url``/``--workdir`` name
    (brought to the newest schema first, as the server would)."""

    def run(args: argparse.Namespace) -> int:
        from sqlalchemy.exc import SQLAlchemyError

        from edgeloop.server.auth import TokenError
        from edgeloop.server.db import make_engine, make_sessionmaker

        url = database_url(args)
        try:
            engine = make_engine(url)
        except SQLAlchemyError as exc:
            print(f"edgeloop tokens: {url.split('@')[-1]}: {exc}".splitlines()[0], file=sys.stderr)
            return 2
        try:
            return command(make_sessionmaker(engine), args)
        except (TokenError, LookupError) as exc:
            print(f"edgeloop: {exc}", file=sys.stderr)
            return 2
        finally:
            engine.dispose()

    return run


def _create(sessions: Sessions, args: argparse.Namespace) -> int:
    from edgeloop.server.auth import create_token

    secret, token = create_token(
        sessions,
        Role(args.role),
        args.name,
        device_id=args.device,
        expires_in=timedelta(days=args.expires_days) if args.expires_days else None,
    )
    expiry = f", expires {when(token.expires_at)} UTC" if token.expires_at else ""
    bound = f" for device {token.device_id}" if token.device_id else ""
    # The secret alone on stdout, so `TOKEN=$(edgeloop tokens create ...)` takes just it.
    print(
        f"created {token.role} token {token.id} {token.name!r}{bound} ({token.prefix}…){expiry}; "
        "its secret follows, shown this once (send it as `Authorization: Bearer <secret>`, or "
        "set EDGELOOP_TOKEN):",
        file=sys.stderr,
    )
    print(secret)
    return 0


def _ls(sessions: Sessions, args: argparse.Namespace) -> int:
    from edgeloop.server.auth import list_tokens

    tokens = list_tokens(sessions)
    if args.json:
        print_json(tokens)
        return 0
    table = Table(title=f"{len(tokens)} tokens")
    columns = ("id", "name", "role", "device", "prefix", "created", "last used", "expires",
               "revoked")  # fmt: skip
    for column in columns:
        table.add_column(column)
    for token in tokens:
        status = token.status()
        table.add_row(
            str(token.id),
            token.name if status == "active" else f"[dim]{token.name}[/]",
            token.role,
            token.device_id or "-",
            f"{token.prefix}…",
            when(token.created_at),
            when(token.last_used_at),
            when(token.expires_at) if status != "expired" else f"[red]{when(token.expires_at)}[/]",
            f"[red]{when(token.revoked_at)}[/]" if token.revoked_at else "-",
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    return 0


def _revoke(sessions: Sessions, args: argparse.Namespace) -> int:
    from edgeloop.server.auth import TokenError, revoke_tokens

    if (args.id is None) == (args.device is None):
        raise TokenError("tokens revoke needs a token ID, or --device DEVICE for all of its tokens")
    count = revoke_tokens(sessions, token_id=args.id, device_id=args.device)
    what = f"token {args.id}" if args.id is not None else f"the tokens of device {args.device}"
    if count == 0:
        print(f"{what}: nothing to revoke (revoked already, or none)")
    else:
        print(f"revoked {what} ({count}); requests with it are refused from now on (401)")
    return 0


def _audit(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    page = client.audit(limit=args.limit, actor=args.actor, action=args.action)
    if args.json:
        print_json(page)
        return 0
    table = Table(title=f"audit trail ({page.total} entries, newest first)")
    for column in ("when", "who", "role", "action", "target", "detail"):
        table.add_column(column)
    for entry in page.items:
        detail = ", ".join(f"{key}={value}" for key, value in entry.detail.items())
        table.add_row(
            when(entry.at),
            entry.actor,
            entry.role or "-",
            entry.action,
            entry.target,
            detail[:120],
        )
    console.print(table)
    return 0


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not 0 < days <= 100 * 365:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of days, more than 0")
    return days
