"""``edgeloop bench dashboard``: how fast the dashboard's fleet page renders for a large fleet,
and how many SQL statements each page costs.

A SQLite database is filled directly through the ORM (``--devices``, at least 1,000 devices,
each with telemetry samples and reports; rollouts, model versions and loop decisions), then
each page is fetched through the app in-process (a logged-in operator's cookie), the fleet page
several times: its median time is ``dashboard.fleet_page_ms_<devices>``, goal ≤ 300 ms. A
SQLAlchemy ``before_cursor_execute`` listener counts the statements of each render: the pages
must not issue a query per row (``dashboard.fleet_page_sql_statements``, the most of any page in
``dashboard.max_page_sql_statements``).
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from edgeloop.lab.bench import Figure
from edgeloop.server.auth import Role, create_token
from edgeloop.server.models import (
    Artifact,
    DesiredState,
    Device,
    DeviceReport,
    LoopDecision,
    ModelVersion,
    Rollout,
    RolloutDevice,
    TelemetrySample,
)
from edgeloop.server.times import utcnow

if TYPE_CHECKING:
    from fastapi import FastAPI

DEVICES = 1_000
SAMPLES_PER_DEVICE = 5
REPORTS_PER_DEVICE = 2
RENDERS = 7
PROFILES = ("pi4", "jetson", "mcu")
PAGES = ("/ui/", "/ui/devices/dev-0001", "/ui/rollouts", "/ui/rollouts/1", "/ui/models", "/ui/loop")


def fill_fleet(sessions: sessionmaker[Session], devices: int) -> None:
    """``devices`` devices (``dev-0000``…) in three profiles and two applications, each with
    telemetry, reports (every seventh over its budget), a desired state; two model versions,
    a rollout over the whole fleet in three waves, and loop decisions for each profile."""
    now = utcnow()
    with sessions.begin() as db:
        for sha in ("a" * 64, "b" * 64, "c" * 64):
            db.add(Artifact(sha256=sha, size=1000))
        db.flush()
        versions = [
            ModelVersion(
                name="digits",
                version=variant,
                artifact_sha256="a" * 64 if variant == "fp32" else "b" * 64,
                golden_sha256="c" * 64,
                inputs=[{"name": "x", "dtype": "float32", "shape": ["batch", 64]}],
                outputs=[{"name": "y", "dtype": "float32", "shape": ["batch", 10]}],
                golden_atol=1e-3,
                golden_rtol=1e-3,
                report={
                    "accuracy": accuracy,
                    "size_bytes": size,
                    "variant": variant,
                    "compression_ratio": 1.0 if variant == "fp32" else 3.6,
                    "host_latency_p50_ms": 0.05,
                    "host_latency_p95_ms": 0.08,
                    "output_max_abs_err": 0.0 if variant == "fp32" else 0.02,
                    "weight_error": {} if variant == "fp32" else {"mse": 1e-5},
                },
            )
            for variant, accuracy, size in (("fp32", 0.97, 160_000), ("int8", 0.96, 44_000))
        ]
        db.add_all(versions)
        db.flush()
        rollout = Rollout(
            model_version_id=versions[1].id,
            target={},
            waves=[devices // 10, devices // 2, devices],
            criteria={"max_failure_rate": 0.1},
            state="running",
            current_wave=1,
        )
        db.add(rollout)
        db.flush()
        for index in range(devices):
            device_id = f"dev-{index:04d}"
            profile = PROFILES[index % len(PROFILES)]
            label = versions[index % 2].label
            db.add(
                Device(
                    id=device_id,
                    profile={"name": profile, "cpu_threads": 2, "memory_budget_mb": 512,
                             "latency_budget_ms": 50},
                    online=index % 5 != 0,
                    phase="committed" if index % 11 else "probation",
                    current_model=label,
                    tags=["lab"] if index % 2 else ["field", "eu"],
                    application="digits" if index % 3 else "default",
                    last_seen=now,
                )
            )  # fmt: skip
        db.flush()  # the rows below refer to the devices; no ORM relationship orders them
        for index in range(devices):
            device_id = f"dev-{index:04d}"
            label = versions[index % 2].label
            db.add(
                DesiredState(
                    device_id=device_id, revision=2, model_version_id=versions[index % 2].id
                )
            )
            for sample in range(SAMPLES_PER_DEVICE):
                db.add(
                    TelemetrySample(
                        device_id=device_id,
                        sent_at=now - timedelta(seconds=SAMPLES_PER_DEVICE - sample),
                        payload=_telemetry(device_id, label, sample),
                    )
                )
            for revision in range(1, REPORTS_PER_DEVICE + 1):
                over = index % 7 == 0 and revision == REPORTS_PER_DEVICE
                db.add(
                    DeviceReport(
                        device_id=device_id,
                        revision=revision,
                        model=label,
                        artifact_sha256="a" * 64,
                        ok=True,
                        phase="committed",
                        payload={"within_budget": not over, "latency": {"p95_ms": 4.0}},
                        received_at=now - timedelta(minutes=REPORTS_PER_DEVICE - revision),
                    )
                )
            wave = 0 if index < devices // 10 else 1 if index < devices // 2 else 2
            step = "committed" if wave == 0 else "sent" if wave == 1 else "pending"
            db.add(RolloutDevice(rollout_id=rollout.id, device_id=device_id, wave=wave, step=step))
        for profile in PROFILES:
            for round_ in range(5):
                db.add(
                    LoopDecision(
                        loop="digits",
                        round=round_,
                        profile=profile,
                        action="deploy" if round_ < 4 else "keep",
                        model="digits:int8",
                        reason="the most accurate candidate predicted to fit",
                        figures={
                            "budget": {"latency_p95_ms": 50},
                            "measured": {"model": "digits:int8", "p95_ms": 4.0 + round_},
                            "predicted": {"digits:int8": {"latency_p95_ms": 5.0 + round_ / 2}},
                        },
                    )
                )


def _telemetry(device_id: str, model: str, sample: int) -> dict[str, Any]:
    return {
        "protocol": 2,
        "type": "telemetry",
        "device_id": device_id,
        "model": model,
        "latency": {"n": 50, "p50_ms": 2.0, "p95_ms": 3.0 + sample, "p99_ms": 5.0, "mean_ms": 2.2},
        "rss_mb": 70.0 + sample,
        "cpu_percent": 12.5,
        "temperature_c": 48.0,
        "energy": {
            "joules_per_inference": 0.004,
            "avg_power_w": 2.1,
            "source": "estimate",
            "estimated": True,
        },
    }


class StatementCounter:
    """Counts the SQL statements an engine executes while :meth:`counting` is open."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        self._on = False
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args: object) -> None:
        if self._on:
            self.count += 1

    @contextmanager
    def counting(self) -> Iterator[StatementCounter]:
        self.count, self._on = 0, True
        try:
            yield self
        finally:
            self._on = False


