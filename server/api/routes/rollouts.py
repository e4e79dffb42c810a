"""Rollouts: create, watch, pause/resume, cancel, roll back. Errors are ``{"detail": ...}``:
404 for an unknown rollout, 409 for what the fleet's state does not allow (an unknown or
retired model, no matching device, an action the rollout's state refuses), 422 for bad input."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, status

from ...auth import record_audit
from ...rollouts import RolloutError
from ...schemas import Page, RolloutAction, RolloutCreate, RolloutStatus, RolloutSummary
from ..deps import AUTH, FleetDep, IdPath, OffsetQuery, Operator, Reader, RolloutsDep, problems

router = APIRouter(prefix="/api/v1/rollouts", tags=["rollouts"])


@router.post("", status_code=status.HTTP_201_CREATED, responses=problems(*AUTH, 409))
def create_rollout(
    request: RolloutCreate, rollouts: RolloutsDep, fleet: FleetDep, operator: Operator
) -> RolloutStatus:
    """Refused with 409 when the model is not registered or is retired, or no device
    matches the target."""
    try:
        rollout_id = rollouts.create(request)
    except RolloutError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    detail = request.model_dump(mode="json")
    record_audit(fleet.sessions, operator, "rollout.create", f"rollout:{rollout_id}", detail)
    return rollouts.status(rollout_id)


@router.get("", responses=problems(*AUTH))
def list_rollouts(
    rollouts: RolloutsDep,
    reader: Reader,
    limit: int = Query(default=50, ge=1, le=500),
    offset: OffsetQuery = 0,
) -> Page[RolloutSummary]:
    """Newest first, without each rollout's device list (``GET /rollouts/{id}`` has it)."""
    return rollouts.page(limit=limit, offset=offset)


@router.get("/{rollout_id}", responses=problems(*AUTH, 404))
def rollout_status(rollout_id: IdPath, rollouts: RolloutsDep, reader: Reader) -> RolloutStatus:
    try:
        return rollouts.status(rollout_id)
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.post("/{rollout_id}/{action}", responses=problems(*AUTH, 404, 409))
def act_on_rollout(
    rollout_id: IdPath,
    action: RolloutAction,
    rollouts: RolloutsDep,
    fleet: FleetDep,
    operator: Operator,
) -> RolloutStatus:
    """Pause, resume, cancel or roll back; 409 when the rollout's state does not allow it
    (e.g. resuming a halted one)."""
    try:
        status_now = rollouts.act(rollout_id, action)
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except RolloutError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    detail = {"state": status_now.state, "wave": status_now.current_wave}
    record_audit(fleet.sessions, operator, f"rollout.{action}", f"rollout:{rollout_id}", detail)
    return status_now
