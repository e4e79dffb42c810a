"""``edgeloop bench robustness``: hostile input against a live control plane and device.

One real Mosquitto per side (as in the agent's fault campaigns: the server's own planner stays
out of what the bench tells the device), a real ``edgeloop serve`` and a real
``edgeloop-agent run`` serving a good model while a client calls its endpoint all along:

1. **MQTT**: generated payloads (:mod:`edgeloop.lab.fuzz_mqtt`) to the server's inbound topics
   and the agent's ``desired`` topic, paced by what the server reports it has handled. Then
   both must still be alive and doing real work: a device's real hello, report and telemetry
   are stored, and the agent installs a new good model.
2. **Bad models**: every case of :mod:`edgeloop.lab.bad_models`, sent as a desired state; each
   must be refused by its gate while the good model keeps serving. The desired states carry
   relaxed budgets on purpose: only the device's own ones may count.
3. **REST**: schemathesis against the server's own OpenAPI document, every operation,
   positive and negative cases, every check (:mod:`edgeloop.lab.fuzz_rest`).

``robustness.serving_gaps`` counts the endpoint calls that failed during all of it.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import requests
from rich.console import Console
from rich.progress import Progress

from edgeloop.agent.endpoint_client import InferenceClient
from edgeloop.agent.protocol import (
    Channel,
    Hello,
    Phase,
    Report,
    Telemetry,
    decode,
    encode,
    subscription,
    topic,
)
from edgeloop.lab import bad_models
from edgeloop.lab.bench import Figure
from edgeloop.lab.faults import DesiredPublisher, control_plane
from edgeloop.lab.fuzz_mqtt import payloads
from edgeloop.lab.launch import AgentProcess, ServerProcess

DEVICE_ID = "robust-0"
PROBE_ID = "probe-0"


def run(args: Any) -> list[Figure]:
    root = args.workdir / "bench-robustness"
    shutil.rmtree(root, ignore_errors=True)
    console = Console(width=None if sys.stdout.isatty() else 200)
    count = getattr(args, "payloads", None) or 100_000
    examples = getattr(args, "rest_examples", None) or 500
    result = campaign(root, count, examples, console=console)
    args.extra = {"robustness": result.details()}
    return result.figures(count)


@dataclass
class Result:
    mqtt_payloads: int = 0
    mqtt_crashes: int = 0
    mqtt_checks: dict[str, str] = field(default_factory=dict)
    server_dropped: dict[str, int] = field(default_factory=dict)
    rest_cases: int | None = None
    rest_5xx: int | None = None
    rest_contract_failures: int | None = None
    rest_failures: list[str] = field(default_factory=list)
    bad_models: dict[str, str] = field(default_factory=dict)
    """case -> outcome (``refused by <gate>``, or what happened instead)."""
    refused: int = 0
    calls: int = 0
    gaps: int = 0
    gap_errors: list[str] = field(default_factory=list)

    def figures(self, count: int) -> list[Figure]:
        corpus = len(bad_models.CORPUS)
        return [
            Figure("robustness.mqtt_payloads", self.mqtt_payloads, "payloads", f">= {count}"),
            Figure("robustness.mqtt_crashes", self.mqtt_crashes, "processes", "<= 0"),
            Figure("robustness.rest_cases", self.rest_cases, "requests", ">= 10000"),
            Figure("robustness.rest_5xx", self.rest_5xx, "responses", "<= 0"),
            Figure(
                "robustness.rest_contract_failures", self.rest_contract_failures, "failures", "<= 0"
            ),
            Figure("robustness.bad_models", len(self.bad_models), "models", f">= {corpus}"),
            Figure("robustness.bad_models_refused", self.refused, "models", f">= {corpus}"),
            Figure("robustness.serving_gaps", self.gaps, "calls", "<= 0"),
            Figure("robustness.serving_calls", self.calls, "calls", ""),
        ]

    def details(self) -> dict[str, Any]:
        return {
            "mqtt_checks": self.mqtt_checks,
            "server_dropped": self.server_dropped,
            "bad_models": self.bad_models,
            "rest_failures": self.rest_failures[:50],
            "gap_errors": self.gap_errors[:50],
        }


def campaign(
    root: Path,
    count: int,
    rest_examples: int,
    *,
    console: Console | None = None,
    cases: tuple[bad_models.BadModel, ...] = bad_models.CORPUS,
) -> Result:
    """Run all three parts against one live server and agent (see the module docstring)."""
    console = console or Console()
    result = Result()
    with control_plane(root) as (server, device_port):
        uploader = bad_models.Uploader(server.url)
        # Uploads need the operator's token; Uploader takes none yet (lab/bad_models.py).
        uploader._http.headers.update(server.headers)
        planner = DesiredPublisher(device_port, DEVICE_ID, server.workdir / "tuf")

        def start_agent() -> AgentProcess:
            return AgentProcess(
                DEVICE_ID,
                bad_models.DEVICE,
                root,
                device_port,
                inferences=20,
                telemetry_interval_s=2,
                probation_s=1.0,
                server=server,
            )

        agent = start_agent()
        reports = ReportLog(device_port)
        caller: Caller | None = None
        try:
            revision = 1
            planner.publish(revision, bad_models.good(uploader, "good-1"))
            first = reports.wait(revision, 120)
            if first is None or not first.ok:
                raise RuntimeError(f"the good model did not commit ({first}):\n{agent.log_tail()}")
            caller = Caller(agent.workdir)
            caller.start()

            console.print(f"[bold]MQTT: {count:,} hostile payloads to the server and the agent[/]")
            mqtt_part(server, device_port, count, result, console)
            revision += 1
            planner.publish(
                revision, bad_models.good(uploader, "good-2", bad_models.WEIGHTS * 1.01)
            )
            second = reports.wait(revision, 120)
            result.mqtt_checks["agent installs a good model afterwards"] = (
                "ok" if second is not None and second.ok else f"no: {second}"
            )
            for process in (server, agent):
                alive = process.alive()
                result.mqtt_checks[f"{process.name} alive"] = "ok" if alive else "no"
            result.mqtt_crashes = sum(v != "ok" for v in result.mqtt_checks.values())
            serving = second.model if second is not None and second.ok else first.model

            console.print(f"[bold]bad models: {len(cases)} cases[/]")
            for case in cases:
                revision += 1
                try:
                    planner.publish(revision, case.make(uploader, f"bad-{case.name}"))
                except Exception as exc:
                    result.bad_models[case.name] = f"not sent: {exc}"
                    continue
                report = reports.wait(revision, 180)
                outcome = _outcome(case, report, serving)
                result.bad_models[case.name] = outcome
                result.refused += outcome == f"refused by {case.expect}"
                console.print(f"  {case.name:<18} expect {case.expect:<9} {outcome}")
                if not agent.alive():
                    result.bad_models[case.name] += "; the agent died"
                    result.refused -= outcome == f"refused by {case.expect}"
                    agent = start_agent()

            console.print(f"[bold]REST: schemathesis, {rest_examples} examples per operation[/]")
            rest_part(server.url, rest_examples, result, token=server.token)
        finally:
            if caller is not None:
                caller.stop()
                result.calls, result.gaps = caller.calls, caller.failures
                result.gap_errors = caller.errors
            agent.stop()
            reports.close()
            planner.close()
    return result


def _outcome(case: bad_models.BadModel, report: Report | None, serving: str) -> str:
    if report is None:
        return "no report"
    if report.ok:
        return "committed (accepted a bad model)"
    if report.running != serving:
        return f"refused by {report.gate}, but now running {report.running}"
    return f"refused by {report.gate}"


# --------------------------------------------------------------------------- MQTT


def mqtt_part(
    server: ServerProcess, device_port: int, count: int, result: Result, console: Console
) -> None:
    server_port = server.mqtt_port
    to_server = _client(server_port, "robustness-fuzz-server")
    to_agent = _client(device_port, "robustness-fuzz-agent")
    baseline = _ingested(server.url)
    sent_to_server = 0
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("payloads", total=count)
            for index, payload in enumerate(payloads(count, agent_id=DEVICE_ID)):
                agent_bound = payload.topic.endswith("/" + Channel.DESIRED.value)
                client = to_agent if agent_bound else to_server
                client.publish(payload.topic, payload.body, qos=1).wait_for_publish(10)
                sent_to_server += not agent_bound
                result.mqtt_payloads += 1
                if index % 1000 == 999:
                    # Pace by what the server says it handled: a broker queue that overflows
                    # would drop payloads that then never reached it.
                    _wait_ingested(server.url, baseline + sent_to_server - 200, 60)
                    progress.update(task, completed=index + 1)
            _wait_ingested(server.url, baseline + sent_to_server, 60)
    finally:
        for client in (to_server, to_agent):
            client.disconnect()
            client.loop_stop()
    health = _health(server.url)
    result.server_dropped = dict(health.get("dropped") or {})
    result.mqtt_checks["server ingests real messages afterwards"] = _probe_server(
        server, server_port
    )


def _client(port: int, client_id: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def _health(url: str) -> dict[str, Any]:
    try:
        return requests.get(f"{url}/healthz", timeout=5).json()
    except (requests.RequestException, ValueError):
        return {}


def _ingested(url: str) -> int:
    """Messages the server's bridge has taken off the broker: handled plus dropped."""
    health = _health(url)
    return int(health.get("messages_handled") or 0) + sum((health.get("dropped") or {}).values())


