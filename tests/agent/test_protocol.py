"""The wire contract: every message round-trips; anything else is refused with a reason.

``data/protocol-v2/`` holds a frozen copy of protocol version 2 as it was released: one message
of each kind, written once by ``encode()`` with a fixed ``sent_at``, and ``schema.json``, the
JSON Schema strict receivers enforce (``TypeAdapter(Message).json_schema()``). Never
regenerate them from the current code: they are what the deployed fleet speaks.
``data/protocol-v1/`` is version 1, whose desired state carried the manifest itself over MQTT;
it is refused by version, never half-understood.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from edgeloop.agent.protocol import (
    ONNX_DTYPES,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Channel,
    ControlStats,
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
    parse_topic,
    subscription,
    topic,
    unknown_fields,
)
from edgeloop.agent.releases import RELEASE_KEY, SignedRelease, release_custom

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
    Channel.DESIRED: Desired(
        device_id="pi-1",
        revision=3,
        target=TargetRef(path="models/digits-cnn/1-int8", sequence=7),
        profile=PROFILE,
    ),
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
    desired = Desired(device_id="pi-1", revision=4, target=None, profile=PROFILE)
    assert decode(encode(desired)) == desired


def test_topics_are_versioned_and_parse_back() -> None:
    assert topic("pi-1", Channel.DESIRED) == f"edgeloop/v{PROTOCOL_VERSION}/devices/pi-1/desired"
    assert parse_topic(topic("pi-1", Channel.REPORT)) == ("pi-1", Channel.REPORT)
    assert subscription(Channel.HELLO) == f"edgeloop/v{PROTOCOL_VERSION}/devices/+/hello"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("edgeloop/v2/devices/pi-1/bogus", "unknown channel 'bogus'"),
        ("edgeloop/v1/devices/pi-1/hello", "is not edgeloop/v2/devices/<device_id>/<channel>"),
        ("edgeloop/v2/devices/pi-1", "is not edgeloop/v2/devices/<device_id>/<channel>"),
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
        (_payload(Channel.HELLO, protocol=3), "protocol version 3 is not supported"),
        (_payload(Channel.HELLO, type="reboot"), "invalid 'reboot' message"),
        (_payload(Channel.REPORT, artifact_sha256="not-a-hash"), "artifact_sha256"),
        (_payload(Channel.STATUS, phase="exploding"), "phase"),
        (_payload(Channel.REPORT, gate="vibes"), "gate"),
        (_payload(Channel.TELEMETRY, rss_mb=-1), "rss_mb"),
        (_payload(Channel.HELLO, device_id="../etc"), "device_id"),
    ],
)
def test_malformed_payloads_give_a_validation_error_naming_the_problem(
    payload: bytes, reason: str
) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode(payload)


def _release_with_manifest(**changes: object) -> bytes:
    """A signed release's custom data (what a device validates a target's manifest by)."""
    raw = release_custom(3, MANIFEST)[RELEASE_KEY]
    raw["manifest"] = {**json.loads(raw["manifest"]), **changes}
    return json.dumps(raw).encode()


def _tensor(**changes: object) -> list[dict[str, object]]:
    return [{"name": "image", "dtype": "float32", "shape": ["batch", 1, 8, 8], **changes}]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (_release_with_manifest(name="../etc/passwd"), r"manifest\.name\n  String should match"),
        (_release_with_manifest(version="1 int8"), r"manifest\.version\n  String should match"),
        (_release_with_manifest(inputs=_tensor(name="")), r"inputs\.0\.name"),
        (_release_with_manifest(inputs=_tensor(dtype="float33")), r"inputs\.0\.dtype"),
        (_release_with_manifest(outputs=_tensor(shape=[-1])), r"outputs\.0\.shape\.0"),
        (_release_with_manifest(inputs=_tensor(shape=['b"; rm'])), r"inputs\.0\.shape\.0"),
        (_release_with_manifest(inputs=_tensor(shape=[1] * 33)), r"at most 32 items"),
    ],
)
def test_a_manifest_outside_its_bounds_is_refused_naming_the_field(
    payload: bytes, reason: str
) -> None:
    with pytest.raises(ValidationError, match=reason):
        SignedRelease.model_validate_json(payload)


@pytest.mark.parametrize(
    "path", ["models/../../etc/passwd", "models/a/b/c", "/models/a/1", "models/a", "other/a/1"]
)
def test_a_desired_state_names_only_a_target_inside_models(path: str) -> None:
    raw = json.loads(encode(EXAMPLES[Channel.DESIRED]))
    raw["target"]["path"] = path
    with pytest.raises(ProtocolError, match=r"target\.path"):
        decode(json.dumps(raw).encode(), topic("pi-1", Channel.DESIRED))


def test_a_desired_state_carries_no_manifest_of_its_own() -> None:
    raw = json.loads(encode(EXAMPLES[Channel.DESIRED]))
    assert set(raw) == {"protocol", "device_id", "sent_at", "type", "revision", "target", "profile"}
    raw["model"] = json.loads(release_custom(3, MANIFEST)[RELEASE_KEY]["manifest"])
    desired = decode(json.dumps(raw).encode(), topic("pi-1", Channel.DESIRED))
    assert not hasattr(desired, "model"), "a manifest sent over MQTT is dropped, never used"


@pytest.mark.parametrize("dtype", ONNX_DTYPES)
def test_every_onnx_dtype_and_symbolic_dimension_the_exporters_write_is_accepted(
    dtype: str,
) -> None:
    shape = ["batch", "?", "s0", "floor(s0/2) + 1", "sequence_length", 0, 3]
    assert SignedRelease.model_validate_json(
        _release_with_manifest(inputs=_tensor(dtype=dtype, shape=shape))
    )


def test_numbers_built_in_code_are_finite_too() -> None:
    with pytest.raises(ValidationError, match="finite number"):
        Telemetry(device_id="pi-1", rss_mb=float("nan"))
    with pytest.raises(ValidationError, match="finite number"):
        LatencyStats(n=1, p50_ms=float("inf"), p95_ms=0, p99_ms=0, mean_ms=0)
    # A host measuring without a budget says so with infinity; JSON cannot carry it.
    unbounded = DeviceProfile(
        name="host", cpu_threads=1, memory_budget_mb=float("inf"), latency_budget_ms=5
    )
    with pytest.raises(ProtocolError, match="memory_budget_mb"):
        decode(encode(Hello(device_id="pi-1", agent_version="0.1.0", profile=unbounded)))


def test_a_message_must_match_its_topic_channel() -> None:
    with pytest.raises(ProtocolError, match="'report' message on the 'hello' topic"):
        decode(encode(EXAMPLES[Channel.REPORT]), topic("pi-1", Channel.HELLO))


def test_a_device_cannot_speak_for_another_device() -> None:
    with pytest.raises(ProtocolError, match="names device 'pi-1' but came on the topic of 'pi-2'"):
        decode(encode(EXAMPLES[Channel.REPORT]), topic("pi-2", Channel.REPORT))


def test_every_example_in_the_protocol_document_is_accepted() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    examples = [json.loads(b) for b in re.findall(r"```json\n(.*?)\n```", text, re.S)]
    messages = [example for example in examples if "type" in example]
    assert {decode(json.dumps(message)).type for message in messages} == {
        channel.value for channel in Channel
    }
    manifests = [example for example in examples if "type" not in example]
    assert [ModelManifest.model_validate(manifest).name for manifest in manifests] == [
        "digits-cnn"
    ], "the signed manifest's example"


def test_the_protocol_document_lists_every_gate() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    section = text[text.index("## Gates") :].split("\n## ", 1)[0]
    assert set(re.findall(r"^\| `(\w+)` \|", section, re.M)) == {gate.value for gate in Gate}


# --------------------------------------------------------------------------- evolution

FROZEN_V1 = Path(__file__).parent / "data" / "protocol-v1"
FROZEN_V2 = Path(__file__).parent / "data" / "protocol-v2"
FROZEN_MESSAGES = sorted(p for p in FROZEN_V2.glob("*.json") if p.name != "schema.json")
FROZEN_SCHEMA = Draft202012Validator(json.loads((FROZEN_V2 / "schema.json").read_text()))


def _frozen(name: str) -> dict:
    return json.loads((FROZEN_V2 / f"{name}.json").read_text())


@pytest.mark.parametrize(
    "path",
    sorted(p for p in FROZEN_V1.glob("*.json") if p.name != "schema.json"),
    ids=lambda p: p.stem,
)
def test_every_version_1_message_is_refused_by_its_version(path: Path) -> None:
    """Version 1 carried whole manifests in desired states, which a device then believed."""
    with pytest.raises(ProtocolError, match=r"protocol version 1 is not supported") as refused:
        decode(path.read_bytes())
    assert refused.value.reason is Refusal.UNSUPPORTED_VERSION


def _fits_frozen_schema(payload: bytes) -> list[str]:
    return [error.message for error in FROZEN_SCHEMA.iter_errors(json.loads(payload))]


def test_the_frozen_v1_set_has_a_message_of_every_type() -> None:
    assert {_frozen(p.stem)["type"] for p in FROZEN_MESSAGES} == {c.value for c in Channel}
    assert _frozen("desired-target-null")["target"] is None
    assert (_frozen("report-ok")["ok"], _frozen("report-refused")["ok"]) == (True, False)


@pytest.mark.parametrize("path", FROZEN_MESSAGES, ids=lambda p: p.stem)
def test_every_frozen_v1_message_still_decodes_without_losing_a_field(path: Path) -> None:
    frozen = json.loads(path.read_text())
    message = decode(path.read_bytes(), topic(frozen["device_id"], Channel(frozen["type"])))
    assert json.loads(encode(message)) == frozen


@pytest.mark.parametrize(
    "message",
    [
        *EXAMPLES.values(),
        *(decode(path.read_bytes()) for path in FROZEN_MESSAGES),
        *(
            Report(
                device_id="pi-1",
                revision=3,
                model="digits-cnn:1-int8",
                artifact_sha256=SHA,
                ok=False,
                phase=Phase.FAILED,
                verified=True,
                gate=gate,
                error=f"{gate}: refused",
            )
            for gate in Gate
        ),
    ],
    ids=lambda m: f"{m.type}-{m.gate}" if isinstance(m, Report) else m.type,
)
def test_what_this_side_sends_is_accepted_by_receivers_that_refuse_unknown_fields(
    message: Hello | Status | Desired | Report | Telemetry,
) -> None:
    """Agents from before the lenient policy enforce the frozen schema, extra fields included.

    If a new field fails this, it would break those agents: ship it only once they are gone.
    """
    assert _fits_frozen_schema(encode(message)) == []


def test_the_frozen_schema_is_the_one_that_refuses_unknown_fields() -> None:
    surprise = {**_frozen("status"), "surprise": 1}
    assert any("surprise" in problem for problem in _fits_frozen_schema(json.dumps(surprise)))


def test_unknown_fields_are_dropped_and_counted_at_every_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    newer = _frozen("desired")
    newer["rollout_wave"] = 2
    newer["profile"]["npu_tops"] = 4.0
    newer["target"]["mirror"] = "http://cache/a"
    before = unknown_fields.copy()

    with caplog.at_level(logging.DEBUG, logger="edgeloop.agent.protocol"):
        message = decode(json.dumps(newer), topic("pi-1", Channel.DESIRED))

    assert message == decode(json.dumps(_frozen("desired")))
    assert unknown_fields - before == {
        "Desired.rollout_wave": 1,
        "DeviceProfile.npu_tops": 1,
        "TargetRef.mirror": 1,
    }
    assert "Desired.rollout_wave" in caplog.text


def test_an_unknown_field_does_not_excuse_an_invalid_known_one() -> None:
    with pytest.raises(ProtocolError, match="rss_mb"):
        decode(_payload(Channel.TELEMETRY, rss_mb=-1, gpu_temperature_c=50))


def test_a_refused_message_counts_no_unknown_fields() -> None:
    before = unknown_fields.copy()
    with pytest.raises(ProtocolError, match="names device 'pi-1'"):
        decode(_payload(Channel.STATUS, surprise=1), topic("pi-2", Channel.STATUS))
    assert unknown_fields == before


def test_models_built_in_code_or_from_local_files_still_refuse_unknown_fields() -> None:
    """A typo in the agent's ``[profile]`` table or a profile file is an error, not ignored."""
    with pytest.raises(ValidationError, match=r"cpu_thread\s+Extra inputs are not permitted"):
        DeviceProfile.model_validate(
            {
                "name": "pi4",
                "cpu_threads": 4,
                "cpu_thread": 2,
                "memory_budget_mb": 512,
                "latency_budget_ms": 5,
            }
        )


