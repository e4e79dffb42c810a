"""The update flow as a table: states, events, and the one record persisted between them.

An update walks ``idle → downloading → verifying → validating → activating → probation →
committed``; it ends ``failed`` when the new model never reached the device's slot, or
``rolled_back`` when it did and then had to give way to the previous model. Each state's
step (``agent/updater.py``) only returns an :class:`Event`; :data:`TRANSITIONS` alone
decides what comes next.

Invariants:
- The record is written (temp file, fsync, rename, fsync of the directory) *before* the step
  of its state runs, so a kill -9 or power cut at any moment leaves either the previous or
  the next record on disk, never half of one.
- Every step is idempotent: resuming a state re-runs its step from the start.
- :func:`resume` is the one place that decides what a restarted agent does with the state it
  finds; a state entered too often in a row (a model that crashes the agent, say) stops the
  update instead of looping.
- A model that failed on this device is remembered (:class:`FailedModel`, at most
  :data:`MAX_FAILED_MODELS`, in the same record) and refused at once when a later revision
  names it again, unless it failed for a reason of the moment (:data:`RETRIED_GATES`) or was
  judged against a budget the device has since relaxed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .protocol import DeviceProfile, Energy, Gate, LatencyStats, ModelManifest, Phase

log = logging.getLogger("edgeloop.agent.states")

SCHEMA_VERSION = 3
READABLE_SCHEMAS = frozenset({1, 2, SCHEMA_VERSION})
"""Schema 1 had no remembered failures; it reads as a record with none."""
MAX_RESUMES = 3
"""Restarts tolerated in one non-terminal state before the update is abandoned."""

TERMINAL = frozenset({Phase.IDLE, Phase.COMMITTED, Phase.ROLLED_BACK, Phase.FAILED})

MAX_FAILED_MODELS = 64
"""Failed models remembered; the oldest is forgotten first (a record stays a few KB)."""

RETRIED_GATES = frozenset({Gate.DISK, Gate.DOWNLOAD, Gate.VERIFY, Gate.ACTIVATE, Gate.OPERATOR})
"""Refusals that say something about the moment, not about the model, so the same model may
be sent again: storage that may be freed, a network that may come back, bytes that were not the
model at all (``verify``: the SHA-256 names the model we never received), a load that failed
in the serving process after the model passed validation, an operator's choice. ``restarts`` is
retried only when it struck before the candidate served (power, not the model; validation runs
in a child process that cannot take the agent down); abandoned while the candidate served, it
is remembered."""

GOLDEN_GATES = frozenset({Gate.GOLDEN, Gate.FINITE})
"""Verdicts on the model together with its golden file: another golden file is another test."""


class Slot(StrEnum):
    """The two model slots. The committed model lives in one; a candidate goes to the other."""

    A = "A"
    B = "B"

    @property
    def other(self) -> Slot:
        return Slot.B if self is Slot.A else Slot.A


class Event(StrEnum):
    """What a step reports back. Named for the outcome, not for the next state."""

    NEW_REVISION = "new_revision"
    CLEARED = "cleared"  # desired state says: run no model
    DOWNLOADED = "downloaded"
    DOWNLOAD_FAILED = "download_failed"
    VERIFIED = "verified"
    CORRUPT = "corrupt"
    PASSED = "passed"
    REJECTED = "rejected"
    ACTIVATED = "activated"
    ACTIVATION_FAILED = "activation_failed"
    HEALTHY = "healthy"
    BREACH = "breach"
    OPERATOR_ROLLBACK = "operator_rollback"
    RESTARTED_TOO_OFTEN = "restarted_too_often"
    NO_SPACE = "no_space"  # the device's own storage refused a write
    FAILED_BEFORE = "failed_before"  # the desired model already failed on this device
    UNTRUSTED = "untrusted"  # the signed metadata does not vouch for it (or it is older)


_READY = (Phase.IDLE, Phase.COMMITTED, Phase.ROLLED_BACK, Phase.FAILED)

TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    # a new desired revision starts an update from any resting state
    **{(state, Event.NEW_REVISION): Phase.DOWNLOADING for state in _READY},
    **{(state, Event.CLEARED): Phase.IDLE for state in _READY},
    # ... unless its model already failed here: refused at once, nothing fetched
    **{(state, Event.FAILED_BEFORE): Phase.FAILED for state in _READY},
    # ... or the signed metadata does not vouch for it: refused, nothing fetched
    **{(state, Event.UNTRUSTED): Phase.FAILED for state in _READY},
    # getting the bytes: download (hashing while streaming), then re-check what is on disk
    (Phase.DOWNLOADING, Event.DOWNLOADED): Phase.VERIFYING,
    (Phase.DOWNLOADING, Event.DOWNLOAD_FAILED): Phase.FAILED,
    (Phase.DOWNLOADING, Event.REJECTED): Phase.FAILED,  # too big for the device: not fetched
    (Phase.DOWNLOADING, Event.CORRUPT): Phase.FAILED,
    (Phase.DOWNLOADING, Event.NO_SPACE): Phase.FAILED,  # partial download removed
    (Phase.VERIFYING, Event.VERIFIED): Phase.VALIDATING,
    (Phase.VERIFYING, Event.CORRUPT): Phase.FAILED,
    (Phase.VERIFYING, Event.NO_SPACE): Phase.FAILED,  # the slot could not be written
    # gates run in a child process beside the serving model; nothing changed for applications
    (Phase.VALIDATING, Event.PASSED): Phase.ACTIVATING,
    (Phase.VALIDATING, Event.REJECTED): Phase.FAILED,
    # the switch: candidate slot becomes current; the committed one stays on disk
    (Phase.ACTIVATING, Event.ACTIVATED): Phase.PROBATION,
    (Phase.ACTIVATING, Event.ACTIVATION_FAILED): Phase.ROLLED_BACK,
    # probation: live traffic + shadow runs of the previous model decide
    (Phase.PROBATION, Event.HEALTHY): Phase.COMMITTED,
    (Phase.PROBATION, Event.BREACH): Phase.ROLLED_BACK,
    # an operator may send the device back to its previous committed model
    (Phase.PROBATION, Event.OPERATOR_ROLLBACK): Phase.ROLLED_BACK,
    (Phase.COMMITTED, Event.OPERATOR_ROLLBACK): Phase.ROLLED_BACK,
    # a state that keeps killing the agent: give up on this update
    (Phase.DOWNLOADING, Event.RESTARTED_TOO_OFTEN): Phase.FAILED,
    (Phase.VERIFYING, Event.RESTARTED_TOO_OFTEN): Phase.FAILED,
    (Phase.VALIDATING, Event.RESTARTED_TOO_OFTEN): Phase.FAILED,
    (Phase.ACTIVATING, Event.RESTARTED_TOO_OFTEN): Phase.ROLLED_BACK,
    (Phase.PROBATION, Event.RESTARTED_TOO_OFTEN): Phase.ROLLED_BACK,
}


class TransitionError(RuntimeError):
    """A step produced an event its state has no transition for: a bug, never a device fault."""


def next_state(state: Phase, event: Event) -> Phase:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise TransitionError(f"no transition from {state.value!r} on {event.value!r}") from None


class SlotModel(BaseModel):
    """Which model a slot holds, as the state record remembers it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slot: Slot
    label: str = Field(description="`name:version`")
    sha256: str
    revision: int
    sequence: int = Field(
        default=0, ge=0, description="its signed release sequence (0: from before signing)"
    )


