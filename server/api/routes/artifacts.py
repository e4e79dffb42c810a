"""Artifact files: uploaded by SHA-256, served with Range (resumable) and ETag, removed once
no live model version needs them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Path, Request, status
from fastapi.responses import FileResponse

from edgeloop.agent.protocol import SHA256_PATTERN

from ... import artifacts
from ...auth import record_audit
from ...schemas import ArtifactGc, ArtifactGcResult, ArtifactPublic, ArtifactRemoved
from ...store import DigestMismatchError
from ..deps import AUTH, Downloader, FleetDep, Operator, StoreDep, problems

Sha256 = Annotated[
    str, Path(pattern=SHA256_PATTERN, description="lower-case hex SHA-256 of the file")
]

router = APIRouter(tags=["artifacts"])
BINARY = {"type": "string", "format": "binary"}

AUDITED_FILES = 100
"""A collection's audit entry names this many of the files it removed (and counts them all)."""

UPLOAD = "/api/v1/artifacts/"
"""Where uploads go: the one place a body may be larger than a JSON body (``app.py``)."""


@router.put(
    UPLOAD + "{sha256}",
    status_code=status.HTTP_201_CREATED,
    responses=problems(*AUTH),
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/octet-stream": {"schema": BINARY}},
        }
    },
)
async def upload_artifact(
    request: Request, fleet: FleetDep, store: StoreDep, sha256: Sha256, operator: Operator
) -> ArtifactPublic:
    """Store the request body under its SHA-256. Refused (422) if the bytes hash to anything
    else, also when that hash is stored already: the stored file then stays as it was. A body
    over the server's artifact size limit is refused with 413 and nothing is kept."""
    try:
        size = await store.put_stream(sha256, request.stream())
    except DigestMismatchError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    fleet.record_artifact(sha256, size)
    record_audit(fleet.sessions, operator, "artifact.upload", f"artifact:{sha256}", {"size": size})
    return ArtifactPublic(sha256=sha256, size=size, url=f"{fleet.public_url}/artifacts/{sha256}")


@router.delete("/api/v1/artifacts/{sha256}", responses=problems(*AUTH, 404, 409))
def delete_artifact(
    fleet: FleetDep, store: StoreDep, sha256: Sha256, operator: Operator
) -> ArtifactRemoved:
    """Remove a file no live model version needs. Refused (409) while a version that is not
    retired, or that a device is told to run, references it: retire the version first."""
    with fleet.sessions.begin() as db:
        try:
            removed = artifacts.remove(db, store, sha256)
        except LookupError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        except artifacts.ArtifactInUseError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        detail = {"bytes_freed": removed.bytes_freed}
        record_audit(db, operator, "artifact.delete", f"artifact:{sha256}", detail)
        return removed


@router.post("/api/v1/artifact-gc", responses=problems(*AUTH))
def collect_artifacts(
    fleet: FleetDep,
    store: StoreDep,
    operator: Operator,
    body: Annotated[ArtifactGc | None, Body()] = None,
) -> ArtifactGcResult:
    """Remove every artifact file no live model version references (stored at least
    ``min_age_s`` ago), and the temporary files of uploads abandoned an hour or more ago.
    Without a body: the defaults."""
    request = body or ArtifactGc()
    with fleet.sessions.begin() as db:
        result = artifacts.collect_garbage(
            db, store, min_age_s=request.min_age_s, dry_run=request.dry_run
        )
        detail = {
            **request.model_dump(mode="json"),
            "removed": len(result.removed),
            "first_removed": [item.sha256 for item in result.removed[:AUDITED_FILES]],
            "stray_uploads": result.stray_uploads,
            "bytes_freed": result.bytes_freed,
        }
        record_audit(db, operator, "artifact.gc", "artifacts", detail)
        return result


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
    **problems(*AUTH, 404),
}


DOWNLOAD = "/artifacts/{sha256}"
"""Where devices download files (any token; none where the server allows anonymous ones)."""


@router.get(DOWNLOAD, response_class=FileResponse, responses=FILE_RESPONSES)
@router.head(
    DOWNLOAD,
    response_class=FileResponse,
    responses=FILE_RESPONSES,
    operation_id="head_artifact",
)
def download_artifact(store: StoreDep, sha256: Sha256, downloader: Downloader) -> FileResponse:
    """The file itself; ``Range: bytes=N-`` resumes a cut download (206 Partial Content).
    Any token may download (a device's too): files are named by their hash, and what a
    device installs is checked against its manifest, not trusted for where it came from."""
    if not store.has(sha256):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no artifact {sha256}")
    return FileResponse(
        store.path(sha256),
        media_type="application/octet-stream",
        headers={"ETag": f'"{sha256}"', "Cache-Control": "public, max-age=31536000, immutable"},
    )
