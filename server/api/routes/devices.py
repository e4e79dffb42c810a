"""The device registry: devices, their reports and telemetry, and the planner's fleet view."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from ... import registry
from ...schemas import DeviceDetail, DevicePublic, FleetEntry, Page, ReportRecord, TelemetrySample
from ...times import as_utc
from ..deps import FleetDep, OffsetQuery, problems

router = APIRouter(prefix="/api/v1", tags=["devices"])


@router.get("/fleet")
def fleet_summary(fleet: FleetDep) -> list[FleetEntry]:
    """Every device with its profile, desired model and latest report."""
    return fleet.fleet_summary()


@router.post("/fleet/plan")
def plan_fleet(fleet: FleetDep) -> list[FleetEntry]:
    """Re-pick every device's model now; devices whose choice changed get a new revision."""
    fleet.plan_all()
    return fleet.fleet_summary()


@router.get("/devices")
def list_devices(
    fleet: FleetDep,
    profile: str | None = Query(default=None, description="only devices of this profile name"),
    tag: Annotated[
        list[str] | None, Query(description="carries this tag (repeat: all of them)")
    ] = None,
    online: bool | None = Query(default=None),
    limit: int = Query(default=50, ge=1, le=1000),
    offset: OffsetQuery = 0,
) -> Page[DevicePublic]:
    """The registry, by device id."""
    with fleet.sessions() as db:
        return registry.list_devices(
            db, profile=profile, tags=tag, online=online, limit=limit, offset=offset
        )


@router.get("/devices/{device_id}", responses=problems(404))
def device_detail(device_id: str, fleet: FleetDep) -> DeviceDetail:
    """One device: identity, profile, tags, online, current/previous/desired model, and its
    latest report and telemetry."""
    with fleet.sessions() as db:
        try:
            return registry.device_detail(db, device_id)
        except LookupError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.get("/devices/{device_id}/telemetry", responses=problems(404))
def device_telemetry(
    device_id: str,
    fleet: FleetDep,
    since: Annotated[datetime | None, Query(description="ISO 8601; UTC if no zone")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601, exclusive")] = None,
    limit: int = Query(default=100, ge=1, le=5000),
    offset: OffsetQuery = 0,
) -> Page[TelemetrySample]:
    """Telemetry samples, newest first."""
    since = as_utc(since) if since is not None else None
    until = as_utc(until) if until is not None else None
    if since is not None and until is not None and until <= since:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "`until` must be after `since`")
    with fleet.sessions() as db:
        try:
            return registry.telemetry(
                db, device_id, since=since, until=until, limit=limit, offset=offset
            )
        except LookupError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.get("/devices/{device_id}/reports", responses=problems(404))
def device_reports(
    device_id: str, fleet: FleetDep, limit: int = Query(default=50, ge=1, le=1000)
) -> list[ReportRecord]:
    """A device's update reports, newest first."""
    with fleet.sessions() as db:
        try:
            return registry.device_reports(db, device_id, limit=limit)
        except LookupError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.get("/reports")
def list_reports(
    fleet: FleetDep,
    profile: str | None = Query(
        default=None, max_length=64, description="only devices of this profile name"
    ),
    model: str | None = Query(
        default=None, max_length=200, description="only reports on `name:version`"
    ),
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
