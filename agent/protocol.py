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
- Nothing a peer sends can take a receiver down: :func:`decode` raises :class:`ProtocolError`
  and nothing else, whatever the bytes, and its work is bounded before parsing begins (size,
  nesting depth, length of every number). A receiver counts what it drops by the error's
  :class:`Refusal` word (:class:`Intake`) and goes on with the next message.
- Every number on the wire is finite and every integer fits in 64 signed bits, so whatever
  :func:`decode` returns encodes again and fits any database column.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import reprlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from itertools import accumulate
from typing import Annotated, Any, ClassVar, Literal, ParamSpec, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticSerializationError

__all__ = [
    "DEVICE_ID_PATTERN",
    "MAX_DEPTH",
    "MAX_MESSAGE_BYTES",
    "MAX_NUMBER_CHARS",
    "MAX_TENSOR_RANK",
    "MAX_UNKNOWN_FIELD_NAMES",
    "NAME_PATTERN",
    "ONNX_DTYPES",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "SYMBOLIC_DIM_PATTERN",
    "TARGET_PATH_PATTERN",
    "TOPIC_ROOT",
    "VERSION_PATTERN",
    "Channel",
    "ControlStats",
    "Desired",
    "DeviceProfile",
    "Energy",
    "FileRef",
    "Gate",
    "Hello",
    "Intake",
    "IntakeStats",
    "LatencyStats",
    "Message",
    "ModelManifest",
    "Phase",
    "ProtocolError",
    "Refusal",
    "Report",
    "Status",
    "TargetRef",
    "Telemetry",
    "TensorSpec",
    "decode",
    "encode",
    "parse_topic",
    "subscription",
    "topic",
    "unknown_fields",
]

PROTOCOL_VERSION = 2
"""The major version this side sends; also the ``v2`` in :data:`TOPIC_ROOT`. Version 2: a
desired state names a signed target and its sequence, never a manifest (docs/protocol.md)."""
SUPPORTED_VERSIONS: tuple[int, ...] = (PROTOCOL_VERSION,)
"""Every major version this side can receive and speak. A server that speaks several answers
each device in the version of its ``hello``; :func:`decode` refuses any other version."""
TOPIC_ROOT = f"edgeloop/v{PROTOCOL_VERSION}/devices"
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$"
"""A model name: safe as a path segment and in a ``name:version`` label (no ``/``, ``:``,
``..`` prefix or whitespace)."""
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$"
"""A model version, under the same rule as a name."""

TARGET_PATH_PATTERN = r"^models/[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}/[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$"
"""A signed target: ``models/{name}/{version}``, both by :data:`NAME_PATTERN` /
:data:`VERSION_PATTERN`, so a target path never climbs out of its folder."""

MAX_MESSAGE_BYTES = 256 * 1024
"""The largest payload :func:`decode` reads (UTF-8 bytes). The largest message this code
sends, a ``desired`` with a manifest, is a few KiB."""
MAX_DEPTH = 32
"""How deep objects and arrays may nest in a payload; messages nest five levels today."""
MAX_NUMBER_CHARS = 40
"""The longest number literal :func:`decode` reads; ``repr`` of any float needs at most 24."""
_INT_BOUND = 2**63
"""Integers on the wire fit in 64 signed bits, so any database column can store them."""
_INT_CHARS = len(str(-_INT_BOUND))
MAX_TENSOR_RANK = 32
OnnxDtype = Literal[
    "float32",
    "float16",
    "float64",
    "bfloat16",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
    "string",
    "complex64",
    "complex128",
]
ONNX_DTYPES: tuple[str, ...] = get_args(OnnxDtype)
"""The ``TensorSpec.dtype`` names: the numpy name of each ONNX tensor element type a device
can feed or read from numpy (``string`` for ONNX strings), as the agent's ``io`` gate names
onnxruntime's types. Written out because the agent never imports ``onnx``."""
SYMBOLIC_DIM_PATTERN = r"^[A-Za-z0-9_?][A-Za-z0-9_.+*/() ?-]{0,63}$"
"""A symbolic dimension: a name such as ``batch``, ``?`` for an unnamed one, or an exporter's
expression such as ``floor(s0/2) + 1``; never a quote, a control character or a long text."""
MAX_UNKNOWN_FIELD_NAMES = 256
"""Distinct names :data:`unknown_fields` keeps; others count under ``<other>``, so peers that
invent field names cannot grow it without bound."""


