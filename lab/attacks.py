"""The Update Framework's attacks, played against a real control plane and a real agent.

A :class:`Stage` is a running ``edgeloop serve`` with its TUF repository, a device enrolled
with it (the real enrolment: one-time token, CSR, pinned root), whose update flow
(:class:`~edgeloop.agent.updater.Updater` with :class:`~edgeloop.agent.releases.Releases`, as
the daemon runs it) reaches the server only through an :class:`~edgeloop.lab.mitm.Interceptor`:
the attacker on the network path. Each :class:`Attack` publishes a genuine new release, then
has the attacker tamper with what the device fetches, or sends the device a desired state no
signature vouches for, and names the gate that must refuse it. The test suite asserts every
attack; ``edgeloop bench security`` counts them.

Between attacks the device keeps its committed model serving; that is checked too.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeloop.agent.config import AgentConfig
from edgeloop.agent.host import ModelHost
from edgeloop.agent.identity import enrol
from edgeloop.agent.protocol import Desired, Gate, ModelManifest, Report, TargetRef
from edgeloop.agent.releases import Releases, device_session
from edgeloop.agent.states import Update
from edgeloop.agent.updater import Hooks, Updater
from edgeloop.lab.faults import PROFILE, upload_version
from edgeloop.lab.launch import ServerProcess
from edgeloop.lab.mitm import Interceptor
from edgeloop.server.releases import ReleaseSigner

DEVICE_ID = "attacked-0"
TIMESTAMP_LIFE_S = 6.0
"""The stage's timestamp expiry: short, so a frozen (replayed) timestamp expires within a
test, while the server's re-signing keeps the genuine one fresh."""


@dataclass
class Outcome:
    attack: str
    expected: Gate
    gate: Gate | None
    serving: str | None
    detail: str

    @property
    def rejected(self) -> bool:
        return self.gate == self.expected


class Stage:
    """A control plane, an attacker in front of it, and one enrolled device's update flow."""

    def __init__(self, server: ServerProcess, root: Path) -> None:
        self.server = server
        self.releases = ReleaseSigner.open(server.workdir / "tuf")
        self.interceptor = Interceptor(server.url).__enter__()
        self.reports: list[Report] = []
        self.revision = 0
        self.versions = 0
        device_dir = root / "device"
        self.config = AgentConfig(
            device_id=DEVICE_ID,
            workdir=device_dir,
            profile=PROFILE,
            server=self.interceptor.url,
            inferences=10,
            probation_s=0.1,
            shadow_every=1,
        )
        token = server.client().enrolment_token(DEVICE_ID).token
        enrol(server.url, DEVICE_ID, token, self.config.identity, self.config.trust_dir)
        session = device_session(self.config)
        self.updater = Updater(
            self.config,
            ModelHost(),
            Hooks(on_report=self.reports.append),
            resolve=Releases(self.config, session).resolve,
            http=session,
        )
        self.updater.start()

    def close(self) -> None:
        self.updater.stopping.set()
        self.interceptor.__exit__()

    # ------------------------------------------------------------------ releases

    def release(self, padding: int = 0) -> tuple[ModelManifest, TargetRef]:
        """A genuine new release: files uploaded through the API, the target signed."""
        self.versions += 1
        weights = np.full((64, 10), 0.01 * self.versions, np.float32)
        manifest = self.via_attacker(
            upload_version(self.server.url, str(self.versions), weights, padding, min_agreement=0.0)
        )
        return manifest, self.releases.ensure(manifest)

    def via_attacker(self, manifest: ModelManifest) -> ModelManifest:
        """``manifest`` with its files fetched through the interceptor."""
        moved = {
            name: ref.model_copy(
                update={"url": ref.url.replace(self.server.url, self.interceptor.url)}
            )
            for name, ref in (("artifact", manifest.artifact), ("golden", manifest.golden))
        }
        return manifest.model_copy(update=moved)

    def apply(self, target: TargetRef | None) -> Report:
        """Send the device a desired state naming ``target``; its report."""
        self.revision += 1
        before = len(self.reports)
        self.updater.apply(
            Desired(device_id=DEVICE_ID, revision=self.revision, target=target, profile=PROFILE)
        )
        assert len(self.reports) > before, "the update ended without a report"
        return self.reports[-1]

    def apply_unsigned(self, manifest: ModelManifest, sequence: int) -> Report:
        """The same update flow past trust (what the signing costs is the difference)."""
        self.revision += 1
        before = len(self.reports)
        self.updater.apply(
            Update(
                device_id=DEVICE_ID,
                revision=self.revision,
                model=manifest,
                profile=PROFILE,
                sequence=sequence,
            )
        )
        assert len(self.reports) > before, "the update ended without a report"
        return self.reports[-1]

    def serving(self) -> str | None:
        model = self.updater.host.model
        return model.label if model else None

    def commit_genuine(self) -> Report:
        """Install a genuine release (also what every attack starts from)."""
        _, target = self.release()
        report = self.apply(target)
        if not report.ok:
            raise AssertionError(f"a genuine release was refused: {report.gate}: {report.error}")
        return report


# ---------------------------------------------------------------------------- attacks


def _json_tamper(
    pattern: str, change: Callable[[dict], None]
) -> Callable[[str, bytes], bytes | None]:
    def tamper(path: str, body: bytes) -> bytes | None:
        if pattern not in path:
            return None
        document = json.loads(body)
        change(document)
        return json.dumps(document).encode()

    return tamper


def forged_target_signature(stage: Stage) -> TargetRef:
    """The attacker rewrites the signed hashes of a new target to their own file's."""
    _, target = stage.release()

    def swap(document: dict) -> None:
        document["signed"]["targets"][target.path]["hashes"]["sha256"] = "e" * 64

    stage.interceptor.tamper = _json_tamper(".targets.json", swap)
    return target