def filled_app(root: Path, devices: int) -> FastAPI:
    """A control plane on a SQLite file under ``root`` holding ``devices`` devices (see
    :func:`fill_fleet`), without MQTT and without its lifespan: the rollout controller's ticks
    would change rows and count as the pages' statements."""
    from edgeloop.server.app import create_app
    from edgeloop.server.config import Settings

    settings = Settings(
        database_url=f"sqlite:///{root / 'edgeloop.db'}",
        artifact_dir=root / "artifacts",
        public_url="http://127.0.0.1:8000",
    )
    app = create_app(settings, with_mqtt=False)
    fill_fleet(app.state.fleet.sessions, devices)
    return app


def run(args: Any) -> list[Figure]:
    from fastapi.testclient import TestClient

    from edgeloop.server.dashboard.routes import COOKIE

    devices = max(getattr(args, "devices", DEVICES) or DEVICES, DEVICES)
    root = Path(args.workdir) / "bench-dashboard"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    app = filled_app(root, devices)
    sessions = app.state.fleet.sessions
    secret, _ = create_token(sessions, Role.OPERATOR, "bench")
    counter = StatementCounter(sessions.kw["bind"])
    statements: dict[str, int] = {}
    http = TestClient(app, cookies={COOKIE: secret})
    for page in PAGES:
        with counter.counting():
            answer = http.get(page)
        assert answer.status_code == 200, f"{page}: {answer.status_code} {answer.text[:300]}"
        statements[page] = counter.count
    times = _timed(lambda: http.get("/ui/"))
    # What a Prometheus scrape of the same fleet costs (the operator token as a bearer).
    scrapes = _timed(lambda: http.get("/metrics", headers={"Authorization": f"Bearer {secret}"}))
    args.extra = {"statements_per_page": statements, "fleet_page_ms": times, "scrape_ms": scrapes}
    return [
        Figure(f"dashboard.fleet_page_ms_{devices}", statistics.median(times), "ms", "<= 300"),
        Figure(f"dashboard.metrics_scrape_ms_{devices}", statistics.median(scrapes), "ms", ""),
        Figure("dashboard.fleet_page_sql_statements", statements["/ui/"], "statements", "<= 6"),
        Figure("dashboard.max_page_sql_statements", max(statements.values()), "statements", "<= 6"),
    ]


def _timed(get: Any) -> list[float]:
    """Milliseconds of ``RENDERS`` calls of ``get``, each answered 200."""
    times = []
    for _ in range(RENDERS):
        start = time.perf_counter()
        answer = get()
        times.append((time.perf_counter() - start) * 1000)
        assert answer.status_code == 200, f"{answer.status_code} {answer.text[:300]}"
    return times
