"""``edgeloop devices ls|show`` and ``edgeloop telemetry DEVICE``: the device registry."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from edgeloop.cli.output import api_options, ms, num, over_api, print_json
from edgeloop.server.client import ApiClient, ApiError


def register(commands: argparse._SubParsersAction) -> None:
    devices = commands.add_parser("devices", help="the device registry")
    devices.add_argument("action", choices=["ls", "show"])
    devices.add_argument("device", nargs="?", help="show: the device id")
    devices.add_argument("--profile", help="ls: only devices of this profile")
    devices.add_argument("--tag", action="append", default=[], help="ls: carrying tag (repeat)")
    devices.add_argument("--online", action="store_true", help="ls: only online devices")
    api_options(devices)
    devices.set_defaults(run=over_api(_devices))

    telemetry = commands.add_parser("telemetry", help="a device's recent telemetry")
    telemetry.add_argument("device", help="device id")
    telemetry.add_argument("--since", help="ISO 8601 time, e.g. 2026-12-01T10:00:00Z")
    telemetry.add_argument("--limit", type=int, default=20, help="newest N samples")
    api_options(telemetry)
    telemetry.set_defaults(run=over_api(_telemetry))


def _devices(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    if args.action == "show":
        if not args.device:
            raise ApiError("devices show needs a DEVICE id")
        detail = client.device(args.device)
        if args.json:
            print_json(detail)
            return 0
        _print_device(detail, console)
        return 0
    rows = client.devices(
        profile=args.profile, tags=args.tag or None, online=True if args.online else None
    )
    if args.json:
        print_json(rows)
        return 0
    table = Table(title=f"{len(rows)} devices")
    for column in (
        "device",
        "profile",
        "tags",
        "online",
        "phase",
        "desired",
        "running",
        "last seen",
    ):
        table.add_column(column)
    for row in rows:
        desired = row["desired"] or {}
        table.add_row(
            row["device_id"],
            row["profile"]["name"],
            ",".join(row["tags"]) or "-",
            "yes" if row["online"] else "[red]no[/]",
            row["phase"],
            f"{desired.get('model') or '-'} (rev {desired.get('revision', '-')})",
            row["current_model"] or "-",
            (row["last_seen"] or "-")[:19],
        )
    console.print(table)
    return 0


def _print_device(detail: dict[str, Any], console: Console) -> None:
    profile = detail["profile"]
    desired = detail["desired"] or {}
    console.print(
        f"[bold]{detail['device_id']}[/] ({profile['name']}: {profile['cpu_threads']} threads, "
        f"p95 budget {profile['latency_budget_ms']} ms, memory {profile['memory_budget_mb']} MB) "
        f"{'online' if detail['online'] else '[red]offline[/]'}, {detail['phase']}"
    )
    console.print(
        f"running {detail['current_model'] or '-'} (previous {detail['previous_model'] or '-'});"
        f" desired {desired.get('model') or '-'} rev {desired.get('revision', '-')}"
        f" [{desired.get('source', '-')}]: {desired.get('reason', '')}"
    )
    report = detail["latest_report"]
    if report:
        latency = report.get("latency") or {}
        console.print(
            f"last report: {report['model']} {'ok' if report['ok'] else '[red]failed[/]'} "
            f"({report.get('gate') or report['phase']}) p95 {latency.get('p95_ms', '-')} ms "
            f"peak {report.get('peak_rss_mb', '-')} MB {report.get('error') or ''}"
        )
    sample = detail["latest_telemetry"]
    if sample:
        console.print(_telemetry_line(sample))


def _telemetry_line(sample: dict[str, Any]) -> str:
    latency = sample.get("latency") or {}
    energy = sample.get("energy") or {}
    return (
        f"telemetry {sample['sent_at'][:19]}: {sample.get('model') or '-'} "
        f"p50/p95/p99 {ms(latency.get('p50_ms'))}/{ms(latency.get('p95_ms'))}/"
        f"{ms(latency.get('p99_ms'))} ms, rss {sample['rss_mb']:.1f} MB, "
        f"{num(energy.get('avg_power_w'))} W, {num(sample.get('temperature_c'))} °C"
    )


def _telemetry(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    page = client.telemetry(args.device, since=args.since, limit=args.limit)
    if args.json:
        print_json(page)
        return 0
    table = Table(
        title=f"{args.device}: {len(page['items'])} of {page['total']} samples, newest first"
    )
    for column in ("sent", "model", "source", "n", "p50 ms", "p95 ms", "p99 ms", "inf/s", "RSS MB",
                   "W", "mJ/inf", "°C", "buffered"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("sent", "model") else "right")
    for sample in page["items"]:
        latency = sample.get("latency") or {}
        energy = sample.get("energy") or {}
        table.add_row(
            sample["sent_at"][:19],
            sample.get("model") or "-",
            sample.get("latency_source") or "-",
            str(latency.get("n", "-")),
            ms(latency.get("p50_ms")),
            ms(latency.get("p95_ms")),
            ms(latency.get("p99_ms")),
            f"{sample['inferences_per_s']:.1f}" if sample.get("inferences_per_s") else "-",
            f"{sample['rss_mb']:.1f}",
            num(energy.get("avg_power_w")),
            num(energy["joules_per_inference"] * 1000 if energy else None),
            num(sample.get("temperature_c")),
            str(sample.get("buffered") if sample.get("buffered") is not None else "-"),
        )
    console.print(table)
    return 0
