"""The control plane's TUF repository: signed metadata that names every file a device may install.

Devices trust an update only when The Update Framework's metadata vouches for it: a root
role names the keys of every role, targets lists each file (path, length, SHA-256, our own
``custom`` data), snapshot pins the version of targets, and timestamp pins the version of
snapshot and expires soonest, so a device notices within a day when it is fed stale
metadata. This module writes that metadata with python-tuf's Metadata API; the device reads
it with python-tuf's client (``edgeloop.agent.trust``).

A repository directory (``root_dir``) holds::

    repository.json            this repository's settings (:class:`RepositoryConfig`)
    metadata/                  what GET /tuf/{name} serves (:meth:`TufRepository.metadata_bytes`)
      N.root.json              every root version ever signed; clients walk them one by one
      root.json                the newest root
      N.targets.json           the last KEEP_VERSIONS versions (consistent snapshots)
      N.snapshot.json          the same
      timestamp.json           the only unversioned online role
    keys/                      online keys, mode 0700
      <role>-<keyid[:16]>.pem  ed25519, PKCS#8 PEM, mode 0600; role = targets|snapshot|timestamp
    .lock                      flock'd around every change

Invariants:
- The root private key never lives under ``root_dir``: :meth:`TufRepository.init` writes it
  to a path the caller names (an offline disk), and only root operations read it. Whoever
  holds it decides which keys every device trusts.
- A private key file that group or others can read is refused, never used.
- Every change holds an exclusive ``flock`` on ``.lock`` (threads and processes alike: each
  call opens the file anew, and flock locks belong to the open file); readers of several
  files hold a shared one.
- Files are replaced atomically and written root, then targets, then snapshot, then
  timestamp. A client reading at any moment finds every file the timestamp it read names:
  old snapshot/targets versions stay for :data:`KEEP_VERSIONS` versions.
- Snapshot and timestamp pin versions only, not lengths or hashes (the specification makes
  both optional). All online keys live on this host and fall together, so hashes would
  add no protection; without them a device refuses every foreign or mixed file for the
  reason that names it (signature, version) rather than a length mismatch. The client's
  maximum lengths still bound every download.
"""

from __future__ import annotations

import fcntl
import logging
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator
from securesystemslib.exceptions import FormatError
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey
from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from edgeloop.agent.protocol import SHA256_PATTERN
from edgeloop.agent.states import write_atomic
from edgeloop.server.pki import _write_private

__all__ = [
    "KEEP_VERSIONS",
    "ONLINE_ROLES",
    "Expiry",
    "OnlineRole",
    "RepositoryConfig",
    "TargetSpec",
    "TufRepoError",
    "TufRepository",
]

log = logging.getLogger("edgeloop.server.tuf_repo")

OnlineRole = Literal["targets", "snapshot", "timestamp"]
ONLINE_ROLES: tuple[OnlineRole, ...] = ("targets", "snapshot", "timestamp")
"""The roles whose keys live in ``keys/``, in the order a change is signed and written: each
pins the version of the one before it."""
KEEP_VERSIONS = 10
"""Snapshot and targets versions kept on disk. A client that read timestamp v(N) fetches the
snapshot and targets it names moments later; ten versions of slack cover a burst of
publishes in between."""
TARGET_PATH_PATTERN = r"^[A-Za-z0-9_.+-]+(/[A-Za-z0-9_.+-]+)*$"
"""A target path: relative, ``/``-separated segments that are safe as file and URL names."""
MAX_TARGET_PATH = 512

_METADATA_NAME = re.compile(r"(?:root|timestamp|[1-9][0-9]{0,9}\.(?:root|snapshot|targets))\.json")
_VERSIONED = re.compile(r"([1-9][0-9]{0,9})\.(snapshot|targets)\.json")
_INIT_HINT = "edgeloop tuf init (TufRepository.init)"
_Role = TypeVar("_Role", Root, Timestamp, Snapshot, Targets)


class TufRepoError(Exception):
    """The repository cannot do what was asked; the message says why and what to do."""


