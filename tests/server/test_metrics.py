"""``/metrics`` against a real server process fed over MQTT (hellos, telemetry, a report, a
bad payload, an offline device) and a rollout: the body passes ``promtool check metrics``, its
families carry the fleet's figures with bounded labels only, an anonymous caller is refused;
the per-device mode is capped and says how many devices it left out; a scrape at 1,000
devices is a fixed handful of queries; the deploy files pass ``promtool check``; and a real
Prometheus scraping the server answers every query of the Grafana dashboard with data.

promtool and prometheus are required (Debian's ``prometheus`` package; ``.ci/run`` installs
it): without them these tests fail, they do not skip."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from helpers import JETSON, PI, publish, signing_repository, wait_until
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event

from edgeloop.agent.protocol import (
    Channel,
    Energy,
    Hello,
    LatencyStats,
    Phase,
    Report,
    Status,
    Telemetry,
    TensorSpec,
    encode,
    topic,
)
from edgeloop.lab.broker import Broker, MosquittoBroker, free_port
from edgeloop.lab.launch import ServerProcess
from edgeloop.server.metrics import FleetCollector
from edgeloop.server.schemas import ModelCreate, ModelFigures, RolloutCreate, Target

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "edgeloop-dashboard.json"
T0 = datetime.now(UTC) - timedelta(minutes=10)
MiB = 1024 * 1024


def tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    assert path, f"{name} is not installed: apt-get install prometheus (.ci/run does)"
    return path


# --------------------------------------------------------------------------- a live fleet


@dataclass
class Scraped:
    server: ServerProcess
    rollout_id: int

    def body(self) -> str:
        answer = self.server.http.get(f"{self.server.url}/metrics", timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.text


def sample_of(body: str, name: str, **labels: str) -> float | None:
    """The value of the one sample ``name`` whose labels include ``labels``."""
    found = [
        sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else None


def telemetry(device_id: str, p95_ms: float, temperature_c: float, rss_mb: float) -> Telemetry:
    return Telemetry(
        device_id=device_id,
        sent_at=T0,
        model="m:1",
        latency=LatencyStats(n=10, p50_ms=p95_ms / 2, p95_ms=p95_ms, p99_ms=p95_ms, mean_ms=1),
        rss_mb=rss_mb,
        temperature_c=temperature_c,
        energy=Energy(
            joules_per_inference=p95_ms / 1000, avg_power_w=1, source="test", estimated=True
        ),
        seq=1,
        latency_source="live",
    )


def over_budget_report(device_id: str) -> Report:
    return Report(
        device_id=device_id,
        revision=1,
        model="m:1",
        artifact_sha256="a" * 64,
        ok=True,
        phase=Phase.COMMITTED,
        verified=True,
        within_budget=False,
        budget_detail={"latency": False},
        running="m:1",
    )


def feed(server: ServerProcess, broker: Broker, workdir: Path) -> int:
    """pi-0 and pi-1 online (pi-1's last report misses its budget), pi-2 offline in the
    `vision` application, jetson-0 online and in a running rollout of m:2; one bad payload.
    Returns the rollout's id."""
    client = server.client()
    files = []
    for name in ("model.onnx", "golden.npz"):
        files.append(workdir / name)
        files[-1].write_bytes(name.encode() * 100)
    artifact, golden = (client.upload_artifact(f) for f in files)
    for version in ("1", "2"):
        client.register_model(
            ModelCreate(
                name="m",
                version=version,
                artifact_sha256=artifact.sha256,
                golden_sha256=golden.sha256,
                inputs=[TensorSpec(name="x", dtype="float32", shape=["batch", 4])],
                outputs=[TensorSpec(name="y", dtype="float32", shape=["batch", 2])],
                report=ModelFigures(accuracy=0.9, size_bytes=400, variant="fp32"),
            )
        )
    hellos = [
        Hello(device_id="pi-0", agent_version="t", profile=PI, current_model="m:1"),
        Hello(device_id="pi-1", agent_version="t", profile=PI, current_model="m:1"),
        Hello(
            device_id="pi-2",
            agent_version="t",
            profile=PI,
            current_model="m:1",
            application="vision",
        ),
        Hello(device_id="jetson-0", agent_version="t", profile=JETSON),
    ]
    publish(broker.port, [(topic(h.device_id, Channel.HELLO), encode(h)) for h in hellos])
    wait_until(lambda: len(client.devices()) == len(hellos), 20, "every hello stored")
    samples = [
        telemetry("pi-0", p95_ms=4.0, temperature_c=50.0, rss_mb=60),
        telemetry("pi-1", p95_ms=6.0, temperature_c=60.0, rss_mb=80),
        telemetry("pi-2", p95_ms=100.0, temperature_c=90.0, rss_mb=500),
        telemetry("jetson-0", p95_ms=1.0, temperature_c=40.0, rss_mb=100),
    ]
    messages = [(topic(s.device_id, Channel.TELEMETRY), encode(s)) for s in samples]
    messages.append((topic("pi-1", Channel.REPORT), encode(over_budget_report("pi-1"))))
    offline = Status(device_id="pi-2", online=False, phase=Phase.IDLE)
    messages.append((topic("pi-2", Channel.STATUS), encode(offline)))
    messages.append((topic("pi-0", Channel.TELEMETRY), b"not json"))
    publish(broker.port, messages)
    wait_until(
        lambda: not client.device("pi-2").online and client.reports(), 20, "report and status"
    )
    rollout = client.create_rollout(
        RolloutCreate(model="m:2", target=Target(profile="jetson"), waves=["100%"])
    )
    return rollout.id


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker of this module's own: the session's holds retained messages of other tests'
    devices, which a new server receives and counts, and the counts here are exact."""
    with MosquittoBroker(tmp_path_factory.mktemp("metrics-broker")) as broker:
        yield broker


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, own_broker: Broker) -> Iterator[Scraped]:
    mosquitto = own_broker
    workdir = tmp_path_factory.mktemp("metrics")
    server = ServerProcess(workdir / "server", mosquitto.port)
    try:
        server.wait_ready()
        rollout_id = feed(server, mosquitto, workdir)
        scraped = Scraped(server, rollout_id)
        wait_until(
            lambda: sample_of(
                scraped.body(), "edgeloop_mqtt_messages_dropped_total", reason="not_json"
            ),
            20,
            "the bad payload counted",
        )
        yield scraped
    finally:
        server.stop()


# --------------------------------------------------------------------------- the exposition


def test_metrics_pass_promtool_and_say_what_the_fleet_sent(fleet: Scraped) -> None:
    body = fleet.body()
    checked = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=body, capture_output=True, text=True
    )
    assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip(), (
        checked.stdout + checked.stderr
    )

    def value(name: str, **labels: str) -> float | None:
        return sample_of(body, name, **labels)

    pi, default = {"profile": "pi"}, {"application": "default"}
    assert value("edgeloop_devices", **pi, **default, status="online") == 2
    assert value("edgeloop_devices", **pi, **default, status="offline") == 0
    assert value("edgeloop_devices", **pi, application="vision", status="offline") == 1
    assert value("edgeloop_devices", profile="jetson", **default, status="online") == 1
    assert value("edgeloop_devices_by_model", **default, model="m:1") == 2
    assert value("edgeloop_devices_by_model", application="vision", model="m:1") == 1
    assert value("edgeloop_devices_by_model", **default, model="none") == 1
    assert value("edgeloop_devices_over_budget", **pi) == 1
    assert value("edgeloop_devices_over_budget", profile="jetson") == 0

    handled = "edgeloop_mqtt_messages_handled_total"
    assert value(handled, channel="hello") == 4
    assert value(handled, channel="telemetry") == 4
    assert value(handled, channel="report") == 1
    assert value(handled, channel="status") == 1
    assert value("edgeloop_mqtt_messages_dropped_total", reason="not_json") == 1
    assert value("edgeloop_mqtt_messages_dropped_total", reason="store_failed") == 0
    assert value("edgeloop_mqtt_connected") == 1

    assert value("edgeloop_rollouts", state="running") == 1
    assert value("edgeloop_rollouts", state="halted") == 0
    rollout = {"rollout_id": str(fleet.rollout_id), "model": "m:2"}
    steps = {
        sample.labels["step"]: sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == "edgeloop_rollout_devices" and rollout.items() <= sample.labels.items()
    }
    assert sum(steps.values()) == 1 and steps["committed"] == 0 and steps["failed"] == 0

    # pi-2 is offline: its telemetry (100 ms, 90 °C) is not the fleet's now.
    m1 = {**pi, "model": "m:1"}
    assert value("edgeloop_device_latency_p95_seconds", **m1, aggregate="max") == 0.006
    assert value("edgeloop_device_latency_p95_seconds", **m1, aggregate="mean") == 0.005
    assert value("edgeloop_device_inference_energy_joules", **m1, aggregate="max") == 0.006
    assert value("edgeloop_device_temperature_celsius", **m1, aggregate="max") == 60
    assert value("edgeloop_device_resident_memory_bytes", **m1, aggregate="mean") == 70 * MiB
    assert value("edgeloop_devices_reporting_telemetry", **m1) == 2

    assert value("edgeloop_metrics_per_device_limit") == 0
    assert "device_id" not in body and "edgeloop_device_info" not in body
    names = {sample.name for f in text_string_to_metric_families(body) for sample in f.samples}
    assert all(name.startswith("edgeloop_") for name in names), names


def test_metrics_refuse_an_anonymous_caller(fleet: Scraped) -> None:
    answer = requests.get(f"{fleet.server.url}/metrics", timeout=10)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    wrong = requests.get(
        f"{fleet.server.url}/metrics", headers={"Authorization": "Bearer elt_nope"}, timeout=10
    )
    assert wrong.status_code == 401


def test_metrics_per_device_mode_is_capped_and_counts_the_devices_left_out(
    tmp_path: Path, mosquitto: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGELOOP_METRICS_PER_DEVICE", "2")
    server = ServerProcess(tmp_path / "server", mosquitto.port)
    try:
        server.wait_ready()
        client = server.client()
        hellos = [
            Hello(device_id=f"cap-{index}", agent_version="t", profile=PI) for index in range(3)
        ]
        publish(
            mosquitto.port,
            [(topic(h.device_id, Channel.HELLO), encode(h)) for h in hellos],
            "metrics-cap",
        )
        wait_until(lambda: len(client.devices()) == 3, 20, "every hello stored")
        body = server.http.get(f"{server.url}/metrics", timeout=10).text
    finally:
        server.stop()
    checked = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=body, capture_output=True, text=True
    )
    assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip()
    infos = [
        sample.labels
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == "edgeloop_device_info"
    ]
    assert [labels["device_id"] for labels in infos] == ["cap-0", "cap-1"]
    assert infos[0] == {"device_id": "cap-0", "profile": "pi", "application": "default",
                        "model": "none"}  # fmt: skip
    assert sample_of(body, "edgeloop_metrics_devices_omitted") == 1
    assert sample_of(body, "edgeloop_metrics_per_device_limit") == 2
    assert sample_of(body, "edgeloop_device_online", device_id="cap-1") == 1
    assert sample_of(body, "edgeloop_device_online", device_id="cap-2") is None


def test_a_metrics_scrape_at_1000_devices_is_a_fixed_handful_of_queries(
    tmp_path: Path, database_url: str
) -> None:
    from edgeloop.server.app import create_app
    from edgeloop.server.config import Settings
    from edgeloop.server.models import Device, DeviceReport, TelemetrySample

    settings = Settings(
        database_url=database_url,
        artifact_dir=tmp_path / "artifacts",
        public_url="http://127.0.0.1:8000",
        tuf_dir=signing_repository(tmp_path),
        metrics_per_device=50,
    )
    app = create_app(settings, with_mqtt=False)
    sessions = app.state.fleet.sessions
    profiles = [PI.model_dump(mode="json"), JETSON.model_dump(mode="json")]
    with sessions.begin() as db:
        for index in range(1000):
            device_id = f"dev-{index:04d}"
            db.add(Device(id=device_id, profile=profiles[index % 2], online=index % 10 != 0))
            db.add_all(
                TelemetrySample(
                    device_id=device_id,
                    sent_at=T0 + timedelta(seconds=second),
                    payload=telemetry(device_id, 1.0 + second, 50.0, 64).model_dump(mode="json"),
                )
                for second in range(5)
            )
            report = over_budget_report(device_id).model_copy(
                update={"within_budget": index % 4 != 0}
            )
            db.add(
                DeviceReport(
                    device_id=device_id,
                    revision=1,
                    model="m:1",
                    artifact_sha256="a" * 64,
                    ok=True,
                    phase="committed",
                    payload=report.model_dump(mode="json"),
                )
            )
    engine = sessions.kw["bind"]
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    started = time.perf_counter()
    body = generate_latest(app.state.metrics).decode()
    elapsed = time.perf_counter() - started
    engine.dispose()
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == FleetCollector.QUERIES + FleetCollector.PER_DEVICE_QUERIES, selects
    assert sample_of(body, "edgeloop_devices", profile="pi", status="offline") == 100
    assert sample_of(body, "edgeloop_devices_over_budget", profile="pi") == 250
    p95 = sample_of(
        body, "edgeloop_device_latency_p95_seconds", profile="pi", model="m:1", aggregate="max"
    )
    assert p95 == 0.005  # the newest of each device's five samples
    assert sample_of(body, "edgeloop_metrics_devices_omitted") == 950
    backend = database_url.split(":")[0]
    print(f"scrape at 1000 devices, 5000 telemetry rows ({backend}): {elapsed * 1000:.0f} ms")
    assert elapsed < 2.0


# --------------------------------------------------------------------------- deploy files


def test_the_metrics_alert_rules_pass_promtool() -> None:
    checked = subprocess.run(
        [tool("promtool"), "check", "rules", str(DEPLOY / "prometheus" / "rules.yml")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def prometheus_config(workdir: Path, target: str, token: str) -> Path:
    """deploy/prometheus/prometheus.yml with its paths and target pointed at this test."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    token_file = workdir / "edgeloop.token"
    token_file.write_text(token)
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(DEPLOY / "prometheus" / "rules.yml")]
    (job,) = config["scrape_configs"]
    job["authorization"]["credentials_file"] = str(token_file)
    job["static_configs"] = [{"targets": [target]}]
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_metrics_scrape_config_passes_promtool(tmp_path: Path) -> None:
    config = prometheus_config(tmp_path, "127.0.0.1:8000", "elt_example")
    checked = subprocess.run(
        [tool("promtool"), "check", "config", str(config)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every target of the dashboard, rows' panels included."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [
        *dashboard["panels"],
        *(inner for panel in dashboard["panels"] for inner in panel.get("panels", [])),
    ]
    queries = [
        (panel["title"], target["expr"]) for panel in panels for target in panel.get("targets", [])
    ]
    assert len(queries) >= 10
    return queries


def concrete(expr: str) -> str:
    expr = expr.replace("$__rate_interval", "10s").replace("$__interval", "10s")
    return re.sub(r"\$\{?(application|profile)\}?", ".*", expr)


@pytest.fixture()
def prometheus(tmp_path: Path, fleet: Scraped) -> Iterator[str]:
    port = free_port()
    config = prometheus_config(tmp_path, f"127.0.0.1:{fleet.server.port}", fleet.server.token or "")
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    answer = requests.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    assert answer.status_code == 200, f"{expr}: {answer.text}"
    return answer.json()["data"]["result"]


def test_every_metrics_query_of_the_grafana_dashboard_has_data_in_a_real_prometheus(
    prometheus: str,
) -> None:
    def scraped() -> bool:
        try:
            up = query(prometheus, 'up{job="edgeloop"} == 1')
        except requests.RequestException:
            return False
        return bool(up)

    wait_until(scraped, 60, "Prometheus scraping the server")
    # rate() needs two samples inside its 10 s window.
    wait_until(
        lambda: query(prometheus, "count_over_time(edgeloop_mqtt_connected[10s]) >= 4"),
        30,
        "four scrapes",
    )
    empty = [
        (title, concrete(expr))
        for title, expr in dashboard_queries()
        if not query(prometheus, concrete(expr))
    ]
    assert not empty, empty
