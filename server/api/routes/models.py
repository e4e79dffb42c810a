from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field
from sqlalchemy import select

from edgeloop.agent.protocol import SHA256_PATTERN, TensorSpec

from ... import registry
from ...fleet import UnknownArtifactError
from ...models import ModelVersion
from ..deps import FleetDep

router = APIRouter(prefix="/api/v1/models", tags=["models"])


class ModelCreate(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)
    artifact_sha256: str = Field(pattern=SHA256_PATTERN)
    golden_sha256: str = Field(pattern=SHA256_PATTERN)
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    golden_atol: float = Field(default=1e-3, ge=0)
    golden_rtol: float = Field(default=1e-3, ge=0)
    report: dict[str, Any] = Field(default_factory=dict, description="the compressor's report")


class ModelPublic(ModelCreate):
    id: int
    label: str
    created_at: datetime
    retired_at: datetime | None


class Retention(BaseModel):
    keep: int = Field(ge=1, description="live versions to keep per model name, newest first")
    name: str | None = Field(default=None, description="only this model name")


def _public(model: ModelVersion) -> ModelPublic:
    return ModelPublic.model_validate(model, from_attributes=True)


@router.post("", status_code=status.HTTP_201_CREATED)
def register_model(
    body: ModelCreate,
    fleet: FleetDep,
    plan: bool = Query(default=True, description="re-plan the fleet now (else POST /fleet/plan)"),
) -> ModelPublic:
    """Register a version whose files were PUT first; by default the fleet is re-planned."""
    try:
        model = fleet.register_model(
            **body.model_dump(exclude={"inputs", "outputs"}),
            inputs=body.inputs,
            outputs=body.outputs,
            plan=plan,
        )
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
    offset: int = Query(default=0, ge=0),
) -> dict[str, Any]:
    """Model versions, oldest first: ``{total, limit, offset, items}``."""
    query = select(ModelVersion).order_by(ModelVersion.id)
    if name is not None:
        query = query.where(ModelVersion.name == name)
    if not include_retired:
        query = query.where(ModelVersion.retired_at.is_(None))
    with fleet.sessions() as db:
        models = list(db.scalars(query))
        items = [_public(m) for m in models[offset : offset + limit]]
    return {"total": len(models), "limit": limit, "offset": offset, "items": items}


def _get(db: Any, name: str, version: str) -> ModelVersion:
    model = db.scalar(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
    )
    if model is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no model {name}:{version}")
    return model


@router.get("/{name}/{version}")
def get_model(name: str, version: str, fleet: FleetDep) -> ModelPublic:
    with fleet.sessions() as db:
        return _public(_get(db, name, version))


@router.post("/{name}/{version}/retire")
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
def apply_retention(body: Retention, fleet: FleetDep) -> dict[str, list[str]]:
    """Retire all but the newest ``keep`` live versions per model name; versions in use are
    kept whatever their age."""
    with fleet.sessions.begin() as db:
        return {"retired": registry.apply_retention(db, keep=body.keep, name=body.name)}
