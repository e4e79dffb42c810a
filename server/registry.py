"""Read side of the registry (devices, reports, telemetry) and model retention, for the REST
API.

Keyword-only functions over a session, answering the API's own types
(:mod:`edgeloop.server.schemas`); a list answers a :class:`~edgeloop.server.schemas.Page`.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from datetime import UTC, datetime

from pydantic import ValidationError
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from edgeloop.agent.protocol import DeviceProfile, Phase

from .fleet import StoredVersionError, report_record
from .models import (
    ApplicationAssignment,
    DesiredState,
    Device,
    DeviceReport,
    ModelVersion,
    Rollout,
    TelemetrySample,
)
from .rollouts import SENDING
from .schemas import (
    STORED,
    ApplicationAssignmentPublic,
    ApplicationPublic,
    DesiredPublic,
    DeviceDetail,
    DevicePublic,
    ModelPublic,
    Page,
    ReportRecord,
)
from .schemas import (
    TelemetrySample as TelemetrySamplePublic,
)
from .times import for_database

log = logging.getLogger("edgeloop.server.registry")


class RetentionError(ValueError):
    """A version cannot be retired (it is in use); the message says by what."""


def device_row(db: Session, device: Device) -> DevicePublic:
    state = db.get(DesiredState, device.id)
    desired = (
        db.get(ModelVersion, state.model_version_id) if state and state.model_version_id else None
    )
    return DevicePublic(
        device_id=device.id,
        profile=DeviceProfile.model_validate(device.profile),
        tags=device.tags,
        application=device.application,
        application_source=device.application_source,
        online=device.online,
        phase=Phase(device.phase),
        agent_version=device.agent_version,
        protocol=device.protocol,
        current_model=device.current_model,
        previous_model=device.previous_model,
        first_seen=device.first_seen,
        last_seen=device.last_seen,
        desired=DesiredPublic(
            revision=state.revision,
            model=desired.label if desired else None,
            reason=state.reason,
            source=state.source,
        )
        if state
        else None,
    )


def list_devices(
    db: Session,
    *,
    profile: str | None = None,
    tags: list[str] | None = None,
    online: bool | None = None,
    application: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Page[DevicePublic]:
    """Devices by id. ``tags``: a device must carry all of them (matched in Python: JSON
    containment differs between SQLite and PostgreSQL, and tag sets are small)."""
    query = select(Device).order_by(Device.id)
    if profile is not None:
        query = query.where(_profile_is(profile))
    if application is not None:
        query = query.where(Device.application == application)
    if online is not None:
        query = query.where(Device.online.is_(online))
    devices = list(db.scalars(query))
    if tags:
        wanted = set(tags)
        devices = [d for d in devices if wanted <= set(d.tags or [])]
    items = [device_row(db, d) for d in devices[offset : offset + limit]]
    return Page[DevicePublic](total=len(devices), limit=limit, offset=offset, items=items)


def applications(db: Session) -> list[ApplicationPublic]:
    """Every application that has a device, a live model version or an assignment."""
    counted = (
        select(Device.application, func.count(), func.count().filter(Device.online.is_(True)))
        .where(Device.revoked_at.is_(None))
        .group_by(Device.application)
    )
    devices = {app: (total, online) for app, total, online in db.execute(counted)}
    versions: dict[str, list[str]] = defaultdict(list)
    live = select(ModelVersion).where(ModelVersion.retired_at.is_(None)).order_by(ModelVersion.id)
    for model in db.scalars(live):
        versions[model.application].append(model.label)
    tags: dict[str, list[str]] = defaultdict(list)
    for rule in db.scalars(select(ApplicationAssignment).order_by(ApplicationAssignment.tag)):
        tags[rule.application].append(rule.tag)
    return [
        ApplicationPublic(
            name=name,
            devices=devices.get(name, (0, 0))[0],
            online=devices.get(name, (0, 0))[1],
            versions=versions[name],
            tags=tags[name],
        )
        for name in sorted(devices.keys() | versions.keys() | tags.keys())
    ]


def application_assignments(db: Session) -> list[ApplicationAssignmentPublic]:
    carriers: Counter[str] = Counter()
    for device in db.scalars(select(Device).where(Device.revoked_at.is_(None))):
        carriers.update(set(device.tags or []))
    return [
        ApplicationAssignmentPublic(
            tag=rule.tag, application=rule.application, devices=carriers[rule.tag]
        )
        for rule in db.scalars(select(ApplicationAssignment).order_by(ApplicationAssignment.tag))
    ]


def _profile_is(name: str) -> ColumnElement[bool]:
    return Device.profile["name"].as_string() == name


def device_detail(db: Session, device_id: str) -> DeviceDetail:
    """One device with its latest report and latest telemetry sample.

    Raises:
        LookupError: no such device.
    """
    device = _device(db, device_id)
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
    return DeviceDetail(
        **device_row(db, device).model_dump(),
        latest_report=report_record(report) if report else None,
        latest_telemetry=TelemetrySamplePublic.model_validate(sample.payload) if sample else None,
    )


def _device(db: Session, device_id: str) -> Device:
    device = db.get(Device, device_id)
    if device is None:
        raise LookupError(f"no device {device_id!r}; `edgeloop devices ls` lists them")
    return device


def device_reports(db: Session, device_id: str, *, limit: int = 50) -> list[ReportRecord]:
    """A device's reports, newest first.

    Raises:
        LookupError: no such device.
    """
    _device(db, device_id)
    rows = db.scalars(
        select(DeviceReport)
        .where(DeviceReport.device_id == device_id)
        .order_by(DeviceReport.id.desc())
        .limit(limit)
    )
    return [report_record(r) for r in rows]


def reports(
    db: Session,
    *,
    profile: str | None = None,
    model: str | None = None,
    latest: bool = False,
    limit: int = 100,
    offset: int = 0,
) -> Page[ReportRecord]:
    """Reports of the fleet, newest first: of devices of ``profile``, on ``model``
    (``name:version``). ``latest``: only each device's newest report among those, so a device
    class's figures for one model are one query, whatever the class's size."""
    where: list[ColumnElement[bool]] = []
    if profile is not None:
        where.append(DeviceReport.device_id.in_(select(Device.id).where(_profile_is(profile))))
    if model is not None:
        where.append(DeviceReport.model == model)
    if latest:
        newest = select(func.max(DeviceReport.id)).where(*where).group_by(DeviceReport.device_id)
        where = [DeviceReport.id.in_(newest)]
    total = db.scalar(select(func.count()).select_from(DeviceReport).where(*where)) or 0
    rows = db.scalars(
        select(DeviceReport)
        .where(*where)
        .order_by(DeviceReport.id.desc())
        .limit(limit)
        .offset(offset)
    )
    items = [report_record(r) for r in rows]
    return Page[ReportRecord](total=total, limit=limit, offset=offset, items=items)


def telemetry(
    db: Session,
    device_id: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> Page[TelemetrySamplePublic]:
    """A device's telemetry samples, newest first, optionally within [since, until).

    Raises:
        LookupError: no such device.
    """
    _device(db, device_id)
    where = [TelemetrySample.device_id == device_id]
    if since is not None:
        where.append(TelemetrySample.sent_at >= for_database(since, db.get_bind().dialect.name))
    if until is not None:
        where.append(TelemetrySample.sent_at < for_database(until, db.get_bind().dialect.name))
    total = db.scalar(select(func.count()).select_from(TelemetrySample).where(*where)) or 0
    rows = db.scalars(
        select(TelemetrySample)
        .where(*where)
        .order_by(TelemetrySample.sent_at.desc(), TelemetrySample.id.desc())
        .limit(limit)
        .offset(offset)
    )
    items = [TelemetrySamplePublic.model_validate(r.payload) for r in rows]
    return Page[TelemetrySamplePublic](total=total, limit=limit, offset=offset, items=items)


# ---------------------------------------------------------------------- models


def model_public(model: ModelVersion) -> ModelPublic:
    """A stored version as the API answers it.

    Raises:
        StoredVersionError: its stored figures or I/O contract do not validate.
    """
    try:
        return ModelPublic.model_validate(model, from_attributes=True, context=STORED)
    except ValidationError as exc:
        raise StoredVersionError.invalid(model, exc, "model") from None


def list_models(
    db: Session,
    *,
    name: str | None = None,
    include_retired: bool = False,
    limit: int = 100,
    offset: int = 0,
) -> Page[ModelPublic]:
    """Model versions, oldest first.

    A version whose stored row does not validate cannot be answered in the API's types; it
    is left out of the page (and of ``total``) with a warning naming it and why, instead of
    failing the listing. The planner skips it too; ``retire`` still retires it by name.
    """
    query = select(ModelVersion).order_by(ModelVersion.id)
    if name is not None:
        query = query.where(ModelVersion.name == name)
    if not include_retired:
        query = query.where(ModelVersion.retired_at.is_(None))
    rows = []
    for model in db.scalars(query):
        try:
            rows.append(model_public(model))
        except StoredVersionError as exc:
            log.warning("model listing leaves out a version: %s", exc)
    items = rows[offset : offset + limit]
    return Page[ModelPublic](total=len(rows), limit=limit, offset=offset, items=items)


# ---------------------------------------------------------------------- retention


def _in_use(db: Session) -> dict[int, str]:
    """Model version ids something still depends on, with what depends on them.

    Pinned: a version a device was sent (its desired state), runs, or can roll back to (its
    previous model), and the target of a rollout that may still send it (running, or paused
    and so resumable). A halted rollout is not resumable (its failures are facts; the
    operator cancels it or rolls it back and starts anew), and a completed, cancelled or
    rolled-back one sends nothing more: none of them pins its target, or no version would
    ever age out. What their devices were sent, run or ran before stays pinned through the
    devices, so a rollback's targets stay live until a device has moved on past them.
    """
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
    sending = select(Rollout).where(Rollout.state.in_([s.value for s in SENDING]))
    for rollout in db.scalars(sending):
        uses.setdefault(rollout.model_version_id, f"target of {rollout.state} rollout {rollout.id}")
    return uses


def retire(db: Session, name: str, version: str) -> ModelVersion:
    """Stop offering ``name:version`` to the planner and to new rollouts.

    Raises:
        LookupError: no such version.
        RetentionError: a device or a running or paused rollout still depends on it.
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
