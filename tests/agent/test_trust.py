"""The device trusts only what the server's signed TUF metadata names: one test per attack.

Each test serves the real repository's metadata over real HTTP, changes what an attacker
on the path (or a broken server) could change, and asserts the gate the device reports.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root, TargetFile, Targets
from tuf_server import MetadataServer

from edgeloop.agent.errors import StorageError
from edgeloop.agent.protocol import Gate
from edgeloop.agent.trust import MAX_LENGTHS, SignedTarget, TrustedTargets, TrustError, pin_root
from edgeloop.server.tuf_repo import Expiry, TufRepository

MODEL_BYTES = b"an onnx model, as far as this test is concerned" * 1000
MODEL_PATH = "models/digits/3/model.onnx"
MODEL_CUSTOM = {
    "name": "digits",
    "version": "3",
    "manifest": {"inputs": [{"name": "x", "shape": [1, 64]}], "min_agreement": "0.9"},
}
TOKEN = "Bearer device-token-7"


@pytest.fixture()
def repo(tmp_path: Path) -> TufRepository:
    repo = TufRepository.init(tmp_path / "repo", tmp_path / "offline" / "root.key")
    repo.add_target(
        MODEL_PATH,
        length=len(MODEL_BYTES),
        sha256=hashlib.sha256(MODEL_BYTES).hexdigest(),
        custom=MODEL_CUSTOM,
    )
    return repo


@pytest.fixture()
def server(repo: TufRepository) -> Iterator[MetadataServer]:
    with MetadataServer(repo) as server:
        yield server


def enrol(tmp_path: Path, repo: TufRepository, url: str) -> TrustedTargets:
    """A device enrolled with root v1 that sends its API token with every request."""
    metadata_dir = tmp_path / "device" / "tuf"
    pin_root(metadata_dir, repo.metadata_bytes("1.root.json"))
    return TrustedTargets(metadata_dir, url, headers={"Authorization": TOKEN})


@pytest.fixture()
def device(tmp_path: Path, repo: TufRepository, server: MetadataServer) -> TrustedTargets:
    return enrol(tmp_path, repo, server.url)


def refused(device: TrustedTargets, path: str = MODEL_PATH) -> TrustError:
    with pytest.raises(TrustError) as info:
        device.resolve(path)
    return info.value


def targets_md(repo: TufRepository, version: int) -> Metadata[Targets]:
    return Metadata[Targets].from_bytes(repo.metadata_bytes(f"{version}.targets.json"))


# ---------------------------------------------------------------------------- the happy path


def test_a_published_model_resolves_with_its_custom_data_and_every_request_carries_the_token(
    device: TrustedTargets, server: MetadataServer, tmp_path: Path
) -> None:
    target = device.resolve(MODEL_PATH)

    assert target == SignedTarget(
        path=MODEL_PATH,
        length=len(MODEL_BYTES),
        sha256=hashlib.sha256(MODEL_BYTES).hexdigest(),
        custom=MODEL_CUSTOM,
    )
    model = tmp_path / "model.onnx"
    model.write_bytes(MODEL_BYTES)
    target.verify_file(model)
    assert server.authorizations and set(server.authorizations) == {TOKEN}


def test_a_device_that_has_seen_newer_metadata_still_follows_new_publishes(
    device: TrustedTargets, repo: TufRepository
) -> None:
    device.resolve(MODEL_PATH)
    repo.add_target("models/digits/4/model.onnx", length=7, sha256="4" * 64, custom={"v": 4})

    assert device.resolve("models/digits/4/model.onnx").custom == {"v": 4}


# ---------------------------------------------------------------------------- signature


def test_targets_re_signed_with_an_attackers_key_fail_the_signature_gate(
    device: TrustedTargets, repo: TufRepository, server: MetadataServer
) -> None:
    forged = targets_md(repo, 2)
    forged.signed.targets["models/evil/1/model.onnx"] = TargetFile(
        6, {"sha256": "e" * 64}, "models/evil/1/model.onnx"
    )
    forged.sign(CryptoSigner.generate_ed25519())
    server.replace["2.targets.json"] = forged.to_bytes()

    error = refused(device, "models/evil/1/model.onnx")

    assert error.gate is Gate.SIGNATURE
    assert "targets was signed by 0/1 keys" in str(error)
    assert "2.targets.json" in str(error)


def test_a_byte_changed_in_a_signed_field_fails_the_signature_gate(
    device: TrustedTargets, repo: TufRepository, server: MetadataServer
) -> None:
    signed = repo.metadata_bytes("2.targets.json")
    length = f'"length":{len(MODEL_BYTES)}'.encode()
    assert signed.count(length) == 1
    server.replace["2.targets.json"] = signed.replace(length, b'"length":1')

    assert refused(device).gate is Gate.SIGNATURE


def test_a_path_the_signed_targets_do_not_list_fails_the_signature_gate(
    device: TrustedTargets,
) -> None:
    error = refused(device, "models/digits/99/model.onnx")

    assert error.gate is Gate.SIGNATURE
    assert "not listed" in str(error)


def test_a_new_root_signed_by_an_attacker_fails_the_signature_gate(
    device: TrustedTargets, repo: TufRepository, server: MetadataServer
) -> None:
    attacker = CryptoSigner.generate_ed25519()
    root = Metadata[Root].from_bytes(repo.metadata_bytes("1.root.json"))
    root.signed.version = 2
    for role in ("root", "targets", "snapshot", "timestamp"):
        for keyid in list(root.signed.roles[role].keyids):
            root.signed.revoke_key(keyid, role)
        root.signed.add_key(attacker.public_key, role)
    root.sign(attacker)
    server.replace["2.root.json"] = root.to_bytes()

    error = refused(device)

    assert error.gate is Gate.SIGNATURE
    assert "2.root.json" in str(error)


# ---------------------------------------------------------------------------- rollback


def test_an_older_timestamp_replayed_after_a_newer_one_is_a_rollback(
    device: TrustedTargets, repo: TufRepository, server: MetadataServer
) -> None:
    older = repo.metadata_bytes("timestamp.json")
    repo.add_target("models/digits/4/model.onnx", length=7, sha256="4" * 64, custom={})
    device.resolve("models/digits/4/model.onnx")
    server.replace["timestamp.json"] = older

    error = refused(device)

    assert error.gate is Gate.ROLLBACK
    assert "New timestamp version 2 must be >= 3" in str(error)


@pytest.mark.parametrize("role", ["targets", "snapshot"])
def test_metadata_of_another_version_than_the_signed_one_pins_is_a_rollback(
    role: str, device: TrustedTargets, repo: TufRepository, server: MetadataServer
) -> None:
    """Mixed snapshot and targets: the server hands out a file of an earlier publish under
    the name of the current one. Snapshot and timestamp pin versions (not hashes), so
    python-tuf raises BadVersionNumberError: the ``rollback`` gate."""
    repo.add_target("models/digits/4/model.onnx", length=7, sha256="4" * 64, custom={})
    server.replace[f"3.{role}.json"] = repo.metadata_bytes(f"2.{role}.json")

    error = refused(device)

    assert error.gate is Gate.ROLLBACK
    assert f"3.{role}.json" in str(error)


# ---------------------------------------------------------------------------- freshness


def test_a_timestamp_past_its_expiry_is_expired(tmp_path: Path) -> None:
    """A frozen repository: nobody re-signs the timestamp, and the device refuses it once
    its (here one second) life is over."""
    repo = TufRepository.init(
        tmp_path / "repo", tmp_path / "root.key", expiry=Expiry(timestamp=timedelta(seconds=1))
    )
    expires = Metadata.from_bytes(repo.metadata_bytes("timestamp.json")).signed.expires
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.1)
    with MetadataServer(repo) as server:
        error = refused(enrol(tmp_path, repo, server.url))

    assert error.gate is Gate.EXPIRED
    assert "timestamp.json is expired" in str(error)


# ---------------------------------------------------------------------------- metadata


def test_an_oversized_timestamp_is_cut_off_without_reading_it_all(
    device: TrustedTargets, server: MetadataServer
) -> None:
    size = 20 * 1024 * 1024
    sent: list[int] = []

    def twenty_megabytes(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(size))
        handler.end_headers()
        written = 0
        try:
            while written < size:
                handler.wfile.write(b" " * 65536)
                written += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        sent.append(written)

    server.replace["timestamp.json"] = twenty_megabytes
    started = time.monotonic()

    error = refused(device)

    assert error.gate is Gate.METADATA
    assert f"maximum allowed length of {MAX_LENGTHS['timestamp']}" in str(error)
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 10
    while not sent and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sent and sent[0] < size, "the device read the whole 20 MB"


def test_an_unreachable_server_is_a_metadata_failure(tmp_path: Path, repo: TufRepository) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    device = enrol(tmp_path, repo, f"http://127.0.0.1:{closed_port}/tuf/")

    error = refused(device)

    assert error.gate is Gate.METADATA
    assert "check that the control plane is reachable" in str(error)


def test_a_refused_token_is_a_metadata_failure_that_names_the_token(
    tmp_path: Path, repo: TufRepository
) -> None:
    with MetadataServer(repo, require="Bearer another-token") as server:
        error = refused(enrol(tmp_path, repo, server.url))

    assert error.gate is Gate.METADATA
    assert "401" in str(error) and "API token" in str(error)


def test_a_device_never_enrolled_is_a_metadata_failure(tmp_path: Path) -> None:
    device = TrustedTargets(tmp_path / "nothing", "http://127.0.0.1:9/tuf/")

    error = refused(device)

    assert error.gate is Gate.METADATA
    assert "enrol" in str(error)


# ---------------------------------------------------------------------------- verify


def test_a_file_whose_bytes_differ_from_the_signed_ones_fails_verify(
    device: TrustedTargets, tmp_path: Path
) -> None:
    target = device.resolve(MODEL_PATH)
    same_length = tmp_path / "flipped.onnx"
    same_length.write_bytes(b"X" + MODEL_BYTES[1:])
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(MODEL_BYTES[:-1])

    for wrong in (same_length, truncated, tmp_path / "missing.onnx"):
        with pytest.raises(TrustError) as info:
            target.verify_file(wrong)
        assert info.value.gate is Gate.VERIFY, wrong.name


# ---------------------------------------------------------------------------- enrolment


def test_pin_root_refuses_a_root_not_signed_by_its_own_keys(
    tmp_path: Path, repo: TufRepository
) -> None:
    root = Metadata[Root].from_bytes(repo.metadata_bytes("1.root.json"))
    root.signed.version = 7
    with pytest.raises(TrustError) as unsigned:
        pin_root(tmp_path / "device", root.to_bytes())
    with pytest.raises(TrustError) as garbage:
        pin_root(tmp_path / "device", b'{"signed": 1}')

    assert unsigned.value.gate is Gate.SIGNATURE
    assert garbage.value.gate is Gate.METADATA
    assert not (tmp_path / "device" / "pinned_root.json").exists()


def test_pinning_another_repositorys_root_forgets_what_the_old_one_taught(
    tmp_path: Path, device: TrustedTargets, repo: TufRepository
) -> None:
    device.resolve(MODEL_PATH)
    other = TufRepository.init(tmp_path / "other", tmp_path / "other-root.key")
    other.add_target("models/other/1/model.onnx", length=1, sha256="1" * 64, custom={})

    pin_root(device.metadata_dir, other.metadata_bytes("root.json"))

    assert not (device.metadata_dir / "timestamp.json").exists()
    with MetadataServer(other) as server:
        moved = TrustedTargets(device.metadata_dir, server.url)
        assert moved.resolve("models/other/1/model.onnx").length == 1


def test_a_cache_the_device_cannot_write_is_a_storage_error(
    tmp_path: Path, repo: TufRepository, server: MetadataServer
) -> None:
    device = enrol(tmp_path, repo, server.url)
    (device.metadata_dir / "timestamp.json").mkdir()

    with pytest.raises(StorageError):
        device.resolve(MODEL_PATH)