class Refusal(StrEnum):
    """Why a payload was refused: the word receivers count their dropped messages by."""

    TOO_LARGE = "too_large"  # over the size limit; never parsed
    NOT_JSON = "not_json"  # not UTF-8, not JSON, not an object, or NaN/Infinity
    TOO_DEEP = "too_deep"  # objects and arrays nest deeper than MAX_DEPTH
    INVALID = "invalid"  # a field is missing, of the wrong type or out of its bounds
    UNSUPPORTED_VERSION = "unsupported_version"  # a protocol version this side does not speak
    REVOKED = "revoked"  # from a device an operator revoked; ignored until it enrols again
    WRONG_TOPIC = "wrong_topic"  # a foreign topic, another channel's message, another device
    UNEXPECTED = "unexpected"  # decoding failed in a way this module did not foresee (a bug)


class ProtocolError(ValueError):
    """A payload or topic that does not follow this contract; the message says why and
    :attr:`reason` classifies it."""

    def __init__(self, message: str, reason: Refusal = Refusal.INVALID) -> None:
        super().__init__(message)
        self.reason = reason


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

    # trust: the signed metadata (The Update Framework) that names every update
    SIGNATURE = "signature"  # not signed by the keys the device trusts, or not listed there
    ROLLBACK = "rollback"  # older metadata, or a sequence below the one committed
    EXPIRED = "expired"  # the signed metadata is past its expiry (a frozen repository)
    METADATA = "metadata"  # metadata unreachable, oversized or malformed
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
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    _since_2_1: ClassVar[frozenset[str]] = frozenset()
    """Optional fields added in a minor revision: left out of the encoding while unset, so
    what this side sends still fits the frozen v2.0 schema unless it uses them (receivers
    of the same major version drop fields they do not know)."""

    @model_serializer(mode="wrap")
    def _leave_out_unset_additions(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if self._since_2_1 and isinstance(data, dict):
            for name in self._since_2_1:
                if data.get(name) is None:
                    data.pop(name, None)
        return data

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
        dropped.extend(f"{cls.__name__}.{name[:64]}" for name in sorted(unknown))
        return {key: value for key, value in data.items() if key not in unknown}


def _now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- building blocks


class DeviceProfile(_Strict):
    """What a device class can afford. The server picks models by it; the agent enforces it."""

    name: str = Field(min_length=1, max_length=64)
    cpu_threads: int = Field(ge=1, le=256, description="intra-op threads onnxruntime may use")
    # Infinity means "no budget" for measuring on a host (agent.runtime.host_profile); JSON has
    # no infinity, so decode() never lets one in from the wire.
    memory_budget_mb: float = Field(
        gt=0, allow_inf_nan=True, description="peak RSS the model process may reach"
    )
    latency_budget_ms: float = Field(
        gt=0, allow_inf_nan=True, description="p95 latency of one inference, batch 1"
    )
    execution_providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"], min_length=1
    )
    model_size_budget_kb: float | None = Field(
        default=None, gt=0, description="largest model file the device may store/download"
    )
    min_accuracy: float | None = Field(default=None, ge=0, le=1)
    arch: str | None = Field(default=None, description="e.g. aarch64, x86_64")
    deadline_ms: float | None = Field(
        default=None,
        gt=0,
        description="(2.1) a control loop's per-call deadline: in-process calls slower than "
        "this count as deadline misses",
    )

    _since_2_1 = frozenset({"deadline_ms"})


class FileRef(_Strict):
    """One content-addressed file the device must fetch over HTTP and verify."""

    url: str = Field(min_length=1)
    sha256: str = Field(pattern=SHA256_PATTERN)
    size: int = Field(ge=0)


Dimension = Annotated[int, Field(ge=0)] | Annotated[str, Field(pattern=SYMBOLIC_DIM_PATTERN)]


class TensorSpec(_Strict):
    name: str = Field(min_length=1, max_length=256)
    dtype: OnnxDtype = Field(description="numpy dtype name, e.g. float32 (see ONNX_DTYPES)")
    shape: list[Dimension] = Field(
        max_length=MAX_TENSOR_RANK,
        description="dimensions: a size, or a string for a symbolic dimension",
    )


class ModelManifest(_Strict):
    """A model version as a device sees it: the files, the I/O contract and how to check it."""

    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=VERSION_PATTERN)
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
    protocol: Literal[2] = 2
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
    application: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="(2.1) the application the device runs, from its config; the server "
        "offers it only that application's models (unset: `default`, or an operator's "
        "assignment by tag)",
    )

    _since_2_1 = frozenset({"application"})


class Status(_Message):
    type: Literal["status"] = "status"
    online: bool
    phase: Phase
    revision: int | None = Field(default=None, ge=0)
    detail: str = ""


