"""The compression loop's record: its decisions (``edgeloop loop history``) and each device
class's cost-model calibration, fitted from the devices' reports."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from ...models import Calibration, LoopDecision
from ...registry import iso_utc
from ..deps import FleetDep

router = APIRouter(prefix="/api/v1", tags=["loop"])


class DecisionCreate(BaseModel):
    loop: str = Field(min_length=1, max_length=128)
    round: int = Field(ge=0)
    profile: str = Field(min_length=1, max_length=64)
    action: Literal["deploy", "keep", "wait", "unreachable", "stop"]
    model: str | None = None
    reason: str = Field(min_length=1)
    figures: dict[str, Any] = Field(default_factory=dict)


class CalibrationPut(BaseModel):
    calibration: dict[str, Any]
    observations: int = Field(ge=0)


def _decision(row: LoopDecision) -> dict[str, Any]:
    return {
        "id": row.id,
        "loop": row.loop,
        "round": row.round,
        "profile": row.profile,
        "action": row.action,
        "model": row.model,
        "reason": row.reason,
        "figures": row.figures,
        "created_at": iso_utc(row.created_at),
    }


def _calibration(row: Calibration) -> dict[str, Any]:
    return {
        "profile": row.profile,
        "calibration": row.calibration,
        "observations": row.observations,
        "updated_at": iso_utc(row.updated_at),
    }


@router.post("/loop/decisions", status_code=status.HTTP_201_CREATED)
def record_decision(body: DecisionCreate, fleet: FleetDep) -> dict[str, Any]:
    with fleet.sessions.begin() as db:
        row = LoopDecision(**body.model_dump())
        db.add(row)
        db.flush()
        return _decision(row)


@router.get("/loop/decisions")
def list_decisions(
    fleet: FleetDep,
    loop: str | None = Query(default=None),
    profile: str | None = Query(default=None),
    limit: int = Query(default=200, ge=1, le=5000),
    offset: int = Query(default=0, ge=0),
) -> dict[str, Any]:
    """Oldest first (a history reads forwards): ``{total, limit, offset, items}``."""
    where = []
    if loop is not None:
        where.append(LoopDecision.loop == loop)
    if profile is not None:
        where.append(LoopDecision.profile == profile)
    with fleet.sessions() as db:
        total = db.scalar(select(func.count()).select_from(LoopDecision).where(*where)) or 0
        rows = db.scalars(
            select(LoopDecision).where(*where).order_by(LoopDecision.id).limit(limit).offset(offset)
        )
        return {
            "total": total,
            "limit": limit,
            "offset": offset,
            "items": [_decision(r) for r in rows],
        }


@router.put("/calibrations/{profile}")
def put_calibration(profile: str, body: CalibrationPut, fleet: FleetDep) -> dict[str, Any]:
    with fleet.sessions.begin() as db:
        row = db.get(Calibration, profile)
        if row is None:
            row = Calibration(profile=profile, calibration={})
            db.add(row)
        row.calibration = body.calibration
        row.observations = body.observations
        row.updated_at = datetime.now(UTC)
        return _calibration(row)


@router.get("/calibrations")
def list_calibrations(fleet: FleetDep) -> list[dict[str, Any]]:
    with fleet.sessions() as db:
        return [
            _calibration(row)
            for row in db.scalars(select(Calibration).order_by(Calibration.profile))
        ]


@router.get("/calibrations/{profile}")
def get_calibration(profile: str, fleet: FleetDep) -> dict[str, Any]:
    with fleet.sessions() as db:
        row = db.get(Calibration, profile)
        if row is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                f"no calibration for profile {profile!r} yet: it comes from devices' reports",
            )
        return _calibration(row)
