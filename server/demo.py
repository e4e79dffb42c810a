"""``edgeloop demo``: the whole loop on one machine, on real parts.

Broker → control plane (subprocess) → device agents (subprocesses, different profiles) →
compressor trains and quantizes a digits CNN and registers both artifacts → the server
assigns each device a model by its profile and publishes its desired state → agents fetch,
verify, validate, measure and report → a table per device.
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

from edgeloop.agent.protocol import DeviceProfile

from .broker import start_broker
from .client import ApiClient
from .launch import AgentProcess, ServerProcess

DEMO_PROFILES: list[DeviceProfile] = [
    DeviceProfile(
        name="jetson-nano",
        cpu_threads=2,
        memory_budget_mb=512,
        latency_budget_ms=5.0,
        execution_providers=[
            "TensorrtExecutionProvider",
            "CUDAExecutionProvider",
            "CPUExecutionProvider",
        ],
        arch="aarch64",
    ),
    DeviceProfile(
        name="pi-zero-2",
        cpu_threads=1,
        memory_budget_mb=256,
        latency_budget_ms=2.0,
        execution_providers=["CPUExecutionProvider"],
        model_size_budget_kb=128,
        arch="aarch64",
    ),
]


@dataclass
class DemoResult:
    ok: bool
    broker: str
    wall_s: float
    models: list[dict[str, Any]]
    devices: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "broker": self.broker,
            "wall_s": round(self.wall_s, 2),
            "models": self.models,
            "devices": self.devices,
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
    with start_broker(workdir / "broker", prefer=broker) as mqtt:
        console.print(f"[bold]broker[/]  {mqtt.kind} on 127.0.0.1:{mqtt.port}")
        try:
            server = ServerProcess(workdir, mqtt.port)
            processes.append(server)
            server.wait_ready()
            console.print(f"[bold]server[/]  {server.url}  (SQLite {workdir / 'edgeloop.db'})")
            agents = [
                AgentProcess(f"{profile.name}-{i:02d}", profile, workdir, mqtt.port)
                for i, profile in (
                    (i, DEMO_PROFILES[i % len(DEMO_PROFILES)]) for i in range(devices)
                )
            ]
            processes.extend(agents)
            console.print(f"[bold]agents[/]  {', '.join(a.device_id for a in agents)}")
            client = ApiClient(server.url)
            models = _compress_and_push(client, workdir / "compressor", console)
            rows = _wait_for_reports(
                client, [a.device_id for a in agents], timeout_s, console, agents
            )
        finally:
            for process in reversed(processes):
                process.stop()
    devices_json = [_device_row(row) for row in rows]
    ok = bool(devices_json) and all(d["ok"] for d in devices_json)
    result = DemoResult(ok, mqtt.kind, time.perf_counter() - started, models, devices_json)
    console.print(_models_table(models))
    console.print(_devices_table(devices_json))
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


def _compress_and_push(client: ApiClient, out_dir: Path, console: Console) -> list[dict[str, Any]]:
    from edgeloop.compressor.examples.digits import build_digits

    console.print("[bold]compressor[/]  digits CNN: train, export ONNX fp32, quantize int8")
    built = build_digits(out_dir, progress=True)
    models = []
    for model in built:
        registered = client.push_model(model, plan=False)
        models.append(
            {
                "model": f"{model.name}:{model.version}",
                "artifact_sha256": registered["artifact_sha256"],
                **model.report.model_dump(mode="json"),
            }
        )
    client.plan()
    return models


def _wait_for_reports(
    client: ApiClient,
    device_ids: list[str],
    timeout_s: float,
    console: Console,
    agents: list[AgentProcess],
) -> list[dict[str, Any]]:
    """Poll the fleet until every device reported on its latest desired revision."""
    deadline = time.monotonic() + timeout_s
    rows: list[dict[str, Any]] = []
    with console.status("waiting for device reports") as status:
        while time.monotonic() < deadline:
            rows = [r for r in client.fleet() if r["device_id"] in device_ids]
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


def _settled(row: dict[str, Any]) -> bool:
    report = row.get("report")
    return report is not None and report["revision"] == row["desired_revision"]


def _device_row(row: dict[str, Any]) -> dict[str, Any]:
    report = row.get("report") or {}
    model_report = row.get("model_report") or {}
    latency = report.get("latency") or {}
    energy = report.get("energy") or {}
    settled = _settled(row)
    return {
        "device_id": row["device_id"],
        "profile": row["profile"]["name"],
        "model": row["desired_model"],
        "reason": row["desired_reason"],
        "revision": row["desired_revision"],
        "artifact_sha256": report.get("artifact_sha256"),
        "size_bytes": model_report.get("size_bytes"),
        "accuracy": model_report.get("accuracy"),
        "p50_ms": latency.get("p50_ms"),
        "p95_ms": latency.get("p95_ms"),
        "p99_ms": latency.get("p99_ms"),
        "inferences": latency.get("n"),
        "peak_rss_mb": report.get("peak_rss_mb"),
        "energy_mj_per_inference": (
            energy["joules_per_inference"] * 1e3 if "joules_per_inference" in energy else None
        ),
        "energy_estimated": energy.get("estimated"),
        "energy_source": energy.get("source"),
        "within_budget": report.get("within_budget"),
        "budget_detail": report.get("budget_detail"),
        "verified": bool(report.get("verified")),
        "ok": settled and bool(report.get("ok")) and bool(report.get("verified")),
        "error": report.get("error"),
    }


def _fmt(value: Any, spec: str = "") -> str:
    return "—" if value is None else format(value, spec)


def _models_table(models: list[dict[str, Any]]) -> Table:
    table = Table(title="Artifacts registered")
    for column in ("model", "size", "accuracy", "ratio", "drop (pts)", "host p50 ms", "recipe"):
        table.add_column(column, justify="left" if column in ("model", "recipe") else "right")
    for m in models:
        table.add_row(
            m["model"],
            f"{m['size_bytes'] / 1024:.1f} KB",
            f"{m['accuracy']:.4f}",
            f"{m['compression_ratio']:.2f}×",
            f"{m['accuracy_drop'] * 100:.2f}",
            f"{m['host_latency_p50_ms']:.3f}",
            " → ".join(m.get("recipe", [])),
        )
    return table


def _devices_table(devices: list[dict[str, Any]]) -> Table:
    table = Table(title="Devices")
    columns = (
        "device",
        "profile",
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
        table.add_column(column, justify="left" if column in columns[:3] else "right")
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
