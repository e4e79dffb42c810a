"""Read side of the registry (devices, telemetry) and model retention, for the REST API.

Keyword-only functions over a session, returning plain rows the routes turn into JSON. Pages
are ``(total, items)`` so every list endpoint answers ``{total, limit, offset, items}``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import DesiredState, Device, DeviceReport, ModelVersion, Rollout, TelemetrySample
from .rollouts import ACTIVE

Page = tuple[int, list[dict[str, Any]]]


class RetentionError(ValueError):
    """A version cannot be retired (it is in use); the message says by what."""


def _aware(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def as_utc(moment: datetime | None) -> datetime | None:
    """Zone-aware UTC; a naive time (SQLite's, or a query without a zone) is taken as UTC."""
    return None if moment is None else _aware(moment)


def iso_utc(moment: datetime) -> str:
    """ISO 8601 with the zone (UTC), whatever the database handed back."""
    return _aware(moment).isoformat()


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else iso_utc(moment)


def device_row(db: Session, device: Device) -> dict[str, Any]:
    state = db.get(DesiredState, device.id)
    desired = (
        db.get(ModelVersion, state.model_version_id) if state and state.model_version_id else None
    )
    return {
        "device_id": device.id,
        "profile": device.profile,
        "tags": device.tags,
        "online": device.online,
        "phase": device.phase,
        "agent_version": device.agent_version,
        "current_model": device.current_model,
        "previous_model": device.previous_model,
        "first_seen": _iso(device.first_seen),
        "last_seen": _iso(device.last_seen),
        "desired": {
            "revision": state.revision,
            "model": desired.label if desired else None,
            "reason": state.reason,
            "source": state.source,
        }
        if state
        else None,
    }


def list_devices(
    db: Session,
    *,
    profile: str | None = None,
    tags: list[str] | None = None,
    online: bool | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Page:
    """Devices by id. ``tags``: a device must carry all of them (matched in Python: JSON
    containment differs between SQLite and PostgreSQL, and tag sets are small)."""
    query = select(Device).order_by(Device.id)
    if profile is not None:
        query = query.where(Device.profile["name"].as_string() == profile)
    if online is not None:
        query = query.where(Device.online.is_(online))
    devices = list(db.scalars(query))
    if tags:
        wanted = set(tags)
        devices = [d for d in devices if wanted <= set(d.tags or [])]
    return len(devices), [device_row(db, d) for d in devices[offset : offset + limit]]


def device_detail(db: Session, device_id: str) -> dict[str, Any]:
    """One device with its latest report and latest telemetry sample.

    Raises:
        LookupError: no such device.
    """
    device = db.get(Device, device_id)
    if device is None:
        raise LookupError(f"no device {device_id!r}; `edgeloop devices ls` lists them")
    report = db.scalar(
        select(DeviceReport)
        .where(DeviceReport.device_id == device_id)
        .order_by(DeviceReport.id.desc())
        .limit(1)
    )
    sample = db.scalar(
        select(TelemetrySample)
        .where(TelemetrySample.device_id == device_id)
        .order_by(TelemetrySample.sent_at.desc(), TelemetrySample.id.desc())
        .limit(1)
    )
    return device_row(db, device) | {
        "latest_report": report.payload if report else None,
        "latest_telemetry": sample.payload if sample else None,
    }


def telemetry(
    db: Session,
    device_id: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> Page:
    """A device's telemetry samples, newest first, optionally within [since, until).

    Raises:
        LookupError: no such device.
    """
    if db.get(Device, device_id) is None:
        raise LookupError(f"no device {device_id!r}; `edgeloop devices ls` lists them")
    where = [TelemetrySample.device_id == device_id]
    if since is not None:
        where.append(TelemetrySample.sent_at >= _naive_utc(since, db))
    if until is not None:
        where.append(TelemetrySample.sent_at < _naive_utc(until, db))
    total = db.scalar(select(func.count()).select_from(TelemetrySample).where(*where)) or 0
    rows = db.scalars(
        select(TelemetrySample)
        .where(*where)
        .order_by(TelemetrySample.sent_at.desc(), TelemetrySample.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return total, [r.payload for r in rows]


def _naive_utc(moment: datetime, db: Session) -> datetime:
    """SQLite stores times as naive UTC text, so compare with naive UTC there; PostgreSQL
    compares zone-aware values correctly."""
    aware = _aware(moment)
    return aware.replace(tzinfo=None) if db.get_bind().dialect.name == "sqlite" else aware


# ---------------------------------------------------------------------- retention


def _in_use(db: Session) -> dict[int, str]:
    """Model version ids something still depends on, with what depends on them."""
    uses: dict[int, str] = {}
    for state in db.scalars(select(DesiredState).where(DesiredState.model_version_id.is_not(None))):
        if state.model_version_id is not None:
            uses.setdefault(state.model_version_id, f"desired by device {state.device_id}")
    devices = list(db.scalars(select(Device)))
    running = {d.current_model: d.id for d in devices}
    previous = {d.previous_model: d.id for d in devices}
    for model in db.scalars(select(ModelVersion)):
        if model.label in running:
            uses.setdefault(model.id, f"running on device {running[model.label]}")
        elif model.label in previous:
            uses.setdefault(model.id, f"rollback target of device {previous[model.label]}")
    active = select(Rollout).where(Rollout.state.in_([s.value for s in ACTIVE]))
    for rollout in db.scalars(active):
        uses.setdefault(rollout.model_version_id, f"target of {rollout.state} rollout {rollout.id}")
    return uses


def retire(db: Session, name: str, version: str) -> ModelVersion:
    """Stop offering ``name:version`` to the planner and to new rollouts.

    Raises:
        LookupError: no such version.
        RetentionError: a device or an active rollout still depends on it.
    """
    model = db.scalar(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
    )
    if model is None:
        raise LookupError(f"no model {name}:{version}")
    use = _in_use(db).get(model.id)
    if use is not None:
        raise RetentionError(f"model {model.label} is still in use ({use}); roll it off first")
    if model.retired_at is None:
        model.retired_at = datetime.now(UTC)
    return model


def apply_retention(db: Session, *, keep: int, name: str | None = None) -> list[str]:
    """Retire all but the newest ``keep`` live versions of each model name, skipping any
    version still in use. Returns the labels retired now."""
    if keep < 1:
        raise ValueError("keep must be at least 1: retention never retires every version")
    uses = _in_use(db)
    query = select(ModelVersion).where(ModelVersion.retired_at.is_(None))
    if name is not None:
        query = query.where(ModelVersion.name == name)
    by_name: dict[str, list[ModelVersion]] = {}
    for model in db.scalars(query.order_by(ModelVersion.id.desc())):
        by_name.setdefault(model.name, []).append(model)
    retired = []
    now = datetime.now(UTC)
    for versions in by_name.values():
        for model in versions[keep:]:
            if model.id not in uses:
                model.retired_at = now
                retired.append(model.label)
    return retired
