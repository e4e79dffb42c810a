"""The REST contract: every request and response body of the control plane's API.

``agent/protocol.py`` is the contract between devices and the server; this module is the one
between the server and its clients (the operator CLI, the closed loop, the demo, anyone with
``requests``). Routes declare these types as their return annotations, so the OpenAPI document
FastAPI serves is exactly what they answer, and :class:`edgeloop.server.client.ApiClient`
parses every answer back into the same types.

Invariants:
- Imports nothing but pydantic, the standard library and the wire protocol, so the client SDK
  and the loop can import it without SQLAlchemy, FastAPI or torch.
- What devices sent stays the protocol's type: a stored report is a
  :class:`~edgeloop.agent.protocol.Report` (plus when it arrived), a telemetry sample a
  :class:`~edgeloop.agent.protocol.Telemetry`. Reading them back ignores fields an older
  server version stored and this one no longer has, as :func:`~edgeloop.agent.protocol.decode`
  does on the wire.
- Entities come in families (``ModelCard`` → ``ModelCreate`` → ``ModelPublic``): a request
  body forbids unknown fields, so a typo is a 422 that names it, not a silently dropped value.
- A request body holds finite numbers only (no NaN or Infinity, at any depth, free-form JSON
  included): JSON has no such values, so a server that stored one would answer ``null`` where
  its document promises a number. Numbers with a natural range are bounded by it, and every
  constraint is in the schema, so the OpenAPI document says what the server refuses.
- Model names and versions follow the protocol's :data:`~edgeloop.agent.protocol.NAME_PATTERN`
  and :data:`~edgeloop.agent.protocol.VERSION_PATTERN`: they end up in URLs, file names and
  ``name:version`` labels.
- Times are UTC with their zone, whatever the database handed back.
- Every list that can grow is a :class:`Page`.
"""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgeloop.agent.protocol import (
    DEVICE_ID_PATTERN,
    NAME_PATTERN,
    SHA256_PATTERN,
    VERSION_PATTERN,
    DeviceProfile,
    Phase,
    Report,
    Telemetry,
    TensorSpec,
)
from edgeloop.server.times import as_utc

DEFAULT_APPLICATION = "default"
"""The application of every device and model version nobody assigned to another one."""

__all__ = [
    "DEFAULT_APPLICATION",
    "INT_MAX",
    "LABEL_PATTERN",
    "MAX_TRIAL_POINTS",
    "ApplicationAssign",
    "ApplicationAssignmentPublic",
    "ApplicationPublic",
    "ArtifactGc",
    "ArtifactGcResult",
    "ArtifactPublic",
    "ArtifactRemoved",
    "AuditEntryPublic",
    "CalibrationPublic",
    "CalibrationPut",
    "Criteria",
    "DesiredPublic",
    "DeviceBase",
    "DeviceDetail",
    "DevicePublic",
    "FleetEntry",
    "Health",
    "LoopAction",
    "LoopDecisionCreate",
    "LoopDecisionPublic",
    "ModelCard",
    "ModelCreate",
    "ModelFigures",
    "ModelPublic",
    "Page",
    "Problem",
    "ProblemPart",
    "ReportRecord",
    "Retention",
    "Retired",
    "Role",
    "RolloutAction",
    "RolloutCreate",
    "RolloutDeviceStatus",
    "RolloutState",
    "RolloutStatus",
    "RolloutSummary",
    "Step",
    "Target",
    "TelemetrySample",
    "TrialPoint",
    "UtcDatetime",
    "WaveStatus",
]

T = TypeVar("T")

INT_MAX = 2**31 - 1
"""The largest number an integer column holds on every database we run (PostgreSQL's
``integer``): larger ids, offsets and counts in a request are refused with a 422 rather than
overflowing in the database."""


JSON_SAFE_INT = 2**53 - 1
"""The largest integer every JSON reader keeps exactly (JavaScript's ``Number``)."""

LABEL_PATTERN = rf"{NAME_PATTERN[:-1]}:{VERSION_PATTERN[1:]}"
"""A model version's ``name:version`` label."""

Label = Annotated[str, Field(pattern=LABEL_PATTERN, description="`name:version`")]


