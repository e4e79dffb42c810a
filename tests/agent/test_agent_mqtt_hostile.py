"""A real agent process under hostile payloads on its desired topic.

Each payload below once ended the agent's MQTT network thread: the agent kept its connection
(and so its ``online`` status) through paho's keepalive, yet never heard another desired
state. Now each is dropped and counted by reason in the endpoint's health, and the next valid
desired state is applied as usual.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from helpers import publish, wait_until

from edgeloop.agent.endpoint_client import InferenceClient
from edgeloop.agent.protocol import (
    MAX_MESSAGE_BYTES,
    Channel,
    Desired,
    Phase,
    Refusal,
    Status,
    encode,
    topic,
)
from edgeloop.lab.broker import MosquittoBroker, find_mosquitto
from edgeloop.lab.faults import PROFILE, DesiredPublisher, upload_version, wait_settled
from edgeloop.lab.launch import AgentProcess, ServerProcess

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")

DEVICE = "hostile-agent-01"
DESIRED = topic(DEVICE, Channel.DESIRED)


def desired_with(path: list[str], literal: str) -> bytes:
    """A valid desired state with the field at ``path`` written as ``literal``."""
    raw = json.loads(encode(Desired(device_id=DEVICE, revision=5, target=None, profile=PROFILE)))
    parent = raw
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = "@@"
    return json.dumps(raw).replace('"@@"', literal).encode()


POISONS: list[tuple[bytes, Refusal]] = [
    (b"1" * 100_000, Refusal.INVALID),
    (desired_with(["revision"], "9" * 5000), Refusal.INVALID),
    (b"[" * 100_000, Refusal.TOO_DEEP),
    (desired_with(["profile", "latency_budget_ms"], "1e999"), Refusal.INVALID),
    (desired_with(["profile", "memory_budget_mb"], "NaN"), Refusal.NOT_JSON),
    (b" " * (MAX_MESSAGE_BYTES + 1), Refusal.TOO_LARGE),
    (desired_with(["protocol"], "3"), Refusal.UNSUPPORTED_VERSION),
    (desired_with(["device_id"], '"another-device"'), Refusal.WRONG_TOPIC),
    (encode(Status(device_id=DEVICE, online=False, phase=Phase.OFFLINE)), Refusal.WRONG_TOPIC),
]


@pytest.fixture()
def brokers(tmp_path: Path) -> Iterator[tuple[MosquittoBroker, MosquittoBroker]]:
    """The device's broker, and another for the control plane that only serves artifacts
    (its planner must not publish desired states for the device under test)."""
    with (
        MosquittoBroker(tmp_path / "device-broker") as device_broker,
        MosquittoBroker(tmp_path / "server-broker") as server_broker,
    ):
        yield device_broker, server_broker


def agent_health(device_dir: Path) -> dict[str, Any] | None:
    try:
        url = (device_dir / "endpoint.url").read_text()
        return InferenceClient(url, timeout_s=5).health()
    except (OSError, requests.RequestException):
        return None


def test_hostile_desired_payloads_are_counted_and_the_next_valid_state_is_applied(
    tmp_path: Path, brokers: tuple[MosquittoBroker, MosquittoBroker]
) -> None:
    device_broker, server_broker = brokers
    device_dir = tmp_path / "devices" / DEVICE
    server = ServerProcess(tmp_path / "server", server_broker.port)
    planner = DesiredPublisher(device_broker.port, DEVICE, server.workdir / "tuf")
    agent = None
    try:
        server.wait_ready()
        weights = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)
        manifest = upload_version(server.url, "1", weights, 0)
        agent = AgentProcess(
            DEVICE, PROFILE, tmp_path, device_broker.port, probation_s=0.2, server=server
        )
        wait_until(lambda: (agent_health(device_dir) or {}).get("mqtt_connected"), 60, "the agent")

        publish(device_broker.port, [(DESIRED, payload) for payload, _ in POISONS], "attacker")

        expected: dict[str, int] = {}
        for _, reason in POISONS:
            expected[reason] = expected.get(reason, 0) + 1
        health = wait_until(
            lambda: (h := agent_health(device_dir)) and h["dropped"] == expected and h,
            30,
            f"the agent to count the drops {expected}",
        )
        assert agent.alive(), agent.log_tail()
        assert health["mqtt_connected"] is True
        assert health["messages_handled"] == 0 and health["last_message_at"] is None

        planner.publish(1, manifest)
        assert wait_settled(device_dir, 1, 60) == "committed", agent.log_tail()
        health = agent_health(device_dir)
        assert health is not None, agent.log_tail()
        assert (health["model"], health["state"]) == ("linear:1", "committed")
        assert health["messages_handled"] == 1 and health["last_message_at"] is not None
        assert health["dropped"] == expected
    finally:
        if agent is not None:
            agent.stop()
        planner.close()
        server.stop()
    assert agent is not None and "Traceback" not in agent.log_path.read_text(), agent.log_tail(40)