class Update(BaseModel):
    """One desired revision as the update flow acts on it: already trusted.

    The wire's :class:`~edgeloop.agent.protocol.Desired` only names a signed target;
    :mod:`edgeloop.agent.trust` turns it into this, with the manifest taken from the signed
    metadata. Nothing else makes one but tests of the flow itself, which start past trust.
    Unknown keys are ignored so a state file of schema 2 (which kept the wire message here)
    still reads.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    device_id: str
    revision: int = Field(ge=0)
    model: ModelManifest | None = Field(description="None: run no model")
    profile: DeviceProfile
    target: str | None = Field(default=None, description="the signed target it came from")
    sequence: int = Field(default=0, ge=0, description="its signed sequence")


class Measured(BaseModel):
    """What validation measured on the device, as far as it got; carried to the report.

    A model refused mid-way (out of memory on its golden inputs, say) still reports the peak
    RSS it reached; the figures of the steps it never reached stay None.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    golden_max_abs_err: float | None = None
    latency: LatencyStats | None = None
    peak_rss_mb: float
    energy: Energy | None = None
    providers: list[str] = Field(default_factory=list)


class FailedModel(BaseModel):
    """A model that failed on this device, and why: enough to refuse it again with reasons."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(description="SHA-256 of the model artifact")
    golden_sha256: str
    label: str = Field(description="`name:version` as it was sent")
    revision: int = Field(description="the desired revision it failed on")
    gate: Gate
    reason: str
    budget: float | None = Field(
        default=None, description="for a budget gate (size, latency, memory): the budget it failed"
    )


def remember_failure(failed: list[FailedModel], entry: FailedModel) -> list[FailedModel]:
    """``failed`` with ``entry`` as the newest verdict on its model, bounded."""
    kept = [f for f in failed if f.sha256 != entry.sha256]
    return [*kept, entry][-MAX_FAILED_MODELS:]


def worth_remembering(state: Phase, gate: Gate | None) -> bool:
    """Whether an update that ended in ``state`` on ``gate`` condemns its model on this device."""
    if state not in (Phase.FAILED, Phase.ROLLED_BACK) or gate is None:
        return False
    if gate == Gate.RESTARTS:
        return state == Phase.ROLLED_BACK
    return gate not in RETRIED_GATES


def failed_before(
    failed: list[FailedModel],
    sha256: str,
    golden_sha256: str,
    budget_now: Callable[[Gate], float | None],
) -> FailedModel | None:
    """The remembered failure that still condemns this model, if any.

    A model refused against a budget (``entry.budget`` set) may pass a looser one: that
    failure counts only while ``budget_now(gate)``, the budget it would be judged against now
    (None: no limit), is no looser than the one it failed under.
    """
    for entry in reversed(failed):
        if entry.sha256 != sha256:
            continue
        if entry.gate in GOLDEN_GATES and entry.golden_sha256 != golden_sha256:
            continue
        if entry.budget is not None:
            now = budget_now(entry.gate)
            if now is None or now > entry.budget:
                continue
        return entry
    return None


class UpdateRecord(BaseModel):
    """Everything a restarted agent needs: where it was, what it was installing, what is safe.

    ``committed`` is the model the device falls back to; ``previous`` the one committed before
    it (an operator rollback target); ``candidate`` the model of the update in progress (kept
    after it ends, so a report can name it).
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    state: Phase = Phase.IDLE
    revision: int | None = Field(default=None, description="desired revision of this update")
    desired: Update | None = None
    committed: SlotModel | None = None
    previous: SlotModel | None = None
    candidate: SlotModel | None = None
    reason: str | None = Field(default=None, description="why the update failed/rolled back")
    gate: Gate | None = None
    measured: Measured | None = None
    agreement: float | None = None
    resumes: int = Field(default=0, ge=0, description="restarts in the current state")
    reported: bool = Field(default=False, description="the terminal report was queued")
    failed: list[FailedModel] = Field(
        default_factory=list, description="models that failed here, oldest first"
    )
    entered_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def enter(self, state: Phase, **changes: object) -> UpdateRecord:
        """The record for ``state``: a copy with the time stamped and the restart count reset."""
        data = {**self.model_dump(), **changes, "state": state, "resumes": 0, "reported": False}
        data["entered_at"] = datetime.now(UTC)
        return UpdateRecord.model_validate(data)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` so that a crash leaves either the old or the new content, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX keeps it in the page cache until then)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateFileError(RuntimeError):
    """The state file exists but cannot be trusted; the message says what to do."""


class StateStore:
    """The persisted :class:`UpdateRecord` at ``<workdir>/state.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> UpdateRecord:
        """The stored record, or a fresh idle one on first start.

        Raises:
            StateFileError: the file is unreadable or of another schema. Atomic writes mean
                this is never a torn write; it is a hand edit or disk damage, and guessing
                could run a model that never passed its gates.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return UpdateRecord()
        try:
            data = json.loads(raw)
            if data.get("schema_version") not in READABLE_SCHEMAS:
                raise StateFileError(
                    f"{self.path} has schema {data.get('schema_version')!r}, this agent reads "
                    f"{sorted(READABLE_SCHEMAS)}; upgrade the agent or move the file away to "
                    "start afresh"
                )
            return UpdateRecord.model_validate({**data, "schema_version": SCHEMA_VERSION})
        except (json.JSONDecodeError, ValidationError, AttributeError) as exc:
            raise StateFileError(
                f"{self.path} is not a valid agent state ({exc}); move it away to start afresh "
                "(the slots keep the models)"
            ) from None

    def save(self, record: UpdateRecord) -> None:
        write_atomic(self.path, record.model_dump_json(indent=1).encode())


def resume(record: UpdateRecord) -> tuple[UpdateRecord, Event | None]:
    """What a restarted agent does with the record it finds.

    Resting states stay as they are. A state in the middle of an update is re-entered (its
    step is idempotent) with ``resumes`` counted; past :data:`MAX_RESUMES` the update is
    abandoned with :attr:`Event.RESTARTED_TOO_OFTEN` (the caller runs that transition, which
    rolls back where the candidate was already active).
    """
    if record.state in TERMINAL:
        return record, None
    count = record.resumes + 1
    resumed = record.model_copy(update={"resumes": count})
    if count > MAX_RESUMES:
        return resumed, Event.RESTARTED_TOO_OFTEN
    return resumed, None
