"""``edgeloop devices ls|show|enrol|revoke`` and ``edgeloop telemetry DEVICE``: the device
registry, and devices joining and leaving the fleet."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from edgeloop.agent.protocol import Telemetry
from edgeloop.cli.output import api_options, ms, num, over_api, print_json, when
from edgeloop.server.client import ApiClient, ApiError
from edgeloop.server.schemas import DeviceDetail


def register(commands: argparse._SubParsersAction) -> None:
    devices = commands.add_parser("devices", help="the device registry")
    devices.add_argument("action", choices=["ls", "show", "enrol", "revoke"])
    devices.add_argument(
        "device",
        nargs="?",
        help="show: the device id; enrol: the id to give a one-time enrolment token for; "
        "revoke: the device to cut off (certificate on the CRL, tokens dead)",
    )
    devices.add_argument("--profile", help="ls: only devices of this profile")
    devices.add_argument("--tag", action="append", default=[], help="ls: carrying tag (repeat)")
    devices.add_argument("--online", action="store_true", help="ls: only online devices")
    devices.add_argument("--app", help="ls: only devices running this application")
    api_options(devices)
    devices.set_defaults(run=over_api(_devices))

    telemetry = commands.add_parser("telemetry", help="a device's recent telemetry")
    telemetry.add_argument("device", help="device id")
    telemetry.add_argument("--since", help="ISO 8601 time, e.g. 2026-12-01T10:00:00Z")
    telemetry.add_argument("--limit", type=int, default=20, help="newest N samples")
    api_options(telemetry)
    telemetry.set_defaults(run=over_api(_telemetry))


def _devices(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    if args.action in ("enrol", "revoke"):
        if not args.device:
            raise ApiError(f"devices {args.action} needs a DEVICE id")
        return _enrol(client, args) if args.action == "enrol" else _revoke(client, args)
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
        profile=args.profile,
        tags=args.tag or None,
        online=True if args.online else None,
        application=args.app,
    )
    if args.json:
        print_json(rows)
        return 0
    table = Table(title=f"{len(rows)} devices")
    for column in (
        "device",
        "profile",
        "application",
        "tags",
        "online",
        "phase",
        "desired",
        "running",
        "last seen",
    ):
        table.add_column(column)
    for row in rows:
        desired = row.desired
        table.add_row(
            row.device_id,
            row.profile.name,
            row.application + (" (by tag)" if row.application_source == "operator" else ""),
            ",".join(row.tags) or "-",
            "yes" if row.online else "[red]no[/]",
            row.phase,
            f"{desired.model or '-'} (rev {desired.revision})" if desired else "- (rev -)",
            row.current_model or "-",
            when(row.last_seen),
        )
    console.print(table)
    return 0


def _enrol(client: ApiClient, args: argparse.Namespace) -> int:
    created = client.enrolment_token(args.device)
    if args.json:
        print_json(created)
        return 0
    hours = created.expires_in_s // 3600
    print(created.token)
    print(
        f"one-time enrolment token for {created.device_id}, valid {hours} h; on the device:\n"
        f"  edgeloop-agent enrol --device-id {created.device_id} --server {args.server} "
        "--token TOKEN",
        file=sys.stderr,
    )
    return 0


def _revoke(client: ApiClient, args: argparse.Namespace) -> int:
    revoked = client.revoke_device(args.device)
    if args.json:
        print_json(revoked)
        return 0
    certs = ", ".join(revoked.certificates_revoked) or "none"
    print(
        f"{revoked.device_id}: {revoked.tokens_revoked} tokens revoked, certificates revoked: "
        f"{certs}; its messages are ignored from now on"
    )
    if revoked.crl:
        print(f"reload the broker so it rereads {revoked.crl} (systemctl reload mosquitto)")
    return 0


def _print_device(detail: DeviceDetail, console: Console) -> None:
    profile = detail.profile
    desired = detail.desired
    console.print(
        f"[bold]{detail.device_id}[/] ({profile.name}: {profile.cpu_threads} threads, "
        f"p95 budget {profile.latency_budget_ms:g} ms, memory {profile.memory_budget_mb:g} MB) "
        f"{'online' if detail.online else '[red]offline[/]'}, {detail.phase}; "
        f"agent {detail.agent_version or '-'}, protocol v{detail.protocol}"
    )
    console.print(
        f"running {detail.current_model or '-'} (previous {detail.previous_model or '-'});"
        + (
            f" desired {desired.model or '-'} rev {desired.revision} [{desired.source}]: "
            f"{desired.reason}"
            if desired
            else " nothing desired yet"
        )
    )
    report = detail.latest_report
    if report:
        from rich.markup import escape

        from edgeloop.server.rollouts import refusal

        outcome = "ok" if report.ok else f"[red]failed[/] ({escape(refusal(report))})"
        console.print(
            f"last report: {report.model} {outcome} "
            f"p95 {ms(report.latency.p95_ms if report.latency else None)} ms "
            f"peak {num(report.peak_rss_mb)} MB"
        )
    sample = detail.latest_telemetry
    if sample:
        console.print(_telemetry_line(sample))


def _telemetry_line(sample: Telemetry) -> str:
    latency, energy = sample.latency, sample.energy
    return (
        f"telemetry {when(sample.sent_at)}: {sample.model or '-'} "
        f"p50/p95/p99 {ms(latency and latency.p50_ms)}/{ms(latency and latency.p95_ms)}/"
        f"{ms(latency and latency.p99_ms)} ms, rss {sample.rss_mb:.1f} MB, "
        f"{num(energy and energy.avg_power_w)} W, {num(sample.temperature_c)} °C"
    )


def _telemetry(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    page = client.telemetry(args.device, since=args.since, limit=args.limit)
    if args.json:
        print_json(page)
        return 0
    table = Table(title=f"{args.device}: {len(page.items)} of {page.total} samples, newest first")
    for column in ("sent", "model", "source", "n", "p50 ms", "p95 ms", "p99 ms", "inf/s", "RSS MB",
                   "W", "mJ/inf", "°C", "buffered"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("sent", "model") else "right")
    for sample in page.items:
        latency, energy = sample.latency, sample.energy
        table.add_row(
            when(sample.sent_at),
            sample.model or "-",
            sample.latency_source or "-",
            str(latency.n) if latency else "-",
            ms(latency and latency.p50_ms),
            ms(latency and latency.p95_ms),
            ms(latency and latency.p99_ms),
            f"{sample.inferences_per_s:.1f}" if sample.inferences_per_s else "-",
            f"{sample.rss_mb:.1f}",
            num(energy and energy.avg_power_w),
            num(energy.joules_per_inference * 1000 if energy else None),
            num(sample.temperature_c),
            str(sample.buffered) if sample.buffered is not None else "-",
        )
    console.print(table)
    return 0