def _integral(value: Any) -> Any:
    """JSON Schema counts ``3.0`` as an integer; a strict ``int`` would refuse it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[int, BeforeValidator(_integral)]
"""An integer of a request body: ``3`` or ``3.0``, never ``true`` or ``"3"`` (with strict
validation, see :class:`_Request`)."""

# Constraints go before the validator: the other way round, pydantic cannot put them in the
# schema of an optional field.
FileSize = Annotated[int, Field(gt=0, le=JSON_SAFE_INT), BeforeValidator(_integral)]
ThreadCount = Annotated[int, Field(ge=1, le=4096), BeforeValidator(_integral)]

UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]
"""A time with its zone, normalized to UTC (a naive one is taken as UTC)."""


class _Request(BaseModel):
    """A request body: unknown fields, non-finite numbers and values of another JSON type
    (``true`` for a number, ``1`` or ``"yes"`` for a boolean) are refused, so what the
    server accepts is what its document says. A ``…Public`` model that extends one relaxes
    ``strict`` again: it reads rows and answers, where times arrive as text."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


_ANSWER = ConfigDict(extra="ignore", strict=False)
_FREE_FORM_ANSWER = ConfigDict(extra="ignore", strict=False, allow_inf_nan=True)
"""For answers whose numbers are free-form JSON: rows stored before numbers had to be finite
still read back, and their NaN answers as ``null``, which free-form JSON allows."""


class Page(BaseModel, Generic[T]):
    """One page of a longer list: ``items`` from ``offset``, ``total`` counts them all."""

    total: int = Field(ge=0, description="items matching the query, on every page")
    limit: int = Field(ge=1)
    offset: int = Field(ge=0)
    items: list[T]


class ProblemPart(BaseModel):
    """One part of a request that failed validation."""

    loc: list[str | int] = Field(description="where: `body`, `query`, `path`, then the field")
    msg: str
    type: str = Field(description="pydantic's error type, e.g. `string_pattern_mismatch`")


class Problem(BaseModel):
    """Every error answer (4xx): what went wrong and what to do, in one sentence."""

    detail: str
    errors: list[ProblemPart] | None = Field(
        default=None, description="a request that failed validation: each failing part"
    )


class Health(BaseModel):
    """Whether the server is up and still ingesting. A connection alone does not prove
    ingestion: a ``last_message_at`` that stops moving while devices talk, or growing
    ``dropped`` counts, show that messages arrive but are not stored."""

    ok: bool
    mqtt_connected: bool | None = Field(
        description="whether the MQTT bridge is connected; null when the server runs without it"
    )
    last_message_at: UtcDatetime | None = Field(
        default=None, description="when the bridge last stored a device message; null before"
    )
    messages_handled: int = Field(
        default=0, ge=0, description="device messages stored since the server started"
    )
    dropped: dict[str, int] = Field(
        default_factory=dict,
        description="device messages dropped since the server started, by reason: too_large, "
        "not_json, too_deep, invalid, unsupported_version, wrong_topic, unexpected, "
        "store_failed",
    )


class ArtifactPublic(BaseModel):
    sha256: str = Field(pattern=SHA256_PATTERN)
    size: int = Field(ge=0)
    url: str = Field(description="where devices download it (Range and ETag supported)")


class ArtifactRemoved(BaseModel):
    sha256: str = Field(pattern=SHA256_PATTERN)
    bytes_freed: int = Field(ge=0)


class ArtifactGc(_Request):
    """What ``POST /api/v1/artifact-gc`` may remove. Files younger than ``min_age_s`` stay,
    so the files of a model being pushed (uploaded, not yet registered) are not collected
    between its upload and its registration."""

    min_age_s: float = Field(
        default=3600,
        ge=0,
        le=10 * 365 * 86400,
        description="only files stored (or uploaded again) at least this long ago",
    )
    dry_run: bool = Field(default=False, description="report what would go, remove nothing")


