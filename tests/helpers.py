"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import TypeVar

from edgeloop.agent.protocol import DeviceProfile

T = TypeVar("T")

PI = DeviceProfile(name="pi", cpu_threads=1, memory_budget_mb=200, latency_budget_ms=5)
JETSON = DeviceProfile(name="jetson", cpu_threads=2, memory_budget_mb=800, latency_budget_ms=5)
"""Two small device classes for registry and contract tests."""


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str) -> T:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` and the
    last value seen."""
    deadline = time.monotonic() + timeout_s
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(0.2)
        value = predicate()
    if not value:
        raise AssertionError(
            f"timed out after {timeout_s:.0f}s waiting for {what}; last: {value!r}"
        )
    return value


def publish(broker_port: int, messages: list[tuple[str, bytes]], client_id: str = "test") -> None:
    """Publish ``(topic, payload)`` pairs at QoS 1 to the broker on ``broker_port``, as devices
    would, and return once the broker has each of them."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.connect("127.0.0.1", broker_port)
    client.loop_start()
    try:
        for name, payload in messages:
            client.publish(name, payload, qos=1).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


def run_command(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module args...`` as an operator would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=60
    )
