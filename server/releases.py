"""Every model version a device may install is a signed target of the TUF repository.

The target ``models/{name}/{version}`` carries the artifact's length and SHA-256 (so downloads
stay ``/artifacts/{sha256}`` with Range resume) and, in its signed custom data, the whole
manifest the device validates against and a sequence number that rises with every release.
The desired state on MQTT names only the path and the sequence.

An operator rollback (or the planner going back to an older model) would ask a device for a
lower sequence than it runs, which the device refuses as a rollback attack. So the server
re-signs the older release under a new, higher sequence first: same bytes, new signature,
and an attacker who replays the old metadata still cannot go below it.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from pathlib import Path

from edgeloop.agent.protocol import ModelManifest, TargetRef
from edgeloop.agent.releases import RELEASE_KEY, SignedRelease, release_custom

from .tuf_repo import TufRepository

log = logging.getLogger("edgeloop.server.releases")

REFRESH_EVERY_S = 60.0
"""How often the server checks whether online metadata needs re-signing (at most)."""

RESIGN_WITHIN = timedelta(hours=6)
"""Re-sign an online role's metadata once it expires within this (timestamp lives a day), or
within half its life if that is shorter."""


def target_path(name: str, version: str) -> str:
    return f"models/{name}/{version}"


class ReleaseSigner:
    """Signs model manifests into the repository; one per server process."""

    def __init__(self, repo: TufRepository) -> None:
        self.repo = repo
        life = min(repo.expiry.timestamp, repo.expiry.snapshot, repo.expiry.targets)
        self.resign_within = min(RESIGN_WITHIN, life / 2)
        """Re-sign a role once less than this is left of it: half the shortest life, at most
        six hours, so a short-lived timestamp (tests, strict deployments) stays fresh too."""
        self.refresh_every_s = min(REFRESH_EVERY_S, life.total_seconds() / 4)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    @classmethod
    def open(cls, root: Path) -> ReleaseSigner:
        return cls(TufRepository.open(root))

    # ------------------------------------------------------------------ releases

    def release(self, path: str) -> SignedRelease | None:
        """The signed release at ``path``, if any (and if its custom data is ours)."""
        target = self.repo.target(path)
        if target is None:
            return None
        data = (target.custom or {}).get(RELEASE_KEY)
        try:
            return SignedRelease.model_validate(data)
        except ValueError:
            return None

    def ensure(self, manifest: ModelManifest) -> TargetRef:
        """The signed target of ``manifest``: the one signed already when it says the same,
        else a new release (first signing, or the stored row changed, e.g. its URL)."""
        path = target_path(manifest.name, manifest.version)
        with self._lock:
            release = self.release(path)
            if release is not None and release.manifest == manifest:
                return TargetRef(path=path, sequence=release.sequence)
            return self._sign(path, manifest)

    def resign_above(self, manifest: ModelManifest, floor: int) -> TargetRef:
        """``manifest``'s target with a sequence above ``floor``: re-signed if it is not.

        Called before a device that runs sequence ``floor`` is sent an older release."""
        path = target_path(manifest.name, manifest.version)
        with self._lock:
            release = self.release(path)
            if release is not None and release.manifest == manifest and release.sequence > floor:
                return TargetRef(path=path, sequence=release.sequence)
            ref = self._sign(path, manifest)
        log.info(
            "re-signed %s as sequence %d (above %d, for a rollback)", path, ref.sequence, floor
        )
        return ref

    def sequence_of(self, name: str, version: str) -> int | None:
        release = self.release(target_path(name, version))
        return release.sequence if release else None

    def _sign(self, path: str, manifest: ModelManifest) -> TargetRef:
        sequence = self._highest() + 1
        self.repo.add_target(
            path,
            length=manifest.artifact.size,
            sha256=manifest.artifact.sha256,
            custom=release_custom(sequence, manifest),
        )
        return TargetRef(path=path, sequence=sequence)

    def _highest(self) -> int:
        highest = 0
        for target in self.repo.targets().values():
            data = (target.custom or {}).get(RELEASE_KEY)
            if isinstance(data, dict) and isinstance(data.get("sequence"), int):
                highest = max(highest, data["sequence"])
        return highest

    # ------------------------------------------------------------------ freshness

    def start(self) -> None:
        """Keep the online metadata fresh: a timestamp that expires freezes every device."""
        self.refresh()
        self._refresher = threading.Thread(target=self._refresh_loop, name="tuf-refresh")
        self._refresher.daemon = True
        self._refresher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(timeout=10)

    def refresh(self) -> list[str]:
        with self._lock:
            roles = self.repo.refresh(self.resign_within)
        if roles:
            log.info("re-signed %s before expiry", ", ".join(roles))
        return roles

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_every_s):
            try:
                self.refresh()
            except Exception:  # a full disk, say: keep trying, the log says why
                log.exception("could not re-sign the update metadata; trying again")
