"""Content-addressed artifact files: ``<artifact_dir>/<sha256>``.

A file is written to a temporary name while its SHA-256 is computed, and only renamed into
place when the digest matches the one the uploader claimed, so a file under its hash is
always that hash's content. The same holds when the hash is stored already: the bytes are
checked all the same, and bytes that do not match leave the stored file as it was.

Which files may be removed is the registry's question (``server/artifacts.py``); this module
only lists, stores and removes files.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from edgeloop.agent.protocol import SHA256_PATTERN

UPLOAD_PREFIX = ".upload-"
STALE_UPLOAD_S = 3600.0
"""An upload writes its temporary file as the bytes arrive; one untouched this long belongs to
an upload that will never finish (the server was killed in the middle of it)."""


class DigestMismatchError(ValueError):
    def __init__(self, claimed: str, actual: str) -> None:
        super().__init__(
            f"uploaded bytes hash to {actual}, not the claimed {claimed}; re-upload the file"
        )


@dataclass(frozen=True)
class StoredFile:
    sha256: str
    size: int
    modified: float
    """When it was stored or last uploaded again (Unix time)."""


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
            DigestMismatchError: the bytes do not hash to ``sha256``; nothing is stored, and a
                file stored under it before stays as it was.
            Whatever ``chunks`` raises (a client gone, a body over its limit): nothing is
                stored and the partial temporary file is removed.
        """
        if self.has(sha256):
            return await self._confirm(sha256, chunks)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=UPLOAD_PREFIX)
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

    async def _confirm(self, sha256: str, chunks: AsyncIterator[bytes]) -> int:
        """A file stored already: hash the bytes sent without writing them, and on a match
        touch the stored file, which tells garbage collection it was wanted again."""
        digest = hashlib.sha256()
        size = 0
        async for chunk in chunks:
            digest.update(chunk)
            size += len(chunk)
        if digest.hexdigest() != sha256:
            raise DigestMismatchError(sha256, digest.hexdigest())
        os.utime(self.path(sha256))
        return size

    def files(self) -> Iterator[StoredFile]:
        """Every stored artifact (temporary and foreign files are not artifacts)."""
        for entry in os.scandir(self.root):
            if re.fullmatch(SHA256_PATTERN, entry.name) and entry.is_file():
                stat = entry.stat()
                yield StoredFile(entry.name, stat.st_size, stat.st_mtime)

    def remove(self, sha256: str) -> int:
        """Remove the file stored under ``sha256``; returns the bytes freed (0: none was)."""
        try:
            size = self.path(sha256).stat().st_size
            self.path(sha256).unlink()
        except FileNotFoundError:
            return 0
        return size

    def remove_stray_uploads(self, *, idle_s: float = STALE_UPLOAD_S, dry_run: bool) -> list[int]:
        """Remove temporary files of uploads that stopped at least ``idle_s`` ago; returns
        their sizes."""
        sizes = []
        now = time.time()
        for entry in os.scandir(self.root):
            if not entry.name.startswith(UPLOAD_PREFIX) or not entry.is_file():
                continue
            stat = entry.stat()
            if now - stat.st_mtime < idle_s:
                continue
            if not dry_run:
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue  # its upload finished or failed meanwhile
            sizes.append(stat.st_size)
        return sizes
