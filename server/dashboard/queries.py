"""What the dashboard's pages read: one query per table a page shows, never one per row.

Each function takes a session and returns plain typed rows for the templates. Pages are read
at a thousand devices and more, so every function here issues a fixed number of statements,
independent of how many devices, reports or rollouts there are (``tests/dashboard`` counts
them).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..models import (
    DesiredState,
    Device,
    DeviceReport,
    LoopDecision,
    ModelVersion,
    Rollout,
    RolloutDevice,
    TelemetrySample,
)
from ..rollouts import ENDED
from ..schemas import Step

FAILED_STEPS = (Step.FAILED.value, Step.TIMED_OUT.value)


# --------------------------------------------------------------------------- fleet


@dataclass(frozen=True)
class FleetDevice:
    device_id: str
    profile: str
    application: str
    online: bool
    phase: str
    current_model: str | None
    desired_model: str | None
    tags: list[str]
    last_seen: datetime
    report_ok: bool | None
    within_budget: bool | None
    gate: str | None

    @property
    def failing(self) -> bool:
        """Its latest report refused the model or went over the profile's budget."""
        return self.report_ok is False or self.within_budget is False or self.gate is not None


@dataclass
class Fleet:
    devices: list[FleetDevice]
    telemetry_rows: int

    def counts(self, key: str) -> list[tuple[str, int]]:
        values = Counter(str(getattr(d, key) or "—") for d in self.devices)
        return sorted(values.items())

    @property
    def online(self) -> int:
        return sum(d.online for d in self.devices)

    @property
    def failing(self) -> list[FleetDevice]:
        return [d for d in self.devices if d.failing]


def fleet(db: Session) -> Fleet:
    """Every device with its desired model and the verdict of its latest report: three
    statements (devices joined with their desired state, latest reports, telemetry count)."""
    rows = db.execute(
        select(Device, ModelVersion.name, ModelVersion.version)
        .outerjoin(DesiredState, DesiredState.device_id == Device.id)
        .outerjoin(ModelVersion, ModelVersion.id == DesiredState.model_version_id)
        .order_by(Device.id)
    ).all()
    latest_ids = select(func.max(DeviceReport.id)).group_by(DeviceReport.device_id)
    verdicts = {
        device_id: (ok, payload or {})
        for device_id, ok, payload in db.execute(
            select(DeviceReport.device_id, DeviceReport.ok, DeviceReport.payload).where(
                DeviceReport.id.in_(latest_ids)
            )
        )
    }
    stored = telemetry_rows(db)
    devices = []
    for device, name, version in rows:
        ok, payload = verdicts.get(device.id, (None, {}))
        devices.append(
            FleetDevice(
                device_id=device.id,
                profile=str((device.profile or {}).get("name", "?")),
                application=device.application,
                online=device.online,
                phase=device.phase,
                current_model=device.current_model,
                desired_model=f"{name}:{version}" if name else None,
                tags=[str(t) for t in device.tags or []],
                last_seen=device.last_seen,
                report_ok=ok,
                within_budget=payload.get("within_budget"),
                gate=payload.get("gate"),
            )
        )
    return Fleet(devices=devices, telemetry_rows=stored)


def telemetry_rows(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(TelemetrySample)) or 0


def filter_devices(devices: list[FleetDevice], filters: dict[str, str]) -> list[FleetDevice]:
    """The devices matching every filter given (state, phase, profile, application, tag,
    model); an empty value does not filter."""

    def keep(d: FleetDevice) -> bool:
        checks = {
            "state": lambda v: ("online" if d.online else "offline") == v,
            "phase": lambda v: d.phase == v,
            "profile": lambda v: d.profile == v,
            "application": lambda v: d.application == v,
            "tag": lambda v: v in d.tags,
            "model": lambda v: d.current_model == v,
        }
        return all(checks[k](v) for k, v in filters.items() if v and k in checks)

    return [d for d in devices if keep(d)]


# --------------------------------------------------------------------------- one device


@dataclass(frozen=True)
class DeviceRecord:
    device: Device
    telemetry: list[dict[str, Any]] = field(default_factory=list)
    """Oldest first."""
    reports: list[DeviceReport] = field(default_factory=list)
    """Newest first."""


