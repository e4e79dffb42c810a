"""Content-addressed artifact files: ``<artifact_dir>/<sha256>``.

A file is written to a temporary name while its SHA-256 is computed, and only renamed into
place when the digest matches the one the uploader claimed, so a file under its hash is
always that hash's content.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path


class DigestMismatchError(ValueError):
    def __init__(self, claimed: str, actual: str) -> None:
        super().__init__(
            f"uploaded bytes hash to {actual}, not the claimed {claimed}; re-upload the file"
        )


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    async def put_stream(self, sha256: str, chunks: AsyncIterator[bytes]) -> int:
        """Store the streamed bytes under ``sha256``; returns their size.

        Raises:
            DigestMismatchError: the bytes do not hash to ``sha256``; nothing is stored.
        """
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != sha256:
                raise DigestMismatchError(sha256, digest.hexdigest())
            os.replace(tmp_name, self.path(sha256))
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
        return size
