from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field
from sqlalchemy import select

from edgeloop.agent.protocol import SHA256_PATTERN, TensorSpec

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
def list_models(fleet: FleetDep) -> list[ModelPublic]:
    with fleet.sessions() as db:
        return [_public(m) for m in db.scalars(select(ModelVersion).order_by(ModelVersion.id))]
