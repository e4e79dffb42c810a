"""The compression loop's record: its decisions (``edgeloop loop history``) and each device
class's cost-model calibration, fitted from the devices' reports."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, Query, status
from sqlalchemy import func, select

from ...auth import record_audit
from ...models import Calibration, LoopDecision
from ...schemas import (
    CalibrationPublic,
    CalibrationPut,
    LoopDecisionCreate,
    LoopDecisionPublic,
    Page,
)
from ..deps import AUTH, FleetDep, OffsetQuery, Operator, ProfilePath, Reader, problems

router = APIRouter(prefix="/api/v1", tags=["loop"])


def _decision(row: LoopDecision) -> LoopDecisionPublic:
    return LoopDecisionPublic.model_validate(row, from_attributes=True)


def _calibration(row: Calibration) -> CalibrationPublic:
    return CalibrationPublic.model_validate(row, from_attributes=True)


@router.post("/loop/decisions", status_code=status.HTTP_201_CREATED, responses=problems(*AUTH))
def record_decision(
    body: LoopDecisionCreate, fleet: FleetDep, operator: Operator
) -> LoopDecisionPublic:
    with fleet.sessions.begin() as db:
        row = LoopDecision(**body.model_dump())
        db.add(row)
        db.flush()
        detail = body.model_dump(include={"round", "profile", "action", "model"})
        detail["decision"] = row.id
        record_audit(db, operator, "loop.decision", f"loop:{body.loop}", detail)
        return _decision(row)


@router.get("/loop/decisions", responses=problems(*AUTH))
def list_decisions(
    fleet: FleetDep,
    reader: Reader,
    loop: str | None = Query(default=None, min_length=1, max_length=128),
    profile: str | None = Query(default=None, min_length=1, max_length=64),
    limit: int = Query(default=200, ge=1, le=5000),
    offset: OffsetQuery = 0,
) -> Page[LoopDecisionPublic]:
    """Oldest first (a history reads forwards)."""
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
        items = [_decision(r) for r in rows]
    return Page[LoopDecisionPublic](total=total, limit=limit, offset=offset, items=items)


@router.put("/calibrations/{profile}", responses=problems(*AUTH))
def put_calibration(
    profile: ProfilePath, body: CalibrationPut, fleet: FleetDep, operator: Operator
) -> CalibrationPublic:
    with fleet.sessions.begin() as db:
        row = db.get(Calibration, profile)
        if row is None:
            row = Calibration(profile=profile, calibration={})
            db.add(row)
        row.calibration = body.calibration
        row.observations = body.observations
        row.updated_at = datetime.now(UTC)
        detail = {"observations": body.observations}
        record_audit(db, operator, "calibration.put", f"calibration:{profile}", detail)
        return _calibration(row)


@router.get("/calibrations", responses=problems(*AUTH))
def list_calibrations(fleet: FleetDep, reader: Reader) -> list[CalibrationPublic]:
    with fleet.sessions() as db:
        return [
            _calibration(row)
            for row in db.scalars(select(Calibration).order_by(Calibration.profile))
        ]


@router.get("/calibrations/{profile}", responses=problems(*AUTH, 404))
def get_calibration(profile: ProfilePath, fleet: FleetDep, reader: Reader) -> CalibrationPublic:
    with fleet.sessions() as db:
        row = db.get(Calibration, profile)
        if row is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                f"no calibration for profile {profile!r} yet: it comes from devices' reports",
            )
        return _calibration(row)
