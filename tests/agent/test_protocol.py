"""The wire contract: every message round-trips; anything else is refused with a reason."""

from __future__ import annotations

import json

import pytest

from edgeloop.agent.protocol import (
    PROTOCOL_VERSION,
    Channel,
    Desired,
    DeviceProfile,
    Energy,
    FileRef,
    Hello,
    LatencyStats,
    ModelManifest,
    Phase,
    ProtocolError,
    Report,
    Status,
    Telemetry,
    TensorSpec,
    decode,
    encode,
    parse_topic,
    subscription,
    topic,
)

SHA = "a" * 64
PROFILE = DeviceProfile(name="pi4", cpu_threads=4, memory_budget_mb=512, latency_budget_ms=5)
MANIFEST = ModelManifest(
    name="digits-cnn",
    version="1-int8",
    artifact=FileRef(url="http://h/artifacts/" + SHA, sha256=SHA, size=10),
    golden=FileRef(url="http://h/artifacts/" + "b" * 64, sha256="b" * 64, size=5),
    inputs=[TensorSpec(name="image", dtype="float32", shape=["batch", 1, 8, 8])],
    outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", 10])],
)
LATENCY = LatencyStats(n=200, p50_ms=0.1, p95_ms=0.2, p99_ms=0.3, mean_ms=0.12)
ENERGY = Energy(joules_per_inference=1e-4, avg_power_w=1.0, source="estimate", estimated=True)

EXAMPLES = {
    Channel.HELLO: Hello(
        device_id="pi-1",
        agent_version="0.1.0",
        profile=PROFILE,
        platform={"arch": "aarch64", "cores": 4},
    ),
    Channel.STATUS: Status(device_id="pi-1", online=True, phase=Phase.DOWNLOADING, revision=3),
    Channel.DESIRED: Desired(device_id="pi-1", revision=3, model=MANIFEST, profile=PROFILE),
    Channel.REPORT: Report(
        device_id="pi-1",
        revision=3,
        model="digits-cnn:1-int8",
        artifact_sha256=SHA,
        ok=True,
        phase=Phase.COMMITTED,
        verified=True,
        latency=LATENCY,
        peak_rss_mb=80.0,
        energy=ENERGY,
        within_budget=True,
    ),
    Channel.TELEMETRY: Telemetry(
        device_id="pi-1",
        model="digits-cnn:1-int8",
        latency=LATENCY,
        rss_mb=75.0,
        cpu_percent=3.0,
        energy=ENERGY,
    ),
}


@pytest.mark.parametrize("channel", list(Channel))
def test_every_message_type_round_trips_on_its_topic(channel: Channel) -> None:
    message = EXAMPLES[channel]
    decoded = decode(encode(message), topic("pi-1", channel))
    assert decoded == message
    assert type(decoded) is type(message)


def test_desired_without_a_model_means_run_nothing() -> None:
    desired = Desired(device_id="pi-1", revision=4, model=None, profile=PROFILE)
    assert decode(encode(desired)) == desired


def test_topics_are_versioned_and_parse_back() -> None:
    assert topic("pi-1", Channel.DESIRED) == f"edgeloop/v{PROTOCOL_VERSION}/devices/pi-1/desired"
    assert parse_topic(topic("pi-1", Channel.REPORT)) == ("pi-1", Channel.REPORT)
    assert subscription(Channel.HELLO) == f"edgeloop/v{PROTOCOL_VERSION}/devices/+/hello"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("edgeloop/v1/devices/pi-1/bogus", "unknown channel 'bogus'"),
        ("edgeloop/v2/devices/pi-1/hello", "is not edgeloop/v1/devices/<device_id>/<channel>"),
        ("edgeloop/v1/devices/pi-1", "is not edgeloop/v1/devices/<device_id>/<channel>"),
    ],
)
def test_foreign_topics_are_refused(name: str, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_topic(name)


def _payload(channel: Channel, **changes: object) -> bytes:
    raw = json.loads(encode(EXAMPLES[channel]))
    raw.update(changes)
    return json.dumps(raw).encode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe not json", "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"type": "hello"}', "protocol version None is not supported"),
        (_payload(Channel.HELLO, protocol=2), "protocol version 2 is not supported"),
        (_payload(Channel.HELLO, type="reboot"), "invalid 'reboot' message"),
        (_payload(Channel.REPORT, artifact_sha256="not-a-hash"), "artifact_sha256"),
        (_payload(Channel.STATUS, phase="exploding"), "phase"),
        (_payload(Channel.STATUS, surprise=1), "surprise: Extra inputs are not permitted"),
        (_payload(Channel.TELEMETRY, rss_mb=-1), "rss_mb"),
        (_payload(Channel.HELLO, device_id="../etc"), "device_id"),
    ],
)
def test_malformed_payloads_give_a_validation_error_naming_the_problem(
    payload: bytes, reason: str
) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode(payload)


def test_a_message_must_match_its_topic_channel() -> None:
    with pytest.raises(ProtocolError, match="'report' message on the 'hello' topic"):
        decode(encode(EXAMPLES[Channel.REPORT]), topic("pi-1", Channel.HELLO))


def test_a_device_cannot_speak_for_another_device() -> None:
    with pytest.raises(ProtocolError, match="names device 'pi-1' but came on the topic of 'pi-2'"):
        decode(encode(EXAMPLES[Channel.REPORT]), topic("pi-2", Channel.REPORT))


def test_every_example_in_the_protocol_document_is_accepted() -> None:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
    examples = re.findall(r"```json\n(.*?)\n```", text, re.S)
    types = {decode(block).type for block in examples}
    assert types == {channel.value for channel in Channel}
