"""Rollouts: create, watch, pause/resume, cancel, roll back. Errors are ``{"detail": ...}``:
404 for an unknown rollout, 409 for an action its state does not allow, 422 for bad input."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, status

from ...rollouts import RolloutCreate, RolloutError
from ..deps import RolloutsDep

router = APIRouter(prefix="/api/v1/rollouts", tags=["rollouts"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_rollout(request: RolloutCreate, rollouts: RolloutsDep) -> dict[str, Any]:
    try:
        rollout_id = rollouts.create(request)
    except RolloutError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    return rollouts.status(rollout_id)


@router.get("")
def list_rollouts(
    rollouts: RolloutsDep,
    limit: int = Query(default=50, ge=1, le=500),
    offset: int = Query(default=0, ge=0),
) -> dict[str, Any]:
    """Newest first; ``total`` counts all rollouts, ``items`` is one page."""
    total, items = rollouts.list(limit=limit, offset=offset)
    return {"total": total, "limit": limit, "offset": offset, "items": items}


@router.get("/{rollout_id}")
def rollout_status(rollout_id: int, rollouts: RolloutsDep) -> dict[str, Any]:
    try:
        return rollouts.status(rollout_id)
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.post("/{rollout_id}/{action}")
def act_on_rollout(rollout_id: int, action: str, rollouts: RolloutsDep) -> dict[str, Any]:
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