class ArtifactGcResult(BaseModel):
    removed: list[ArtifactRemoved] = Field(
        description="artifact files no live model version references (removed, or that would be)"
    )
    stray_uploads: int = Field(
        ge=0, description="abandoned partial uploads (`.upload-*` temp files) removed"
    )
    bytes_freed: int = Field(ge=0, description="all of them together")
    dry_run: bool


# --------------------------------------------------------------------------- device reports


class ReportRecord(Report):
    """A device's update report as the server stored it: the protocol's ``Report``, plus when
    it arrived. Being a ``Report``, it goes wherever the device's own message would."""

    model_config = ConfigDict(extra="ignore")

    received_at: UtcDatetime


class TelemetrySample(Telemetry):
    """A device's telemetry message as the server stored it."""

    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------------- devices


class DesiredPublic(BaseModel):
    """The desired state last published to a device."""

    revision: int = Field(ge=0)
    model: str | None = Field(description="`name:version`; null: run no model")
    reason: str
    source: str = Field(description="`planner`, or `rollout:<id>` while a rollout owns it")


class DeviceBase(BaseModel):
    """What a device says about itself in its hello."""

    device_id: str
    profile: DeviceProfile
    tags: list[str]
    agent_version: str | None
    protocol: int = Field(description="wire protocol major version from the device's hello")
    application: str = Field(
        default=DEFAULT_APPLICATION, description="the application it runs (see `source`)"
    )
    application_source: Literal["operator", "device", "default"] = Field(
        default="default",
        description="`operator`: assigned by tag; `device`: its own config; `default`: neither",
    )


class DevicePublic(DeviceBase):
    """A registry row: the device, where its update stands, and what it was told to run."""

    online: bool
    phase: Phase
    current_model: str | None = Field(description="`name:version` it runs, by its reports")
    previous_model: str | None = Field(description="what it ran before: a rollback's target")
    first_seen: UtcDatetime
    last_seen: UtcDatetime
    desired: DesiredPublic | None = Field(description="null until the planner first chose")


class DeviceDetail(DevicePublic):
    latest_report: ReportRecord | None
    latest_telemetry: TelemetrySample | None


# --------------------------------------------------------------------------- models


STORED = {"stored": True}
"""Validation context for rows read back from the database (see :class:`ModelFigures`)."""


MAX_TRIAL_POINTS = 200
"""The most search trials a version's figures carry."""