class TargetRef(_Strict):
    """Names a signed update; everything else about it comes from the signed metadata.

    The device looks ``path`` up in the repository's signed targets metadata (The Update
    Framework), takes the manifest (files, hashes, I/O, golden reference) from the target's
    signed custom data, and refuses it unless the signed sequence is ``sequence`` and not
    below the one it committed last. So whoever can publish on the broker can at most ask for
    something the release keys signed, and never for something older than what runs.
    """

    path: str = Field(pattern=TARGET_PATH_PATTERN, description="`models/{name}/{version}`")
    sequence: int = Field(ge=1, lt=_INT_BOUND, description="the release's signed sequence")


class Desired(_Message):
    """The declarative state the server wants on a device. ``target=None`` means run nothing.

    It names a signed target and its sequence only: the manifest is never taken from MQTT.
    """

    type: Literal["desired"] = "desired"
    revision: int = Field(ge=0, description="grows with every change for this device")
    target: TargetRef | None
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


class ControlStats(_Strict):
    """In-process calls of the device's model in one telemetry interval, timed at the call
    site (:mod:`edgeloop.agent.local`): what a control loop experiences."""

    calls: int = Field(ge=0)
    errors: int = Field(default=0, ge=0)
    latency: LatencyStats | None = None
    deadline_ms: float | None = Field(default=None, gt=0)
    deadline_misses: int = Field(default=0, ge=0, description="calls slower than the deadline")
    processes: int = Field(default=1, ge=0, description="application processes reporting")


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
    control: ControlStats | None = Field(
        default=None,
        description="(2.1) in-process calls (a control loop) in this interval, as the "
        "application's own process timed them",
    )

    _since_2_1 = frozenset({"control"})


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


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SHOWN_PROBLEMS = 5


def decode(
    payload: bytes | str, topic_name: str | None = None, *, max_bytes: int = MAX_MESSAGE_BYTES
) -> Hello | Status | Desired | Report | Telemetry:
    """Parse and validate one payload.

    Fields this side does not know are dropped at every level, counted in
    :data:`unknown_fields` and logged at DEBUG (a newer peer of the same major version added
    them). When ``topic_name`` is given, the message must be of that topic's channel and name
    the same device as the topic, so a device cannot speak for another one.

    The work is bounded before any parsing: a payload over ``max_bytes`` is refused unread,
    nesting is measured without recursion, and number literals are checked for length before
    they are converted. That, and turning any failure this module did not foresee into a
    :class:`ProtocolError`, is what lets a receiver call this on whatever arrives: a
    ``RecursionError`` or ``ValueError`` escaping here would end the MQTT client's network
    thread while the process looks alive.

    Raises:
        ProtocolError: and nothing else. Its :attr:`~ProtocolError.reason` is
            ``too_large`` (over ``max_bytes``), ``not_json`` (not UTF-8, not a JSON object,
            or ``NaN``/``Infinity``), ``too_deep`` (nested deeper than :data:`MAX_DEPTH`),
            ``unsupported_version`` (``protocol`` outside :data:`SUPPORTED_VERSIONS`),
            ``invalid`` (unknown type, a field missing or out of bounds, a number that is
            not finite or does not fit in 64 bits), ``wrong_topic`` (the message does not
            match its topic) or ``unexpected`` (a bug here; the message names the exception).
            The message names the problem.
    """
    try:
        return _decode(payload, topic_name, max_bytes)
    except ProtocolError:
        raise
    except Exception as exc:  # the contract: a receiver only ever sees ProtocolError
        log.warning("decoding a payload failed unexpectedly", exc_info=True)
        raise ProtocolError(
            f"payload could not be decoded: {type(exc).__name__}: {str(exc)[:200]} "
            "(a fault in the receiver's protocol module; report it with the payload)",
            Refusal.UNEXPECTED,
        ) from exc


