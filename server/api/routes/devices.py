"""The device registry: devices, their reports and telemetry, and the planner's fleet view."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BeforeValidator

from ... import registry
from ...auth import record_audit
from ...schemas import DeviceDetail, DevicePublic, FleetEntry, Page, ReportRecord, TelemetrySample
from ...times import as_utc
from ..deps import (
    AUTH,
    ApplicationQuery,
    DeviceIdPath,
    DeviceReader,
    FleetDep,
    LabelQuery,
    OffsetQuery,
    Operator,
    ProfileQuery,
    Reader,
    problems,
)

router = APIRouter(prefix="/api/v1", tags=["devices"])


def _iso_8601(value: object) -> object:
    """Refuse what pydantic would also take for a time but the document's ``date-time`` does
    not allow: a number (seconds since 1970) or a date without a time of day."""
    if isinstance(value, str) and not re.match(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:", value):
        raise ValueError("expected an ISO 8601 date and time, e.g. 2026-12-01T12:00:00Z")
    return value


@router.get("/fleet", responses=problems(*AUTH))
def fleet_summary(fleet: FleetDep, reader: Reader) -> list[FleetEntry]:
    """Every device with its profile, desired model and latest report."""
    return fleet.fleet_summary()


@router.post("/fleet/plan", responses=problems(*AUTH))
def plan_fleet(
    fleet: FleetDep, operator: Operator, application: ApplicationQuery = None
) -> list[FleetEntry]:
    """Re-pick every device's model now (only the devices of ``application``, when given);
    devices whose choice changed get a new revision."""
    fleet.plan_all(application)
    summary = fleet.fleet_summary()
    record_audit(
        fleet.sessions,
        operator,
        "fleet.plan",
        f"application:{application}" if application else "fleet",
        {"devices": len(summary)},
    )
    return summary


@router.get("/devices", responses=problems(*AUTH))
def list_devices(
    fleet: FleetDep,
    reader: Reader,
    profile: ProfileQuery = None,
    tag: Annotated[
        list[str] | None,
        Query(max_length=100, description="carries this tag (repeat: all of them)"),
    ] = None,
    online: bool | None = Query(default=None),
    application: ApplicationQuery = None,
    limit: int = Query(default=50, ge=1, le=1000),
    offset: OffsetQuery = 0,
) -> Page[DevicePublic]:
    """The registry, by device id."""
    with fleet.sessions() as db:
        return registry.list_devices(
            db,
            profile=profile,
            tags=tag,
            online=online,
            application=application,
            limit=limit,
            offset=offset,
        )


@router.get("/devices/{device_id}", responses=problems(*AUTH, 404))
def device_detail(device_id: DeviceIdPath, fleet: FleetDep, reader: DeviceReader) -> DeviceDetail:
    """One device: identity, profile, tags, online, current/previous/desired model, and its
    latest report and telemetry. A device's own token may read it."""
    with fleet.sessions() as db:
        try:
            return registry.device_detail(db, device_id)
        except LookupError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.get("/devices/{device_id}/telemetry", responses=problems(*AUTH, 404))
def device_telemetry(
    device_id: DeviceIdPath,
    fleet: FleetDep,
    reader: DeviceReader,
    since: Annotated[
        datetime | None,
        BeforeValidator(_iso_8601),
        Query(description="ISO 8601, inclusive; UTC if no zone"),
    ] = None,
    until: Annotated[
        datetime | None,
        BeforeValidator(_iso_8601),
        Query(description="ISO 8601, exclusive; UTC if no zone. Not after `since`: no samples"),
    ] = None,
    limit: int = Query(default=100, ge=1, le=5000),
    offset: OffsetQuery = 0,
) -> Page[TelemetrySample]:
    """Telemetry samples in ``[since, until)``, newest first. A device's own token may read
    them."""
    since = _utc(since) if since is not None else None
    until = _utc(until) if until is not None else None
    with fleet.sessions() as db:
        try:
            return registry.telemetry(
                db, device_id, since=since, until=until, limit=limit, offset=offset
            )
        except LookupError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.get("/devices/{device_id}/reports", responses=problems(*AUTH, 404))
def device_reports(
    device_id: DeviceIdPath,
    fleet: FleetDep,
    reader: DeviceReader,
    limit: int = Query(default=50, ge=1, le=1000),
) -> list[ReportRecord]:
    """A device's update reports, newest first. A device's own token may read them."""
    with fleet.sessions() as db:
        try:
            return registry.device_reports(db, device_id, limit=limit)
        except LookupError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.get("/reports", responses=problems(*AUTH))
def list_reports(
    fleet: FleetDep,
    reader: Reader,
    profile: ProfileQuery = None,
    model: LabelQuery = None,
    latest: bool = Query(
        default=False, description="only each device's newest report (among those filtered)"
    ),
    limit: int = Query(default=100, ge=1, le=1000),
    offset: OffsetQuery = 0,
) -> Page[ReportRecord]:
    """The fleet's update reports, newest first. ``?profile=P&model=M&latest=true`` is what a
    device class measured on a model: one request, whatever the class's size."""
    with fleet.sessions() as db:
        return registry.reports(
            db, profile=profile, model=model, latest=latest, limit=limit, offset=offset
        )


def _utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a time so near the ends of the calendar that UTC has no such day
    (``0001-01-01T00:00+01:00``) is the calendar's first or last moment, which no sample
    predates or outlives."""
    try:
        return as_utc(moment)
    except OverflowError:
        return (datetime.min if moment.year == datetime.min.year else datetime.max).replace(
            tzinfo=UTC
        )
