"""Model versions: register one whose files were uploaded first, list, retire, and keep the
newest few per name."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from ... import registry
from ...fleet import UnknownArtifactError
from ...models import ModelVersion
from ...schemas import STORED, ModelCreate, ModelPublic, Page, Retention, Retired
from ..deps import FleetDep, OffsetQuery, problems

router = APIRouter(prefix="/api/v1/models", tags=["models"])


def _public(model: ModelVersion) -> ModelPublic:
    return ModelPublic.model_validate(model, from_attributes=True, context=STORED)


@router.post("", status_code=status.HTTP_201_CREATED, responses=problems(409))
def register_model(
    body: ModelCreate,
    fleet: FleetDep,
    plan: bool = Query(default=True, description="re-plan the fleet now (else POST /fleet/plan)"),
) -> ModelPublic:
    """Register a version whose files were PUT first; by default the fleet is re-planned."""
    try:
        model = fleet.register_model(body, plan=plan)
    except UnknownArtifactError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return _public(model)


@router.get("")
def list_models(
    fleet: FleetDep,
    name: str | None = Query(default=None),
    include_retired: bool = Query(default=False),
    limit: int = Query(default=100, ge=1, le=1000),
    offset: OffsetQuery = 0,
) -> Page[ModelPublic]:
    """Model versions, oldest first."""
    query = select(ModelVersion).order_by(ModelVersion.id)
    if name is not None:
        query = query.where(ModelVersion.name == name)
    if not include_retired:
        query = query.where(ModelVersion.retired_at.is_(None))
    with fleet.sessions() as db:
        models = list(db.scalars(query))
        items = [_public(m) for m in models[offset : offset + limit]]
    return Page[ModelPublic](total=len(models), limit=limit, offset=offset, items=items)


def _get(db: Session, name: str, version: str) -> ModelVersion:
    model = db.scalar(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
    )
    if model is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no model {name}:{version}")
    return model


@router.get("/{name}/{version}", responses=problems(404))
def get_model(name: str, version: str, fleet: FleetDep) -> ModelPublic:
    with fleet.sessions() as db:
        return _public(_get(db, name, version))


@router.post("/{name}/{version}/retire", responses=problems(404, 409))
def retire_model(name: str, version: str, fleet: FleetDep) -> ModelPublic:
    """Stop offering a version to the planner and new rollouts (its files stay). Refused with
    409 while a device runs, is sent, or could roll back to it, or a rollout targets it."""
    with fleet.sessions.begin() as db:
        try:
            model = registry.retire(db, name, version)
        except LookupError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        except registry.RetentionError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        return _public(model)


@router.post("/retention")
def apply_retention(body: Retention, fleet: FleetDep) -> Retired:
    """Retire all but the newest ``keep`` live versions per model name; versions in use are
    kept whatever their age."""
    with fleet.sessions.begin() as db:
        return Retired(retired=registry.apply_retention(db, keep=body.keep, name=body.name))
