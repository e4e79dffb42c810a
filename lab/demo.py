"""``edgeloop demo``: the whole loop on one machine, on real parts.

Broker → control plane (subprocess) → device agents (subprocesses, different profiles, each
confined to an emulated device class) → the compressor builds candidates of a digits CNN
(pruned, int8) → the closed loop (:mod:`edgeloop.loop`) starts every class on fp32,
reads the devices' reports, calibrates its cost model and rolls out the most accurate
candidate each class affords, round after round → agents fetch, verify, validate, measure and
report → a table per device with the round that put its model there, and why.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edgeloop.agent.profiles import PROFILES
from edgeloop.agent.protocol import DeviceProfile
from edgeloop.lab.broker import start_broker
from edgeloop.lab.emulation import DeviceClass
from edgeloop.lab.launch import AgentProcess, ServerProcess, fleet_ca, wait_for_devices
from edgeloop.loop import CandidatePool, Loop, LoopResult, RoundRecord
from edgeloop.server.client import ApiClient
from edgeloop.server.schemas import FleetEntry

DEMO_PROFILES: list[DeviceProfile] = [PROFILES["jetson-nano"], PROFILES["pi-zero-2"]]
"""From the profile catalogue (``agent/profiles/``)."""


DEMO_CLASSES: dict[str, DeviceClass] = {
    # Two cores for the Jetson's CPU side; one pinned, half-throttled core for the Pi Zero.
    "jetson-nano": DeviceClass(name="jetson-nano", threads=2),
    "pi-zero-2": DeviceClass(name="pi-zero-2", threads=1, cpus=(0,), cpu_quota=0.5),
}

DEMO_RECIPE: dict[str, Any] = {
    "name": "demo",
    "task": "image",
    "passes": [
        {"pass": "prune_structured", "params": {"ratio": [0.5], "finetune_epochs": 10},
         "optional": True},
        {"pass": "export"},
        {"pass": "quantize_static",
         "params": {"calibrate_method": ["minmax"], "per_channel": [True]}, "optional": True},
    ],
    "search": {"strategy": "grid"},
}  # fmt: skip


@dataclass
class DemoResult:
    ok: bool
    broker: str
    wall_s: float
    models: list[dict[str, Any]]
    devices: list[dict[str, Any]]
    rounds: int = 0
    history: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "broker": self.broker,
            "wall_s": round(self.wall_s, 2),
            "rounds": self.rounds,
            "models": self.models,
            "devices": self.devices,
            "history": self.history or [],
        }


def run_demo(
    *,
    devices: int = 2,
    workdir: Path = Path(".edgeloop/demo"),
    json_path: Path | None = None,
    broker: str = "auto",
    timeout_s: float = 180.0,
    console: Console | None = None,
) -> DemoResult:
    console = console or Console(width=None if sys.stdout.isatty() else 150)
    started = time.perf_counter()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    processes: list[AgentProcess | ServerProcess] = []
    ca = fleet_ca(workdir / "pki")
    with start_broker(workdir / "broker", prefer=broker, secure=ca) as mqtt:
        secure = mqtt.kind == "mosquitto"
        console.print(
            f"[bold]broker[/]  {mqtt.kind} on 127.0.0.1:{mqtt.port}"
            + (
                "  (TLS, device certificates, per-device ACL)"
                if secure
                else "  [red](open: the embedded broker enforces no certificates or ACL)[/]"
            )
        )
        try:
            server = ServerProcess(workdir, mqtt.port, ca=ca, mqtt_tls=secure)
            processes.append(server)
            server.wait_ready()
            console.print(
                f"[bold]server[/]  {server.url}  (SQLite {workdir / 'edgeloop.db'}; signed "
                f"updates from {workdir / 'tuf'}; operator token in {workdir / 'operator.token'})"
            )
            agents = [
                AgentProcess(
                    f"{profile.name}-{i:02d}",
                    profile,
                    workdir,
                    mqtt.port,
                    probation_s=0.5,
                    device_class=DEMO_CLASSES.get(profile.name),
                    server=server,
                    mqtt_tls=secure,
                )
                for i, profile in (
                    (i, DEMO_PROFILES[i % len(DEMO_PROFILES)]) for i in range(devices)
                )
            ]
            processes.extend(agents)
            console.print(f"[bold]agents[/]  {', '.join(a.device_id for a in agents)}")
            client = server.client()
            wait_for_devices(client, len(agents), agents)
            loop_result, loop = _run_loop(client, workdir / "compressor", console, devices)
            rows = _wait_for_reports(
                client, [a.device_id for a in agents], timeout_s, console, agents
            )
            models = _registered_models(client, loop)
        finally:
            for process in reversed(processes):
                process.stop()
    rounds = {name: state.deployed_round for name, state in loop_result.classes.items()}
    devices_json = [_device_row(row) | {"round": rounds.get(row.profile.name)} for row in rows]
    ok = loop_result.converged and bool(devices_json) and all(d["ok"] for d in devices_json)
    history = [e.model_dump(mode="json", exclude={"figures"}) for e in loop.history]
    result = DemoResult(
        ok,
        mqtt.kind,
        time.perf_counter() - started,
        models,
        devices_json,
        rounds=len(loop_result.rounds) - 1,
        history=history,
    )
    console.print(_models_table(models))
    console.print(_devices_table(devices_json))
    console.print("[bold]why each round happened[/]")
    for entry in history:
        if entry["action"] != "keep":
            console.print(f"  round {entry['round']} {entry['profile']}: {entry['reason']}")
    verdict = (
        "[green]every device runs a verified model[/]"
        if ok
        else "[red]not every device runs a verified model[/]"
    )
    console.print(f"{verdict}  ({result.wall_s:.1f} s, logs in {workdir / 'logs'})")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result.to_json(), indent=2))
        console.print(f"wrote {json_path}")
    return result


def _run_loop(
    client: ApiClient, out_dir: Path, console: Console, devices: int
) -> tuple[LoopResult, Loop]:
    from edgeloop.compressor.examples.digits import DigitsTask
    from edgeloop.compressor.recipe import load_recipe

    console.print(
        "[bold]compressor[/]  digits CNN: train, prune channels, export ONNX, quantize int8 "
        "(cached in the work dir)"
    )
    pool = CandidatePool(
        DigitsTask(progress=True), load_recipe(DEMO_RECIPE), out_dir, progress=True
    )
    profiles = DEMO_PROFILES[: max(1, min(devices, len(DEMO_PROFILES)))]

    def show(record: RoundRecord, _result: LoopResult) -> None:
        for decision in record.decisions:
            model = decision.candidate.label if decision.candidate else "—"
            console.print(
                f"[bold]round {record.round}[/] {decision.profile}: {decision.action} {model}"
            )

    loop = Loop(client, "digits-cnn", profiles, pool, on_round=show)
    return loop.run(), loop


def _registered_models(client: ApiClient, loop: Loop) -> list[dict[str, Any]]:
    by_version = {c.version: c for c in loop.candidates}
    models = []
    for model in client.models():
        candidate = by_version.get(model.version)
        models.append(
            {
                "model": model.label,
                "artifact_sha256": model.artifact_sha256,
                "variant": model.report.variant,
                "accuracy": model.report.accuracy,
                "size_bytes": model.report.size_bytes,
                "host_latency_p95_ms": model.report.host_latency_p95_ms,
                "baseline": bool(candidate and candidate.baseline),
            }
        )
    return models


def _wait_for_reports(
    client: ApiClient,
    device_ids: list[str],
    timeout_s: float,
    console: Console,
    agents: list[AgentProcess],
) -> list[FleetEntry]:
    """Poll the fleet until every device reported on its latest desired revision."""
    deadline = time.monotonic() + timeout_s
    rows: list[FleetEntry] = []
    with console.status("waiting for device reports") as status:
        while time.monotonic() < deadline:
            rows = [r for r in client.fleet() if r.device_id in device_ids]
            done = [r for r in rows if _settled(r)]
            status.update(f"waiting for device reports: {len(done)}/{len(device_ids)}")
            if len(done) == len(device_ids):
                return rows
            dead = [a for a in agents if not a.alive()]
            if dead:
                console.print(f"[red]agent {dead[0].device_id} exited[/]:\n{dead[0].log_tail()}")
                return rows
            time.sleep(0.25)
    console.print(f"[red]timed out after {timeout_s:.0f}s waiting for reports[/]")
    return rows


def _settled(row: FleetEntry) -> bool:
    return row.report is not None and row.report.revision == row.desired_revision


def _device_row(row: FleetEntry) -> dict[str, Any]:
    """One device for the demo's JSON and table."""
    report, figures = row.report, row.model_report
    latency = report.latency if report else None
    energy = report.energy if report else None
    return {
        "device_id": row.device_id,
        "profile": row.profile.name,
        "model": row.desired_model,
        "reason": row.desired_reason,
        "revision": row.desired_revision,
        "artifact_sha256": report.artifact_sha256 if report else None,
        "size_bytes": figures.size_bytes if figures else None,
        "accuracy": figures.accuracy if figures else None,
        "p50_ms": latency.p50_ms if latency else None,
        "p95_ms": latency.p95_ms if latency else None,
        "p99_ms": latency.p99_ms if latency else None,
        "inferences": latency.n if latency else None,
        "peak_rss_mb": report.peak_rss_mb if report else None,
        "energy_mj_per_inference": energy.joules_per_inference * 1e3 if energy else None,
        "energy_estimated": energy.estimated if energy else None,
        "energy_source": energy.source if energy else None,
        "within_budget": report.within_budget if report else None,
        "budget_detail": report.budget_detail if report else None,
        "verified": bool(report and report.verified),
        "ok": _settled(row) and bool(report and report.ok and report.verified),
        "error": report.error if report else None,
    }


