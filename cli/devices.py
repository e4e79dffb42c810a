"""Operator commands over the REST API: ``edgeloop devices``, ``edgeloop models``,
``edgeloop rollout``, ``edgeloop telemetry``.

Everything goes through :class:`ApiClient` (HTTP), so these commands work from any machine that
reaches the control plane. Output is a rich table, or JSON with ``--json``; a refused request
prints ``edgeloop: <the server's reason>`` and exits 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
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
    devices.add_argument("action", choices=["ls", "show"])
    devices.add_argument("device", nargs="?", help="show: the device id")
    devices.add_argument("--profile", help="ls: only devices of this profile")
    devices.add_argument("--tag", action="append", default=[], help="ls: carrying tag (repeat)")
    devices.add_argument("--online", action="store_true", help="ls: only online devices")
    common(devices)

    models = commands.add_parser("models", help="model versions in the registry")
    models.add_argument("action", choices=["push", "ls", "retire", "retention"])
    models.add_argument(
        "path",
        nargs="?",
        help="push: a compressor output dir (model.onnx, golden.npz, model_report.json) or an "
        ".onnx file; retire: NAME:VERSION",
    )
    models.add_argument("--report", type=Path, help="push: report JSON (needs `accuracy`)")
    models.add_argument("--golden", type=Path, help="push: golden npz (default: next to FILE)")
    models.add_argument("--name", help="push: model name (default: dir or file name)")
    models.add_argument("--version", help="push: version (default: model hash, 12 hex)")
    models.add_argument(
        "--no-plan", action="store_true", help="push: register without re-planning the fleet"
    )
    models.add_argument("--all", action="store_true", help="ls: include retired versions")
    models.add_argument("--keep", type=int, default=3, help="retention: live versions per name")
    common(models)

    loop = commands.add_parser(
        "loop", help="the closed compression loop: its decisions and calibrations"
    )
    loop.add_argument("action", choices=["run", "history", "calibrations"])
    loop.add_argument(
        "example", nargs="?", help="run: the example task to compress (image, image-wide, nlp)"
    )
    loop.add_argument("--recipe", type=Path, help="run: recipe (default: the example's)")
    loop.add_argument("--loop", dest="loop_name", help="the loop's name (default: the example)")
    loop.add_argument("--max-rounds", type=int, default=4, help="run: stop after N rounds")
    loop.add_argument(
        "--workdir", type=Path, default=Path(".edgeloop/loop"), help="run: candidates cache"
    )
    common(loop)

    telemetry = commands.add_parser("telemetry", help="a device's recent telemetry")
    telemetry.add_argument("device", help="device id")
    telemetry.add_argument("--since", help="ISO 8601 time, e.g. 2026-12-01T10:00:00Z")
    telemetry.add_argument("--limit", type=int, default=20, help="newest N samples")
    common(telemetry)

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
        if args.command == "models":
            return _models(client, args, console)
        if args.command == "telemetry":
            return _telemetry(client, args, console)
        if args.command == "loop":
            return _loop(client, args, console)
        return _rollout(client, args, console)
    except ApiError as exc:
        print(f"edgeloop: {exc}", file=sys.stderr)
        return 2


def _devices(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    if args.action == "show":
        if not args.device:
            raise ApiError("devices show needs a DEVICE id")
        detail = client.device(args.device)
        if args.json:
            print(json.dumps(detail, indent=1))
            return 0
        _print_device(detail, console)
        return 0
    rows = client.devices(
        profile=args.profile, tags=args.tag or None, online=True if args.online else None
    )
    if args.json:
        print(json.dumps(rows, indent=1))
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
        f"p50/p95/p99 {_ms(latency.get('p50_ms'))}/{_ms(latency.get('p95_ms'))}/"
        f"{_ms(latency.get('p99_ms'))} ms, rss {sample['rss_mb']:.1f} MB, "
        f"{_num(energy.get('avg_power_w'))} W, {_num(sample.get('temperature_c'))} °C"
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _models(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    if args.action == "push":
        return _push(client, args)
    if args.action == "retire":
        if not args.path:
            raise ApiError("models retire needs NAME:VERSION")
        model = client.retire_model(args.path)
        print(f"retired {model['label']}")
        return 0
    if args.action == "retention":
        retired = client.apply_retention(args.keep, args.name)["retired"]
        print(f"retired {len(retired)}: {', '.join(retired) or '-'}")
        return 0
    rows = client.models(include_retired=args.all)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    table = Table(title=f"{len(rows)} model versions")
    for column in ("model", "variant", "accuracy", "size KB", "host p95 ms", "created", "retired"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        report = row["report"]
        table.add_row(
            row["label"],
            str(report.get("variant", "-")),
            f"{report['accuracy']:.4f}" if "accuracy" in report else "-",
            f"{report.get('size_bytes', 0) / 1024:.1f}",
            _ms(report.get("host_latency_p95_ms")),
            row["created_at"][:19],
            (row["retired_at"] or "-")[:19],
        )
    console.print(table)
    return 0


def _push(client: ApiClient, args: argparse.Namespace) -> int:
    if not args.path:
        raise ApiError("models push needs a compressor output DIR or an .onnx FILE")
    path = Path(args.path)
    if path.is_dir():
        model, golden = path / "model.onnx", args.golden or path / "golden.npz"
        report_path = args.report or path / "model_report.json"
        name = args.name or path.name
    else:
        model, golden = path, args.golden or path.with_name("golden.npz")
        report_path = args.report
        name = args.name or path.stem
    for label, file in (("model", model), ("golden file", golden), ("report", report_path)):
        if file is None or not file.is_file():
            raise ApiError(f"{label} not found: {file or 'give --report R'}")
    try:
        report = json.loads(report_path.read_text())
    except ValueError as exc:
        raise ApiError(f"{report_path} is not JSON: {exc}") from None
    version = args.version or hashlib.sha256(model.read_bytes()).hexdigest()[:12]
    registered = client.push_files(
        model, golden, name=name, version=version, report=report, plan=not args.no_plan
    )
    print(f"registered {registered['label']} ({model.stat().st_size / 1024:.1f} KB)")
    return 0


def _telemetry(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    page = client.telemetry(args.device, since=args.since, limit=args.limit)
    if args.json:
        print(json.dumps(page, indent=1))
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
            _ms(latency.get("p50_ms")),
            _ms(latency.get("p95_ms")),
            _ms(latency.get("p99_ms")),
            f"{sample['inferences_per_s']:.1f}" if sample.get("inferences_per_s") else "-",
            f"{sample['rss_mb']:.1f}",
            _num(energy.get("avg_power_w")),
            _num(energy["joules_per_inference"] * 1000 if energy else None),
            _num(sample.get("temperature_c")),
            str(sample.get("buffered") if sample.get("buffered") is not None else "-"),
        )
    console.print(table)
    return 0


def _loop_run(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    """Tune every device class registered with the control plane (its devices' profiles)."""
    from edgeloop.agent.protocol import DeviceProfile
    from edgeloop.compressor.examples import example_recipe, example_task
    from edgeloop.compressor.recipe import load_recipe

    from .loop import CandidatePool, Loop

    if not args.example:
        raise ApiError("loop run needs an EXAMPLE task, e.g. `edgeloop loop run image`")
    profiles: dict[str, DeviceProfile] = {}
    for device in client.devices():
        profiles.setdefault(device["profile"]["name"], DeviceProfile(**device["profile"]))
    if not profiles:
        raise ApiError("no devices are registered: start agents first")
    try:
        task = example_task(args.example)
        recipe = load_recipe(args.recipe or example_recipe(args.example))
    except ValueError as exc:
        raise ApiError(str(exc)) from None
    pool = CandidatePool(task, recipe, args.workdir / args.example, progress=True)
    loop = Loop(
        client, args.loop_name or args.example, list(profiles.values()), pool,
        max_rounds=args.max_rounds,
        on_round=lambda record, _: console.print(
            f"round {record.round}: "
            + "; ".join(f"{d.profile} {d.action}" for d in record.decisions)
        ),
    )  # fmt: skip
    result = loop.run()
    console.print(result.reason)
    return 0 if result.converged else 1


def _loop(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    if args.action == "run":
        return _loop_run(client, args, console)
    if args.action == "calibrations":
        rows = client.calibrations()
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        table = Table(title="cost-model calibration per device class (from device reports)")
        for column in ("class", "reports", "class-wide scale", "per op class", "error (LOO)",
                       "memory offset MB", "W/core"):  # fmt: skip
            table.add_column(column, justify="left" if column == "class" else "right")
        for row in rows:
            c = row["calibration"]
            loo = c.get("latency_loo_error")
            table.add_row(
                row["profile"],
                str(row["observations"]),
                f"{c['class_scale']:.3f}",
                ", ".join(f"{k} {v:.2f}" for k, v in sorted(c.get("scales", {}).items())) or "-",
                f"{loo:.1%}" if loo is not None else "-",
                f"{c.get('memory_offset_mb', 0):.1f}",
                f"{c.get('watts_per_core', 0):.2f}",
            )
        console.print(table)
        return 0
    rows = client.decisions(loop=args.loop_name)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    table = Table(title=f"loop history ({len(rows)} decisions)")
    for column in ("round", "class", "decision", "model", "measured p95 ms", "budget ms", "why"):
        table.add_column(column, overflow="fold")
    for row in rows:
        figures = row["figures"] or {}
        measured = figures.get("measured") or {}
        budget = figures.get("budget") or {}
        table.add_row(
            str(row["round"]),
            row["profile"],
            row["action"],
            row["model"] or "-",
            _ms(measured.get("p95_ms")),
            f"{budget['latency_p95_ms']:g}" if budget.get("latency_p95_ms") else "-",
            row["reason"],
        )
    console.print(table)
    return 0


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


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