def _decode(
    payload: bytes | str, topic_name: str | None, max_bytes: int
) -> Hello | Status | Desired | Report | Telemetry:
    text = _bounded_text(payload, max_bytes)
    try:
        raw = json.loads(
            text, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant
        )
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"payload is not JSON: {exc}", Refusal.NOT_JSON) from None
    if not isinstance(raw, dict):
        raise ProtocolError(
            f"payload must be a JSON object, got {type(raw).__name__}", Refusal.NOT_JSON
        )
    version = raw.get("protocol")
    if isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
        spoken = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
        raise ProtocolError(
            f"protocol version {reprlib.repr(version)} is not supported "
            f"(this side speaks {spoken})",
            Refusal.UNSUPPORTED_VERSION,
        )
    dropped: list[str] = []
    try:
        message = _MESSAGE.validate_python(raw, context={_LENIENT: dropped})
    except ValidationError as exc:
        raise ProtocolError(_invalid(raw.get("type"), exc), Refusal.INVALID) from None
    if topic_name is not None:
        device_id, channel = parse_topic(topic_name)
        if not isinstance(message, _CHANNEL_TYPE[channel]):
            raise ProtocolError(
                f"{message.type!r} message on the {channel.value!r} topic of {device_id!r}",
                Refusal.WRONG_TOPIC,
            )
        if message.device_id != device_id:
            raise ProtocolError(
                f"message names device {message.device_id!r} but came on the topic of "
                f"{device_id!r}",
                Refusal.WRONG_TOPIC,
            )
    if _SURROGATE_ESCAPE.search(text):
        _check_encodable(message)
    if dropped:
        _count_unknown(dropped)
        log.debug("ignored unknown fields from %s: %s", message.device_id, ", ".join(dropped[:20]))
    return message


def _bounded_text(payload: bytes | str, max_bytes: int) -> str:
    """The payload as text, refused if too large, not UTF-8, or nested deeper than
    :data:`MAX_DEPTH`: checks that cost one pass and never recurse."""
    if len(payload) > max_bytes:
        raise ProtocolError(
            f"payload of {len(payload)} bytes is over the limit of {max_bytes} bytes",
            Refusal.TOO_LARGE,
        )
    if isinstance(payload, str):
        text = payload
        if len(text.encode("utf-8", "surrogatepass")) > max_bytes:
            raise ProtocolError(
                f"payload is over the limit of {max_bytes} bytes as UTF-8", Refusal.TOO_LARGE
            )
    else:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(
                f"payload is not JSON: it is not UTF-8 text ({exc})", Refusal.NOT_JSON
            ) from None
    # The parser recurses once per level; measure the deepest level first, strings aside.
    if text.count("[") + text.count("{") > MAX_DEPTH:
        skeleton = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
        depth = max(accumulate(map(_BRACKET_STEP.__getitem__, skeleton)), default=0)
        if depth > MAX_DEPTH:
            raise ProtocolError(
                f"payload nests objects and arrays {depth} levels deep; at most {MAX_DEPTH} "
                "are allowed",
                Refusal.TOO_DEEP,
            )
    return text


def _json_int(literal: str) -> int:
    # Checked as text first: int() of a long digit string is slow, and refused past 4300.
    value = int(literal) if len(literal) <= _INT_CHARS else None
    if value is None or not -_INT_BOUND <= value < _INT_BOUND:
        raise ProtocolError(
            f"an integer of {len(literal.lstrip('-'))} digits is out of range: integers must "
            f"fit in 64 signed bits (below {_INT_BOUND} in magnitude)",
            Refusal.INVALID,
        )
    return value


def _json_float(literal: str) -> float:
    if len(literal) > MAX_NUMBER_CHARS:
        raise ProtocolError(
            f"a number written with {len(literal)} characters is over the limit of "
            f"{MAX_NUMBER_CHARS}",
            Refusal.INVALID,
        )
    value = float(literal)
    if not math.isfinite(value):
        raise ProtocolError(
            f"number {literal} is out of range: numbers must be finite", Refusal.INVALID
        )
    return value


def _json_constant(name: str) -> float:
    raise ProtocolError(f"payload is not JSON: {name} is not a JSON number", Refusal.NOT_JSON)