class TrialPoint(BaseModel):
    """One candidate the compressor's search measured, as its Pareto plot shows it (the
    compressor's ``TrialPoint``, field for field)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    label: str = Field(min_length=1, max_length=256, description="e.g. fp32, int8-static")
    metric: float = Field(description="the task metric (`metric_name` of the figures)")
    latency_p50_ms: float = Field(ge=0, description="host, batch 1")
    size_bytes: FileSize
    on_front: bool = Field(description="on the search's Pareto front")
    chosen: bool = Field(description="the candidate this version is")


class ModelFigures(BaseModel):
    """What the compressor measured on its own host for one model version (never on a device).

    Accepts every field of the compressor's ``ModelReport``; only ``accuracy`` is required,
    because the planner ranks versions by it. Despite its name it holds any task metric
    (``metric_name`` says which: accuracy, MAE, a controller's return), in any range, ranked in
    the direction ``higher_is_better`` gives.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    accuracy: float = Field(
        description="the task metric the planner ranks by (`metric_name`), in its own units"
    )

    @model_validator(mode="before")
    @classmethod
    def _stored(cls, data: Any, info: ValidationInfo) -> Any:
        """Figures read back from the database drop keys this version does not know: versions
        registered before the card was typed may carry them, and a listing must not fail on
        them. A registration (no context) still refuses unknown keys, so typos are errors."""
        if info.context == STORED and isinstance(data, dict):
            return {k: v for k, v in data.items() if k in cls.model_fields}
        return data

    metric_name: str = Field(
        default="accuracy", max_length=64, description="what `accuracy` measures"
    )
    higher_is_better: bool = Field(
        default=True, description="false for errors (MAE, RMSE): the planner ranks lower first"
    )
    size_bytes: FileSize | None = Field(default=None, description="the .onnx file")
    variant: str | None = Field(
        default=None, max_length=256, description="e.g. fp32, int8: the search's trial label"
    )
    recipe: list[str] = Field(default_factory=list, description="passes that made it, in order")
    compression_ratio: float | None = Field(default=None, gt=0, description="baseline / size")
    host_latency_p50_ms: float | None = Field(default=None, ge=0, description="batch 1")
    host_latency_p95_ms: float | None = Field(
        default=None, ge=0, description="batch 1; the planner compares it with the budget"
    )
    host_threads: ThreadCount | None = Field(default=None, description="threads when timed")
    peak_rss_mb: float | None = Field(default=None, ge=0, description="model process, host")
    baseline_accuracy: float | None = Field(default=None, description="the uncompressed model's")
    accuracy_drop: float | None = Field(
        default=None, description="how much worse than the baseline, in the metric's direction"
    )
    relative_drop: float | None = Field(
        default=None, description="accuracy_drop / |baseline_accuracy|: the performance loss"
    )
    golden_atol: float | None = Field(default=None, ge=0, description="as the compressor chose")
    metrics: dict[str, float] = Field(default_factory=dict, description="every task figure")
    output_max_abs_err: float | None = Field(default=None, description="vs fp32, eval set")
    weight_error: dict[str, float] = Field(default_factory=dict, description="weight MSE/max")
    agreement_metric: Literal["argmax", "cosine"] = Field(
        default="argmax",
        description="how a device's probation compares this model with its predecessor",
    )
    trials: list[TrialPoint] = Field(
        default_factory=list,
        max_length=MAX_TRIAL_POINTS,
        description="the search's candidates that ran, the baseline first",
    )


class ModelCard(_Request):
    """What a publisher says about a model version: its I/O contract, how a device checks the
    golden outputs, and the figures measured when it was built."""

    name: str = Field(pattern=NAME_PATTERN, description="letters, digits, `_.+-`")
    version: str = Field(pattern=VERSION_PATTERN, description="letters, digits, `_.+-`")
    application: str = Field(
        default=DEFAULT_APPLICATION,
        pattern=NAME_PATTERN,
        description="the application it is a version of: only devices running that "
        "application are offered it",
    )
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    golden_atol: float = Field(default=1e-3, ge=0)
    golden_rtol: float = Field(default=1e-3, ge=0)
    report: ModelFigures


class ModelCreate(ModelCard):
    """The body of ``POST /api/v1/models``: a card plus the files, uploaded first by hash."""

    artifact_sha256: str = Field(pattern=SHA256_PATTERN)
    golden_sha256: str = Field(pattern=SHA256_PATTERN)
    pareto_sha256: str | None = Field(
        default=None,
        pattern=SHA256_PATTERN,
        description="the compressor's Pareto plot (PNG), uploaded like the model; optional",
    )


class ModelPublic(ModelCreate):
    model_config = _ANSWER

    id: int
    label: str = Field(description="`name:version`")
    created_at: UtcDatetime
    retired_at: UtcDatetime | None = Field(description="set by retention or `models retire`")


class FleetEntry(BaseModel):
    """One device as the planner sees it: its profile, what it should run and why, the
    figures of that model, and the device's latest report."""

    device_id: str
    profile: DeviceProfile
    online: bool
    phase: Phase
    desired_revision: int | None
    desired_model: str | None
    desired_reason: str | None
    model_report: ModelFigures | None = Field(description="the desired model's figures")
    report: ReportRecord | None = Field(description="the device's latest report")


class ApplicationPublic(BaseModel):
    """One application: its devices and model versions, and the tags assigned to it."""

    name: str
    devices: int = Field(description="devices running it")
    online: int = Field(description="of which online")
    versions: list[str] = Field(description="live model versions, `name:version`, oldest first")
    tags: list[str] = Field(description="tags whose devices an operator assigned to it")


class ApplicationAssign(_Request):
    """``POST /api/v1/applications/{name}/assignments``: devices with ``tag`` run ``name``."""

    tag: str = Field(min_length=1, max_length=128, description="a device tag, e.g. line:3")


class ApplicationAssignmentPublic(BaseModel):
    tag: str
    application: str
    devices: int = Field(description="devices that carry the tag now")


class Retention(_Request):
    keep: JsonInt = Field(
        ge=1, le=INT_MAX, description="live versions to keep per model name, newest first"
    )
    name: str | None = Field(default=None, pattern=NAME_PATTERN, description="only this name")


class Retired(BaseModel):
    retired: list[str] = Field(description="the labels retired by this request")


# --------------------------------------------------------------------------- rollouts


class RolloutState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    HALTED = "halted"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    ROLLED_BACK = "rolled_back"


class RolloutAction(StrEnum):
    """What an operator may do to a rollout: ``POST /api/v1/rollouts/{id}/{action}``."""

    PAUSE = "pause"
    RESUME = "resume"  # a paused one; a halted one stays halted
    CANCEL = "cancel"
    ROLLBACK = "rollback"  # every device it touched gets its previous model


class Step(StrEnum):
    """A device's part in one rollout."""

    PENDING = "pending"  # its wave has not started
    SENT = "sent"  # new desired revision published; waiting for its report
    COMMITTED = "committed"
    FAILED = "failed"  # the device refused or rolled back the model (report says why)
    TIMED_OUT = "timed_out"  # no report within the wave's timeout (offline, stuck)
    SUPERSEDED = "superseded"  # a newer rollout took the device
    ROLLED_BACK = "rolled_back"  # sent its previous model by an operator rollback


class Target(_Request):
    """Which devices: all conditions must hold; an empty target is the whole fleet."""

    profile: str | None = Field(
        default=None, min_length=1, max_length=64, description="device profile name"
    )
    tags: list[str] = Field(default_factory=list, description="devices carrying all of these")
    devices: list[Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]] | None = Field(
        default=None, description="explicit device ids"
    )


