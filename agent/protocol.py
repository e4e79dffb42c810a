"""The MQTT/HTTP wire contract between devices and the control plane.

This module is the single source of truth for what crosses the wire. The server imports it;
it never imports the server. Everything here is pure: topic names, typed messages and their
validation, no network and no disk. ``docs/protocol.md`` documents it with an example of
every message and must change together with it.

Invariants:
- Every message carries ``protocol`` (the major version, an integer) and a ``type`` tag; a
  receiver refuses a message of a version outside :data:`SUPPORTED_VERSIONS` instead of
  guessing, and names the versions it speaks.
- ``desired`` messages are published retained at QoS 1, so a device that connects late (or
  reconnects) gets its latest desired state from the broker alone.
- ``status`` is retained too and doubles as the MQTT last-will, so ``online`` is always the
  broker's view of the device.
- Within a major version, a receiver ignores fields it does not know, at every level (the
  message and the objects nested in it): :func:`decode` drops them, counts them in
  :data:`unknown_fields` and logs them at DEBUG. So a newer peer may add an optional field
  without breaking the deployed fleet. A field that an older peer must understand to act
  correctly is a new major version; the server then speaks to each device in the version its
  ``hello`` announced.
- Only :func:`decode` is lenient. The models themselves forbid unknown fields, so building one
  in code or loading one from a local file (``DeviceProfile`` in the agent's config and the
  profile catalogue) still turns a typo into an error. One model class serves both: the
  leniency is a validation context that :func:`decode` passes, not a second set of classes.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)

__all__ = [
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "TOPIC_ROOT",
    "Channel",
    "Desired",
    "DeviceProfile",
    "Energy",
    "FileRef",
    "Gate",
    "Hello",
    "LatencyStats",
    "Message",
    "ModelManifest",
    "Phase",
    "ProtocolError",
    "Report",
    "Status",
    "Telemetry",
    "TensorSpec",
    "decode",
    "encode",
    "parse_topic",
    "subscription",
    "topic",
    "unknown_fields",
]

PROTOCOL_VERSION = 1
"""The major version this side sends; also the ``v1`` in :data:`TOPIC_ROOT`."""
SUPPORTED_VERSIONS: tuple[int, ...] = (PROTOCOL_VERSION,)
"""Every major version this side can receive and speak. A server that speaks several answers
each device in the version of its ``hello``; :func:`decode` refuses any other version."""
TOPIC_ROOT = f"edgeloop/v{PROTOCOL_VERSION}/devices"
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class ProtocolError(ValueError):
    """A payload or topic that does not follow this contract; the message says why."""


log = logging.getLogger("edgeloop.agent.protocol")

unknown_fields: Counter[str] = Counter()
"""Fields :func:`decode` dropped because this side does not know them, keyed by
``Model.field`` (e.g. ``Hello.gpu``, ``DeviceProfile.npu_tops``). A count that keeps growing
means a peer speaks a newer minor revision of the protocol than this side."""
_unknown_fields_lock = threading.Lock()
_LENIENT = "edgeloop.protocol.unknown_fields"


class Channel(StrEnum):
    """The last segment of a device topic: ``edgeloop/v1/devices/{id}/{channel}``."""

    HELLO = "hello"  # device -> server: identity and profile, on every connect
    STATUS = "status"  # device -> server, retained; also the last-will (online=false)
    DESIRED = "desired"  # server -> device, retained, QoS 1: what the device should run
    REPORT = "report"  # device -> server: outcome of applying a desired state
    TELEMETRY = "telemetry"  # device -> server: periodic runtime figures


class Phase(StrEnum):
    """Where a device is in applying its desired state.

    The agent's update state machine (``agent/states.py``) uses these words as its states;
    the state file, MQTT status and reports, the server's database, logs and docs use the
    same ones. ``offline`` is only ever set by the broker (the last-will), never by the agent.
    """

    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    VALIDATING = "validating"
    ACTIVATING = "activating"
    PROBATION = "probation"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    OFFLINE = "offline"


class Gate(StrEnum):
    """What refused a model: a validation gate, a probation check, or a step of the update.

    ``report.gate`` and the agent's state file carry these words; ``docs/protocol.md`` has a
    table of them. A new member is a new value an older server cannot parse, so it belongs to
    a new major version (see the evolution policy there).
    """

    # before and while downloading
    SIZE = "size"  # the artifact is over the profile's model_size_budget_kb; never fetched
    DISK = "disk"  # not enough free space for the download
    DOWNLOAD = "download"  # the files could not be fetched, retries included
    VERIFY = "verify"  # size or SHA-256 of a file differs from the manifest
    # validation, in the order the gates run
    LOADS = "loads"  # onnxruntime cannot open the file
    OPSET = "opset"  # its opset/IR version is one this onnxruntime does not run
    IO = "io"  # input/output names, dtypes or fixed dimensions differ from the manifest
    GOLDEN = "golden"  # golden inputs do not reproduce the golden outputs within tolerance
    FINITE = "finite"  # NaN or Inf on the golden inputs
    LATENCY = "latency"  # p95 over the latency budget (validation, and live in probation)
    MEMORY = "memory"  # peak RSS over the memory budget
    # activation and probation
    ACTIVATE = "activate"  # the validated model could not be loaded to serve
    ERRORS = "errors"  # live or probe inferences failed in probation
    AGREEMENT = "agreement"  # disagrees with the previous model on live inputs
    OPERATOR = "operator"  # an operator rolled it back
    RESTARTS = "restarts"  # the agent kept restarting during the update; abandoned


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _drop_unknown_fields(cls, data: Any, info: ValidationInfo) -> Any:
        """Under :func:`decode`'s context, drop (and note) the fields this model lacks.

        Without that context nothing is dropped and ``extra="forbid"`` refuses them, which is
        what code and local files want.
        """
        dropped = info.context.get(_LENIENT) if isinstance(info.context, dict) else None
        if dropped is None or not isinstance(data, dict):
            return data
        unknown = data.keys() - cls.model_fields.keys()
        if not unknown:
            return data
        dropped.extend(f"{cls.__name__}.{name}" for name in sorted(unknown))
        return {key: value for key, value in data.items() if key not in unknown}


def _now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- building blocks


class DeviceProfile(_Strict):
    """What a device class can afford. The server picks models by it; the agent enforces it."""

    name: str = Field(min_length=1, max_length=64)
    cpu_threads: int = Field(ge=1, le=256, description="intra-op threads onnxruntime may use")
    memory_budget_mb: float = Field(gt=0, description="peak RSS the model process may reach")
    latency_budget_ms: float = Field(gt=0, description="p95 latency of one inference, batch 1")
    execution_providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"], min_length=1
    )
    model_size_budget_kb: float | None = Field(
        default=None, gt=0, description="largest model file the device may store/download"
    )
    min_accuracy: float | None = Field(default=None, ge=0, le=1)
    arch: str | None = Field(default=None, description="e.g. aarch64, x86_64")


class FileRef(_Strict):
    """One content-addressed file the device must fetch over HTTP and verify."""

    url: str = Field(min_length=1)
    sha256: str = Field(pattern=SHA256_PATTERN)
    size: int = Field(ge=0)


class TensorSpec(_Strict):
    name: str
    dtype: str = Field(description="numpy dtype name, e.g. float32")
    shape: list[int | str] = Field(description="dimensions; a string is a symbolic dimension")


class ModelManifest(_Strict):
    """A model version as a device sees it: the files, the I/O contract and how to check it."""

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    artifact: FileRef
    golden: FileRef = Field(description="npz with arrays `inputs` and `outputs` for the gate")
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    golden_atol: float = Field(default=1e-3, ge=0)
    golden_rtol: float = Field(default=1e-3, ge=0)
    accuracy: float | None = None
    size_bytes: int | None = None
    agreement_metric: Literal["argmax", "cosine"] = Field(
        default="argmax",
        description="how probation compares the new model with the previous one on live inputs: "
        "`argmax` (same top class) or `cosine` (embeddings, regression)",
    )
    min_agreement: float = Field(
        default=0.9, ge=0, le=1, description="probation rolls back below this agreement"
    )


class LatencyStats(_Strict):
    n: int = Field(ge=1)
    p50_ms: float = Field(ge=0)
    p95_ms: float = Field(ge=0)
    p99_ms: float = Field(ge=0)
    mean_ms: float = Field(ge=0)


class Energy(_Strict):
    """Energy per inference. ``estimated`` is true unless a real power sensor was read."""

    joules_per_inference: float = Field(ge=0)
    avg_power_w: float = Field(ge=0)
    source: str = Field(description="sensor path/name, or the estimation method")
    estimated: bool


# --------------------------------------------------------------------------- messages


class _Message(_Strict):
    protocol: Literal[1] = 1
    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    sent_at: datetime = Field(default_factory=_now)


class Hello(_Message):
    type: Literal["hello"] = "hello"
    agent_version: str
    profile: DeviceProfile
    platform: dict[str, str | int | float] = Field(default_factory=dict)
    available_providers: list[str] = Field(default_factory=list)
    current_model: str | None = Field(default=None, description="`name:version` running now")
    tags: list[str] = Field(
        default_factory=list,
        description="the device's own labels, e.g. site:berlin; rollouts target them",
    )


class Status(_Message):
    type: Literal["status"] = "status"
    online: bool
    phase: Phase
    revision: int | None = Field(default=None, ge=0)
    detail: str = ""


class Desired(_Message):
    """The declarative state the server wants on a device. ``model=None`` means run nothing."""

    type: Literal["desired"] = "desired"
    revision: int = Field(ge=0, description="grows with every change for this device")
    model: ModelManifest | None
    profile: DeviceProfile


class Report(_Message):
    """Outcome of applying one desired revision. ``ok`` only if every gate passed."""

    type: Literal["report"] = "report"
    revision: int = Field(ge=0)
    model: str = Field(description="`name:version`")
    artifact_sha256: str = Field(pattern=SHA256_PATTERN)
    ok: bool
    phase: Phase
    verified: bool = Field(description="artifact and golden SHA-256 matched")
    golden_max_abs_err: float | None = None
    latency: LatencyStats | None = None
    peak_rss_mb: float | None = Field(default=None, ge=0)
    energy: Energy | None = None
    within_budget: bool | None = None
    budget_detail: dict[str, bool] = Field(default_factory=dict)
    error: str | None = None
    gate: Gate | None = Field(
        default=None,
        description="the validation gate or probation check that refused the model, if any",
    )
    running: str | None = Field(
        default=None, description="`name:version` serving after this update (None: no model)"
    )
    providers: list[str] = Field(default_factory=list)
    agreement: float | None = Field(default=None, description="probation shadow agreement")


class Telemetry(_Message):
    type: Literal["telemetry"] = "telemetry"
    model: str | None = None
    latency: LatencyStats | None = None
    inferences_per_s: float | None = Field(default=None, ge=0)
    rss_mb: float = Field(ge=0)
    cpu_percent: float | None = Field(default=None, ge=0)
    temperature_c: float | None = None
    energy: Energy | None = None
    seq: int | None = Field(
        default=None, ge=0, description="per-device counter; gaps mean dropped messages"
    )
    latency_source: Literal["live", "validation"] | None = Field(
        default=None,
        description="`live`: requests served by the local endpoint in this interval; "
        "`validation`: no traffic, the figures of the last validation run",
    )
    buffered: int | None = Field(default=None, ge=0, description="messages waiting offline")
    dropped: int | None = Field(
        default=None, ge=0, description="messages dropped from the full offline buffer so far"
    )


Message = Annotated[Hello | Status | Desired | Report | Telemetry, Field(discriminator="type")]
_MESSAGE = TypeAdapter(Message)
_CHANNEL_TYPE = {
    Channel.HELLO: Hello,
    Channel.STATUS: Status,
    Channel.DESIRED: Desired,
    Channel.REPORT: Report,
    Channel.TELEMETRY: Telemetry,
}


# --------------------------------------------------------------------------- topics and codec


def topic(device_id: str, channel: Channel) -> str:
    return f"{TOPIC_ROOT}/{device_id}/{channel}"


def subscription(channel: Channel) -> str:
    """MQTT filter matching ``channel`` for every device."""
    return f"{TOPIC_ROOT}/+/{channel}"


def parse_topic(name: str) -> tuple[str, Channel]:
    """Split a device topic into ``(device_id, channel)``.

    Raises:
        ProtocolError: the topic is outside ``TOPIC_ROOT`` or names an unknown channel.
    """
    prefix = TOPIC_ROOT + "/"
    parts = name[len(prefix) :].split("/") if name.startswith(prefix) else []
    if len(parts) != 2 or not parts[0]:
        raise ProtocolError(f"topic {name!r} is not {TOPIC_ROOT}/<device_id>/<channel>")
    try:
        return parts[0], Channel(parts[1])
    except ValueError:
        known = ", ".join(c.value for c in Channel)
        raise ProtocolError(
            f"topic {name!r}: unknown channel {parts[1]!r} (known: {known})"
        ) from None


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json(exclude_none=False).encode()


def decode(
    payload: bytes | str, topic_name: str | None = None
) -> Hello | Status | Desired | Report | Telemetry:
    """Parse and validate one payload.

    Fields this side does not know are dropped at every level, counted in
    :data:`unknown_fields` and logged at DEBUG (a newer peer of the same major version added
    them). When ``topic_name`` is given, the message must be of that topic's channel and name
    the same device as the topic, so a device cannot speak for another one.

    Raises:
        ProtocolError: not JSON, a protocol version outside :data:`SUPPORTED_VERSIONS`,
            unknown type, invalid field, or a message that does not match its topic. The
            message names the problem.
    """
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"payload is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ProtocolError(f"payload must be a JSON object, got {type(raw).__name__}")
    version = raw.get("protocol")
    if isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
        spoken = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
        raise ProtocolError(
            f"protocol version {version!r} is not supported (this side speaks {spoken})"
        )
    dropped: list[str] = []
    try:
        message = _MESSAGE.validate_python(raw, context={_LENIENT: dropped})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ProtocolError(f"invalid {raw.get('type', 'untyped')!r} message: {problems}") from None
    if topic_name is not None:
        device_id, channel = parse_topic(topic_name)
        if not isinstance(message, _CHANNEL_TYPE[channel]):
            raise ProtocolError(
                f"{message.type!r} message on the {channel.value!r} topic of {device_id!r}"
            )
        if message.device_id != device_id:
            raise ProtocolError(
                f"message names device {message.device_id!r} but came on the topic of {device_id!r}"
            )
    if dropped:
        with _unknown_fields_lock:
            unknown_fields.update(dropped)
        log.debug("ignored unknown fields from %s: %s", message.device_id, ", ".join(dropped))
    return message
