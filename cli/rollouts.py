"""``edgeloop rollout create|status|pause|resume|cancel|rollback``: staged rollouts."""

from __future__ import annotations

import argparse
import time

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from edgeloop.cli.output import api_options, over_api, print_json
from edgeloop.server.client import ApiClient, ApiError
from edgeloop.server.schemas import (
    Criteria,
    RolloutCreate,
    RolloutState,
    RolloutStatus,
    Step,
    Target,
    WaveStatus,
)

WATCH_INTERVAL_S = 1.0
"""How often ``rollout status ID --watch`` asks the control plane again."""

UNDER_WAY = {RolloutState.RUNNING, RolloutState.PAUSED}
"""Rollout states a watch waits through; any other is where it ends."""

STILL_GOING = {Step.PENDING, Step.SENT}
"""A device's steps before its part in the rollout is decided."""


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
    rollout.add_argument(
        "--watch",
        action="store_true",
        help="status ID: show each wave's progress, refreshed every second, until the rollout "
        "is no longer running or paused; then the final table",
    )
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
        if args.action == "status" and args.watch:
            status = _watch(client, rollout_id, console, shown=not args.json)
        elif args.action == "status":
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


def _watch(
    client: ApiClient,
    rollout_id: int,
    console: Console,
    *,
    shown: bool = True,
    interval_s: float = WATCH_INTERVAL_S,
) -> RolloutStatus:
    """Poll the rollout until it leaves running and paused, one bar per wave (devices decided
    of the wave's size, how many failed, the wave's state) on a terminal while it does; its
    last status."""
    status = client.rollout(rollout_id)
    with Progress(
        TextColumn("wave {task.fields[wave]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"),
        TextColumn("{task.fields[state]}"),
        console=console,
        transient=True,
        disable=not (shown and console.is_terminal),
    ) as bars:
        rows: dict[int, TaskID] = {}
        while True:
            for wave in status.waves:
                if wave.wave not in rows:
                    rows[wave.wave] = bars.add_task("", wave=wave.wave, failed=0, state="")
                decided, size, failed, state = _wave_progress(status, wave)
                bars.update(
                    rows[wave.wave], completed=decided, total=size, failed=failed, state=state
                )
            if status.state not in UNDER_WAY:
                return status
            time.sleep(interval_s)
            status = client.rollout(rollout_id)


def _wave_progress(status: RolloutStatus, wave: WaveStatus) -> tuple[int, int, int, str]:
    """The wave's devices decided (committed, failed, ...), its size, how many failed or timed
    out, and its state."""
    if wave.wave < status.current_wave:
        state = "done"
    elif wave.wave == status.current_wave:
        state = str(status.state)
    else:
        state = "waiting"
    decided = sum(n for step, n in wave.steps.items() if step not in STILL_GOING)
    failed = wave.steps.get(Step.FAILED, 0) + wave.steps.get(Step.TIMED_OUT, 0)
    return decided, sum(wave.steps.values()), failed, state


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
    )
