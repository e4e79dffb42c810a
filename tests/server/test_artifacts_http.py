"""Artifacts over real HTTP: content-addressed upload, Range resume, clear 4xx errors.

Downloads here go without a token, as the agent's own ``fetch`` sends them to a server that
allows anonymous downloads (the lab's default, see ``ServerProcess``)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import requests

from edgeloop.agent.errors import ArtifactError, TransportError
from edgeloop.agent.fetch import fetch
from edgeloop.agent.protocol import FileRef
from edgeloop.lab.launch import ServerProcess

BLOB = os.urandom(300_000)
SHA = hashlib.sha256(BLOB).hexdigest()


@pytest.fixture()
def blobs(tmp_path: Path) -> Path:
    return tmp_path / "device-blobs"


@pytest.fixture()
def device(server: ServerProcess) -> requests.Session:
    """A device's HTTP session: downloads need a token (a device's, or any reader's)."""
    session = requests.Session()
    session.headers.update(server.headers)
    return session


@pytest.fixture()
def uploaded(server: ServerProcess) -> FileRef:
    response = server.http.put(f"{server.url}/api/v1/artifacts/{SHA}", data=BLOB, timeout=10)
    assert response.status_code == 201, response.text
    assert response.json()["size"] == len(BLOB)
    return FileRef(url=f"{server.url}/artifacts/{SHA}", sha256=SHA, size=len(BLOB))


def test_upload_is_refused_when_bytes_do_not_match_the_claimed_hash(server: ServerProcess) -> None:
    response = server.http.put(f"{server.url}/api/v1/artifacts/{'0' * 64}", data=b"abc", timeout=10)
    assert response.status_code == 422
    assert "not the claimed" in response.json()["detail"]
    assert server.http.get(f"{server.url}/artifacts/{'0' * 64}", timeout=10).status_code == 404


def test_malformed_hash_in_path_is_a_4xx(server: ServerProcess) -> None:
    response = server.http.get(f"{server.url}/artifacts/not-a-hash", timeout=10)
    assert response.status_code == 422


def test_range_request_returns_the_tail_with_206_and_an_etag(
    uploaded: FileRef, device: requests.Session
) -> None:
    response = device.get(uploaded.url, headers={"Range": "bytes=1000-"}, timeout=10)
    assert response.status_code == 206
    assert response.content == BLOB[1000:]
    assert response.headers["ETag"] == f'"{SHA}"'


def test_agent_resumes_a_partial_download_from_where_it_stopped(
    uploaded: FileRef, blobs: Path, device: requests.Session
) -> None:
    blobs.mkdir()
    (blobs / f"{SHA}.part").write_bytes(BLOB[:123_456])
    http = device
    answers: list[tuple[int, str | None]] = []
    http.hooks["response"].append(
        lambda r, *args, **kwargs: answers.append((r.status_code, r.headers.get("Content-Length")))
    )
    path = fetch(uploaded, blobs, http)
    assert path.read_bytes() == BLOB
    assert answers == [(206, str(len(BLOB) - 123_456))]
    assert not (blobs / f"{SHA}.part").exists()


def test_corrupt_partial_download_is_detected_and_discarded(
    uploaded: FileRef, blobs: Path, device: requests.Session
) -> None:
    blobs.mkdir()
    (blobs / f"{SHA}.part").write_bytes(b"\0" * 1000)
    with pytest.raises(ArtifactError, match="does not match manifest"):
        fetch(uploaded, blobs, device)
    assert not (blobs / f"{SHA}.part").exists()
    assert fetch(uploaded, blobs, device).read_bytes() == BLOB


def test_forged_manifest_hash_is_refused(
    uploaded: FileRef, blobs: Path, device: requests.Session
) -> None:
    forged = FileRef(url=uploaded.url, sha256="f" * 64, size=uploaded.size)
    with pytest.raises(ArtifactError, match="does not match manifest"):
        fetch(forged, blobs, device)
    assert list(blobs.iterdir()) == []


def test_missing_artifact_is_a_transport_error(
    server: ServerProcess, blobs: Path, device: requests.Session
) -> None:
    ref = FileRef(url=f"{server.url}/artifacts/{'e' * 64}", sha256="e" * 64, size=1)
    with pytest.raises(TransportError, match="HTTP 404"):
        fetch(ref, blobs, device)


def test_registering_a_model_whose_files_were_not_uploaded_is_refused(
    server: ServerProcess,
) -> None:
    body = {
        "name": "m",
        "version": "1",
        "artifact_sha256": "1" * 64,
        "golden_sha256": "2" * 64,
        "inputs": [{"name": "x", "dtype": "float32", "shape": [1]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [1]}],
        "report": {"accuracy": 0.5},
    }
    response = server.http.post(f"{server.url}/api/v1/models", json=body, timeout=10)
    assert response.status_code == 409, "the body is valid; the server lacks the files"
    assert "is not uploaded; PUT it first" in response.json()["detail"]