def _fmt(value: Any, spec: str = "") -> str:
    return "—" if value is None else format(value, spec)


def _models_table(models: list[dict[str, Any]]) -> Table:
    table = Table(title="Candidates the loop registered")
    for column in ("model", "variant", "size", "accuracy", "host p95 ms"):
        table.add_column(column, justify="left" if column in ("model", "variant") else "right")
    for m in models:
        table.add_row(
            m["model"],
            (m["variant"] or "") + (" (baseline)" if m["baseline"] else ""),
            f"{m['size_bytes'] / 1024:.1f} KB",
            f"{m['accuracy']:.4f}",
            _fmt(m["host_latency_p95_ms"], ".3f"),
        )
    return table


def _devices_table(devices: list[dict[str, Any]]) -> Table:
    table = Table(title="Devices")
    columns = (
        "device",
        "profile",
        "round",
        "model",
        "size",
        "accuracy",
        "p50 ms",
        "p95 ms",
        "RSS MB",
        "energy mJ/inf",
        "within budget",
        "verified",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in columns[:4] else "right")
    for d in devices:
        energy = _fmt(d["energy_mj_per_inference"], ".4f")
        if d["energy_estimated"]:
            energy += " (est.)"
        budget = {True: "[green]yes[/]", False: "[red]no[/]", None: "—"}[d["within_budget"]]
        if d["within_budget"] is False:
            misses = [k for k, v in (d["budget_detail"] or {}).items() if not v]
            budget += f" ({', '.join(misses)})"
        table.add_row(
            d["device_id"],
            d["profile"],
            _fmt(d["round"]),
            _fmt(d["model"]),
            f"{d['size_bytes'] / 1024:.1f} KB" if d["size_bytes"] else "—",
            _fmt(d["accuracy"], ".4f"),
            _fmt(d["p50_ms"], ".3f"),
            _fmt(d["p95_ms"], ".3f"),
            _fmt(d["peak_rss_mb"], ".1f"),
            energy,
            budget,
            "[green]yes[/]" if d["ok"] else f"[red]no[/] {d['error'] or ''}",
        )
    return table
