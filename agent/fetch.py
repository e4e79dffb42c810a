"""Download content-addressed files over HTTP and verify them while streaming.

Files land in ``blobs/<sha256>`` only after their size and SHA-256 matched; a partial
download lives in ``blobs/<sha256>.part`` and is resumed with an HTTP Range request, so a cut
connection or a restarted agent re-sends only what is missing. A write the disk refuses
(full, read-only) removes the partial file: on a full disk it is the space the device needs
back, and resuming it later saves little next to a device that can write its state again.
An agent run by hand on a terminal shows each download as one progress line on stderr
(:func:`progress_line`); under systemd, stderr is no terminal and the logs get none.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import requests

from .errors import ArtifactError, StorageError, TransportError
from .protocol import FileRef

CHUNK_BYTES = 64 * 1024
"""Read size, and the most a download cut by a kill re-sends. Measured on loopback against the
control plane (64 MiB): 64 KiB 0.28-0.32 s, 256 KiB and 1 MiB no faster; curl 0.20-0.27 s."""
TIMEOUT_S = (5.0, 30.0)
PROGRESS_INTERVAL_S = 0.1
"""At most ten progress updates a second: a person reads them, a terminal need not redraw more."""


def _hash_file(path: Path) -> hashlib._Hash:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest


def part_path(blob_dir: Path, sha256: str) -> Path:
    """Where the download of ``sha256`` grows until it is complete and verified."""
    return blob_dir / f"{sha256}.part"


def held_bytes(ref: FileRef, blob_dir: Path) -> int:
    """Bytes of ``ref`` already on disk (complete or partial): space a download needs no more."""
    for path in (blob_dir / ref.sha256, part_path(blob_dir, ref.sha256)):
        try:
            return min(path.stat().st_size, ref.size)
        except FileNotFoundError:
            continue
    return 0


class ProgressLine:
    """A download's progress as one line on a terminal, rewritten in place: bytes held of the
    total, percent and rate since it started; a newline once complete. Written by hand in a
    few lines because the agent installs without rich or tqdm.

    Called with the bytes held so far (as :func:`fetch`'s ``progress``); draws at most every
    :data:`PROGRESS_INTERVAL_S`, and always the last update.
    """

    def __init__(
        self,
        ref: FileRef,
        stream: TextIO,
        *,
        held: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ref, self.stream, self.clock = ref, stream, clock
        self.started, self.held_at_start = clock(), held
        self.drawn_at: float | None = None

    def __call__(self, have: int) -> None:
        now = self.clock()
        done = have >= self.ref.size
        if not done and self.drawn_at is not None and now - self.drawn_at < PROGRESS_INTERVAL_S:
            return
        self.drawn_at = now
        rate = (have - self.held_at_start) / max(now - self.started, 1e-6)
        percent = 100.0 * have / self.ref.size if self.ref.size else 100.0
        self.stream.write(
            f"\rdownload {self.ref.sha256[:12]}: {have / 2**20:.1f}/{self.ref.size / 2**20:.1f} "
            f"MiB {percent:5.1f}% {rate / 2**20:.1f} MiB/s" + ("\n" if done else "")
        )
        self.stream.flush()


def progress_line(
    ref: FileRef, blob_dir: Path, *, stream: TextIO | None = None, force: bool = False
) -> ProgressLine | None:
    """A :class:`ProgressLine` for ``ref`` on ``stream`` (default stderr) when that is a
    terminal (an agent run by hand) or ``force``; None otherwise, so journald and log files
    never get the redrawn line."""
    stream = stream if stream is not None else sys.stderr
    if not (force or stream.isatty()):
        return None
    return ProgressLine(ref, stream, held=held_bytes(ref, blob_dir))


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
        StorageError: the disk refused a write (no space left, read-only); the partial file
            is removed where the disk allows it.
    """
    part = part_path(blob_dir, ref.sha256)
    try:
        blob_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _storage_error(ref, part, 0, exc) from exc
    final = blob_dir / ref.sha256
    if final.exists() and final.stat().st_size == ref.size:
        if _hash_file(final).hexdigest() == ref.sha256:
            return final
        final.unlink()
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
    if not part.exists():  # an empty file: nothing was downloaded, and nothing needed to be
        _create_empty(part, ref)
    os.replace(part, final)
    return final


def _create_empty(part: Path, ref: FileRef) -> None:
    try:
        part.touch()
    except OSError as exc:
        raise _storage_error(ref, part, 0, exc) from exc


def _storage_error(ref: FileRef, part: Path, have: int, exc: OSError) -> StorageError:
    with contextlib.suppress(OSError):  # a read-only disk may not let it go either
        part.unlink(missing_ok=True)
    return StorageError(
        f"cannot write {part} ({exc.strerror or exc}) after {have} of {ref.size} bytes of "
        f"{ref.url}, partial file removed; free space on the device's disk, then send the "
        "update again"
    )


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
    except OSError as exc:  # requests' errors are OSErrors too: this clause must come second
        raise _storage_error(ref, part, have, exc) from exc
    return have, digest
