"""Whatever arrives on the wire, ``decode()`` answers a message or a ``ProtocolError``.

A receiver calls ``decode()`` inside paho's network thread, so any other exception (a
``RecursionError``, a ``ValueError`` from an over-long integer) would end that thread and
leave the process deaf while it looks connected. These properties throw arbitrary bytes,
arbitrary JSON and mutated valid messages at it; the poison payloads below were each found to
do that before the limits existed.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeloop.agent.protocol import (
    DEVICE_ID_PATTERN,
    MAX_DEPTH,
    MAX_MESSAGE_BYTES,
    NAME_PATTERN,
    ONNX_DTYPES,
    SHA256_PATTERN,
    SYMBOLIC_DIM_PATTERN,
    TARGET_PATH_PATTERN,
    VERSION_PATTERN,
    Channel,
    Desired,
    DeviceProfile,
    Energy,
    FileRef,
    Gate,
    Hello,
    LatencyStats,
    ModelManifest,
    Phase,
    ProtocolError,
    Refusal,
    Report,
    Status,
    TargetRef,
    Telemetry,
    TensorSpec,
    decode,
    encode,
    topic,
)
from edgeloop.agent.releases import RELEASE_KEY, SignedRelease, release_custom

FUZZ = settings(
    # A longer campaign: EDGELOOP_FUZZ_EXAMPLES=20000.
    max_examples=int(os.environ.get("EDGELOOP_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
COUNT = st.integers(min_value=0, max_value=2**63 - 1)

# --------------------------------------------------------------------------- valid messages

finite = st.floats(allow_nan=False, allow_infinity=False)
non_negative = st.floats(min_value=0, max_value=1e15, allow_nan=False)
positive = st.floats(min_value=1e-6, max_value=1e9, allow_nan=False)
fraction = st.floats(min_value=0, max_value=1)
short_text = st.text(max_size=24)
device_ids = st.from_regex(DEVICE_ID_PATTERN, fullmatch=True)
sha256s = st.from_regex(SHA256_PATTERN, fullmatch=True)
labels = st.builds(
    lambda name, version: f"{name}:{version}",
    st.from_regex(NAME_PATTERN, fullmatch=True),
    st.from_regex(VERSION_PATTERN, fullmatch=True),
)
sent_at = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)

profiles = st.builds(
    DeviceProfile,
    name=st.text(min_size=1, max_size=64),
    cpu_threads=st.integers(min_value=1, max_value=256),
    memory_budget_mb=positive,
    latency_budget_ms=positive,
    execution_providers=st.lists(short_text, min_size=1, max_size=3),
    model_size_budget_kb=st.none() | positive,
    min_accuracy=st.none() | fraction,
    arch=st.none() | short_text,
)
files = st.builds(FileRef, url=st.text(min_size=1, max_size=80), sha256=sha256s, size=COUNT)
tensors = st.builds(
    TensorSpec,
    name=st.text(min_size=1, max_size=32),
    dtype=st.sampled_from(ONNX_DTYPES),
    shape=st.lists(COUNT | st.from_regex(SYMBOLIC_DIM_PATTERN, fullmatch=True), max_size=6),
)
manifests = st.builds(
    ModelManifest,
    name=st.from_regex(NAME_PATTERN, fullmatch=True),
    version=st.from_regex(VERSION_PATTERN, fullmatch=True),
    artifact=files,
    golden=files,
    inputs=st.lists(tensors, min_size=1, max_size=3),
    outputs=st.lists(tensors, min_size=1, max_size=3),
    golden_atol=non_negative,
    golden_rtol=non_negative,
    accuracy=st.none() | finite,
    size_bytes=st.none() | INT64,
    agreement_metric=st.sampled_from(["argmax", "cosine"]),
    min_agreement=fraction,
)
targets = st.builds(
    TargetRef,
    path=st.from_regex(TARGET_PATH_PATTERN, fullmatch=True),
    sequence=st.integers(min_value=1, max_value=2**63 - 1),
)
latencies = st.builds(
    LatencyStats,
    n=st.integers(min_value=1, max_value=2**63 - 1),
    p50_ms=non_negative,
    p95_ms=non_negative,
    p99_ms=non_negative,
    mean_ms=non_negative,
)
energies = st.builds(
    Energy,
    joules_per_inference=non_negative,
    avg_power_w=non_negative,
    source=short_text,
    estimated=st.booleans(),
)
messages = st.one_of(
    st.builds(
        Hello,
        device_id=device_ids,
        sent_at=sent_at,
        agent_version=short_text,
        profile=profiles,
        platform=st.dictionaries(short_text, short_text | INT64 | finite, max_size=4),
        available_providers=st.lists(short_text, max_size=3),
        current_model=st.none() | labels,
        tags=st.lists(short_text, max_size=3),
    ),
    st.builds(
        Status,
        device_id=device_ids,
        sent_at=sent_at,
        online=st.booleans(),
        phase=st.sampled_from(Phase),
        revision=st.none() | COUNT,
        detail=st.text(max_size=80),
    ),
    st.builds(
        Desired,
        device_id=device_ids,
        sent_at=sent_at,
        revision=COUNT,
        target=st.none() | targets,
        profile=profiles,
    ),
    st.builds(
        Report,
        device_id=device_ids,
        sent_at=sent_at,
        revision=COUNT,
        model=labels,
        artifact_sha256=sha256s,
        ok=st.booleans(),
        phase=st.sampled_from(Phase),
        verified=st.booleans(),
        golden_max_abs_err=st.none() | finite,
        latency=st.none() | latencies,
        peak_rss_mb=st.none() | non_negative,
        energy=st.none() | energies,
        within_budget=st.none() | st.booleans(),
        budget_detail=st.dictionaries(short_text, st.booleans(), max_size=3),
        error=st.none() | st.text(max_size=80),
        gate=st.none() | st.sampled_from(Gate),
        running=st.none() | labels,
        providers=st.lists(short_text, max_size=3),
        agreement=st.none() | fraction,
    ),
    st.builds(
        Telemetry,
        device_id=device_ids,
        sent_at=sent_at,
        model=st.none() | labels,
        latency=st.none() | latencies,
        inferences_per_s=st.none() | non_negative,
        rss_mb=non_negative,
        cpu_percent=st.none() | non_negative,
        temperature_c=st.none() | finite,
        energy=st.none() | energies,
        seq=st.none() | COUNT,
        latency_source=st.none() | st.sampled_from(["live", "validation"]),
        buffered=st.none() | COUNT,
        dropped=st.none() | COUNT,
    ),
)


def _topic_of(message: Hello | Status | Desired | Report | Telemetry) -> str:
    return topic(message.device_id, Channel(message.type))


# --------------------------------------------------------------------------- hostile input

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: far past 64 bits and the 4300-digit limit of int()
    | st.floats()  # NaN and ±Infinity included: json.dumps writes them as bare words
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=24,
)


def decoded_or_refused(payload: bytes | str, topic_name: str | None = None) -> object:
    """What every receiver relies on: a message, or a ProtocolError that says why. A message
    returned always encodes again, to the same message."""
    try:
        message = decode(payload, topic_name)
    except ProtocolError as exc:
        assert isinstance(exc.reason, Refusal), exc
        assert str(exc), "a refusal names its problem"
        return exc
    assert decode(encode(message)) == message
    return message


@FUZZ
@given(messages)
def test_every_message_type_round_trips_on_its_topic(message: Any) -> None:
    assert decode(encode(message), _topic_of(message)) == message


@FUZZ
@given(st.integers(min_value=1, max_value=2**63 - 1), manifests)
def test_every_signed_release_round_trips_through_its_custom_data(
    sequence: int, manifest: ModelManifest
) -> None:
    """What the server signs into a target is what the device reads back, floats included
    (canonical JSON has none: the manifest travels as text)."""
    custom = json.loads(json.dumps(release_custom(sequence, manifest)))
    assert SignedRelease.model_validate(custom[RELEASE_KEY]) == SignedRelease(
        sequence=sequence, manifest=manifest
    )


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_decode_to_a_message_or_a_protocol_error(payload: bytes) -> None:
    decoded_or_refused(payload)


@FUZZ
@given(json_values, st.integers(min_value=0, max_value=3 * MAX_DEPTH))
def test_arbitrary_json_at_any_depth_decodes_to_a_message_or_a_protocol_error(
    value: object, extra_depth: int
) -> None:
    payload = "[" * extra_depth + json.dumps(value) + "]" * extra_depth
    decoded_or_refused(payload.encode())
    decoded_or_refused(json.dumps({"protocol": 1, "type": "status", "x": value}))


Path = list[str | int]


def _containers(value: object, path: Path) -> list[Path]:
    found: list[Path] = []
    if isinstance(value, dict):
        found.append(path)
        for key, item in value.items():
            found += _containers(item, [*path, key])
    elif isinstance(value, list):
        found.append(path)
        for index, item in enumerate(value):
            found += _containers(item, [*path, index])
    return found


def _at(value: Any, path: Path) -> Any:
    for step in path:
        value = value[step]
    return value


@FUZZ
@given(messages, st.data())
def test_mutated_valid_messages_decode_to_a_message_or_a_protocol_error(
    message: Any, data: st.DataObject
) -> None:
    raw = json.loads(encode(message))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4), label="mutations")):
        container = _at(raw, data.draw(st.sampled_from(_containers(raw, [])), label="where"))
        new_value = data.draw(json_values, label="value")
        if isinstance(container, dict):
            keys = sorted(container)
            action = data.draw(st.sampled_from(["replace", "delete", "add"]), label="action")
            if action == "add" or not keys:
                container[data.draw(st.text(max_size=12), label="new key")] = new_value
            elif action == "replace":
                container[data.draw(st.sampled_from(keys), label="key")] = new_value
            else:
                del container[data.draw(st.sampled_from(keys), label="key")]
        elif container:
            container[data.draw(st.integers(0, len(container) - 1), label="index")] = new_value
        else:
            container.append(new_value)
    decoded_or_refused(json.dumps(raw), _topic_of(message))


@FUZZ
@given(messages, st.data())
def test_valid_messages_with_damaged_bytes_decode_to_a_message_or_a_protocol_error(
    message: Any, data: st.DataObject
) -> None:
    payload = bytearray(encode(message))
    for _ in range(data.draw(st.integers(min_value=1, max_value=8), label="changes")):
        at = data.draw(st.integers(0, len(payload) - 1), label="at")
        match data.draw(st.sampled_from(["flip", "insert", "delete"]), label="change"):
            case "flip":
                payload[at] ^= 1 << data.draw(st.integers(0, 7), label="bit")
            case "insert":
                payload[at:at] = data.draw(st.binary(min_size=1, max_size=8), label="bytes")
            case "delete":
                del payload[at]
    decoded_or_refused(bytes(payload), _topic_of(message))


# --------------------------------------------------------------------------- known poisons

STATUS_MESSAGE = Status(device_id="pi-1", online=True, phase=Phase.IDLE, revision=1)
STATUS = json.loads(encode(STATUS_MESSAGE))
TELEMETRY = json.loads(encode(Telemetry(device_id="pi-1", rss_mb=70.0)))
PROFILE = DeviceProfile(name="pi4", cpu_threads=4, memory_budget_mb=512, latency_budget_ms=5)


def _with(message: dict[str, Any], field: str, literal: str) -> bytes:
    """``message`` with ``field`` written as ``literal``: JSON that json.dumps would not write."""
    return json.dumps({**message, field: "@@"}).replace('"@@"', literal).encode()


POISONS = {
    # name: (payload, the refusal reason, what the error must say)
    "100,000 digits": (b"1" * 100_000, Refusal.INVALID, "integer of 100000 digits"),
    "a 5,000-digit revision": (
        _with(STATUS, "revision", "9" * 5000),
        Refusal.INVALID,
        "integer of 5000 digits is out of range",
    ),
    "an integer past 64 bits": (
        _with(STATUS, "revision", str(2**63)),
        Refusal.INVALID,
        "must fit in 64 signed bits",
    ),
    "100,000 nested arrays": (b"[" * 100_000, Refusal.TOO_DEEP, "100000 levels deep"),
    "nested objects": (
        b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1),
        Refusal.TOO_DEEP,
        f"{MAX_DEPTH + 1} levels deep; at most {MAX_DEPTH}",
    ),
    "1e999": (_with(TELEMETRY, "rss_mb", "1e999"), Refusal.INVALID, "must be finite"),
    "NaN": (_with(TELEMETRY, "rss_mb", "NaN"), Refusal.NOT_JSON, "NaN is not a JSON number"),
    "-Infinity": (
        _with(TELEMETRY, "temperature_c", "-Infinity"),
        Refusal.NOT_JSON,
        "-Infinity is not a JSON number",
    ),
    "a 400-character number": (
        _with(TELEMETRY, "rss_mb", "1." + "0" * 400),
        Refusal.INVALID,
        "402 characters is over the limit",
    ),
    "over 256 KiB": (
        json.dumps({**STATUS, "detail": "x" * MAX_MESSAGE_BYTES}).encode(),
        Refusal.TOO_LARGE,
        f"over the limit of {MAX_MESSAGE_BYTES} bytes",
    ),
    "a lone surrogate": (
        _with(STATUS, "detail", '"\\ud800"'),
        Refusal.INVALID,
        "not valid Unicode",
    ),
    "not UTF-8": (b'{"protocol": 1, "x": "\xff"}', Refusal.NOT_JSON, "not UTF-8"),
}


@pytest.mark.parametrize(("payload", "reason", "says"), POISONS.values(), ids=POISONS.keys())
def test_each_known_poison_is_refused_naming_the_problem(
    payload: bytes, reason: Refusal, says: str
) -> None:
    with pytest.raises(ProtocolError, match=says) as refused:
        decode(payload)
    assert refused.value.reason == reason


def test_the_size_limit_is_a_parameter() -> None:
    hello = Hello(device_id="pi-1", agent_version="x" * 300_000, profile=PROFILE)
    payload = encode(hello)
    with pytest.raises(ProtocolError, match="over the limit") as refused:
        decode(payload)
    assert refused.value.reason == Refusal.TOO_LARGE
    assert decode(payload, max_bytes=2 * len(payload)) == hello
    with pytest.raises(ProtocolError, match="of 10 bytes"):
        decode(encode(STATUS_MESSAGE), max_bytes=10)


def test_nesting_up_to_the_limit_is_read() -> None:
    """Unknown fields may nest (a newer peer's), as deep as the limit and no deeper."""
    at_limit = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    assert decode(_with(STATUS, "from_a_newer_peer", at_limit)) == STATUS_MESSAGE
    with pytest.raises(ProtocolError, match=f"{MAX_DEPTH + 1} levels deep") as refused:
        decode(_with(STATUS, "from_a_newer_peer", "[" + at_limit + "]"))
    assert refused.value.reason == Refusal.TOO_DEEP


def test_brackets_inside_strings_are_not_nesting() -> None:
    detail = "[{" * MAX_DEPTH * 4
    message = decode(json.dumps({**STATUS, "detail": detail}))
    assert isinstance(message, Status) and message.detail == detail


def test_a_flood_of_bad_messages_is_counted_exactly_but_cannot_flood_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from edgeloop.agent.protocol import LOGGED_DROPS, Intake

    intake = Intake(logging.getLogger("edgeloop.test.intake"))
    with caplog.at_level(logging.WARNING, logger="edgeloop.test.intake"):
        for _ in range(1000):
            intake.receive(topic("dev-1", Channel.HELLO), b"not json", lambda message: None)
    assert intake.stats().dropped == {"not_json": 1000}
    assert len(caplog.records) == LOGGED_DROPS
    assert all("not_json" in record.getMessage() for record in caplog.records)