class Expiry(BaseModel):
    """How long each role's metadata stays valid after it is signed.

    Short lives bound how long a device can be fed frozen metadata; the online roles are
    re-signed by :meth:`TufRepository.refresh`, root only by its offline key.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    root: timedelta = Field(default=timedelta(days=365), gt=timedelta(0))
    targets: timedelta = Field(default=timedelta(days=90), gt=timedelta(0))
    snapshot: timedelta = Field(default=timedelta(days=7), gt=timedelta(0))
    timestamp: timedelta = Field(default=timedelta(days=1), gt=timedelta(0))

    def of(self, role: str) -> timedelta:
        life: timedelta = getattr(self, role)
        return life


class RepositoryConfig(BaseModel):
    """``repository.json``: what :meth:`TufRepository.open` needs besides the metadata."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    expiry: Expiry = Field(default_factory=Expiry)


class TargetSpec(BaseModel):
    """One file to list in targets: the device downloads it elsewhere (content-addressed)
    and checks it against ``length`` and ``sha256``; ``custom`` carries our own data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1, max_length=MAX_TARGET_PATH, pattern=TARGET_PATH_PATTERN)
    length: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256_PATTERN)
    custom: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _no_dot_segments(cls, path: str) -> str:
        if any(segment in {".", ".."} for segment in path.split("/")):
            raise ValueError("a target path has no '.' or '..' segments")
        return path

    @field_validator("custom")
    @classmethod
    def _canonical(cls, custom: dict[str, JsonValue]) -> dict[str, JsonValue]:
        """TUF signs canonical JSON, which has no floating-point numbers: refuse them here,
        with a hint, rather than fail while signing."""
        try:
            encode_canonical(custom)
        except FormatError as exc:
            raise ValueError(
                f"custom data must be canonical JSON, which has no floating-point numbers "
                f"({exc}); write such numbers as strings"
            ) from None
        return custom

    def target_file(self) -> TargetFile:
        return TargetFile(
            self.length, {"sha256": self.sha256}, self.path, {"custom": dict(self.custom)}
        )


@dataclass
class _State:
    """The current metadata of every top-level role, as read under the lock."""

    root: Metadata[Root]
    timestamp: Metadata[Timestamp]
    snapshot: Metadata[Snapshot]
    targets: Metadata[Targets]


class TufRepository:
    """A TUF repository on disk; see the module docstring for its layout and invariants.

    Every method reads the current files under the lock, so several instances (threads,
    processes) may share one ``root_dir``. Build one with :meth:`init` or :meth:`open`.
    """

    def __init__(self, root_dir: Path, config: RepositoryConfig) -> None:
        self.root_dir = root_dir
        self.config = config

    @property
    def metadata_dir(self) -> Path:
        return self.root_dir / "metadata"

    @property
    def keys_dir(self) -> Path:
        return self.root_dir / "keys"

    @property
    def expiry(self) -> Expiry:
        return self.config.expiry

    # ------------------------------------------------------------------ creating, opening

    @classmethod
    def init(
        cls, root_dir: Path, root_key_path: Path, *, expiry: Expiry | None = None
    ) -> TufRepository:
        """Create a repository in ``root_dir``: four ed25519 keys, root v1 (consistent
        snapshots), an empty targets v1, snapshot v1 and timestamp v1.

        The root key goes to ``root_key_path`` (mode 0600), which must lie outside
        ``root_dir``: move it to offline storage afterwards and bring it back only for
        :meth:`rotate_online_key`, :meth:`rotate_root_key` and :meth:`resign_root`.

        Raises:
            TufRepoError: ``root_key_path`` lies inside ``root_dir`` or exists already (an
                offline key is never overwritten), or ``root_dir`` already holds a
                repository, whole or partial.
        """
        _refuse_inside(root_key_path, root_dir)
        if root_key_path.exists():
            raise TufRepoError(
                f"{root_key_path} exists already; a root key is never overwritten. Choose "
                "another path, or delete it if it is left from a failed init"
            )
        root_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        repo = cls(root_dir, RepositoryConfig(expiry=expiry or Expiry()))
        with repo._locked(exclusive=True):
            for existing in (root_dir / "repository.json", repo.metadata_dir, repo.keys_dir):
                if existing.exists():
                    raise TufRepoError(
                        f"{existing} exists: {root_dir} holds a TUF repository already (or "
                        "a partial one). Open it, or choose an empty directory"
                    )
            repo.keys_dir.mkdir(mode=0o700)
            repo.keys_dir.chmod(0o700)
            repo.metadata_dir.mkdir(mode=0o755)
            root_key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            root_signer = CryptoSigner.generate_ed25519()
            _write_private(root_key_path, root_signer.private_bytes)
            now = _now()
            root = Root(expires=now + repo.expiry.root, consistent_snapshot=True)
            root.add_key(root_signer.public_key, "root")
            for role in ONLINE_ROLES:
                signer = CryptoSigner.generate_ed25519()
                _write_private(repo._key_path(role, signer.public_key.keyid), signer.private_bytes)
                root.add_key(signer.public_key, role)
            root_md = Metadata(root)
            root_md.sign(root_signer)
            repo._write_root(root_md)
            state = _State(
                root=root_md,
                timestamp=Metadata(Timestamp(expires=now)),
                snapshot=Metadata(Snapshot(expires=now)),
                targets=Metadata(Targets(expires=now)),
            )
            repo._commit(state, "targets", first_versions=True)
            write_atomic(root_dir / "repository.json", repo.config.model_dump_json().encode())
        log.info("TUF repository created in %s; root key at %s", root_dir, root_key_path)
        return repo

    @classmethod
    def open(cls, root_dir: Path) -> TufRepository:
        """The repository in ``root_dir``.

        Raises:
            TufRepoError: there is none (the message names the command that creates one),
                or ``repository.json`` is not valid.
        """
        settings = root_dir / "repository.json"
        try:
            data = settings.read_bytes()
        except FileNotFoundError:
            raise TufRepoError(
                f"no TUF repository in {root_dir} ({settings} missing); create one: {_INIT_HINT}"
            ) from None
        try:
            config = RepositoryConfig.model_validate_json(data)
        except ValidationError as exc:
            raise TufRepoError(
                f"{settings} is not a valid repository config ({exc.errors()[0]['msg']}); "
                "restore it from a backup"
            ) from None
        return cls(root_dir, config)

    # ------------------------------------------------------------------ targets

    def add_target(
        self, path: str, *, length: int, sha256: str, custom: dict[str, JsonValue]
    ) -> int:
        """List ``path`` in a new targets version (replacing an entry of the same path),
        then sign snapshot and timestamp. Returns the targets version that lists it.

        Raises:
            TufRepoError: the entry is invalid (a path with ``..`` or odd characters, a
                negative length, a malformed sha256, ``custom`` that is not canonical JSON:
                floats are not), or an online key is missing or readable by others.
        """
        try:
            spec = TargetSpec(path=path, length=length, sha256=sha256, custom=custom)
        except ValidationError as exc:
            raise TufRepoError(f"cannot list target {path!r}: {_first_error(exc)}") from None
        return self.add_targets([spec])

    def add_targets(self, specs: Iterable[TargetSpec]) -> int:
        """Like :meth:`add_target` for several files in one targets version. Listing what is
        listed already, unchanged, signs nothing and returns the current version."""
        specs = list(specs)
        with self._locked(exclusive=True):
            state = self._load()
            listed = state.targets.signed.targets
            fresh = [spec.target_file() for spec in specs]
            if all(listed.get(target.path) == target for target in fresh):
                return state.targets.signed.version
            for target in fresh:
                listed[target.path] = target
            self._commit(state, "targets")
            return state.targets.signed.version

    def remove_target(self, path: str) -> int:
        """Drop ``path`` from targets in a new version; devices refuse it from then on.
        Returns the targets version; the current one when ``path`` is not listed."""
        with self._locked(exclusive=True):
            state = self._load()
            if state.targets.signed.targets.pop(path, None) is None:
                return state.targets.signed.version
            self._commit(state, "targets")
            return state.targets.signed.version

    def target(self, path: str) -> TargetFile | None:
        """The current entry for ``path``, or None when targets does not list it."""
        return self.targets().get(path)

    def targets(self) -> dict[str, TargetFile]:
        """Every file the current targets version lists, by path."""
        with self._locked(exclusive=False):
            return dict(self._load().targets.signed.targets)

    # ------------------------------------------------------------------ keeping it fresh

    def refresh(self, within: timedelta) -> list[str]:
        """Re-sign every online role whose metadata expires within ``within`` from now, and
        the roles that pin it (targets -> snapshot -> timestamp). Returns the roles
        re-signed, in that order; empty when nothing was due.

        A role whose current metadata the current root does not accept (a key rotation cut
        short after the new root was written) is due too, so the next call repairs it.

        The server calls this every few minutes; ``within`` should be shorter than the
        timestamp's life (:class:`Expiry`), or every call re-signs the timestamp. Root is
        never re-signed here (its key is offline): a warning is logged from 30 days before
        it expires; renew it with :meth:`resign_root`.
        """
        with self._locked(exclusive=True):
            state = self._load()
            now = _now()
            root_expires = state.root.signed.expires
            if root_expires <= now + max(within, timedelta(days=30)):
                log.warning(
                    "TUF root v%d expires %s: devices refuse every update after that. Sign a "
                    "new root with the offline root key (TufRepository.resign_root)",
                    state.root.signed.version,
                    root_expires.isoformat(),
                )
            due = [
                role
                for role in ONLINE_ROLES
                if _signed(state, role).expires <= now + within
                or not _accepted(state.root.signed, role, getattr(state, role))
            ]
            if not due:
                return []
            return self._commit(state, due[0])

    # ------------------------------------------------------------------ root operations

    def rotate_online_key(self, role: OnlineRole, root_key_path: Path) -> None:
        """Replace ``role``'s key with a new one: a new root version names it (signed with
        the root key), then ``role`` and the roles that pin it are signed with the new key.
        Devices learn the new root on their next refresh and refuse the old key after it.

        Raises:
            TufRepoError: ``role`` is not an online role, or the root key is missing, not
                this repository's, or readable by others.
        """
        if role not in ONLINE_ROLES:
            raise TufRepoError(f"{role!r} has no online key; choose one of {ONLINE_ROLES}")
        with self._locked(exclusive=True):
            state = self._load()
            root_signer = self._root_signer(state, root_key_path)
            new_signer = CryptoSigner.generate_ed25519()
            # The new key is on disk before any root names it, so a crash in between
            # leaves an unused file, never a root whose key is lost.
            _write_private(
                self._key_path(role, new_signer.public_key.keyid), new_signer.private_bytes
            )

            def swap_key(root: Root) -> None:
                for keyid in list(root.roles[role].keyids):
                    root.revoke_key(keyid, role)
                root.add_key(new_signer.public_key, role)

            state.root = self._sign_root(state.root, swap_key, [root_signer])
            self._commit(state, role)
            self._remove_stale_keys(state.root.signed, role)
        log.info("rotated the %s key; root is v%d", role, state.root.signed.version)

    def rotate_root_key(self, old_root_key_path: Path, new_root_key_path: Path) -> None:
        """Replace the root key: a new root version names a new key (written to
        ``new_root_key_path``, mode 0600) and is signed by both the old and the new key, as
        the specification requires, so a device that trusts the old root accepts it and
        trusts the new key from then on. The old key file is left for the operator to
        destroy.

        Raises:
            TufRepoError: ``new_root_key_path`` lies inside ``root_dir`` or exists, or the
                old root key is missing, not this repository's, or readable by others.
        """
        _refuse_inside(new_root_key_path, self.root_dir)
        if new_root_key_path.exists():
            raise TufRepoError(
                f"{new_root_key_path} exists already; a root key is never overwritten. "
                "Choose another path, or delete it if it is left from a failed rotation"
            )
        with self._locked(exclusive=True):
            state = self._load()
            old_signer = self._root_signer(state, old_root_key_path)
            new_signer = CryptoSigner.generate_ed25519()
            new_root_key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_private(new_root_key_path, new_signer.private_bytes)

            def swap_key(root: Root) -> None:
                root.revoke_key(old_signer.public_key.keyid, "root")
                root.add_key(new_signer.public_key, "root")

            state.root = self._sign_root(state.root, swap_key, [new_signer, old_signer])
        log.info("rotated the root key; root is v%d", state.root.signed.version)

    def resign_root(self, root_key_path: Path) -> int:
        """Sign a new root version with the same keys and a fresh expiry
        (:attr:`Expiry.root`). Returns its version.

        Raises:
            TufRepoError: the root key is missing, not this repository's, or readable by
                others.
        """
        with self._locked(exclusive=True):
            state = self._load()
            signer = self._root_signer(state, root_key_path)
            state.root = self._sign_root(state.root, lambda root: None, [signer])
            return state.root.signed.version

    # ------------------------------------------------------------------ serving

    def metadata_bytes(self, name: str) -> bytes:
        """The bytes of metadata file ``name`` for ``GET /tuf/{name}``: ``root.json``,
        ``timestamp.json``, ``N.root.json``, ``N.snapshot.json`` or ``N.targets.json``.

        ``timestamp.json`` and ``root.json`` change; versioned names never do (cache them).

        Raises:
            ValueError: ``name`` is none of those (a path, a key file, anything else);
                answer 404.
            FileNotFoundError: a well-formed name of a version that does not exist, or no
                longer does; answer 404 (a client asks for the next root until it gets one).
        """
        if not _METADATA_NAME.fullmatch(name):
            raise ValueError(
                f"{name[:80]!r} is not a TUF metadata file name (root.json, timestamp.json, "
                "N.root.json, N.snapshot.json, N.targets.json)"
            )
        return (self.metadata_dir / name).read_bytes()

    # ------------------------------------------------------------------ internals

    @contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[None]:
        with (self.root_dir / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _load(self) -> _State:
        root = self._read(Root, "root.json")
        timestamp = self._read(Timestamp, "timestamp.json")
        snapshot = self._read(Snapshot, f"{timestamp.signed.snapshot_meta.version}.snapshot.json")
        targets_meta = snapshot.signed.meta.get("targets.json")
        if targets_meta is None:
            raise TufRepoError(
                f"snapshot v{snapshot.signed.version} in {self.metadata_dir} does not name "
                "targets.json; restore the metadata directory from a backup"
            )
        targets = self._read(Targets, f"{targets_meta.version}.targets.json")
        return _State(root=root, timestamp=timestamp, snapshot=snapshot, targets=targets)

    def _read(self, role: type[_Role], name: str) -> Metadata[_Role]:
        path = self.metadata_dir / name
        try:
            md = Metadata[_Role].from_bytes(path.read_bytes())
        except FileNotFoundError:
            hint = (
                f"create one: {_INIT_HINT}"
                if not self.metadata_dir.exists()
                else "restore the metadata directory from a backup"
            )
            raise TufRepoError(f"{path} is missing; {hint}") from None
        except RepositoryError as exc:
            raise TufRepoError(
                f"{path} is not valid TUF metadata ({exc}); restore it from a backup"
            ) from None
        if md.signed.type != role.type:
            raise TufRepoError(f"{path} holds {md.signed.type} metadata, not {role.type}")
        return md

    def _commit(
        self, state: _State, first: OnlineRole, *, first_versions: bool = False
    ) -> list[str]:
        """Sign a new version of ``first`` and of every role after it in
        :data:`ONLINE_ROLES` (each pins the version of the one before), and write them in
        that order. Returns the roles signed. ``first_versions``: sign the versions the
        state holds (1, at init) instead of the next ones."""
        chain: list[str] = list(ONLINE_ROLES[ONLINE_ROLES.index(first) :])
        signers = self._online_signers(state.root.signed)
        now = _now()
        if "targets" in chain:
            version = self._sign_online(state.targets, signers["targets"], now, first_versions)
            state.snapshot.signed.meta["targets.json"] = MetaFile(version=version)
        if "snapshot" in chain:
            version = self._sign_online(state.snapshot, signers["snapshot"], now, first_versions)
            state.timestamp.signed.snapshot_meta = MetaFile(version=version)
        self._sign_online(state.timestamp, signers["timestamp"], now, first_versions)
        self._prune(state)
        log.info(
            "TUF signed %s (targets v%d, snapshot v%d, timestamp v%d)",
            ", ".join(chain),
            state.targets.signed.version,
            state.snapshot.signed.version,
            state.timestamp.signed.version,
        )
        return chain

    def _sign_online(self, md: Metadata, signer: Signer, now: datetime, same_version: bool) -> int:
        signed = md.signed
        if not same_version:
            signed.version += 1
        signed.expires = now + self.expiry.of(signed.type)
        md.sign(signer)
        name = (
            "timestamp.json"
            if signed.type == "timestamp"
            else f"{signed.version}.{signed.type}.json"
        )
        write_atomic(self.metadata_dir / name, md.to_bytes())
        version: int = signed.version
        return version

    def _sign_root(
        self, current: Metadata[Root], edit: Callable[[Root], None], signers: Sequence[Signer]
    ) -> Metadata[Root]:
        """Write root v(N+1): ``current`` edited, with a fresh expiry, signed by
        ``signers``; checked, before it is written, to verify as a device will verify it
        (threshold of the old root's keys and of its own)."""
        new = Metadata[Root].from_bytes(current.to_bytes())
        new.signed.version += 1
        new.signed.expires = _now() + self.expiry.root
        edit(new.signed)
        new.signatures.clear()
        for signer in signers:
            new.sign(signer, append=True)
        result = new.signed.get_root_verification_result(
            current.signed, new.signed_bytes, new.signatures
        )
        if not result.verified:
            raise TufRepoError(
                f"root v{new.signed.version} would not verify against root "
                f"v{current.signed.version} (signed by {sorted(result.signed)}); nothing was "
                "written. Pass the root key this repository's root names"
            )
        self._write_root(new)
        return new

    def _write_root(self, md: Metadata[Root]) -> None:
        data = md.to_bytes()
        write_atomic(self.metadata_dir / f"{md.signed.version}.root.json", data)
        write_atomic(self.metadata_dir / "root.json", data)

    def _prune(self, state: _State) -> None:
        current = {
            "snapshot": state.snapshot.signed.version,
            "targets": state.targets.signed.version,
        }
        for path in self.metadata_dir.iterdir():
            match = _VERSIONED.fullmatch(path.name)
            if match and int(match[1]) <= current[match[2]] - KEEP_VERSIONS:
                path.unlink(missing_ok=True)

    def _key_path(self, role: str, keyid: str) -> Path:
        return self.keys_dir / f"{role}-{keyid[:16]}.pem"

    def _online_signers(self, root: Root) -> dict[str, Signer]:
        signers: dict[str, Signer] = {}
        for role in ONLINE_ROLES:
            keyids = root.roles[role].keyids
            if not keyids:
                raise TufRepoError(f"root v{root.version} names no {role} key; rotate one in")
            path = self._key_path(role, keyids[0])
            signers[role] = _load_signer(
                path,
                root.keys[keyids[0]],
                missing=(
                    f"the {role} key {path} is missing; restore {self.keys_dir} from a "
                    f"backup, or give {role} a new key with the offline root key "
                    "(TufRepository.rotate_online_key)"
                ),
            )
        return signers

    def _root_signer(self, state: _State, root_key_path: Path) -> Signer:
        root = state.root.signed
        private = _load_private(
            root_key_path,
            missing=(
                f"the root key {root_key_path} is not there; mount the offline disk that "
                "holds it and pass its path"
            ),
        )
        keyid = SSlibKey.from_crypto(private.public_key()).keyid
        if keyid not in root.roles["root"].keyids:
            raise TufRepoError(
                f"{root_key_path} is not a root key of this repository (key id "
                f"{keyid[:16]} is not in root v{root.version}); pass the key that init or "
                "the last rotate_root_key wrote"
            )
        return _signer(root_key_path, private, root.keys[keyid])

    def _remove_stale_keys(self, root: Root, role: str) -> None:
        keep = {self._key_path(role, keyid) for keyid in root.roles[role].keyids}
        for path in self.keys_dir.glob(f"{role}-*.pem"):
            if path not in keep:
                path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- helpers


def _now() -> datetime:
    return datetime.now(UTC)


def _signed(state: _State, role: str) -> Timestamp | Snapshot | Targets:
    md: Metadata[Timestamp] | Metadata[Snapshot] | Metadata[Targets] = getattr(state, role)
    return md.signed


def _accepted(root: Root, role: str, md: Metadata) -> bool:
    """Whether ``md`` is signed by a threshold of the keys ``root`` names for ``role``."""
    return bool(root.get_verification_result(role, md.signed_bytes, md.signatures))


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]


