"""``edgeloop apps ls|assign|unassign|plan``: applications, and which devices run which.

A model version belongs to one application (``--app`` when it is pushed); a device runs one
(its config's ``application``, or an operator's assignment by tag, which wins). The planner,
rollouts and the loop offer a device only versions of its application.
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from edgeloop.cli.output import api_options, over_api, print_json
from edgeloop.server.client import ApiClient, ApiError


def register(commands: argparse._SubParsersAction) -> None:
    apps = commands.add_parser("apps", help="applications: which devices run which models")
    apps.add_argument("action", choices=["ls", "assign", "unassign", "plan"])
    apps.add_argument(
        "application",
        nargs="?",
        help="assign: the application the tagged devices run; plan: only its devices",
    )
    apps.add_argument("--tag", help="assign/unassign: the device tag, e.g. line:3")
    api_options(apps)
    apps.set_defaults(run=over_api(_apps))


def _apps(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    if args.action == "assign":
        if not args.application or not args.tag:
            raise ApiError("apps assign needs an APPLICATION and --tag TAG")
        assigned = client.assign_application(args.application, args.tag)
        if args.json:
            print_json(assigned)
            return 0
        print(
            f"devices tagged {assigned.tag!r} run {assigned.application!r} "
            f"({assigned.devices} now, and those that register with the tag later)"
        )
        return 0
    if args.action == "unassign":
        if not args.tag:
            raise ApiError("apps unassign needs --tag TAG")
        client.unassign_application(args.tag)
        print(f"devices tagged {args.tag!r} run what their config declares again")
        return 0
    if args.action == "plan":
        entries = client.plan(args.application)
        print(f"re-planned {'the fleet' if not args.application else repr(args.application)}")
        if args.json:
            print_json(entries)
        return 0
    rows = client.applications()
    if args.json:
        print_json(rows)
        return 0
    table = Table(title=f"{len(rows)} applications")
    for column in ("application", "devices", "online", "live versions", "assigned tags"):
        table.add_column(column, justify="right" if column in ("devices", "online") else "left")
    for row in rows:
        table.add_row(
            row.name,
            str(row.devices),
            str(row.online),
            ", ".join(row.versions) or "-",
            ", ".join(row.tags) or "-",
        )
    console.print(table)
    return 0
