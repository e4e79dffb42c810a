"""Rollouts: create, watch, pause/resume, cancel, roll back. Errors are ``{"detail": ...}``:
404 for an unknown rollout, 409 for an action its state does not allow, 422 for bad input."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status

from ...rollouts import RolloutError
from ...schemas import INT_MAX, Page, RolloutCreate, RolloutStatus, RolloutSummary
from ..deps import OffsetQuery, RolloutsDep, problems

router = APIRouter(prefix="/api/v1/rollouts", tags=["rollouts"])

RolloutId = Annotated[int, Path(ge=1, le=INT_MAX)]


@router.post("", status_code=status.HTTP_201_CREATED)
def create_rollout(request: RolloutCreate, rollouts: RolloutsDep) -> RolloutStatus:
    try:
        rollout_id = rollouts.create(request)
    except RolloutError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    return rollouts.status(rollout_id)


@router.get("")
def list_rollouts(
    rollouts: RolloutsDep,
    limit: int = Query(default=50, ge=1, le=500),
    offset: OffsetQuery = 0,
) -> Page[RolloutSummary]:
    """Newest first, without each rollout's device list (``GET /rollouts/{id}`` has it)."""
    return rollouts.page(limit=limit, offset=offset)


@router.get("/{rollout_id}", responses=problems(404))
def rollout_status(rollout_id: RolloutId, rollouts: RolloutsDep) -> RolloutStatus:
    try:
        return rollouts.status(rollout_id)
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.post("/{rollout_id}/{action}", responses=problems(404, 409))
def act_on_rollout(rollout_id: RolloutId, action: str, rollouts: RolloutsDep) -> RolloutStatus:
    """``action``: pause, resume, cancel or rollback."""
    actions = {
        "pause": rollouts.pause,
        "resume": rollouts.resume,
        "cancel": rollouts.cancel,
        "rollback": rollouts.rollback,
    }
    if action not in actions:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no action {action!r}; use one of {', '.join(actions)}"
        )
    try:
        actions[action](rollout_id)
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except RolloutError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return rollouts.status(rollout_id)
