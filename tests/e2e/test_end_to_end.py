"""The whole loop on real parts: Mosquitto, the control plane process, two agent processes,
a real quantized model. Each device must run the artifact the server published for it."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from helpers import publish, wait_until

from edgeloop.agent.protocol import Channel, DeviceProfile, Phase, topic
from edgeloop.cli.compress import model_card
from edgeloop.lab.broker import Broker
from edgeloop.lab.launch import AgentProcess, ServerProcess
from edgeloop.server.schemas import FleetEntry

pytestmark = pytest.mark.slow

ROOMY = DeviceProfile(name="roomy", cpu_threads=2, memory_budget_mb=512, latency_budget_ms=50)
TIGHT = DeviceProfile(
    name="tight",
    cpu_threads=1,
    memory_budget_mb=256,
    latency_budget_ms=50,
    model_size_budget_kb=128,
)


def test_two_devices_run_the_models_the_server_published_for_their_profiles(
    tmp_path: Path, mosquitto: Broker, server: ServerProcess, digits_models: list
) -> None:
    agents = [
        AgentProcess(
            "roomy-01", ROOMY, tmp_path, mosquitto.port, telemetry_interval_s=1, server=server
        ),
        AgentProcess(
            "tight-01", TIGHT, tmp_path, mosquitto.port, telemetry_interval_s=1, server=server
        ),
    ]
    client = server.client()
    try:
        wait_until(lambda: len(client.fleet()) == 2, 30, "both agents to say hello")
        published = {}
        for model in digits_models:
            card = model_card(model)
            registered = client.push_model(card, model.model_path, model.golden_path, plan=False)
            published[registered.label] = registered.artifact_sha256
        client.plan()

        def settled() -> list[FleetEntry] | None:
            rows = client.fleet()
            done = [r for r in rows if r.report and r.report.revision == r.desired_revision]
            return rows if len(done) == 2 else None

        rows = {r.device_id: r for r in wait_until(settled, 90, "both devices to report")}
        int8 = next(m for m in digits_models if m.version.endswith("int8"))
        assert rows["tight-01"].desired_model == f"{int8.name}:{int8.version}"
        for row in rows.values():
            report = row.report
            assert report is not None and report.ok and report.verified, report
            assert row.desired_model is not None
            assert report.artifact_sha256 == published[row.desired_model]
            assert report.model == row.desired_model
            assert report.phase == Phase.COMMITTED
            assert row.desired_revision == 2, "one revision for 'no model yet', one for the model"
            latency, energy = report.latency, report.energy
            assert latency is not None and latency.n >= 200
            assert 0 < latency.p50_ms <= latency.p95_ms <= latency.p99_ms
            assert report.peak_rss_mb is not None and report.peak_rss_mb > 0
            assert energy is not None and energy.joules_per_inference > 0
            assert energy.estimated == energy.source.startswith("estimate")

        # Garbage on the wire is dropped; neither side crashes and the real data keeps flowing.
        publish(
            mosquitto.port,
            [
                (topic("roomy-01", Channel.HELLO), b"{not json"),
                (topic("roomy-01", Channel.REPORT), b'{"protocol": 1, "type": "report"}'),
                (topic("roomy-01", Channel.DESIRED), b'{"protocol": 99}'),
                (topic("tight-01", Channel.DESIRED), b"\x00\x01"),
            ],
            client_id="vandal",
        )
        time.sleep(1.5)
        assert server.alive() and all(a.alive() for a in agents)
        assert (
            "dropped message on edgeloop/v2/devices/roomy-01/hello" in server.log_path.read_text()
        )
        assert "protocol version 99 is not supported" in agents[0].log_path.read_text()

        db = sqlite3.connect(tmp_path / "edgeloop.db")
        stored = dict(
            db.execute(
                "SELECT device_id, artifact_sha256 FROM reports WHERE ok = 1 ORDER BY id"
            ).fetchall()
        )
        telemetry = db.execute("SELECT COUNT(DISTINCT device_id) FROM telemetry").fetchone()[0]
        db.close()
        assert stored == {d: published[rows[d].desired_model or ""] for d in rows}
        assert telemetry == 2

        agents[0].stop()
        wait_until(
            lambda: not {r.device_id: r for r in client.fleet()}["roomy-01"].online,
            10,
            "the stopped device to show offline",
        )
    finally:
        for agent in agents:
            agent.stop()
