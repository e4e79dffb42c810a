"""Model versions: register one whose files were uploaded first, list, retire, and keep the
newest few per name."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from ... import registry
from ...auth import record_audit
from ...fleet import StoredVersionError, UnknownArtifactError
from ...models import ModelVersion
from ...schemas import ModelCreate, ModelPublic, Page, Retention, Retired
from ..deps import (
    AUTH,
    FleetDep,
    ModelNamePath,
    ModelNameQuery,
    ModelVersionPath,
    OffsetQuery,
    Operator,
    Reader,
    StoreDep,
    problems,
)

router = APIRouter(prefix="/api/v1/models", tags=["models"])


def _public(model: ModelVersion) -> ModelPublic:
    try:
        return registry.model_public(model)
    except StoredVersionError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None


@router.post("", status_code=status.HTTP_201_CREATED, responses=problems(*AUTH, 409))
def register_model(
    body: ModelCreate,
    fleet: FleetDep,
    store: StoreDep,
    operator: Operator,
    plan: bool = Query(
        default=True,
        description="re-plan the devices of the version's application now (else POST "
        "/fleet/plan); devices of other applications are never touched",
    ),
) -> ModelPublic:
    """Register a version whose files were PUT first; by default the devices of its
    application are re-planned.
    Refused with 409 if ``name:version`` exists (versions are immutable) or a file is not
    stored (never uploaded, or removed since): upload it, then register again."""
    for sha256 in (body.artifact_sha256, body.golden_sha256):
        if not store.has(sha256):
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"artifact {sha256} is not uploaded; PUT it first"
            )
    try:
        model = fleet.register_model(body, plan=plan)
    except (UnknownArtifactError, ValueError) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    detail = body.model_dump(include={"artifact_sha256", "golden_sha256"}) | {"plan": plan}
    record_audit(fleet.sessions, operator, "model.register", f"model:{model.label}", detail)
    return _public(model)


@router.get("", responses=problems(*AUTH))
def list_models(
    fleet: FleetDep,
    reader: Reader,
    name: ModelNameQuery = None,
    include_retired: bool = Query(default=False),
    limit: int = Query(default=100, ge=1, le=1000),
    offset: OffsetQuery = 0,
) -> Page[ModelPublic]:
    """Model versions, oldest first (a version whose stored row does not validate is left
    out, with a warning in the server's log)."""
    with fleet.sessions() as db:
        return registry.list_models(
            db, name=name, include_retired=include_retired, limit=limit, offset=offset
        )


def _get(db: Session, name: str, version: str) -> ModelVersion:
    model = db.scalar(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
    )
    if model is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no model {name}:{version}")
    return model


@router.get("/{name}/{version}", responses=problems(*AUTH, 404, 409))
def get_model(
    name: ModelNamePath, version: ModelVersionPath, fleet: FleetDep, reader: Reader
) -> ModelPublic:
    """409 for a version whose stored row does not validate (the detail says what to do)."""
    with fleet.sessions() as db:
        return _public(_get(db, name, version))


@router.post("/{name}/{version}/retire", responses=problems(*AUTH, 404, 409))
def retire_model(
    name: ModelNamePath, version: ModelVersionPath, fleet: FleetDep, operator: Operator
) -> ModelPublic:
    """Stop offering a version to the planner and new rollouts (its files stay until
    ``POST /api/v1/artifact-gc``). Refused with 409 while a device runs, is sent, or could roll
    back to it, or a rollout targets it. A version whose stored row does not validate is
    retired all the same (that is how an operator gets rid of it), then answered 409 since it
    cannot be shown."""
    with fleet.sessions.begin() as db:
        try:
            registry.retire(db, name, version)
        except LookupError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        except registry.RetentionError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        record_audit(db, operator, "model.retire", f"model:{name}:{version}")
    with fleet.sessions() as db:
        return _public(_get(db, name, version))


@router.post("/retention", responses=problems(*AUTH))
def apply_retention(body: Retention, fleet: FleetDep, operator: Operator) -> Retired:
    """Retire all but the newest ``keep`` live versions per model name; versions in use are
    kept whatever their age."""
    with fleet.sessions.begin() as db:
        retired = registry.apply_retention(db, keep=body.keep, name=body.name)
        detail = {**body.model_dump(mode="json"), "retired": retired}
        record_audit(db, operator, "model.retention", f"models:{body.name or '*'}", detail)
        return Retired(retired=retired)
