"""The control plane under hostile MQTT input and a broker that loses its memory.

A real server process and a real Mosquitto of each test's own (so every count below is exact).
A payload that once ended the bridge's network thread, so that nothing was stored while
``/healthz`` still said connected, must now be dropped, counted by reason and acknowledged;
the messages after it are stored as usual. A broker restarted without persistence gets every
device's retained desired state back from the server, with no new rollout.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from helpers import PI, publish, wait_until

from edgeloop.agent.protocol import (
    MAX_MESSAGE_BYTES,
    Channel,
    Desired,
    Hello,
    Phase,
    Refusal,
    Report,
    Telemetry,
    decode,
    encode,
    topic,
)
from edgeloop.lab.broker import MosquittoBroker, find_mosquitto
from edgeloop.lab.launch import ServerProcess

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")

DEVICE = "hostile-01"
SHA = "a" * 64


def hello(device_id: str = DEVICE) -> Hello:
    return Hello(device_id=device_id, agent_version="0.1.0", profile=PI)


def report() -> Report:
    return Report(
        device_id=DEVICE,
        revision=1,
        model="linear:1",
        artifact_sha256=SHA,
        ok=False,
        phase=Phase.FAILED,
        verified=False,
        error="download: refused",
    )


def telemetry(seq: int = 1) -> Telemetry:
    return Telemetry(device_id=DEVICE, rss_mb=70.0, seq=seq)


def with_literal(message: Hello | Report | Telemetry, path: list[str], literal: str) -> bytes:
    """``message`` with the field at ``path`` written as ``literal``, which no JSON encoder
    would write."""
    raw = json.loads(encode(message))
    parent = raw
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = "@@"
    return json.dumps(raw).replace('"@@"', literal).encode()


def on(channel: Channel) -> str:
    return topic(DEVICE, channel)


POISONS: list[tuple[str, bytes, Refusal]] = [
    # (topic, payload, the reason it is dropped for)
    (on(Channel.HELLO), b"1" * 100_000, Refusal.INVALID),
    (
        on(Channel.HELLO),
        with_literal(hello(), ["profile", "cpu_threads"], "7" * 5000),
        Refusal.INVALID,
    ),
    (on(Channel.REPORT), with_literal(report(), ["revision"], "9" * 5000), Refusal.INVALID),
    (on(Channel.TELEMETRY), b"[" * 100_000, Refusal.TOO_DEEP),
    (on(Channel.TELEMETRY), with_literal(telemetry(), ["rss_mb"], "1e999"), Refusal.INVALID),
    (on(Channel.TELEMETRY), with_literal(telemetry(), ["rss_mb"], "NaN"), Refusal.NOT_JSON),
    (on(Channel.REPORT), b" " * (MAX_MESSAGE_BYTES + 1), Refusal.TOO_LARGE),
    (on(Channel.HELLO), b"\xff\xfe{}", Refusal.NOT_JSON),
    (on(Channel.HELLO), encode(report()), Refusal.WRONG_TOPIC),
    (on(Channel.HELLO), with_literal(hello(), ["protocol"], "3"), Refusal.UNSUPPORTED_VERSION),
]


def expected_drops(poisons: list[tuple[str, bytes, Refusal]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, _, reason in poisons:
        counts[reason] = counts.get(reason, 0) + 1
    return counts


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path / "broker") as running:
        yield running


def started(workdir: Path, broker_port: int) -> ServerProcess:
    server = ServerProcess(workdir, broker_port)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def retained_desired(broker_port: int, device_id: str, wait_s: float = 1.0) -> Desired | None:
    """The desired state the broker holds retained for ``device_id``, as a device that
    connects now would get it; None if there is none."""
    got: list[Desired] = []
    arrived = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if message.retain:
            parsed = decode(message.payload, message.topic)
            assert isinstance(parsed, Desired)
            got.append(parsed)
            arrived.set()

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}"
    )
    client.on_message = on_message
    try:
        client.connect("127.0.0.1", broker_port)
    except OSError:
        return None
    client.subscribe(topic(device_id, Channel.DESIRED), qos=1)
    client.loop_start()
    try:
        arrived.wait(wait_s)
    finally:
        client.loop_stop()
        client.disconnect()
    return got[0] if got else None


def test_poison_on_every_inbound_topic_is_dropped_by_reason_and_ingestion_goes_on(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    server = started(tmp_path / "server", broker.port)
    try:
        api = server.client()
        publish(broker.port, [(name, payload) for name, payload, _ in POISONS], "attacker")
        before_real = datetime.now(UTC)
        publish(
            broker.port,
            [
                (on(Channel.HELLO), encode(hello())),
                (on(Channel.REPORT), encode(report())),
                (on(Channel.TELEMETRY), encode(telemetry())),
            ],
            "device",
        )

        wait_until(lambda: api.telemetry(DEVICE).items if api.devices() else [], 30, "telemetry")
        assert [d.device_id for d in api.devices()] == [DEVICE]
        stored = api.device_reports(DEVICE)
        assert [(r.revision, r.error) for r in stored] == [(1, "download: refused")]
        assert [t.seq for t in api.telemetry(DEVICE).items] == [1]

        health = api.health()
        assert health.ok and health.mqtt_connected
        assert health.dropped == expected_drops(POISONS), health
        assert health.messages_handled == 3
        assert health.last_message_at is not None
        assert before_real <= health.last_message_at <= datetime.now(UTC) + timedelta(seconds=1)
    finally:
        server.stop()
    assert "Traceback" not in server.log_path.read_text(), server.log_tail(40)


def test_poison_queued_on_the_persistent_session_is_dropped_once_and_never_redelivered(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """While the server is down the broker queues QoS 1 messages for its session (named by
    its database); a poison among them must be acknowledged, not redelivered at each start."""
    workdir = tmp_path / "server"
    started(workdir, broker.port).stop()  # the session now exists, with its subscriptions
    publish(broker.port, [(name, payload) for name, payload, _ in POISONS], "attacker")

    server = started(workdir, broker.port)
    try:
        api = server.client()
        publish(broker.port, [(on(Channel.HELLO), encode(hello()))], "device")
        wait_until(lambda: api.devices(), 30, "the device's hello to be stored")
        assert api.health().dropped == expected_drops(POISONS)
    finally:
        server.stop()

    server = started(workdir, broker.port)
    try:
        api = server.client()
        # The broker sends a session's queued messages before new ones: once this one is
        # stored, any poison redelivered would have been handled (and counted) before it.
        publish(broker.port, [(on(Channel.TELEMETRY), encode(telemetry(seq=7)))], "device")
        wait_until(lambda: api.telemetry(DEVICE).items, 30, "the telemetry to be stored")
        health = api.health()
        assert health.dropped == {}, "a poison message came back after a restart"
        assert health.messages_handled == 1
    finally:
        server.stop()


def test_a_restarted_broker_gets_every_retained_desired_state_back_without_a_rollout(
    tmp_path: Path,
) -> None:
    first = MosquittoBroker(tmp_path / "broker-1")
    port = first.port
    server = None
    try:
        server = started(tmp_path / "server", port)
        publish(port, [(topic("known-01", Channel.HELLO), encode(hello("known-01")))])
        before = wait_until(
            lambda: retained_desired(port, "known-01"), 30, "the desired state of known-01"
        )
        first.stop()  # persistence is off: its retained messages are gone with it
        second = MosquittoBroker(tmp_path / "broker-2", port=port)
        try:
            after = wait_until(
                lambda: retained_desired(port, "known-01"),
                60,
                "the server to put known-01's desired state back on the new broker",
            )
            assert (after.revision, after.target) == (before.revision, before.target)
        finally:
            second.stop()
    finally:
        if server is not None:
            server.stop()
        first.stop()


def test_a_message_the_database_refuses_is_counted_as_store_failed_and_ingestion_goes_on(
    tmp_path: Path, broker: MosquittoBroker, postgres: Any
) -> None:
    """Valid on the wire, unstorable in PostgreSQL (a NUL character in a text column)."""
    server = ServerProcess(
        tmp_path / "server", broker.port, database_url=postgres.create_database()
    )
    try:
        server.wait_ready()
        api = server.client()
        unstorable = Hello(device_id=DEVICE, agent_version="0.1\x00", profile=PI)
        publish(broker.port, [(on(Channel.HELLO), encode(unstorable))], "attacker")
        publish(broker.port, [(on(Channel.HELLO), encode(hello()))], "device")
        wait_until(lambda: api.devices(), 30, "the valid hello to be stored")
        health = api.health()
        assert health.dropped == {"store_failed": 1}
        assert health.messages_handled == 1
    finally:
        server.stop()
