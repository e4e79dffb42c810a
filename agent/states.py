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
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .protocol import Desired, Energy, Gate, LatencyStats, Phase

log = logging.getLogger("edgeloop.agent.states")

SCHEMA_VERSION = 1
MAX_RESUMES = 3
"""Restarts tolerated in one non-terminal state before the update is abandoned."""

TERMINAL = frozenset({Phase.IDLE, Phase.COMMITTED, Phase.ROLLED_BACK, Phase.FAILED})


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


_READY = (Phase.IDLE, Phase.COMMITTED, Phase.ROLLED_BACK, Phase.FAILED)

TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    # a new desired revision starts an update from any resting state
    **{(state, Event.NEW_REVISION): Phase.DOWNLOADING for state in _READY},
    **{(state, Event.CLEARED): Phase.IDLE for state in _READY},
    # getting the bytes: download (hashing while streaming), then re-check what is on disk
    (Phase.DOWNLOADING, Event.DOWNLOADED): Phase.VERIFYING,
    (Phase.DOWNLOADING, Event.DOWNLOAD_FAILED): Phase.FAILED,
    (Phase.DOWNLOADING, Event.REJECTED): Phase.FAILED,  # too big for the device: not fetched
    (Phase.DOWNLOADING, Event.CORRUPT): Phase.FAILED,
    (Phase.VERIFYING, Event.VERIFIED): Phase.VALIDATING,
    (Phase.VERIFYING, Event.CORRUPT): Phase.FAILED,
    # gates run beside the serving model; nothing has changed for applications yet
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


class Measured(BaseModel):
    """What validation measured on the device; carried to the update's report."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    golden_max_abs_err: float
    latency: LatencyStats
    peak_rss_mb: float
    energy: Energy
    providers: list[str]


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
    desired: Desired | None = None
    committed: SlotModel | None = None
    previous: SlotModel | None = None
    candidate: SlotModel | None = None
    reason: str | None = Field(default=None, description="why the update failed/rolled back")
    gate: Gate | None = None
    measured: Measured | None = None
    agreement: float | None = None
    resumes: int = Field(default=0, ge=0, description="restarts in the current state")
    reported: bool = Field(default=False, description="the terminal report was queued")
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
            if data.get("schema_version") != SCHEMA_VERSION:
                raise StateFileError(
                    f"{self.path} has schema {data.get('schema_version')!r}, this agent reads "
                    f"{SCHEMA_VERSION}; upgrade the agent or move the file away to start afresh"
                )
            return UpdateRecord.model_validate(data)
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
