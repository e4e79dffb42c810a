"""The audit trail: every change made through the API (and to the token table), newest
first, with who made it."""

from __future__ import annotations

from fastapi import APIRouter, Query

from ... import auth
from ...schemas import AuditEntryPublic, Page
from ..deps import AUTH, FleetDep, OffsetQuery, Reader, problems

router = APIRouter(prefix="/api/v1", tags=["audit"])


@router.get("/audit", responses=problems(*AUTH))
def list_audit(
    fleet: FleetDep,
    reader: Reader,
    actor: str | None = Query(
        default=None, min_length=1, max_length=128, description="only changes by this token"
    ),
    action: str | None = Query(
        default=None,
        min_length=1,
        max_length=64,
        description="only this action, e.g. rollout.create",
    ),
    limit: int = Query(default=100, ge=1, le=1000),
    offset: OffsetQuery = 0,
) -> Page[AuditEntryPublic]:
    """Who changed what, newest first."""
    with fleet.sessions() as db:
        return auth.list_audit(db, actor=actor, action=action, limit=limit, offset=offset)