def _wait_ingested(url: str, target: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while _ingested(url) < target and time.monotonic() < deadline:
        time.sleep(0.05)


def _probe_server(server: ServerProcess, port: int) -> str:
    """A real device's hello, report and telemetry reach the database after the flood."""
    from edgeloop.lab.bad_models import DEVICE

    client = _client(port, "robustness-probe")
    try:
        messages = [
            (Channel.HELLO, Hello(device_id=PROBE_ID, agent_version="probe", profile=DEVICE)),
            (
                Channel.REPORT,
                Report(
                    device_id=PROBE_ID,
                    revision=7,
                    model="probe:1",
                    artifact_sha256="0" * 64,
                    ok=True,
                    phase=Phase.COMMITTED,
                    verified=True,
                ),
            ),
            (Channel.TELEMETRY, Telemetry(device_id=PROBE_ID, rss_mb=42, seq=1)),
        ]
        for channel, message in messages:
            client.publish(topic(PROBE_ID, channel), encode(message), qos=1).wait_for_publish(10)
        deadline = time.monotonic() + 30
        detail = "no device"
        while time.monotonic() < deadline:
            response = requests.get(
                f"{server.url}/api/v1/devices/{PROBE_ID}", headers=server.headers, timeout=5
            )
            if response.status_code == 200:
                device = response.json()
                report = device.get("latest_report") or {}
                telemetry = device.get("latest_telemetry") or {}
                if report.get("revision") == 7 and telemetry.get("seq") == 1:
                    return "ok"
                detail = f"report {report.get('revision')}, telemetry {telemetry.get('seq')}"
            time.sleep(0.2)
        return f"no: {detail}"
    finally:
        client.disconnect()
        client.loop_stop()


class ReportLog:
    """The device's reports as they arrive on its broker, by revision."""

    def __init__(self, port: int) -> None:
        self._reports: dict[int, Report] = {}
        self._changed = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="robustness-reports")
        self.client.on_connect = lambda client, *args: client.subscribe(
            subscription(Channel.REPORT), qos=1
        )
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            report = decode(message.payload, message.topic)
        except Exception:
            return
        if isinstance(report, Report):
            with self._changed:
                self._reports[report.revision] = report
                self._changed.notify_all()

    def wait(self, revision: int, timeout_s: float) -> Report | None:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while revision not in self._reports:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)
            return self._reports[revision]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --------------------------------------------------------------------------- serving