def _invalid(kind: object, exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    problems = [
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
        for err in errors[:_SHOWN_PROBLEMS]
    ]
    if len(errors) > _SHOWN_PROBLEMS:
        problems.append(f"and {len(errors) - _SHOWN_PROBLEMS} more problems")
    shown = reprlib.repr(kind) if isinstance(kind, str) else "untyped"
    return f"invalid {shown} message: {'; '.join(problems)}"


def _check_encodable(message: BaseModel) -> None:
    """A ``\\ud800`` escape alone is valid JSON but no text: refuse it here rather than have
    the receiver fail to store or forward it."""
    try:
        message.model_dump_json()
    except PydanticSerializationError:
        raise ProtocolError(
            "a text field is not valid Unicode (an unpaired surrogate escape such as \\ud800)",
            Refusal.INVALID,
        ) from None


def _count_unknown(dropped: list[str]) -> None:
    with _unknown_fields_lock:
        for name in dropped:
            if name not in unknown_fields and len(unknown_fields) >= MAX_UNKNOWN_FIELD_NAMES:
                name = "<other>"
            unknown_fields[name] += 1


# --------------------------------------------------------------------------- receivers

_P = ParamSpec("_P")

LOGGED_DROPS = 20
"""Dropped messages of one reason logged one by one before the log is rate-limited."""
DROP_LOG_INTERVAL_S = 60.0
"""After that, at most one line per reason this often, with the count of those not logged."""


class IntakeStats(BaseModel):
    """What a receiver has done with the messages that reached it; part of its health."""

    messages_handled: int = Field(default=0, ge=0, description="messages decoded and acted on")
    last_message_at: datetime | None = Field(
        default=None, description="when the last message was acted on; null before the first"
    )
    dropped: dict[str, int] = Field(
        default_factory=dict,
        description="messages dropped, by reason: a Refusal word, or the receiver's own "
        "(e.g. store_failed)",
    )


class Intake:
    """One receiver's account of what reaches it over MQTT, and the guard on its callbacks.

    Both sides use it, so a bad payload is refused, logged and counted the same way on a
    device and on the server. A message is either handled (counted, with its time) or dropped
    (counted by reason): never retried, because the same bytes would fail the same way, and a
    QoS 1 message the callback does not return from is redelivered on every reconnect.
    """

    def __init__(self, logger: logging.Logger, *, failure_reason: str = "handler_failed") -> None:
        """``failure_reason``: the word a drop is counted under when the handler raises."""
        self._log = logger
        self._failure_reason = failure_reason
        self._lock = threading.Lock()
        self._handled = 0
        self._last_message_at: datetime | None = None
        self._dropped: Counter[str] = Counter()
        self._last_logged: dict[str, float] = {}
        self._logged_count: dict[str, int] = {}

    def receive(
        self,
        topic_name: str,
        payload: bytes,
        handle: Callable[[Hello | Status | Desired | Report | Telemetry], None],
        *,
        max_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        """Decode one payload and hand it to ``handle``; drop it, with its reason, if either
        fails. Returns normally in every case."""
        try:
            message = decode(payload, topic_name, max_bytes=max_bytes)
        except ProtocolError as exc:
            self.drop(exc.reason, topic_name, str(exc))
            return
        try:
            handle(message)
        except ProtocolError as exc:
            self.drop(exc.reason, topic_name, str(exc))
            return
        except Exception:
            self._log.exception("failed to handle %s from %s", message.type, message.device_id)
            self.drop(self._failure_reason, topic_name, "the handler raised (logged above)")
            return
        with self._lock:
            self._handled += 1
            self._last_message_at = datetime.now(UTC)

    def drop(self, reason: str, topic_name: str, detail: str) -> None:
        """Count a dropped message; log it, unless drops of this reason already flood the log.

        A peer that sends garbage without pause must not fill the disk through the log: per
        reason, the first :data:`LOGGED_DROPS` are logged one by one, then one line per
        :data:`DROP_LOG_INTERVAL_S` says how many more went (the counts stay exact)."""
        reason = str(reason)
        now = time.monotonic()
        with self._lock:
            self._dropped[reason] += 1
            count = self._dropped[reason]
            last = self._last_logged.get(reason)
            due = count <= LOGGED_DROPS or last is None or now - last >= DROP_LOG_INTERVAL_S
            if due:
                self._last_logged[reason] = now
                unlogged = count - self._logged_count.get(reason, 0) - 1
                self._logged_count[reason] = count
        if not due:
            return
        since = f" ({unlogged} more dropped for this reason since the last line)" * bool(unlogged)
        self._log.warning(
            "dropped message on %s (%s): %s%s", topic_name, reason, detail[:500], since
        )

    def stats(self) -> IntakeStats:
        with self._lock:
            return IntakeStats(
                messages_handled=self._handled,
                last_message_at=self._last_message_at,
                dropped=dict(self._dropped),
            )

    def guard(self, callback: Callable[_P, None]) -> Callable[_P, None]:
        """``callback`` made safe for an MQTT client: whatever it raises is logged, never
        passed on. paho-mqtt re-raises a callback's exception in its network thread, which
        ends that thread and, for a message, skips its acknowledgement."""

        @functools.wraps(callback)
        def guarded(*args: _P.args, **kwargs: _P.kwargs) -> None:
            try:
                callback(*args, **kwargs)
            except Exception:
                self._log.exception("MQTT callback %s failed; the connection goes on", name)

        name = getattr(callback, "__name__", repr(callback))
        return guarded
