"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from edgeloop.agent.protocol import DeviceProfile, ModelManifest
from edgeloop.server.client import ApiClient
from edgeloop.server.schemas import ModelCreate, ModelFigures, ModelPublic

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


def register(
    client: ApiClient, manifest: ModelManifest, accuracy: float, *, plan: bool = False
) -> ModelPublic:
    """Register the model version whose files ``manifest`` names (uploaded already)."""
    return client.register_model(
        ModelCreate(
            name=manifest.name,
            version=manifest.version,
            artifact_sha256=manifest.artifact.sha256,
            golden_sha256=manifest.golden.sha256,
            inputs=manifest.inputs,
            outputs=manifest.outputs,
            report=ModelFigures(accuracy=accuracy, size_bytes=manifest.artifact.size),
        ),
        plan=plan,
    )


def signing_repository(workdir: Path) -> Path:
    """A TUF repository in ``workdir/tuf`` (made once; its root key beside it, outside), for
    an app built in-process (``Settings(tuf_dir=...)``)."""
    from edgeloop.server.tuf_repo import TufRepository

    if not (workdir / "tuf" / "repository.json").exists():
        TufRepository.init(workdir / "tuf", workdir / "offline" / "tuf-root.key")
    return workdir / "tuf"