def device(db: Session, device_id: str, *, samples: int = 120, reports: int = 50) -> DeviceRecord:
    """A device, its last ``samples`` telemetry payloads and last ``reports`` reports.

    Raises:
        LookupError: no such device.
    """
    row = db.get(Device, device_id)
    if row is None:
        raise LookupError(f"no device {device_id!r}")
    payloads = list(
        db.scalars(
            select(TelemetrySample.payload)
            .where(TelemetrySample.device_id == device_id)
            .order_by(TelemetrySample.sent_at.desc(), TelemetrySample.id.desc())
            .limit(samples)
        )
    )
    history = list(
        db.scalars(
            select(DeviceReport)
            .where(DeviceReport.device_id == device_id)
            .order_by(DeviceReport.id.desc())
            .limit(reports)
        )
    )
    return DeviceRecord(device=row, telemetry=payloads[::-1], reports=history)


# --------------------------------------------------------------------------- rollouts


@dataclass
class WaveProgress:
    wave: int
    cumulative_size: int
    steps: Counter[str]

    @property
    def size(self) -> int:
        return sum(self.steps.values())

    @property
    def ended(self) -> int:
        return sum(n for step, n in self.steps.items() if step in ENDED)

    @property
    def failures(self) -> int:
        return sum(self.steps[s] for s in FAILED_STEPS)

    @property
    def failure_rate(self) -> float:
        return self.failures / self.size if self.size else 0.0


@dataclass
class RolloutView:
    id: int
    model: str
    state: str
    current_wave: int
    reason: str
    max_failure_rate: float
    created_at: datetime
    updated_at: datetime
    waves: list[WaveProgress]

    @property
    def devices(self) -> int:
        return sum(w.size for w in self.waves)

    @property
    def ended(self) -> int:
        return sum(w.ended for w in self.waves)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "state": self.state,
            "current_wave": self.current_wave,
            "reason": self.reason,
            "devices": self.devices,
            "ended": self.ended,
            "max_failure_rate": self.max_failure_rate,
            "waves": [
                {
                    "wave": w.wave,
                    "size": w.size,
                    "ended": w.ended,
                    "failures": w.failures,
                    "failure_rate": round(w.failure_rate, 4),
                    "steps": dict(w.steps),
                }
                for w in self.waves
            ],
        }


def rollouts(db: Session, *, rollout_id: int | None = None, limit: int = 100) -> list[RolloutView]:
    """Rollouts, newest first (or the one ``rollout_id``), each wave's steps counted: two
    statements (rollouts joined with their model; step counts grouped by rollout and wave)."""
    query = (
        select(Rollout, ModelVersion.name, ModelVersion.version)
        .join(ModelVersion, ModelVersion.id == Rollout.model_version_id)
        .order_by(Rollout.id.desc())
        .limit(limit)
    )
    if rollout_id is not None:
        query = query.where(Rollout.id == rollout_id)
    rows = db.execute(query).all()
    if not rows:
        return []
    ids = [rollout.id for rollout, _, _ in rows]
    counts: dict[tuple[int, int], Counter[str]] = {}
    for rid, wave, step, n in db.execute(
        select(RolloutDevice.rollout_id, RolloutDevice.wave, RolloutDevice.step, func.count())
        .where(RolloutDevice.rollout_id.in_(ids))
        .group_by(RolloutDevice.rollout_id, RolloutDevice.wave, RolloutDevice.step)
    ):
        counts.setdefault((rid, wave), Counter())[step] = n
    views = []
    for rollout, name, version in rows:
        views.append(
            RolloutView(
                id=rollout.id,
                model=f"{name}:{version}",
                state=rollout.state,
                current_wave=rollout.current_wave + 1,
                reason=rollout.reason,
                max_failure_rate=float((rollout.criteria or {}).get("max_failure_rate", 0.0)),
                created_at=rollout.created_at,
                updated_at=rollout.updated_at,
                waves=[
                    WaveProgress(
                        wave=index + 1,
                        cumulative_size=int(size),
                        steps=counts.get((rollout.id, index), Counter()),
                    )
                    for index, size in enumerate(rollout.waves)
                ],
            )
        )
    return views


def rollout_devices(db: Session, rollout_id: int) -> list[RolloutDevice]:
    return list(
        db.scalars(
            select(RolloutDevice)
            .where(RolloutDevice.rollout_id == rollout_id)
            .order_by(RolloutDevice.wave, RolloutDevice.device_id)
        )
    )


# --------------------------------------------------------------------------- models, loop


def models(db: Session) -> list[ModelVersion]:
    return list(db.scalars(select(ModelVersion).order_by(ModelVersion.name, ModelVersion.id)))


def model(db: Session, model_id: int) -> ModelVersion | None:
    return db.get(ModelVersion, model_id)


def decisions(db: Session, *, limit: int = 500) -> list[LoopDecision]:
    """The loop's latest decisions, oldest first."""
    rows = list(db.scalars(select(LoopDecision).order_by(LoopDecision.id.desc()).limit(limit)))
    return rows[::-1]
