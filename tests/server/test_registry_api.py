"""The registry over REST and the operator CLI, against a real server process on SQLite and
on PostgreSQL: devices with filters and pages, telemetry queries, model push/ls/retire and
retention, and one error shape for every refusal."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from helpers import JETSON, PI, publish, run_command, wait_until

from edgeloop.agent.protocol import (
    PROTOCOL_VERSION,
    Channel,
    Hello,
    LatencyStats,
    Telemetry,
    encode,
    topic,
)
from edgeloop.lab.broker import Broker
from edgeloop.lab.faults import upload_version
from edgeloop.lab.launch import ServerProcess
from edgeloop.server.schemas import (
    Criteria,
    ModelCreate,
    ModelFigures,
    RolloutCreate,
    RolloutState,
    Target,
)

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def edgeloop(*args: str) -> subprocess.CompletedProcess[str]:
    return run_command("edgeloop.cli.main", *args)


@pytest.fixture()
def api(tmp_path: Path, mosquitto: Broker, database_url: str) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path / "server", mosquitto.port, database_url=database_url)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def telemetry(device_id: str, minute: int, p95_ms: float) -> tuple[str, bytes]:
    sample = Telemetry(
        device_id=device_id,
        sent_at=T0 + timedelta(minutes=minute),
        model="m:1",
        latency=LatencyStats(n=10, p50_ms=p95_ms / 2, p95_ms=p95_ms, p99_ms=p95_ms, mean_ms=1),
        rss_mb=80.0,
        seq=minute,
        latency_source="live",
    )
    return topic(device_id, Channel.TELEMETRY), encode(sample)


def register_fleet(api: ServerProcess, broker: Broker) -> None:
    messages = []
    for index in range(5):
        device_id = f"dev-{index}"
        profile = PI if index < 3 else JETSON
        tags = ["lab"] if index % 2 == 0 else ["field", "eu"]
        messages.append(
            (
                topic(device_id, Channel.HELLO),
                encode(Hello(device_id=device_id, agent_version="t", profile=profile, tags=tags)),
            )
        )
    messages += [telemetry("dev-0", minute, p95_ms=float(minute)) for minute in range(1, 7)]
    publish(broker.port, messages, "registry-test")
    wait_until(
        lambda: (
            api.http.get(f"{api.url}/api/v1/devices/dev-0/telemetry", timeout=5).json().get("total")
            == 6
        ),
        20,
        "hellos and telemetry to be stored",
    )


def test_devices_are_listed_with_filters_and_pages(api: ServerProcess, mosquitto: Broker) -> None:
    register_fleet(api, mosquitto)
    url = f"{api.url}/api/v1/devices"
    page = api.http.get(url, params={"limit": 2, "offset": 1}, timeout=5).json()
    assert page["total"] == 5 and [d["device_id"] for d in page["items"]] == ["dev-1", "dev-2"]
    pis = api.http.get(url, params={"profile": "pi"}, timeout=5).json()
    assert pis["total"] == 3
    field_eu = api.http.get(url, params=[("tag", "field"), ("tag", "eu")], timeout=5).json()
    assert [d["device_id"] for d in field_eu["items"]] == ["dev-1", "dev-3"]
    online = api.http.get(url, params={"online": "true"}, timeout=5).json()
    assert online["total"] == 5

    detail = api.http.get(f"{url}/dev-0", timeout=5).json()
    assert detail["tags"] == ["lab"] and detail["online"] is True
    assert detail["protocol"] == PROTOCOL_VERSION, "the version its hello announced"
    assert detail["latest_telemetry"]["seq"] == 6, "the newest sample by time"
    assert detail["desired"]["revision"] == 1

    listed = edgeloop("devices", "ls", *api.cli_args, "--tag", "lab", "--json")
    assert [d["device_id"] for d in json.loads(listed.stdout)] == ["dev-0", "dev-2", "dev-4"]
    shown = edgeloop("devices", "show", "dev-0", *api.cli_args)
    assert shown.returncode == 0 and "dev-0" in shown.stdout and "pi" in shown.stdout
    assert f"protocol v{PROTOCOL_VERSION}" in shown.stdout


def test_telemetry_is_paged_newest_first_and_filtered_by_time(
    api: ServerProcess, mosquitto: Broker
) -> None:
    register_fleet(api, mosquitto)
    url = f"{api.url}/api/v1/devices/dev-0/telemetry"
    newest = api.http.get(url, params={"limit": 2}, timeout=5).json()
    assert newest["total"] == 6 and [s["seq"] for s in newest["items"]] == [6, 5]
    window = api.http.get(
        url,
        params={"since": (T0 + timedelta(minutes=2)).isoformat(), "until": "2026-12-01T12:05:00"},
        timeout=5,
    ).json()
    assert [s["seq"] for s in window["items"]] == [4, 3, 2], "since inclusive, until exclusive"
    table = edgeloop("telemetry", "dev-0", *api.cli_args, "--limit", "3")
    assert table.returncode == 0 and "3 of 6 samples" in table.stdout
    assert api.http.get(f"{api.url}/api/v1/devices/ghost/telemetry", timeout=5).status_code == 404


def test_every_refusal_has_one_error_shape(api: ServerProcess) -> None:
    cases = [
        ("GET", "/api/v1/devices?limit=0", 422, "query.limit"),
        ("GET", "/api/v1/devices?online=perhaps", 422, "query.online"),
        ("GET", "/api/v1/devices/ghost", 404, "no device 'ghost'"),
        ("GET", "/api/v1/devices/x/telemetry?since=yesterday", 422, "query.since"),
        ("GET", "/api/v1/models/m/1", 404, "no model m:1"),
        ("POST", "/api/v1/models", 422, "body"),
        ("POST", "/api/v1/rollouts/1/explode", 422, "'pause', 'resume', 'cancel' or 'rollback'"),
        ("GET", "/api/v1/reports?profile=" + "p" * 65, 422, "query.profile"),
        ("GET", "/api/v1/reports?model=" + "m" * 201, 422, "query.model"),
    ]
    for method, path, code, words in cases:
        response = api.http.request(method, api.url + path, timeout=5)
        assert response.status_code == code, (path, response.text)
        detail = response.json()["detail"]
        assert isinstance(detail, str) and words in detail, (path, detail)


def test_models_are_pushed_listed_retired_and_kept_by_retention(
    api: ServerProcess, digits_models, tmp_path: Path
) -> None:
    url = api.cli_args
    fp32 = digits_models[0]
    report = tmp_path / "report.json"
    for version, accuracy in (("1", 0.90), ("2", 0.91), ("3", 0.92)):
        report.write_text(json.dumps({"accuracy": accuracy, "variant": "fp32"}))
        pushed = edgeloop(
            "models", "push", str(fp32.model_path), "--golden", str(fp32.golden_path),
            "--report", str(report), "--name", "digits", "--version", version, *url,
        )  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr
        assert f"registered digits:{version}" in pushed.stdout
    again = edgeloop(
        "models", "push", str(fp32.model_path), "--golden", str(fp32.golden_path),
        "--report", str(report), "--name", "digits", "--version", "3", *url,
    )  # fmt: skip
    assert again.returncode == 2 and "immutable" in again.stderr
    no_report = edgeloop("models", "push", str(fp32.model_path), *url)
    assert no_report.returncode == 2 and "give --report" in no_report.stderr
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    report.write_text(json.dumps({"accuracy": 0.5}))
    refused = edgeloop("models", "push", str(broken), "--golden", str(fp32.golden_path),
                       "--report", str(report), *url)  # fmt: skip
    assert refused.returncode == 2 and "not a model onnxruntime can load" in refused.stderr

    listed = json.loads(edgeloop("models", "ls", *url, "--json").stdout)
    assert [m["label"] for m in listed] == ["digits:1", "digits:2", "digits:3"]
    registered = listed[0]
    assert registered["inputs"][0]["dtype"] == "float32"
    assert registered["report"]["size_bytes"] == fp32.model_path.stat().st_size

    retired = edgeloop("models", "retention", "--keep", "1", *url)
    assert retired.returncode == 0 and "retired 2: digits:2, digits:1" in retired.stdout
    assert [m["label"] for m in json.loads(edgeloop("models", "ls", *url, "--json").stdout)] == [
        "digits:3"
    ]
    everything = json.loads(edgeloop("models", "ls", "--all", *url, "--json").stdout)
    assert [m["retired_at"] is not None for m in everything] == [True, True, False]
    assert edgeloop("models", "retire", "digits:9", *url).returncode == 2


def test_a_model_in_use_is_not_retired(
    api: ServerProcess, mosquitto: Broker, digits_models, tmp_path: Path
) -> None:
    fp32 = digits_models[0]
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"accuracy": 0.9}))
    url = api.cli_args
    assert edgeloop("models", "push", str(fp32.model_path), "--golden", str(fp32.golden_path),
                    "--report", str(report), "--name", "digits", "--version", "1",
                    *url).returncode == 0  # fmt: skip
    register_fleet(api, mosquitto)  # the planner sends digits:1 to every device
    refused = edgeloop("models", "retire", "digits:1", *url)
    assert refused.returncode == 2 and "still in use (desired by device dev-0)" in refused.stderr
    assert np.all([m["retired_at"] is None for m in json.loads(
        edgeloop("models", "ls", *url, "--json").stdout)])  # fmt: skip


def test_a_version_stored_with_figures_this_server_does_not_know_is_still_listed(
    api: ServerProcess, digits_models, tmp_path: Path, database_url: str
) -> None:
    """Versions registered before the model card was typed may carry other keys in their
    figures; listings drop them instead of failing, while a new card with them is refused."""
    from sqlalchemy import create_engine, text

    fp32 = digits_models[0]
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"accuracy": 0.9}))
    pushed = edgeloop(
        "models", "push", str(fp32.model_path), "--golden", str(fp32.golden_path),
        "--report", str(report), "--name", "digits", "--version", "old", *api.cli_args,
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    engine = create_engine(database_url)
    with engine.begin() as db:
        db.execute(
            text("UPDATE model_versions SET report = :r"),
            {"r": json.dumps({"accuracy": 0.9, "flops": 12345, "note": "from 0.0.9"})},
        )
    engine.dispose()

    listed = api.http.get(f"{api.url}/api/v1/models", timeout=10)
    assert listed.status_code == 200, listed.text
    assert listed.json()["items"][0]["report"]["accuracy"] == 0.9
    assert "flops" not in listed.json()["items"][0]["report"]

    report.write_text(json.dumps({"accuracy": 0.9, "flops": 12345}))
    refused = edgeloop(
        "models", "push", str(fp32.model_path), "--golden", str(fp32.golden_path),
        "--report", str(report), "--name", "digits", "--version", "new", *api.cli_args,
    )  # fmt: skip
    assert refused.returncode == 2 and "flops" in refused.stderr


def test_retention_retires_a_halted_rollouts_model_once_no_device_holds_it(
    api: ServerProcess, mosquitto: Broker
) -> None:
    """A halted rollout cannot be resumed: its model is kept only while a device was sent,
    runs or can roll back to it, not for the rollout's sake."""
    client = api.client()
    files = upload_version(api.url, "1", np.eye(64, 10, dtype=np.float32), 0)
    for version, accuracy in (("1", 0.9), ("2", 0.5), ("3", 0.5), ("4", 0.5), ("5", 0.5)):
        client.register_model(
            ModelCreate(
                name="linear",
                version=version,
                artifact_sha256=files.artifact.sha256,
                golden_sha256=files.golden.sha256,
                inputs=files.inputs,
                outputs=files.outputs,
                report=ModelFigures(accuracy=accuracy, size_bytes=files.artifact.size),
            )
        )
    register_fleet(api, mosquitto)  # the planner sends linear:1 to every device
    halted = client.create_rollout(
        RolloutCreate(
            model="linear:2",
            target=Target(devices=["dev-0"]),
            waves=["100%"],
            criteria=Criteria(wave_timeout_s=0.5),
        )
    )
    wait_until(
        lambda: client.rollout(halted.id).state == RolloutState.HALTED,
        30,
        "the rollout to halt on a silent device",
    )
    newer = client.create_rollout(
        RolloutCreate(model="linear:5", target=Target(devices=["dev-0"]), waves=["100%"])
    )
    wait_until(
        lambda: (desired := client.device("dev-0").desired) and desired.model == "linear:5",
        30,
        "the newer rollout to send dev-0 its model",
    )
    listed = client.rollouts()
    assert [(r.id, r.state) for r in listed.items] == [
        (newer.id, RolloutState.RUNNING),
        (halted.id, RolloutState.HALTED),
    ]
    assert "dev-0: no report within 0.5 s" in client.rollout(halted.id).reason
    assert client.apply_retention(keep=1).retired == ["linear:4", "linear:3", "linear:2"]
