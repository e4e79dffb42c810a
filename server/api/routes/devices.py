from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from sqlalchemy import select

from ... import registry
from ...models import Device, DeviceReport
from ..deps import FleetDep

router = APIRouter(prefix="/api/v1", tags=["devices"])


@router.get("/fleet")
def fleet_summary(fleet: FleetDep) -> list[dict[str, Any]]:
    """Every device with its profile, desired model and latest report."""
    return fleet.fleet_summary()


@router.post("/fleet/plan")
def plan_fleet(fleet: FleetDep) -> list[dict[str, Any]]:
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
    offset: int = Query(default=0, ge=0),
) -> dict[str, Any]:
    """The registry, by device id: ``{total, limit, offset, items}``."""
    with fleet.sessions() as db:
        total, items = registry.list_devices(
            db, profile=profile, tags=tag, online=online, limit=limit, offset=offset
        )
    return {"total": total, "limit": limit, "offset": offset, "items": items}


@router.get("/devices/{device_id}")
def device_detail(device_id: str, fleet: FleetDep) -> dict[str, Any]:
    """One device: identity, profile, tags, online, current/previous/desired model, and its
    latest report and telemetry."""
    with fleet.sessions() as db:
        try:
            return registry.device_detail(db, device_id)
        except LookupError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.get("/devices/{device_id}/telemetry")
def device_telemetry(
    device_id: str,
    fleet: FleetDep,
    since: Annotated[datetime | None, Query(description="ISO 8601; UTC if no zone")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601, exclusive")] = None,
    limit: int = Query(default=100, ge=1, le=5000),
    offset: int = Query(default=0, ge=0),
) -> dict[str, Any]:
    """Telemetry samples, newest first: ``{total, limit, offset, items}``."""
    since, until = registry.as_utc(since), registry.as_utc(until)
    if since is not None and until is not None and until <= since:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "`until` must be after `since`")
    with fleet.sessions() as db:
        try:
            total, items = registry.telemetry(
                db, device_id, since=since, until=until, limit=limit, offset=offset
            )
        except LookupError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    return {"total": total, "limit": limit, "offset": offset, "items": items}


@router.get("/devices/{device_id}/reports")
def device_reports(
    device_id: str, fleet: FleetDep, limit: int = Query(default=50, ge=1, le=1000)
) -> list[dict[str, Any]]:
    with fleet.sessions() as db:
        rows = db.scalars(
            select(DeviceReport)
            .where(DeviceReport.device_id == device_id)
            .order_by(DeviceReport.id.desc())
            .limit(limit)
        ).all()
        if not rows and db.get(Device, device_id) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no device {device_id!r}")
        return [r.payload | {"received_at": r.received_at.isoformat()} for r in rows]