class Criteria(_Request):
    """What a wave must achieve before the next one starts."""

    wave_timeout_s: float = Field(
        default=900, gt=0, le=30 * 86400, description="a device silent this long fails"
    )
    max_failure_rate: float = Field(
        default=0.0, ge=0, le=1, description="failed+timed out share of a wave that halts it"
    )
    require_within_budget: bool = Field(
        default=True, description="a report over the profile's latency/memory budget is a failure"
    )
    max_power_w: float | None = Field(
        default=None,
        gt=0,
        le=100_000,
        description="a report drawing more average power is a failure",
    )


WAVE_PATTERN = (
    r"^(?:[1-9][0-9]{0,5}"  # a count of devices: 1 to 999999
    r"|(?:100(?:\.0{1,6})?|[1-9][0-9]?(?:\.[0-9]{1,6})?|0\.[0-9]{0,5}[1-9])%)$"  # (0%, 100%]
)
"""One wave of a rollout: more devices (``"3"``), or a cumulative share of the target
(``"10%"``, ``"2.5%"``), never zero or over 100%."""


class RolloutCreate(_Request):
    model: Label = Field(description="`name:version` of a registered model")
    target: Target = Field(default_factory=Target)
    waves: list[Annotated[str, Field(pattern=WAVE_PATTERN)]] = Field(
        default_factory=lambda: ["10%", "50%", "100%"],
        min_length=1,
        max_length=100,
        description='cumulative shares ("10%", in (0%, 100%]) or device counts ("3") per wave',
    )
    criteria: Criteria = Field(default_factory=Criteria)

    @field_validator("waves", mode="before")
    @classmethod
    def _waves_say_what_is_wrong(cls, waves: Any) -> Any:
        """Word the usual mistakes; :data:`WAVE_PATTERN` (which the schema publishes) then
        refuses anything else."""
        for wave in waves if isinstance(waves, list) else ():
            if not isinstance(wave, str):
                continue
            share = wave.endswith("%")
            try:
                value = float(wave[:-1] if share else wave)
            except ValueError:
                raise ValueError(
                    f"wave {wave!r} is neither a share like '10%' nor a count like '3'"
                ) from None
            if not 0 < value < math.inf or (share and value > 100):
                raise ValueError(f"wave {wave!r} must be in (0%, 100%] or a positive count")
        return waves


