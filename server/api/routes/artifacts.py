"""Artifact files: uploaded by SHA-256, served with Range (resumable) and ETag."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Path, Request, status
from fastapi.responses import FileResponse

from ...schemas import ArtifactPublic
from ...store import DigestMismatchError
from ..deps import FleetDep, StoreDep, problems

Sha256 = Path(pattern=r"^[0-9a-f]{64}$", description="lower-case hex SHA-256 of the file")

router = APIRouter(tags=["artifacts"])
BINARY = {"type": "string", "format": "binary"}


@router.put("/api/v1/artifacts/{sha256}", status_code=status.HTTP_201_CREATED)
async def upload_artifact(
    request: Request, fleet: FleetDep, store: StoreDep, sha256: str = Sha256
) -> ArtifactPublic:
    """Store the request body under its SHA-256; refused if the bytes hash to anything else."""
    if store.has(sha256):
        size = store.path(sha256).stat().st_size
    else:
        try:
            size = await store.put_stream(sha256, request.stream())
        except DigestMismatchError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    fleet.record_artifact(sha256, size)
    return ArtifactPublic(sha256=sha256, size=size, url=f"{fleet.public_url}/artifacts/{sha256}")


FILE_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {"application/octet-stream": {"schema": BINARY}}},
    206: {
        "description": "the requested range (`Range: bytes=N-`)",
        "content": {"application/octet-stream": {"schema": BINARY}},
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
def download_artifact(store: StoreDep, sha256: str = Sha256) -> FileResponse:
    """The file itself; ``Range: bytes=N-`` resumes a cut download (206 Partial Content)."""
    if not store.has(sha256):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no artifact {sha256}")
    return FileResponse(
        store.path(sha256),
        media_type="application/octet-stream",
        headers={"ETag": f'"{sha256}"', "Cache-Control": "public, max-age=31536000, immutable"},
    )
