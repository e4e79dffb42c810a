"""Trust: the signed-update metadata devices read, enrolment, and revocation.

``GET /tuf/{name}`` serves the TUF repository (root, timestamp, snapshot, targets) to any token,
devices' included. ``POST /api/v1/enrol`` takes no bearer token: the one-time enrolment token
in its body is the credential. Creating enrolment tokens and revoking devices is for
operators.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from edgeloop.agent.identity import Enrolment, EnrolRequest

from ...auth import TokenError, record_audit
from ...enrolment import EnrolmentError, create_enrol_token, enrol, revoke_device
from ...schemas import EnrolTokenCreated, Revoked, TufMetadata
from ..deps import AUTH, DeviceIdPath, Downloader, FleetDep, Operator, problems

router = APIRouter(tags=["trust"])

MetadataName = Annotated[
    str,
    PathParam(
        pattern=r"^(?:root|timestamp|[1-9][0-9]{0,9}\.(?:root|snapshot|targets))\.json$",
        description="root.json, timestamp.json, or N.root.json / N.snapshot.json / N.targets.json",
    ),
]


@router.get(
    "/tuf/{file}",
    responses={
        **problems(*AUTH, 404),
        200: {"model": TufMetadata, "description": "signed metadata"},
    },
)
def tuf_metadata(request: Request, file: MetadataName, caller: Downloader) -> Response:
    """A metadata file of the update repository. ``timestamp.json`` and ``root.json`` change
    (never cached); versioned files never do (cached for a day)."""
    repo = request.app.state.releases.repo
    try:
        data = repo.metadata_bytes(file)
    except (ValueError, FileNotFoundError):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no metadata file {file}") from None
    versioned = file[0].isdigit()
    return Response(
        data,
        media_type="application/json",
        headers={"Cache-Control": "public, max-age=86400" if versioned else "no-store"},
    )


@router.post(
    "/api/v1/enrol",
    responses=problems(401, 409),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": EnrolRequest.model_json_schema()}},
        }
    },
)
async def enrol_device(request: Request) -> Enrolment:
    """Exchange a one-time enrolment token and a CSR for this device's certificate, its API
    token and the repository's root metadata. The token dies on first use.

    The body is read as JSON whatever its Content-Type: an installer's ``curl -d`` sends
    form encoding by default, and this route has no bearer token to answer 401 first."""
    try:
        body = EnrolRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        ) from None
    state = request.app.state
    try:
        return await run_in_threadpool(
            enrol, state.fleet.sessions, state.ca, state.releases.repo, body
        )
    except EnrolmentError as exc:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        raise HTTPException(exc.status, str(exc), headers=headers) from None


@router.post(
    "/api/v1/devices/{device_id}/enrolment-token",
    status_code=status.HTTP_201_CREATED,
    responses=problems(*AUTH),
)
def create_enrolment_token(
    fleet: FleetDep, device_id: DeviceIdPath, operator: Operator
) -> EnrolTokenCreated:
    """A one-time token that enrols ``device_id`` (valid for a day); shown this once."""
    try:
        return create_enrol_token(fleet.sessions, device_id, by=operator)
    except TokenError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None


@router.post("/api/v1/devices/{device_id}/revoke", responses=problems(*AUTH))
def revoke(
    request: Request, fleet: FleetDep, device_id: DeviceIdPath, operator: Operator
) -> Revoked:
    """Cut a device off: its certificates go on the CRL (reload the broker), its API tokens
    die, and the server ignores its messages and clears its desired state."""
    result = revoke_device(fleet.sessions, request.app.state.ca, device_id, by=operator)
    fleet.revoke(device_id)
    record_audit(
        fleet.sessions,
        operator,
        "device.revoke",
        f"device:{device_id}",
        result.model_dump(mode="json"),
    )
    return result
