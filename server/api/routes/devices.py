from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, status
from sqlalchemy import select

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
