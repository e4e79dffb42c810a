"""The device agent: one MQTT connection, one worker that applies desired states.

Threads: paho's network thread only decodes messages and hands ``Desired`` to the worker
through a one-slot mailbox (newest wins, so a burst of revisions applies only the last);
the worker downloads, validates, measures and reports; a timer thread sends telemetry.
Nothing a peer sends can crash the agent: an invalid message is logged and dropped.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import threading
from pathlib import Path

import onnxruntime as ort
import paho.mqtt.client as mqtt
import psutil
import requests
from pydantic import BaseModel

from . import __version__
from .config import AgentConfig
from .errors import AgentError, ArtifactError, GateError, TransportError
from .fetch import fetch
from .protocol import (
    Channel,
    Desired,
    Hello,
    ModelManifest,
    Phase,
    ProtocolError,
    Report,
    Status,
    Telemetry,
    decode,
    encode,
    topic,
)
from .runtime import measure, open_session, peak_rss_mb
from .sensors import EnergyMeter, find_sensor
from .validate import check_golden, check_io, load_golden

log = logging.getLogger("edgeloop.agent")

FETCH_ATTEMPTS = 4


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` so that a crash leaves either the old or the new content, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.workdir = config.workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.workdir / "state.json"
        self.state = self._load_state()
        self._mailbox: Desired | None = None
        self._mail = threading.Condition()
        self._stop = threading.Event()
        self._process = psutil.Process()
        self._process.cpu_percent()
        self._last_report: Report | None = None
        self._session: ort.InferenceSession | None = None
        self._sensor = find_sensor()
        self._http = requests.Session()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"edgeloop-agent-{config.device_id}",
            protocol=mqtt.MQTTv311,
        )
        self.client.will_set(
            self._topic(Channel.STATUS),
            encode(Status(device_id=config.device_id, online=False, phase=Phase.OFFLINE)),
            qos=1,
            retain=True,
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        """Connect and serve until :meth:`stop`; reconnects on its own when the broker drops."""
        self.client.connect_async(
            self.config.broker_host, self.config.broker_port, keepalive=self.config.keepalive_s
        )
        self.client.loop_start()
        telemetry = threading.Thread(target=self._telemetry_loop, name="telemetry", daemon=True)
        telemetry.start()
        try:
            while not self._stop.is_set():
                desired = self._next_desired()
                if desired is not None:
                    self._apply(desired)
        finally:
            self._publish(Channel.STATUS, self._status(Phase.OFFLINE, online=False), retain=True)
            self.client.disconnect()
            self.client.loop_stop()

    def stop(self) -> None:
        self._stop.set()
        with self._mail:
            self._mail.notify_all()

    # ------------------------------------------------------------------ MQTT callbacks

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        log.info("connected to %s", self.config.broker)
        client.subscribe(self._topic(Channel.DESIRED), qos=1)
        hello = Hello(
            device_id=self.config.device_id,
            agent_version=__version__,
            profile=self.config.profile,
            platform={
                "arch": platform.machine(),
                "system": platform.system(),
                "cores": os.cpu_count() or 1,
                "memory_mb": round(psutil.virtual_memory().total / 2**20),
                "onnxruntime": ort.__version__,
            },
            available_providers=ort.get_available_providers(),
            current_model=self.state.get("model"),
        )
        self._publish(Channel.HELLO, hello)
        phase = Phase(self.state.get("phase", Phase.IDLE))
        self._publish(Channel.STATUS, self._status(phase), retain=True)

    def _on_message(self, client, userdata, message) -> None:
        try:
            desired = decode(message.payload, message.topic)
        except ProtocolError as exc:
            log.warning("dropped message on %s: %s", message.topic, exc)
            return
        if not isinstance(desired, Desired):
            log.warning("dropped %s message on the desired topic", desired.type)
            return
        with self._mail:
            self._mailbox = desired
            self._mail.notify_all()

    # ------------------------------------------------------------------ applying a model

    def _next_desired(self) -> Desired | None:
        with self._mail:
            while self._mailbox is None and not self._stop.is_set():
                self._mail.wait(timeout=1.0)
            desired, self._mailbox = self._mailbox, None
            return desired

    def _apply(self, desired: Desired) -> None:
        manifest = desired.model
        last = self._last_report
        if last is not None and last.ok and last.revision == desired.revision:
            log.info("revision %d is already running", desired.revision)
            return
        if manifest is None:
            self._save_state(revision=desired.revision, model=None, ok=True, phase=Phase.IDLE)
            self._publish(Channel.STATUS, self._status(Phase.IDLE, desired.revision), retain=True)
            return
        label = f"{manifest.name}:{manifest.version}"
        log.info("applying revision %d: %s", desired.revision, label)
        report = self._try_apply(desired, manifest)
        self._last_report = report
        self._save_state(
            revision=desired.revision,
            model=label if report.ok else None,
            ok=report.ok,
            phase=report.phase,
        )
        self._publish(Channel.REPORT, report)
        detail = report.error or ""
        self._publish(
            Channel.STATUS, self._status(report.phase, desired.revision, detail), retain=True
        )

    def _try_apply(self, desired: Desired, manifest: ModelManifest) -> Report:
        profile = desired.profile
        label = f"{manifest.name}:{manifest.version}"
        outcome = functools.partial(
            Report,
            device_id=self.config.device_id,
            revision=desired.revision,
            model=label,
            artifact_sha256=manifest.artifact.sha256,
        )
        self._publish(
            Channel.STATUS, self._status(Phase.DOWNLOADING, desired.revision), retain=True
        )
        try:
            model_path = self._fetch_with_retries(manifest)
            golden_path = self._fetch_with_retries(manifest, golden=True)
        except AgentError as exc:
            log.error("download failed: %s", exc)
            return outcome(ok=False, phase=Phase.FAILED, verified=False, error=str(exc))
        self._publish(Channel.STATUS, self._status(Phase.VALIDATING, desired.revision), retain=True)
        try:
            session = open_session(model_path, profile)
            check_io(session, manifest)
            golden_inputs, golden_outputs = load_golden(golden_path)
            golden_err = check_golden(session, golden_inputs, golden_outputs, manifest)
        except GateError as exc:
            log.error("validation failed: %s", exc)
            return outcome(ok=False, phase=Phase.FAILED, verified=True, error=str(exc))
        meter = EnergyMeter(self._sensor)
        meter.start()
        measurement = measure(session, golden_inputs, self.config.inferences)
        energy = meter.stop(cpu_seconds=measurement.cpu_seconds, inferences=measurement.latency.n)
        rss = peak_rss_mb()
        size_kb = manifest.artifact.size / 1024
        budget = {
            "latency": measurement.latency.p95_ms <= profile.latency_budget_ms,
            "memory": rss <= profile.memory_budget_mb,
            "size": profile.model_size_budget_kb is None or size_kb <= profile.model_size_budget_kb,
        }
        self._session = session
        log.info(
            "running %s: p50 %.3f ms, p95 %.3f ms, peak RSS %.1f MB",
            label,
            measurement.latency.p50_ms,
            measurement.latency.p95_ms,
            rss,
        )
        return outcome(
            ok=True,
            phase=Phase.RUNNING,
            verified=True,
            golden_max_abs_err=golden_err,
            latency=measurement.latency,
            peak_rss_mb=rss,
            energy=energy,
            within_budget=all(budget.values()),
            budget_detail=budget,
        )

    def _fetch_with_retries(self, manifest: ModelManifest, golden: bool = False) -> Path:
        ref = manifest.golden if golden else manifest.artifact
        delay = 0.5
        for attempt in range(1, FETCH_ATTEMPTS + 1):
            try:
                return fetch(ref, self.workdir / "blobs", self._http)
            except TransportError as exc:
                if attempt == FETCH_ATTEMPTS or self._stop.is_set():
                    raise
                log.warning("attempt %d: %s; retrying in %.1fs", attempt, exc, delay)
                self._stop.wait(delay)
                delay *= 2
            except ArtifactError:
                raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ telemetry and state

    def _telemetry_loop(self) -> None:
        while not self._stop.wait(self.config.telemetry_interval_s):
            report = self._last_report
            running = report if report is not None and report.ok else None
            self._publish(
                Channel.TELEMETRY,
                Telemetry(
                    device_id=self.config.device_id,
                    model=running.model if running else None,
                    latency=running.latency if running else None,
                    rss_mb=self._process.memory_info().rss / 2**20,
                    cpu_percent=self._process.cpu_percent(),
                    energy=running.energy if running else None,
                ),
            )

    def _status(
        self, phase: Phase, revision: int | None = None, detail: str = "", online: bool = True
    ) -> Status:
        return Status(
            device_id=self.config.device_id,
            online=online,
            phase=phase,
            revision=revision if revision is not None else self.state.get("revision"),
            detail=detail,
        )

    def _publish(self, channel: Channel, message: BaseModel, retain: bool = False) -> None:
        self.client.publish(self._topic(channel), encode(message), qos=1, retain=retain)

    def _topic(self, channel: Channel) -> str:
        return topic(self.config.device_id, channel)

    def _load_state(self) -> dict:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("ignoring unreadable state file %s: %s", self.state_path, exc)
            return {}

    def _save_state(self, **state: object) -> None:
        self.state = {"schema": 1, **state}
        write_atomic(self.state_path, json.dumps(self.state, default=str).encode())
