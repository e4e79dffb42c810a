"""``edgeloop rollout create|status|pause|resume|cancel|rollback``: staged rollouts."""

from __future__ import annotations

import argparse

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from edgeloop.cli.output import api_options, over_api, print_json
from edgeloop.server.client import ApiClient, ApiError
from edgeloop.server.schemas import Criteria, RolloutCreate, RolloutStatus, Target


def register(commands: argparse._SubParsersAction) -> None:
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
    api_options(rollout)
    rollout.set_defaults(run=over_api(_rollout))


def _rollout(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    if args.action == "create":
        if not args.subject:
            raise ApiError("rollout create needs a MODEL, e.g. digits-cnn:2-int8")
        try:
            request = RolloutCreate(
                model=args.subject,
                target=Target(profile=args.profile, tags=args.tag, devices=args.device),
                waves=[w.strip() for w in args.waves.split(",") if w.strip()],
                criteria=Criteria(
                    max_failure_rate=args.max_failure_rate, wave_timeout_s=args.timeout
                ),
            )
        except ValidationError as exc:
            raise ApiError(f"rollout create: {_problems(exc)}") from None
        status = client.create_rollout(request)
    elif args.action == "status" and not args.subject:
        page = client.rollouts(limit=50)
        if args.json:
            print_json(page)
            return 0
        table = Table(title=f"rollouts ({page.total} in all, newest first)")
        for column in ("id", "model", "state", "wave", "reason"):
            table.add_column(column)
        for item in page.items:
            table.add_row(
                str(item.id),
                item.model,
                item.state,
                f"{item.current_wave}/{len(item.waves)}",
                item.reason,
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
        print_json(status)
        return 0
    _print_status(status, console)
    return 0


def _print_status(status: RolloutStatus, console: Console) -> None:
    console.print(
        f"rollout {status.id}: {status.model} — [bold]{status.state}[/] "
        f"(wave {status.current_wave}/{len(status.waves)}) {status.reason}"
    )
    waves = Table(title="waves")
    for column in ("wave", "devices so far", "steps"):
        waves.add_column(column)
    for wave in status.waves:
        steps = ", ".join(f"{k} {v}" for k, v in sorted(wave.steps.items()))
        waves.add_row(str(wave.wave), str(wave.cumulative_size), steps or "-")
    console.print(waves)
    devices = Table(title="devices")
    for column in ("device", "wave", "step", "revision", "detail"):
        devices.add_column(column)
    for device in status.devices:
        devices.add_row(
            device.device_id,
            str(device.wave),
            device.step,
            str(device.revision or "-"),
            device.detail,
        )
    console.print(devices)


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
    )
