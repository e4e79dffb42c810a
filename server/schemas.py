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
- Times are UTC with their zone, whatever the database handed back.
- Every list that can grow is a :class:`Page`.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgeloop.agent.protocol import (
    SHA256_PATTERN,
    DeviceProfile,
    Phase,
    Report,
    Telemetry,
    TensorSpec,
)
from edgeloop.server.times import as_utc

__all__ = [
    "INT_MAX",
    "ArtifactPublic",
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
    "ReportRecord",
    "Retention",
    "Retired",
    "RolloutCreate",
    "RolloutDeviceStatus",
    "RolloutState",
    "RolloutStatus",
    "RolloutSummary",
    "Step",
    "Target",
    "TelemetrySample",
    "UtcDatetime",
    "WaveStatus",
]

T = TypeVar("T")

INT_MAX = 2**31 - 1
"""The largest number an integer column holds on every database we run (PostgreSQL's
``integer``): larger ids, offsets and counts in a request are refused with a 422 rather than
overflowing in the database."""


UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]
"""A time with its zone, normalized to UTC (a naive one is taken as UTC)."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Page(BaseModel, Generic[T]):
    """One page of a longer list: ``items`` from ``offset``, ``total`` counts them all."""

    total: int = Field(ge=0, description="items matching the query, on every page")
    limit: int = Field(ge=1)
    offset: int = Field(ge=0)
    items: list[T]


class Problem(BaseModel):
    """Every error answer (4xx): what went wrong and what to do, in one sentence."""

    detail: str
    errors: list[dict[str, JsonValue]] | None = Field(
        default=None, description="a request that failed validation: each failing part"
    )


class Health(BaseModel):
    ok: bool
    mqtt_connected: bool | None = Field(
        description="whether the MQTT bridge is connected; null when the server runs without it"
    )


class ArtifactPublic(BaseModel):
    sha256: str = Field(pattern=SHA256_PATTERN)
    size: int = Field(ge=0)
    url: str = Field(description="where devices download it (Range and ETag supported)")


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


class ModelFigures(BaseModel):
    """What the compressor measured on its own host for one model version (never on a device).

    Accepts every field of the compressor's ``ModelReport``; only ``accuracy`` is required,
    because the planner ranks versions by it.
    """

    model_config = ConfigDict(extra="forbid")

    accuracy: float = Field(ge=0, le=1, description="task figure the planner ranks by")

    @model_validator(mode="before")
    @classmethod
    def _stored(cls, data: Any, info: ValidationInfo) -> Any:
        """Figures read back from the database drop keys this version does not know: versions
        registered before the card was typed may carry them, and a listing must not fail on
        them. A registration (no context) still refuses unknown keys, so typos are errors."""
        if info.context == STORED and isinstance(data, dict):
            return {k: v for k, v in data.items() if k in cls.model_fields}
        return data

    metric_name: str = Field(default="accuracy", description="what `accuracy` measures")
    size_bytes: int | None = Field(default=None, gt=0, description="the .onnx file")
    variant: str | None = Field(default=None, description="e.g. fp32, int8")
    recipe: list[str] = Field(default_factory=list, description="passes that made it, in order")
    compression_ratio: float | None = Field(default=None, gt=0, description="baseline / size")
    host_latency_p50_ms: float | None = Field(default=None, ge=0, description="batch 1")
    host_latency_p95_ms: float | None = Field(
        default=None, ge=0, description="batch 1; the planner compares it with the budget"
    )
    host_threads: int | None = Field(default=None, ge=1, description="threads when timed")
    peak_rss_mb: float | None = Field(default=None, ge=0, description="model process, host")
    baseline_accuracy: float | None = Field(default=None, ge=0, le=1)
    accuracy_drop: float | None = Field(default=None, description="baseline - accuracy")
    golden_atol: float | None = Field(default=None, ge=0, description="as the compressor chose")
    metrics: dict[str, float] = Field(default_factory=dict, description="every task figure")
    output_max_abs_err: float | None = Field(default=None, description="vs fp32, eval set")
    weight_error: dict[str, float] = Field(default_factory=dict, description="weight MSE/max")
    agreement_metric: Literal["argmax", "cosine"] = Field(
        default="argmax",
        description="how a device's probation compares this model with its predecessor",
    )


class ModelCard(_Request):
    """What a publisher says about a model version: its I/O contract, how a device checks the
    golden outputs, and the figures measured when it was built."""

    name: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    golden_atol: float = Field(default=1e-3, ge=0)
    golden_rtol: float = Field(default=1e-3, ge=0)
    report: ModelFigures


class ModelCreate(ModelCard):
    """The body of ``POST /api/v1/models``: a card plus the files, uploaded first by hash."""

    artifact_sha256: str = Field(pattern=SHA256_PATTERN)
    golden_sha256: str = Field(pattern=SHA256_PATTERN)


class ModelPublic(ModelCreate):
    model_config = ConfigDict(extra="ignore")

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


class Retention(_Request):
    keep: int = Field(ge=1, description="live versions to keep per model name, newest first")
    name: str | None = Field(default=None, description="only this model name")


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

    profile: str | None = Field(default=None, description="device profile name")
    tags: list[str] = Field(default_factory=list, description="devices carrying all of these")
    devices: list[str] | None = Field(default=None, description="explicit device ids")


class Criteria(_Request):
    """What a wave must achieve before the next one starts."""

    wave_timeout_s: float = Field(default=900, gt=0, description="a device silent this long fails")
    max_failure_rate: float = Field(
        default=0.0, ge=0, le=1, description="failed+timed out share of a wave that halts it"
    )
    require_within_budget: bool = Field(
        default=True, description="a report over the profile's latency/memory budget is a failure"
    )
    max_power_w: float | None = Field(
        default=None, gt=0, description="a report drawing more average power is a failure"
    )


class RolloutCreate(_Request):
    model: str = Field(description="`name:version` of a registered model")
    target: Target = Field(default_factory=Target)
    waves: list[str] = Field(
        default_factory=lambda: ["10%", "50%", "100%"],
        min_length=1,
        description='cumulative shares ("10%") or device counts ("3") per wave',
    )
    criteria: Criteria = Field(default_factory=Criteria)

    @field_validator("waves")
    @classmethod
    def _waves_parse(cls, waves: list[str]) -> list[str]:
        for wave in waves:
            text = wave.strip()
            number = text[:-1] if text.endswith("%") else text
            try:
                value = float(number)
            except ValueError:
                raise ValueError(
                    f"wave {wave!r} is neither a share like '10%' nor a count"
                ) from None
            if value <= 0 or (text.endswith("%") and value > 100):
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
    round: int = Field(ge=0, le=INT_MAX)
    profile: str = Field(min_length=1, max_length=64, description="the device class, or `*`")
    action: LoopAction
    model: str | None = None
    reason: str = Field(min_length=1)
    figures: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="the numbers behind it: measured, predicted, budget, calibration",
    )


class LoopDecisionPublic(LoopDecisionCreate):
    model_config = ConfigDict(extra="ignore")

    id: int
    created_at: UtcDatetime


class CalibrationPut(_Request):
    calibration: dict[str, JsonValue] = Field(
        description="the cost model's fit for the class (``edgeloop.loop.costmodel.Calibration`` "
        "as JSON); the server keeps it and does not interpret it"
    )
    observations: int = Field(ge=0, le=INT_MAX)


class CalibrationPublic(CalibrationPut):
    model_config = ConfigDict(extra="ignore")

    profile: str
    updated_at: UtcDatetime
