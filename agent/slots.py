"""A/B model slots on disk, and the atomic switch between them.

Layout under the agent's workdir::

    slots/A/{model.onnx, golden.npz, manifest.json}
    slots/B/{...}
    current -> slots/A          (a symlink; the one file applications and restarts trust)

A candidate is installed into the slot the committed model does not use, through a staging
directory renamed into place, so a slot is either complete or absent. Activation and rollback
replace the ``current`` symlink with ``rename(2)``, which is atomic: a reader sees the old or
the new target, never neither. The committed model's slot is not touched until the candidate
is committed and the next update needs the space.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import ArtifactError
from .protocol import ModelManifest
from .states import Slot, fsync_dir

MODEL_FILE = "model.onnx"
GOLDEN_FILE = "golden.npz"
MANIFEST_FILE = "manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class SlotContents:
    slot: Slot
    directory: Path
    manifest: ModelManifest

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL_FILE

    @property
    def golden_path(self) -> Path:
        return self.directory / GOLDEN_FILE

    @property
    def label(self) -> str:
        return f"{self.manifest.name}:{self.manifest.version}"


class Slots:
    def __init__(self, workdir: Path, *, create: bool = True) -> None:
        """``create=False``: only read them (an application reading the agent's workdir
        must not create folders in it)."""
        self.root = workdir / "slots"
        self.current_link = workdir / "current"
        if create:
            self.root.mkdir(parents=True, exist_ok=True)

    def directory(self, slot: Slot) -> Path:
        return self.root / slot.value

    def install(self, slot: Slot, model: Path, golden: Path, manifest: ModelManifest) -> None:
        """Put verified files into ``slot``, replacing what it held; complete or not at all.

        Files are hard-linked from the blob store when possible (same filesystem: no copy),
        else copied and fsynced.
        """
        staging = self.root / f".{slot.value}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for source, name in ((model, MODEL_FILE), (golden, GOLDEN_FILE)):
            _link_or_copy(source, staging / name)
        (staging / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=1))
        _fsync_file(staging / MANIFEST_FILE)
        fsync_dir(staging)
        target = self.directory(slot)
        if self.active() == slot:
            raise RuntimeError(f"refusing to overwrite slot {slot} while it is the current one")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        fsync_dir(self.root)

    def contents(self, slot: Slot, *, verify: bool = True) -> SlotContents:
        """What ``slot`` holds.

        Raises:
            ArtifactError: the slot is empty, incomplete, or (with ``verify``) its model file
                no longer has the SHA-256 of its manifest.
        """
        directory = self.directory(slot)
        try:
            manifest = ModelManifest.model_validate_json((directory / MANIFEST_FILE).read_bytes())
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"slot {slot} holds no readable manifest: {exc}") from None
        contents = SlotContents(slot, directory, manifest)
        if not contents.model_path.exists() or not contents.golden_path.exists():
            raise ArtifactError(f"slot {slot} is incomplete")
        if verify and sha256_file(contents.model_path) != manifest.artifact.sha256:
            raise ArtifactError(
                f"slot {slot}: {MODEL_FILE} no longer matches its SHA-256 (disk damage?)"
            )
        return contents

    def active(self) -> Slot | None:
        """The slot ``current`` points at, or None before the first activation."""
        try:
            target = os.readlink(self.current_link)
        except (FileNotFoundError, OSError):
            return None
        name = Path(target).name
        return Slot(name) if name in Slot.__members__ else None

    def point_to(self, slot: Slot | None) -> None:
        """Make ``slot`` current (None: no model) with one atomic rename."""
        if slot is None:
            self.current_link.unlink(missing_ok=True)
            fsync_dir(self.current_link.parent)
            return
        if self.active() == slot:
            return
        tmp = self.current_link.with_name(".current.tmp")
        tmp.unlink(missing_ok=True)
        os.symlink(Path("slots") / slot.value, tmp)
        os.replace(tmp, self.current_link)
        fsync_dir(self.current_link.parent)

    def clean(self) -> None:
        """Drop staging leftovers of an install a crash interrupted."""
        for leftover in self.root.glob(".*.staging"):
            shutil.rmtree(leftover, ignore_errors=True)
        self.current_link.with_name(".current.tmp").unlink(missing_ok=True)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
        _fsync_file(target)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())