def replayed_metadata(stage: Stage) -> TargetRef:
    """Older timestamp metadata, recorded earlier, served after the device saw a newer one."""
    old = stage.interceptor.recorded("/tuf/timestamp.json")
    stage.commit_genuine()  # the device now trusts a newer timestamp
    _, target = stage.release()
    stage.interceptor.tamper = lambda path, body: old if path == "/tuf/timestamp.json" else None
    return target


def frozen_repository(stage: Stage) -> TargetRef:
    """Indefinite freeze: the attacker keeps serving a timestamp until it has expired."""
    frozen = stage.interceptor.recorded("/tuf/timestamp.json")
    time.sleep(TIMESTAMP_LIFE_S + 1)
    _, target = stage.release()
    stage.interceptor.tamper = lambda path, body: frozen if path == "/tuf/timestamp.json" else None
    return target


def mixed_snapshot_and_targets(stage: Stage) -> TargetRef:
    """Mix-and-match: the newest snapshot, but an older targets file under the new name."""
    older = {p: b for p, b in stage.interceptor.history.items() if p.endswith(".targets.json")}
    _, target = stage.release()
    newest_old = max(older, key=lambda p: int(p.rsplit("/", 1)[1].split(".")[0]))
    body = older[newest_old]
    stage.interceptor.tamper = lambda path, _: (
        body if path.endswith(".targets.json") and path != newest_old else None
    )
    return target


def endless_metadata(stage: Stage) -> TargetRef:
    """Endless data: a timestamp.json of 20 MB."""
    _, target = stage.release()
    flood = b"{" + b" " * (20 * 2**20) + b"}"
    stage.interceptor.tamper = lambda path, body: flood if path == "/tuf/timestamp.json" else None
    return target


def endless_artifact(stage: Stage) -> TargetRef:
    """Endless data: the artifact with megabytes more than its signed length."""
    manifest, target = stage.release()
    sha = manifest.artifact.sha256
    stage.interceptor.tamper = lambda path, body: (
        body + b"\0" * (4 * 2**20) if path.endswith(sha) else None
    )
    return target


def altered_artifact(stage: Stage) -> TargetRef:
    """Arbitrary package: the signed target's bytes swapped for others of the same length."""
    manifest, target = stage.release()
    sha = manifest.artifact.sha256
    stage.interceptor.tamper = lambda path, body: (
        bytes([body[0] ^ 0xFF]) + body[1:] if path.endswith(sha) else None
    )
    return target


def unsigned_target(stage: Stage) -> TargetRef:
    """A valid-looking desired state naming a target no metadata lists."""
    upload_version(stage.server.url, "evil", np.ones((64, 10), np.float32), 0)
    return TargetRef(path="models/linear/evil", sequence=10**6)


def forged_sequence(stage: Stage) -> TargetRef:
    """A desired state naming a genuine target with a sequence nobody signed."""
    _, target = stage.release()
    return TargetRef(path=target.path, sequence=target.sequence + 1000)


def lower_sequence(stage: Stage) -> TargetRef:
    """Rollback: an older genuine release (a lower sequence than the committed one)."""
    _, older = stage.release()
    stage.commit_genuine()
    return older


ATTACKS: dict[str, tuple[Callable[[Stage], TargetRef], Gate]] = {
    "forged_target_signature": (forged_target_signature, Gate.SIGNATURE),
    "replayed_metadata": (replayed_metadata, Gate.ROLLBACK),
    "frozen_repository": (frozen_repository, Gate.EXPIRED),
    "mixed_snapshot_and_targets": (mixed_snapshot_and_targets, Gate.ROLLBACK),
    "endless_metadata": (endless_metadata, Gate.METADATA),
    "endless_artifact": (endless_artifact, Gate.VERIFY),
    "altered_artifact": (altered_artifact, Gate.VERIFY),
    "unsigned_target": (unsigned_target, Gate.SIGNATURE),
    "forged_sequence": (forged_sequence, Gate.SIGNATURE),
    "lower_sequence": (lower_sequence, Gate.ROLLBACK),
}
"""Every attack, with the gate that must refuse it."""


def play(stage: Stage, name: str) -> Outcome:
    """Run attack ``name`` on ``stage``; the device must refuse it and keep serving."""
    prepare, expected = ATTACKS[name]
    if stage.serving() is None:
        stage.commit_genuine()
    try:
        target = prepare(stage)  # may install a genuine release first
        before = stage.serving()
        report = stage.apply(target)
    finally:
        stage.interceptor.tamper = None
    serving = stage.serving()
    gate = report.gate if not report.ok else None
    if serving != before and gate is not None:
        detail = f"refused, but serving changed from {before} to {serving}"
        gate = None
    else:
        detail = report.error or "installed"
    return Outcome(name, expected, gate, serving, detail)


def update_overhead(stage: Stage, updates: int = 5) -> tuple[float, float, float]:
    """Median seconds from desired state to committed report, signed and not, and their
    ratio: the same files each time (new versions of the same model), alternating."""
    signed: list[float] = []
    unsigned: list[float] = []
    for _ in range(updates):
        manifest, target = stage.release()
        start = time.perf_counter()
        report = stage.apply(target)
        signed.append(time.perf_counter() - start)
        assert report.ok, report.error
        manifest, target = stage.release()
        start = time.perf_counter()
        report = stage.apply_unsigned(manifest, target.sequence)
        unsigned.append(time.perf_counter() - start)
        assert report.ok, report.error
    with_signing, without = statistics.median(signed), statistics.median(unsigned)
    return with_signing, without, with_signing / without
