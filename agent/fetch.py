"""Download content-addressed files over HTTP and verify them while streaming.

Files land in ``blobs/<sha256>`` only after their size and SHA-256 matched; a partial
download lives in ``blobs/<sha256>.part`` and is resumed with an HTTP Range request, so a cut
connection or a restarted agent re-sends only what is missing.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import requests

from .errors import ArtifactError, TransportError
from .protocol import FileRef

CHUNK_BYTES = 64 * 1024
"""Read size, and the most a download cut by a kill re-sends. Measured on loopback against the
control plane (64 MiB): 64 KiB 0.28-0.32 s, 256 KiB and 1 MiB no faster; curl 0.20-0.27 s."""
TIMEOUT_S = (5.0, 30.0)


def _hash_file(path: Path) -> hashlib._Hash:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest


def fetch(
    ref: FileRef,
    blob_dir: Path,
    session: requests.Session | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Return the local path of ``ref``, downloading and verifying it if needed.

    ``progress`` is called with the bytes held so far after each chunk is written.

    Raises:
        TransportError: the server is unreachable, answers with an error status, or the
            transfer ended early; the partial file is kept so the next call resumes.
        ArtifactError: the received bytes do not match ``ref.size`` or ``ref.sha256``; the
            partial file is removed so the next attempt starts clean.
    """
    blob_dir.mkdir(parents=True, exist_ok=True)
    final = blob_dir / ref.sha256
    if final.exists() and final.stat().st_size == ref.size:
        if _hash_file(final).hexdigest() == ref.sha256:
            return final
        final.unlink()
    part = blob_dir / f"{ref.sha256}.part"
    have = part.stat().st_size if part.exists() else 0
    if have > ref.size:
        part.unlink()
        have = 0
    digest = _hash_file(part) if have else hashlib.sha256()
    if have < ref.size:
        have, digest = _download(ref, part, have, digest, session or requests.Session(), progress)
    if have < ref.size:
        raise TransportError(
            f"{ref.url}: connection ended after {have} of {ref.size} bytes; will resume"
        )
    if have != ref.size or digest.hexdigest() != ref.sha256:
        part.unlink(missing_ok=True)
        if have != ref.size:
            raise ArtifactError(f"{ref.url}: server sent more than the manifest's {ref.size} bytes")
        raise ArtifactError(
            f"{ref.url}: SHA-256 {digest.hexdigest()} does not match manifest {ref.sha256}"
        )
    os.replace(part, final)
    return final


def _download(
    ref: FileRef,
    part: Path,
    have: int,
    digest: hashlib._Hash,
    http: requests.Session,
    progress: Callable[[int], None] | None,
) -> tuple[int, hashlib._Hash]:
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with http.get(ref.url, headers=headers, stream=True, timeout=TIMEOUT_S) as response:
            if response.status_code == 200 and have:
                digest, have = hashlib.sha256(), 0  # server ignored Range: start over
            elif response.status_code not in (200, 206):
                raise TransportError(f"GET {ref.url} answered HTTP {response.status_code}")
            with part.open("ab" if have else "wb") as out:
                for chunk in response.iter_content(CHUNK_BYTES):
                    have += len(chunk)
                    if have > ref.size:
                        break
                    digest.update(chunk)
                    out.write(chunk)
                    if progress is not None:
                        progress(have)
                out.flush()
                os.fsync(out.fileno())
    except requests.RequestException as exc:
        raise TransportError(f"GET {ref.url} failed: {exc}; will resume from {have} bytes") from exc
    return have, digest
