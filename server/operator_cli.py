"""Operator commands over the REST API: ``edgeloop devices ls``, ``edgeloop rollout ...``.

Everything goes through :class:`ApiClient` (HTTP), so these commands work from any machine that
reaches the control plane. Output is a rich table, or JSON with ``--json``; a refused request
prints ``edgeloop: <the server's reason>`` and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from .client import ApiClient, ApiError

DEFAULT_SERVER = "http://127.0.0.1:8000"


def add_commands(commands: argparse._SubParsersAction) -> None:
    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--server",
            default=os.environ.get("EDGELOOP_SERVER", DEFAULT_SERVER),
            help="control plane URL (env EDGELOOP_SERVER)",
        )
        sub.add_argument("--json", action="store_true", help="print JSON instead of a table")

    devices = commands.add_parser("devices", help="the device registry")
    devices.add_argument("action", choices=["ls"])
    devices.add_argument("--profile", help="only devices of this profile")
    common(devices)

    rollout = commands.add_parser("rollout", help="staged rollouts of a model version")
    rollout.add_argument(
        "action", choices=["create", "status", "pause", "resume", "cancel", "rollback"]
    )
    rollout.add_argument("subject", nargs="?", help="create: MODEL (name:version); else: ID")
    rollout.add_argument("--profile", help="create: target this device profile")
    rollout.add_argument("--tag", action="append", default=[], help="create: target tag (repeat)")
    rollout.add_argument("--device", action="append", help="create: target device id (repeat)")
    rollout.add_argument("--waves", default="10%,50%,100%", help="create: e.g. 1%%,10%%,100%%")
    rollout.add_argument("--max-failure-rate", type=float, default=0.0)
    rollout.add_argument("--timeout", type=float, default=900, help="create: seconds per wave")
    common(rollout)


def run(args: argparse.Namespace) -> int:
    client = ApiClient(args.server)
    console = Console(width=None if sys.stdout.isatty() else 160)
    try:
        if args.command == "devices":
            return _devices(client, args, console)
        return _rollout(client, args, console)
    except ApiError as exc:
        print(f"edgeloop: {exc}", file=sys.stderr)
        return 2


def _devices(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    rows = [r for r in client.fleet() if not args.profile or r["profile"]["name"] == args.profile]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    table = Table(title=f"{len(rows)} devices")
    for column in ("device", "profile", "online", "phase", "desired", "running", "p95 ms"):
        table.add_column(column)
    for row in rows:
        report = row["report"] or {}
        latency = report.get("latency") or {}
        table.add_row(
            row["device_id"],
            row["profile"]["name"],
            "yes" if row["online"] else "no",
            row["phase"],
            f"{row['desired_model'] or '-'} (rev {row['desired_revision']})",
            report.get("running") or "-",
            f"{latency['p95_ms']:.3f}" if latency else "-",
        )
    console.print(table)
    return 0


def _rollout(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    if args.action == "create":
        if not args.subject:
            raise ApiError("rollout create needs a MODEL, e.g. digits-cnn:2-int8")
        target: dict[str, Any] = {"tags": args.tag}
        if args.profile:
            target["profile"] = args.profile
        if args.device:
            target["devices"] = args.device
        status = client.create_rollout(
            args.subject,
            target=target,
            waves=[w.strip() for w in args.waves.split(",") if w.strip()],
            criteria={"max_failure_rate": args.max_failure_rate, "wave_timeout_s": args.timeout},
        )
    elif args.action == "status" and not args.subject:
        page = client.rollouts(limit=50)
        if args.json:
            print(json.dumps(page, indent=1))
            return 0
        table = Table(title=f"rollouts ({page['total']} in all, newest first)")
        for column in ("id", "model", "state", "wave", "reason"):
            table.add_column(column)
        for item in page["items"]:
            table.add_row(
                str(item["id"]),
                item["model"],
                item["state"],
                f"{item['current_wave']}/{len(item['waves'])}",
                item["reason"],
            )
        console.print(table)
        return 0
    else:
        if not args.subject or not args.subject.isdigit():
            raise ApiError(f"rollout {args.action} needs a rollout ID (a number)")
        rollout_id = int(args.subject)
        if args.action == "status":
            status = client.rollout(rollout_id)
        else:
            status = client.rollout_action(rollout_id, args.action)
    if args.json:
        print(json.dumps(status, indent=1))
        return 0
    _print_status(status, console)
    return 0


def _print_status(status: dict[str, Any], console: Console) -> None:
    console.print(
        f"rollout {status['id']}: {status['model']} — [bold]{status['state']}[/] "
        f"(wave {status['current_wave']}/{len(status['waves'])}) {status['reason']}"
    )
    waves = Table(title="waves")
    for column in ("wave", "devices so far", "steps"):
        waves.add_column(column)
    for wave in status["waves"]:
        steps = ", ".join(f"{k} {v}" for k, v in sorted(wave["steps"].items()))
        waves.add_row(str(wave["wave"]), str(wave["cumulative_size"]), steps or "-")
    console.print(waves)
    devices = Table(title="devices")
    for column in ("device", "wave", "step", "revision", "detail"):
        devices.add_column(column)
    for device in status.get("devices", []):
        devices.add_row(
            device["device_id"],
            str(device["wave"]),
            device["step"],
            str(device["revision"] or "-"),
            device["detail"],
        )
    console.print(devices)
