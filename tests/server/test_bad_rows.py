"""One bad row never breaks the fleet.

A model version stored with figures or an I/O contract that do not validate (written by an
older server, or by hand: the REST layer refuses such a card) is skipped by the planner, named
in the plan's reason and in the server's log; planning, hellos and listings go on. The rows are
written straight into the SQLite file of a real server process, as such rows came to be.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
from helpers import PI, publish, register, wait_until

from edgeloop.agent.protocol import Channel, Hello, ModelManifest, encode, topic
from edgeloop.lab.broker import Broker
from edgeloop.lab.faults import upload_version
from edgeloop.lab.launch import ServerProcess

BAD_FIGURES = {
    "high": '{"accuracy": "high", "size_bytes": 1000}',
    "nan": '{"accuracy": NaN, "size_bytes": 1000}',
    "missing": '{"size_bytes": 1000}',
}
"""Report JSON as the rows hold it (``NaN`` is what Python's json writes for a float NaN)."""


def register_good(server: ServerProcess) -> ModelManifest:
    manifest = upload_version(server.url, "good", np.eye(64, 10, dtype=np.float32), 0)
    register(server.client(), manifest, 0.8, plan=True)
    return manifest


def store_by_hand(database: Path, good: ModelManifest, version: str, report: str, **json_columns):
    """Insert a version next to ``good`` (same files), bypassing every check of the API."""
    columns = {
        "inputs": json.dumps([s.model_dump() for s in good.inputs]),
        "outputs": json.dumps([s.model_dump() for s in good.outputs]),
    } | json_columns
    with sqlite3.connect(database) as db:
        db.execute(
            "INSERT INTO model_versions (name, version, artifact_sha256, golden_sha256, inputs, "
            "outputs, golden_atol, golden_rtol, report, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, 0.001, 0.001, ?, CURRENT_TIMESTAMP)",
            (good.name, version, good.artifact.sha256, good.golden.sha256, columns["inputs"],
             columns["outputs"], report),
        )  # fmt: skip
    db.close()


def hello(broker: Broker, device_id: str, agent_version: str = "t") -> None:
    message = Hello(device_id=device_id, agent_version=agent_version, profile=PI)
    publish(broker.port, [(topic(device_id, Channel.HELLO), encode(message))], f"hello-{device_id}")


def device(server: ServerProcess, device_id: str) -> dict | None:
    response = server.http.get(f"{server.url}/api/v1/devices/{device_id}", timeout=5)
    return response.json() if response.status_code == 200 else None


def test_versions_stored_with_bad_figures_or_io_are_skipped_and_the_fleet_goes_on(
    server: ServerProcess, mosquitto: Broker, tmp_path: Path
) -> None:
    good = register_good(server)
    hello(mosquitto, "dev-a")
    wait_until(lambda: device(server, "dev-a"), 20, "dev-a's hello to be stored")
    for version, report in BAD_FIGURES.items():
        store_by_hand(tmp_path / "edgeloop.db", good, version, report)
    store_by_hand(
        tmp_path / "edgeloop.db",
        good,
        "io",
        '{"accuracy": 0.99}',
        inputs=json.dumps([{"name": "x", "dtype": "float32"}]),
    )
    skipped = [f"linear:{v}" for v in (*BAD_FIGURES, "io")]

    planned = server.http.post(f"{server.url}/api/v1/fleet/plan", timeout=10)
    assert planned.status_code == 200, planned.text
    (entry,) = planned.json()
    assert entry["desired_model"] == "linear:good" and entry["desired_revision"] == 1
    assert entry["desired_reason"].endswith(
        f"; skipped {', '.join(skipped)}: invalid stored figures or I/O"
    )

    hello(mosquitto, "dev-b")
    newcomer = wait_until(lambda: device(server, "dev-b"), 20, "a new device's hello to be stored")
    assert newcomer["desired"]["model"] == "linear:good"

    for path in ("/api/v1/fleet", "/api/v1/devices", "/api/v1/devices/dev-b"):
        response = server.http.get(server.url + path, timeout=10)
        assert response.status_code == 200, (path, response.text)
    log = server.log_path.read_text()
    assert (
        "planner skips a version: model linear:high as stored is unusable (report.accuracy:" in log
    )
    assert "(got 'high')" in log and "(got nan)" in log
    assert "linear:missing as stored is unusable (report.accuracy: Field required)" in log
    assert "linear:io as stored is unusable (manifest.inputs.0.shape: Field required)" in log
    assert "retire it (`edgeloop models retire linear:high`)" in log


def test_when_the_row_of_the_model_devices_run_goes_bad_they_keep_it_and_hellos_still_store(
    server: ServerProcess, mosquitto: Broker, tmp_path: Path
) -> None:
    register_good(server)
    hello(mosquitto, "dev-a")
    wait_until(lambda: device(server, "dev-a"), 20, "dev-a's hello to be stored")
    with sqlite3.connect(tmp_path / "edgeloop.db") as db:
        db.execute("UPDATE model_versions SET report = ?", (BAD_FIGURES["high"],))
    db.close()

    listed = server.http.get(f"{server.url}/api/v1/fleet", timeout=10)
    assert listed.status_code == 200, listed.text
    (entry,) = listed.json()
    assert entry["desired_model"] == "linear:good" and entry["model_report"] is None

    planned = server.http.post(f"{server.url}/api/v1/fleet/plan", timeout=10)
    assert planned.status_code == 200, planned.text
    (entry,) = planned.json()
    assert (entry["desired_model"], entry["desired_revision"]) == ("linear:good", 1), (
        "no usable version is no reason to tell a device to stop running its model"
    )
    assert entry["desired_reason"].startswith("no usable model; skipped linear:good")

    hello(mosquitto, "dev-a", agent_version="t2")
    wait_until(
        lambda: (d := device(server, "dev-a")) and d["agent_version"] == "t2",
        20,
        "a known device's hello to be stored",
    )
    hello(mosquitto, "dev-b")
    newcomer = wait_until(lambda: device(server, "dev-b"), 20, "a new device's hello to be stored")
    assert newcomer["desired"]["model"] is None
    assert device(server, "dev-a")["desired"]["model"] == "linear:good"


def test_listing_models_leaves_out_a_version_stored_with_bad_figures(
    server: ServerProcess, tmp_path: Path
) -> None:
    from edgeloop.server.db import make_engine, make_sessionmaker
    from edgeloop.server.registry import list_models

    good = register_good(server)
    for version, report in BAD_FIGURES.items():
        store_by_hand(tmp_path / "edgeloop.db", good, version, report)
    engine = make_engine(f"sqlite:///{tmp_path / 'edgeloop.db'}")
    with make_sessionmaker(engine)() as db:
        page = list_models(db)
    engine.dispose()
    assert [m.label for m in page.items] == ["linear:good"] and page.total == 1


def test_the_model_listing_route_answers_despite_a_version_stored_with_bad_figures(
    server: ServerProcess, tmp_path: Path
) -> None:
    good = register_good(server)
    for version, report in BAD_FIGURES.items():
        store_by_hand(tmp_path / "edgeloop.db", good, version, report)
    listed = server.http.get(f"{server.url}/api/v1/models", timeout=10)
    assert listed.status_code == 200, listed.text
    assert [m["label"] for m in listed.json()["items"]] == ["linear:good"]