def test_a_message_of_a_newer_major_version_is_refused_naming_the_versions_spoken() -> None:
    newer = {**_frozen("hello"), "protocol": 3, "accelerators": ["npu"]}
    spoken = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
    with pytest.raises(
        ProtocolError,
        match=rf"protocol version 3 is not supported \(this side speaks {spoken}\)",
    ):
        decode(json.dumps(newer))


def test_a_refused_report_names_its_gate_as_a_gate() -> None:
    report = decode(json.dumps(_frozen("report-refused")))
    assert isinstance(report, Report)
    assert report.gate is Gate.GOLDEN


# --------------------------------------------------------------------------- revision 2.1

CONTROL = ControlStats(
    calls=10_000,
    latency=LATENCY,
    deadline_ms=1.0,
    deadline_misses=3,
    processes=1,
)
WITH_2_1 = {
    Channel.HELLO: EXAMPLES[Channel.HELLO].model_copy(
        update={
            "application": "pick-and-place",
            "profile": PROFILE.model_copy(update={"deadline_ms": 1.0}),
        }
    ),
    Channel.TELEMETRY: EXAMPLES[Channel.TELEMETRY].model_copy(update={"control": CONTROL}),
}


@pytest.mark.parametrize("channel", [Channel.HELLO, Channel.TELEMETRY])
def test_the_2_1_additions_are_left_out_of_what_is_sent_while_unset(channel: Channel) -> None:
    sent = json.loads(encode(EXAMPLES[channel]))
    assert {"application", "control"}.isdisjoint(sent)
    assert "deadline_ms" not in sent.get("profile", {})
    assert _fits_frozen_schema(encode(EXAMPLES[channel])) == []


@pytest.mark.parametrize("channel", [Channel.HELLO, Channel.TELEMETRY])
def test_the_2_1_additions_are_sent_when_set_and_decode_back(channel: Channel) -> None:
    message = WITH_2_1[channel]
    sent = json.loads(encode(message))
    assert decode(encode(message), topic("pi-1", channel)) == message
    problems = _fits_frozen_schema(encode(message))
    assert problems, "a strict v2.0 receiver would refuse them: set them only where understood"
    assert all(re.search(r"'(application|deadline_ms|control)'", p) for p in problems), problems
    if channel == Channel.HELLO:
        assert sent["application"] == "pick-and-place"
        assert sent["profile"]["deadline_ms"] == 1.0
    else:
        assert sent["control"]["deadline_misses"] == 3


def test_a_hello_naming_its_application_decodes_and_a_path_for_a_name_is_refused() -> None:
    hello = decode(_payload(Channel.HELLO, application="pick-and-place"))
    assert isinstance(hello, Hello) and hello.application == "pick-and-place"
    with pytest.raises(ProtocolError, match="application") as refused:
        decode(_payload(Channel.HELLO, application="../other-app"))
    assert refused.value.reason is Refusal.INVALID
