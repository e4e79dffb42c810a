"""Which artifact files the registry still needs, and removing the others.

A file is needed while a *live* model version references it (as its model, its golden file
or its Pareto plot): one not retired, or one a device is told to run right now. Retiring a
version is what releases its files; a retired version keeps its row (rollouts and reports name
it), and its artifact row too while any version names it, but its files may go. Registering a
new version on a removed file is refused until the file is uploaded again.
"""

from __future__ import annotations

import time
from collections import defaultdict

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from .models import Artifact, DesiredState, ModelVersion
from .schemas import ArtifactGcResult, ArtifactRemoved
from .store import ArtifactStore

__all__ = ["ArtifactInUseError", "collect_garbage", "live_references", "remove"]


class ArtifactInUseError(Exception):
    """A live model version still references the artifact; the message names them."""


def live_references(db: Session) -> dict[str, list[str]]:
    """Each needed artifact's SHA-256, with the labels of the live versions that need it."""
    desired = select(DesiredState.model_version_id).where(
        DesiredState.model_version_id.is_not(None)
    )
    live = select(ModelVersion).where(
        or_(ModelVersion.retired_at.is_(None), ModelVersion.id.in_(desired))
    )
    needed: dict[str, list[str]] = defaultdict(list)
    for model in db.scalars(live.order_by(ModelVersion.id)):
        needed[model.artifact_sha256].append(model.label)
        for sha256 in {model.golden_sha256, model.pareto_sha256} - {model.artifact_sha256}:
            if sha256 is not None:
                needed[sha256].append(model.label)
    return needed


def remove(db: Session, store: ArtifactStore, sha256: str) -> ArtifactRemoved:
    """Remove one artifact file (and its row, when no version, live or retired, names it).

    Raises:
        LookupError: no file is stored under ``sha256``.
        ArtifactInUseError: a live model version references it.
    """
    if not store.has(sha256):
        raise LookupError(f"no artifact {sha256}")
    users = live_references(db).get(sha256)
    if users:
        raise ArtifactInUseError(
            f"artifact {sha256} belongs to live model version(s) {', '.join(users)}; "
            "retire them first (POST /api/v1/models/{name}/{version}/retire)"
        )
    _forget(db, [sha256])
    return ArtifactRemoved(sha256=sha256, bytes_freed=store.remove(sha256))


def collect_garbage(
    db: Session, store: ArtifactStore, *, min_age_s: float, dry_run: bool
) -> ArtifactGcResult:
    """Remove every artifact file no live version references and that was stored at least
    ``min_age_s`` ago, and the temporary files of abandoned uploads."""
    needed = live_references(db)
    now = time.time()
    unneeded = [
        stored
        for stored in store.files()
        if stored.sha256 not in needed and now - stored.modified >= min_age_s
    ]
    removed = [
        ArtifactRemoved(
            sha256=stored.sha256,
            bytes_freed=stored.size if dry_run else store.remove(stored.sha256),
        )
        for stored in sorted(unneeded, key=lambda stored: stored.sha256)
    ]
    if not dry_run:
        _forget(db, [r.sha256 for r in removed])
    stray = store.remove_stray_uploads(dry_run=dry_run)
    return ArtifactGcResult(
        removed=removed,
        stray_uploads=len(stray),
        bytes_freed=sum(r.bytes_freed for r in removed) + sum(stray),
        dry_run=dry_run,
    )


def _forget(db: Session, shas: list[str]) -> None:
    """Delete the artifact rows no model version names (a retired version's rows stay: its
    foreign keys point at them)."""
    named = select(ModelVersion.artifact_sha256).union(
        select(ModelVersion.golden_sha256),
        select(ModelVersion.pareto_sha256).where(ModelVersion.pareto_sha256.is_not(None)),
    )
    db.execute(delete(Artifact).where(Artifact.sha256.in_(shas), Artifact.sha256.not_in(named)))
