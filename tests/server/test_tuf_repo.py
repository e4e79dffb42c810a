"""The server's TUF repository: what it writes, what it keeps offline, and that a device
enrolled with root v1 follows every change it makes, over real HTTP."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import JsonValue
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root, Snapshot, Timestamp
from tuf_server import MetadataServer

from edgeloop.agent.protocol import Gate
from edgeloop.agent.trust import TrustedTargets, TrustError, pin_root
from edgeloop.server.tuf_repo import (
    KEEP_VERSIONS,
    ONLINE_ROLES,
    Expiry,
    TargetSpec,
    TufRepoError,
    TufRepository,
)

SHA = "5" * 64


@pytest.fixture()
def root_key(tmp_path: Path) -> Path:
    return tmp_path / "offline" / "root.key"


@pytest.fixture()
def repo(tmp_path: Path, root_key: Path) -> TufRepository:
    return TufRepository.init(tmp_path / "tuf", root_key)


@pytest.fixture()
def server(repo: TufRepository) -> Iterator[MetadataServer]:
    with MetadataServer(repo) as server:
        yield server


@pytest.fixture()
def device(tmp_path: Path, repo: TufRepository, server: MetadataServer) -> TrustedTargets:
    """A device enrolled with root v1, before any change."""
    pin_root(tmp_path / "device", repo.metadata_bytes("1.root.json"))
    return TrustedTargets(tmp_path / "device", server.url)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def signed_version(repo: TufRepository, name: str) -> int:
    version: int = Metadata.from_bytes(repo.metadata_bytes(name)).signed.version
    return version


def current_versions(repo: TufRepository) -> dict[str, int]:
    timestamp = Metadata[Timestamp].from_bytes(repo.metadata_bytes("timestamp.json")).signed
    snapshot_version = timestamp.snapshot_meta.version
    snapshot = Metadata[Snapshot].from_bytes(
        repo.metadata_bytes(f"{snapshot_version}.snapshot.json")
    )
    return {
        "root": signed_version(repo, "root.json"),
        "targets": snapshot.signed.meta["targets.json"].version,
        "snapshot": snapshot_version,
        "timestamp": timestamp.version,
    }


# ---------------------------------------------------------------------------- init and open


def test_init_lays_out_served_metadata_and_private_online_keys(
    repo: TufRepository, root_key: Path
) -> None:
    served = sorted(path.name for path in repo.metadata_dir.iterdir())
    keys = sorted(path.name.split("-")[0] for path in repo.keys_dir.iterdir())

    assert served == [
        "1.root.json",
        "1.snapshot.json",
        "1.targets.json",
        "root.json",
        "timestamp.json",
    ]
    assert keys == ["snapshot", "targets", "timestamp"]
    assert mode(repo.keys_dir) == 0o700
    assert all(mode(key) == 0o600 for key in repo.keys_dir.iterdir())
    assert mode(root_key) == 0o600
    root = Metadata[Root].from_bytes(repo.metadata_bytes("root.json")).signed
    assert root.consistent_snapshot is True
    assert current_versions(repo) == {"root": 1, "targets": 1, "snapshot": 1, "timestamp": 1}
    assert repo.targets() == {}


def test_the_root_key_is_written_outside_the_repository_and_nowhere_in_it(
    repo: TufRepository, root_key: Path
) -> None:
    private = root_key.read_bytes()

    for path in repo.root_dir.rglob("*"):
        assert path.is_dir() or private not in path.read_bytes(), path


def test_init_refuses_a_root_key_path_inside_the_repository(tmp_path: Path) -> None:
    with pytest.raises(TufRepoError, match="keep the root key offline"):
        TufRepository.init(tmp_path / "tuf", tmp_path / "tuf" / "keys" / "root.pem")

    assert not (tmp_path / "tuf" / "keys").exists()


def test_init_never_overwrites_a_repository_or_a_root_key(
    tmp_path: Path, repo: TufRepository, root_key: Path
) -> None:
    with pytest.raises(TufRepoError, match="holds a TUF repository already"):
        TufRepository.init(repo.root_dir, tmp_path / "another-root.key")
    with pytest.raises(TufRepoError, match="never overwritten"):
        TufRepository.init(tmp_path / "fresh", root_key)


def test_open_finds_the_repository_or_names_the_command_that_creates_one(
    tmp_path: Path,
) -> None:
    short = Expiry(timestamp=timedelta(hours=2))
    TufRepository.init(tmp_path / "tuf", tmp_path / "root.key", expiry=short)

    assert TufRepository.open(tmp_path / "tuf").expiry == short
    with pytest.raises(TufRepoError, match="edgeloop tuf init"):
        TufRepository.open(tmp_path / "elsewhere")


# ---------------------------------------------------------------------------- targets


def test_each_publish_signs_targets_snapshot_and_timestamp_and_the_device_sees_it(
    repo: TufRepository, device: TrustedTargets
) -> None:
    first = repo.add_target("models/a/1/model.onnx", length=10, sha256=SHA, custom={"n": 1})
    replaced = repo.add_target("models/a/1/model.onnx", length=11, sha256=SHA, custom={"n": 2})
    both = repo.add_targets(
        [
            TargetSpec(path="models/b/1/model.onnx", length=1, sha256=SHA),
            TargetSpec(path="models/c/1/model.onnx", length=2, sha256=SHA),
        ]
    )

    assert (first, replaced, both) == (2, 3, 4)
    assert current_versions(repo) == {"root": 1, "targets": 4, "snapshot": 4, "timestamp": 4}
    assert sorted(repo.targets()) == [f"models/{m}/1/model.onnx" for m in "abc"]
    resolved = device.resolve("models/a/1/model.onnx")
    assert (resolved.length, resolved.custom) == (11, {"n": 2})
    assert repo.add_target("models/a/1/model.onnx", length=11, sha256=SHA, custom={"n": 2}) == 4


def test_a_removed_target_is_refused_by_the_device(
    repo: TufRepository, device: TrustedTargets
) -> None:
    repo.add_target("models/a/1/model.onnx", length=10, sha256=SHA, custom={})
    device.resolve("models/a/1/model.onnx")

    assert repo.remove_target("models/a/1/model.onnx") == 3
    assert repo.target("models/a/1/model.onnx") is None
    with pytest.raises(TrustError) as info:
        device.resolve("models/a/1/model.onnx")
    assert info.value.gate is Gate.SIGNATURE


@pytest.mark.parametrize(
    ("path", "custom", "why"),
    [
        ("../etc/passwd", {}, "'.' or '..'"),
        ("/models/a", {}, "pattern"),
        ("models//a", {}, "pattern"),
        ("models/a", {"accuracy": 0.97}, "no floating-point numbers"),
    ],
)
def test_a_target_entry_that_cannot_be_signed_is_refused_with_the_reason(
    repo: TufRepository, path: str, custom: dict[str, JsonValue], why: str
) -> None:
    with pytest.raises(TufRepoError, match=why):
        repo.add_target(path, length=1, sha256=SHA, custom=custom)

    assert current_versions(repo)["targets"] == 1


def test_only_the_last_versions_of_snapshot_and_targets_stay_and_every_root_stays(
    repo: TufRepository, root_key: Path
) -> None:
    for n in range(KEEP_VERSIONS + 5):
        repo.add_target(f"models/m/{n}/model.onnx", length=n, sha256=SHA, custom={})
    repo.resign_root(root_key)

    names = {path.name for path in repo.metadata_dir.iterdir()}
    latest = KEEP_VERSIONS + 6
    kept = set(range(latest - KEEP_VERSIONS + 1, latest + 1))
    assert {n for n in range(1, latest + 1) if f"{n}.targets.json" in names} == kept
    assert {n for n in range(1, latest + 1) if f"{n}.snapshot.json" in names} == kept
    assert {"1.root.json", "2.root.json", "root.json", "timestamp.json"} <= names


def test_threads_and_processes_publishing_at_once_lose_nothing(
    repo: TufRepository, device: TrustedTargets
) -> None:
    per_writer = 5
    script = (
        "import sys; from pathlib import Path; "
        "from edgeloop.server.tuf_repo import TufRepository; "
        "repo = TufRepository.open(Path(sys.argv[1])); "
        f"[repo.add_target(f'proc{{sys.argv[2]}}/{{n}}', length=n, sha256='{SHA}', custom={{}}) "
        f"for n in range({per_writer})]"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(repo.root_dir), str(p)])
        for p in range(2)
    ]

    def publish(writer: int) -> None:
        same_dir = TufRepository.open(repo.root_dir)
        for n in range(per_writer):
            same_dir.add_target(f"thread{writer}/{n}", length=n, sha256=SHA, custom={})

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(publish, range(3)))
    assert all(process.wait(timeout=60) == 0 for process in processes)

    listed = repo.targets()
    assert len(listed) == 5 * per_writer
    assert current_versions(repo)["targets"] == 1 + 5 * per_writer
    for path in listed:
        assert device.resolve(path).length == int(path.rsplit("/", 1)[1])


# ---------------------------------------------------------------------------- refresh


def test_refresh_re_signs_only_the_roles_close_to_expiry_and_what_pins_them(
    tmp_path: Path,
) -> None:
    expiry = Expiry(
        targets=timedelta(days=30), snapshot=timedelta(days=7), timestamp=timedelta(hours=6)
    )
    repo = TufRepository.init(tmp_path / "short", tmp_path / "short-root.key", expiry=expiry)

    assert repo.refresh(timedelta(hours=1)) == []
    assert repo.refresh(timedelta(hours=7)) == ["timestamp"]
    assert current_versions(repo) == {"root": 1, "targets": 1, "snapshot": 1, "timestamp": 2}
    assert repo.refresh(timedelta(days=8)) == ["snapshot", "timestamp"]
    assert repo.refresh(timedelta(days=31)) == ["targets", "snapshot", "timestamp"]
    assert current_versions(repo) == {"root": 1, "targets": 2, "snapshot": 3, "timestamp": 4}

    timestamp = Metadata.from_bytes(repo.metadata_bytes("timestamp.json")).signed
    life = timestamp.expires - datetime.now(UTC)
    assert timedelta(hours=5) < life <= timedelta(hours=6)
    with MetadataServer(repo) as server:
        pin_root(tmp_path / "short-device", repo.metadata_bytes("1.root.json"))
        repo.add_target("models/a/1/model.onnx", length=3, sha256=SHA, custom={})
        fresh = TrustedTargets(tmp_path / "short-device", server.url)
        assert fresh.resolve("models/a/1/model.onnx").length == 3


# ---------------------------------------------------------------------------- key rotation


def test_a_device_pinned_to_root_v1_follows_the_rotation_of_every_online_key(
    repo: TufRepository, device: TrustedTargets, root_key: Path
) -> None:
    repo.add_target("models/a/1/model.onnx", length=3, sha256=SHA, custom={})
    device.resolve("models/a/1/model.onnx")

    for rotations, role in enumerate(ONLINE_ROLES, start=1):
        old_key = {path.name for path in repo.keys_dir.glob(f"{role}-*.pem")}
        repo.rotate_online_key(role, root_key)

        assert signed_version(repo, "root.json") == 1 + rotations
        assert {path.name for path in repo.keys_dir.glob(f"{role}-*.pem")}.isdisjoint(old_key)
        assert device.resolve("models/a/1/model.onnx").length == 3


def test_after_the_timestamp_key_is_rotated_metadata_signed_by_the_old_key_is_refused(
    repo: TufRepository, device: TrustedTargets, server: MetadataServer, root_key: Path
) -> None:
    repo.add_target("models/a/1/model.onnx", length=3, sha256=SHA, custom={})
    (old_key_file,) = repo.keys_dir.glob("timestamp-*.pem")
    old_key = CryptoSigner(load_pem_private_key(old_key_file.read_bytes(), None))
    repo.rotate_online_key("timestamp", root_key)
    device.resolve("models/a/1/model.onnx")

    stolen = Metadata[Timestamp].from_bytes(repo.metadata_bytes("timestamp.json"))
    stolen.signed.version += 10
    stolen.sign(old_key)
    server.replace["timestamp.json"] = stolen.to_bytes()

    with pytest.raises(TrustError) as info:
        device.resolve("models/a/1/model.onnx")
    assert info.value.gate is Gate.SIGNATURE
    assert "timestamp was signed by 0/1 keys" in str(info.value)


def test_a_new_root_key_signs_together_with_the_old_and_a_pinned_device_follows(
    tmp_path: Path, repo: TufRepository, device: TrustedTargets, root_key: Path
) -> None:
    repo.add_target("models/a/1/model.onnx", length=3, sha256=SHA, custom={})
    old_keyid = CryptoSigner(load_pem_private_key(root_key.read_bytes(), None)).public_key.keyid
    new_key = tmp_path / "offline" / "root-2.key"

    repo.rotate_root_key(root_key, new_key)

    root = Metadata[Root].from_bytes(repo.metadata_bytes("2.root.json"))
    assert old_keyid in root.signatures and len(root.signatures) == 2
    assert root.signed.roles["root"].keyids == [
        CryptoSigner(load_pem_private_key(new_key.read_bytes(), None)).public_key.keyid
    ]
    assert mode(new_key) == 0o600
    assert device.resolve("models/a/1/model.onnx").length == 3
    with pytest.raises(TufRepoError, match="not a root key of this repository"):
        repo.rotate_online_key("targets", root_key)
    repo.rotate_online_key("targets", new_key)
    assert device.resolve("models/a/1/model.onnx").length == 3


def test_refresh_repairs_a_rotation_cut_short_after_the_new_root_was_written(
    repo: TufRepository, device: TrustedTargets, root_key: Path
) -> None:
    repo.add_target("models/a/1/model.onnx", length=3, sha256=SHA, custom={})
    signed_by_the_old_key = repo.metadata_bytes("timestamp.json")
    repo.rotate_online_key("timestamp", root_key)
    (repo.metadata_dir / "timestamp.json").write_bytes(signed_by_the_old_key)
    with pytest.raises(TrustError) as info:
        device.resolve("models/a/1/model.onnx")
    assert info.value.gate is Gate.SIGNATURE

    assert repo.refresh(timedelta(0)) == ["timestamp"]
    assert device.resolve("models/a/1/model.onnx").length == 3


def test_root_operations_refuse_a_root_key_others_can_read(
    repo: TufRepository, root_key: Path
) -> None:
    os.chmod(root_key, 0o644)

    with pytest.raises(TufRepoError, match="readable by others"):
        repo.resign_root(root_key)
    assert signed_version(repo, "root.json") == 1


# ---------------------------------------------------------------------------- serving


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "../repository.json",
        "keys/timestamp.pem",
        "../keys/targets.pem",
        "/etc/passwd",
        "timestamp.json/../../repository.json",
        "snapshot.json",
        "0.root.json",
        "1.timestamp.json",
        "root.json\x00",
        "root.json\n",
        "",
    ],
)
def test_metadata_bytes_serves_nothing_but_metadata_file_names(
    repo: TufRepository, name: str
) -> None:
    with pytest.raises(ValueError, match="not a TUF metadata file name"):
        repo.metadata_bytes(name)


def test_metadata_bytes_serves_each_version_and_says_when_one_does_not_exist(
    repo: TufRepository,
) -> None:
    assert repo.metadata_bytes("1.root.json") == repo.metadata_bytes("root.json")
    assert signed_version(repo, "1.targets.json") == 1
    with pytest.raises(FileNotFoundError):
        repo.metadata_bytes("2.root.json")