class WaveStatus(BaseModel):
    wave: int = Field(ge=1, description="1-based")
    cumulative_size: int = Field(ge=0, description="devices in this wave and all before it")
    steps: dict[Step, int] = Field(description="how many of the wave's devices are at each step")


class RolloutDeviceStatus(BaseModel):
    device_id: str
    wave: int = Field(ge=1)
    step: Step
    revision: int | None = Field(description="the desired revision it was sent, once sent")
    detail: str


class RolloutSummary(BaseModel):
    """A rollout without its per-device list (what ``GET /rollouts`` pages through)."""

    id: int
    model: str = Field(description="`name:version`")
    state: RolloutState
    current_wave: int = Field(ge=1, description="1-based")
    waves: list[WaveStatus]
    target: Target
    criteria: Criteria
    reason: str
    created_at: UtcDatetime
    updated_at: UtcDatetime


class RolloutStatus(RolloutSummary):
    devices: list[RolloutDeviceStatus]


# --------------------------------------------------------------------------- the closed loop

LoopAction = Literal["deploy", "keep", "wait", "unreachable", "stop"]


class LoopDecisionCreate(_Request):
    loop: str = Field(min_length=1, max_length=128, description="the model family it tunes")
    round: JsonInt = Field(ge=0, le=INT_MAX)
    profile: str = Field(min_length=1, max_length=64, description="the device class, or `*`")
    action: LoopAction
    model: Label | None = None
    reason: str = Field(min_length=1)
    figures: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="the numbers behind it: measured, predicted, budget, calibration",
    )


class LoopDecisionPublic(LoopDecisionCreate):
    model_config = _FREE_FORM_ANSWER

    model: str | None = Field(default=None, description="`name:version`, as recorded")
    id: int
    created_at: UtcDatetime


class CalibrationPut(_Request):
    calibration: dict[str, JsonValue] = Field(
        description="the cost model's fit for the class (``edgeloop.loop.costmodel.Calibration`` "
        "as JSON); the server keeps it and does not interpret it"
    )
    observations: JsonInt = Field(ge=0, le=INT_MAX)


class CalibrationPublic(CalibrationPut):
    model_config = _FREE_FORM_ANSWER

    profile: str
    updated_at: UtcDatetime


# --------------------------------------------------------------------------- who may do what


class Role(StrEnum):
    """What an API token may do (``edgeloop.server.auth`` checks it on every route).

    One word per kind of caller, the same in the token table, the audit trail, the CLI and the
    errors the API answers."""

    OPERATOR = "operator"  # everything: register, roll out, retire, delete
    VIEWER = "viewer"  # every read (a dashboard, Grafana, someone on call), no write
    DEVICE = "device"  # one device: artifact downloads and its own records, nothing else
    ENROL = "enrol"  # one use: a device exchanges it for its identity (POST /api/v1/enrol)


class AuditEntryPublic(BaseModel):
    """One change made through the API: who (the token's name and role), what, on what."""

    model_config = _FREE_FORM_ANSWER

    id: int
    at: UtcDatetime
    actor: str = Field(
        description="the name of the token that made the change; `local:USER` for a change "
        "made on the database itself (`edgeloop tokens`, the server's first start)"
    )
    role: Role | None = Field(description="the token's role; null for a local change")
    action: str = Field(description="what was done, e.g. `rollout.create`, `model.retire`")
    target: str = Field(description="what it was done to, e.g. `rollout:3`, `model:m:1`")
    detail: dict[str, JsonValue] = Field(description="the request's particulars")


# --------------------------------------------------------------------------- trust


class EnrolTokenCreated(BaseModel):
    """What the operator hands the installer: the secret, shown once."""

    model_config = ConfigDict(extra="forbid")

    device_id: str
    token: str
    expires_in_s: int


class Revoked(BaseModel):
    """What ``devices revoke`` did."""

    model_config = ConfigDict(extra="forbid")

    device_id: str
    tokens_revoked: int
    certificates_revoked: list[str]
    crl: str | None = None


class TufMetadata(BaseModel):
    """One file of the update repository as The Update Framework writes it (its ``signed``
    part differs by role); devices check it with python-tuf, never by this shape."""

    signed: dict[str, Any]
    signatures: list[dict[str, Any]]