def _refuse_inside(key_path: Path, root_dir: Path) -> None:
    if key_path.resolve().is_relative_to(root_dir.resolve()):
        raise TufRepoError(
            f"{key_path} lies inside the repository {root_dir}, which the server reads and "
            "serves from; keep the root key offline: choose a path outside it"
        )


def _load_private(path: Path, *, missing: str) -> Ed25519PrivateKey:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise TufRepoError(missing) from None
    if mode & 0o077:
        raise TufRepoError(
            f"the key {path} is readable by others (mode {mode:04o}); a copy of it can sign "
            f"updates for the whole fleet. Run chmod 600 {path} and consider rotating it"
        )
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise TufRepoError(f"cannot read the key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise TufRepoError(f"{path} is not an ed25519 private key")
    return key


def _load_signer(path: Path, public: Key, *, missing: str) -> Signer:
    return _signer(path, _load_private(path, missing=missing), public)


def _signer(path: Path, private: Ed25519PrivateKey, public: Key) -> Signer:
    if not isinstance(public, SSlibKey) or SSlibKey.from_crypto(private.public_key()) != public:
        raise TufRepoError(
            f"{path} is not the key root names for it; restore keys/ from a backup, or "
            "rotate the key with the offline root key"
        )
    return CryptoSigner(private, public)