class Caller(threading.Thread):
    """Calls the device's inference endpoint every 20 ms; counts the calls that fail."""

    def __init__(self, device_dir: Path, interval_s: float = 0.02) -> None:
        super().__init__(name="caller", daemon=True)
        url = (device_dir / "endpoint.url").read_text().strip()
        self.client = InferenceClient(url, timeout_s=10)
        self.interval_s = interval_s
        self.calls = 0
        self.failures = 0
        self.errors: list[str] = []
        self._halt = threading.Event()
        self._x = np.random.default_rng(5).normal(size=(1, bad_models.FEATURES)).astype(np.float32)

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            self.calls += 1
            try:
                self.client.infer({"x": self._x})
            except Exception as exc:
                self.failures += 1
                self.errors.append(f"{time.strftime('%H:%M:%S')}: {exc}")

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=15)
        self.client.close()


# --------------------------------------------------------------------------- REST


def rest_part(url: str, examples: int, result: Result, *, token: str | None = None) -> None:
    """Schemathesis in a process of its own: no thread of the bench (the endpoint caller, MQTT
    clients) shares its interpreter, and a fuzzer that runs out of memory ends only itself.
    ``token``: the operator's, so requests reach past authentication."""
    import multiprocessing

    from edgeloop.lab.fuzz_rest import fuzz_rest

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        outcome = pool.apply(
            fuzz_rest,
            (url,),
            {"examples": examples, "known": {"device_id": [PROBE_ID, "fuzz-1"]}, "token": token},
        )
    result.rest_cases = outcome.cases
    result.rest_5xx = outcome.server_errors
    result.rest_contract_failures = len(outcome.failures) + len(outcome.errors)
    result.rest_failures = [str(f) for f in outcome.failures] + outcome.errors
