"""Artifact files: uploaded by SHA-256, served with Range (resumable) and ETag, removed once
no live model version needs them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Path, Request, status
from fastapi.responses import FileResponse

from edgeloop.agent.protocol import SHA256_PATTERN

from ... import artifacts
from ...schemas import ArtifactGc, ArtifactGcResult, ArtifactPublic, ArtifactRemoved
from ...store import DigestMismatchError
from ..deps import FleetDep, StoreDep, problems

Sha256 = Annotated[
    str, Path(pattern=SHA256_PATTERN, description="lower-case hex SHA-256 of the file")
]

router = APIRouter(tags=["artifacts"])
BINARY = {"type": "string", "format": "binary"}

UPLOAD = "/api/v1/artifacts/"
"""Where uploads go: the one place a body may be larger than a JSON body (``app.py``)."""


@router.put(
    UPLOAD + "{sha256}",
    status_code=status.HTTP_201_CREATED,
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/octet-stream": {"schema": BINARY}},
        }
    },
)
async def upload_artifact(
    request: Request, fleet: FleetDep, store: StoreDep, sha256: Sha256
) -> ArtifactPublic:
    """Store the request body under its SHA-256. Refused (422) if the bytes hash to anything
    else, also when that hash is stored already: the stored file then stays as it was. A body
    over the server's artifact size limit is refused with 413 and nothing is kept."""
    try:
        size = await store.put_stream(sha256, request.stream())
    except DigestMismatchError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    fleet.record_artifact(sha256, size)
    return ArtifactPublic(sha256=sha256, size=size, url=f"{fleet.public_url}/artifacts/{sha256}")


@router.delete("/api/v1/artifacts/{sha256}", responses=problems(404, 409))
def delete_artifact(fleet: FleetDep, store: StoreDep, sha256: Sha256) -> ArtifactRemoved:
    """Remove a file no live model version needs. Refused (409) while a version that is not
    retired, or that a device is told to run, references it: retire the version first."""
    with fleet.sessions.begin() as db:
        try:
            return artifacts.remove(db, store, sha256)
        except LookupError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        except artifacts.ArtifactInUseError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None


@router.post("/api/v1/artifact-gc")
def collect_artifacts(
    fleet: FleetDep, store: StoreDep, body: Annotated[ArtifactGc | None, Body()] = None
) -> ArtifactGcResult:
    """Remove every artifact file no live model version references (stored at least
    ``min_age_s`` ago), and the temporary files of uploads abandoned an hour or more ago.
    Without a body: the defaults."""
    request = body or ArtifactGc()
    with fleet.sessions.begin() as db:
        return artifacts.collect_garbage(
            db, store, min_age_s=request.min_age_s, dry_run=request.dry_run
        )


FILE_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {"application/octet-stream": {"schema": BINARY}}},
    206: {
        "description": "the requested range (`Range: bytes=N-`)",
        "content": {"application/octet-stream": {"schema": BINARY}},
    },
    416: {
        "description": "the range starts past the end of the file",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    **problems(404),
}


@router.get("/artifacts/{sha256}", response_class=FileResponse, responses=FILE_RESPONSES)
@router.head(
    "/artifacts/{sha256}",
    response_class=FileResponse,
    responses=FILE_RESPONSES,
    operation_id="head_artifact",
)
def download_artifact(store: StoreDep, sha256: Sha256) -> FileResponse:
    """The file itself; ``Range: bytes=N-`` resumes a cut download (206 Partial Content)."""
    if not store.has(sha256):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no artifact {sha256}")
    return FileResponse(
        store.path(sha256),
        media_type="application/octet-stream",
        headers={"ETag": f'"{sha256}"', "Cache-Control": "public, max-age=31536000, immutable"},
    )
