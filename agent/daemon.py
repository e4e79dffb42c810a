"""The device agent: one MQTT connection, one update worker, one local endpoint.

Threads: paho's network thread only decodes messages and hands ``Desired`` to the worker
through a one-slot mailbox (newest wins, so a burst of revisions applies only the last); the
worker runs the update flow (:mod:`edgeloop.agent.updater`); the endpoint serves applications
throughout; a timer thread samples telemetry, the in-process applications' calls included
(``telemetry.control``, from their reports: :mod:`edgeloop.agent.local`). Reports and
telemetry go to the SQLite outbox first and are published from there, so a broker outage loses
nothing. Nothing a peer sends can crash the agent or silence it: an invalid message is logged,
counted by reason and dropped (the endpoint's ``/v1/health`` shows the counts), and every paho
callback is guarded, because an exception escaping one ends paho's network thread: the agent
would stay online through its keepalive yet never hear another desired state.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from typing import Literal

import onnxruntime as ort
import paho.mqtt.client as mqtt
import psutil
from pydantic import BaseModel

from . import __version__
from .config import AgentConfig
from .endpoint import InferenceEndpoint
from .host import ModelHost
from .local import ControlAccount
from .outbox import Outbox, OutboxPublisher
from .protocol import (
    Channel,
    Desired,
    Hello,
    Intake,
    Phase,
    ProtocolError,
    Refusal,
    Report,
    Status,
    Telemetry,
    encode,
    topic,
)
from .releases import Releases, device_session
from .sensors import EnergyMeter, find_sensor, read_temperature_c
from .states import UpdateRecord, write_atomic
from .updater import Hooks, Updater

log = logging.getLogger("edgeloop.agent")


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        config.workdir.mkdir(parents=True, exist_ok=True)
        self.host = ModelHost()
        http = device_session(config)
        self.releases = Releases(config, http)
        if not self.releases.trusted():
            log.warning(
                "no pinned root metadata in %s or no --server: every update will be refused "
                "on the signature gate until the device is enrolled (edgeloop-agent enrol)",
                config.trust_dir,
            )
        self.updater = Updater(
            config,
            self.host,
            Hooks(on_state=self._on_state, on_report=self._on_report),
            resolve=self.releases.resolve,
            http=http,
        )
        self.outbox = Outbox(config.workdir / "outbox.sqlite", config.outbox_max_messages)
        self._mailbox: Desired | None = None
        self._mail = threading.Condition()
        self._stop = threading.Event()
        self._process = psutil.Process()
        self._process.cpu_percent()
        self._telemetry_seq = self._last_seq()
        self._sensor = find_sensor()
        self.control = ControlAccount(config.workdir)
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
        if config.mqtt_tls:
            config.identity.mqtt_tls().apply(self.client)
        else:
            log.warning(
                "MQTT to %s in the clear and without a certificate: any client of that broker "
                "can read this device's traffic; production brokers take mqtt_tls = true",
                config.broker,
            )
        self.intake = Intake(log)
        # Each callback is guarded; this is the net under the guard.
        self.client.suppress_exceptions = True
        self.client.on_connect = self.intake.guard(self._on_connect)
        self.client.on_message = self.intake.guard(self._on_message)
        self.publisher = OutboxPublisher(self.outbox, self.client)
        self.endpoint = InferenceEndpoint(
            self.host,
            config.endpoint_port,
            health=lambda: {
                "state": self.updater.record.state.value,
                "revision": self.updater.record.revision,
                "mqtt_connected": self.client.is_connected(),
                **self.intake.stats().model_dump(mode="json"),
            },
            rollback=self._operator_rollback,
        )

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        """Recover, connect and serve until :meth:`stop`; reconnects on its own."""
        self.updater.start()
        self.endpoint.start()
        try:
            write_atomic(self.config.workdir / "endpoint.url", self.endpoint.url.encode())
        except OSError as exc:  # a full disk: local tools lose the hint, the device keeps serving
            log.error("cannot write %s/endpoint.url: %s", self.config.workdir, exc)
        self.client.connect_async(
            self.config.broker_host, self.config.broker_port, keepalive=self.config.keepalive_s
        )
        self.client.loop_start()
        self.publisher.start()
        telemetry = threading.Thread(target=self._telemetry_loop, name="telemetry", daemon=True)
        telemetry.start()
        try:
            self.updater.run()  # an update interrupted by the last stop goes on first
            while not self._stop.is_set():
                desired = self._next_desired()
                if desired is not None:
                    self.updater.apply(desired)
        finally:
            self.updater.stopping.set()
            self.endpoint.stop()
            self.publisher.stop(timeout=2.0)
            self._publish_status(self._status(Phase.OFFLINE, online=False))
            self.client.disconnect()
            self.client.loop_stop()
            self.outbox.close()

    def stop(self) -> None:
        self._stop.set()
        self.updater.stopping.set()
        with self._mail:
            self._mail.notify_all()

    # ------------------------------------------------------------------ MQTT callbacks

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        log.info("connected to %s", self.config.broker)
        client.subscribe(self._topic(Channel.DESIRED), qos=1)
        record = self.updater.record
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
            current_model=record.committed.label if record.committed else None,
            tags=self.config.tags,
            application=self.config.application,
        )
        client.publish(self._topic(Channel.HELLO), encode(hello), qos=1)
        self._publish_status(self._status(record.state, record))
        self.publisher.wake()

    def _on_message(self, client, userdata, message) -> None:
        self.intake.receive(message.topic, message.payload, self._post)

    def _post(self, desired: Hello | Status | Desired | Report | Telemetry) -> None:
        if not isinstance(desired, Desired):
            raise ProtocolError(
                f"a {desired.type!r} message is for the server; a device takes only 'desired'",
                Refusal.WRONG_TOPIC,
            )
        with self._mail:
            self._mailbox = desired
            self._mail.notify_all()

    # ------------------------------------------------------------------ update flow hooks

    def _next_desired(self) -> Desired | None:
        with self._mail:
            while self._mailbox is None and not self._stop.is_set():
                self._mail.wait(timeout=1.0)
            desired, self._mailbox = self._mailbox, None
            return desired

    def _on_state(self, record: UpdateRecord) -> None:
        self._publish_status(self._status(record.state, record))

    def _on_report(self, report: Report) -> None:
        self._enqueue(Channel.REPORT, report)

    def _operator_rollback(self) -> dict:
        record = self.updater.operator_rollback()
        return {
            "state": record.state.value,
            "running": record.committed.label if record.committed else None,
            "reason": record.reason,
        }

    # ------------------------------------------------------------------ telemetry

    def _telemetry_loop(self) -> None:
        since = time.monotonic()
        meter = EnergyMeter(self._sensor)
        meter.start()
        cpu_before = time.process_time()
        while not self._stop.wait(self.config.telemetry_interval_s):
            try:
                cpu_now = time.process_time()
                self._enqueue(
                    Channel.TELEMETRY, self._telemetry(since, meter, cpu_now - cpu_before)
                )
            except Exception:  # telemetry must never take the agent down
                log.exception("telemetry sample failed")
            since, cpu_before = time.monotonic(), time.process_time()
            meter.start()

    def _telemetry(self, since: float, meter: EnergyMeter, cpu_seconds: float) -> Telemetry:
        """One sample over the interval since ``since``.

        With live traffic, latency and energy per inference are the interval's own (energy
        from the sensor over the interval, or the CPU-time estimate, divided by the requests
        served); without, the last validation figures stand in, marked as such.
        """
        window = self.host.window(since)
        record = self.updater.record
        measured = record.measured if record.state == Phase.COMMITTED else None
        latency = window.latency
        source: Literal["live", "validation"] = "live"
        energy = measured.energy if measured else None
        if latency is not None:
            energy = meter.stop(cpu_seconds=cpu_seconds, inferences=window.requests)
        elif measured is not None:
            latency, source = measured.latency, "validation"
        self._telemetry_seq += 1
        model = self.host.model
        return Telemetry(
            device_id=self.config.device_id,
            model=model.label if model else None,
            latency=latency,
            latency_source=source if latency is not None else None,
            inferences_per_s=window.per_second,
            rss_mb=self._process.memory_info().rss / 2**20,
            cpu_percent=self._process.cpu_percent(),
            temperature_c=read_temperature_c(),
            energy=energy,
            seq=self._telemetry_seq,
            buffered=len(self.outbox),
            dropped=self.outbox.dropped,
            control=self.control.interval(self.config.profile.deadline_ms),
        )

    def _last_seq(self) -> int:
        """Continue the telemetry counter across restarts (it lives in the outbox's meta)."""
        return self.outbox.counter("telemetry_seq")

    # ------------------------------------------------------------------ publishing

    def _enqueue(self, channel: Channel, message: BaseModel) -> None:
        if channel == Channel.TELEMETRY:
            self.outbox.set_counter("telemetry_seq", self._telemetry_seq)
        self.outbox.put(self._topic(channel), encode(message), qos=1)
        self.publisher.wake()

    def _status(
        self, phase: Phase, record: UpdateRecord | None = None, online: bool = True
    ) -> Status:
        record = record or self.updater.record
        return Status(
            device_id=self.config.device_id,
            online=online,
            phase=phase,
            revision=record.revision,
            detail=record.reason or "",
        )

    def _publish_status(self, status: Status) -> None:
        """Status is state, not history: retained, latest wins, re-sent on every connect."""
        if self.client.is_connected():
            self.client.publish(self._topic(Channel.STATUS), encode(status), qos=1, retain=True)

    def _topic(self, channel: Channel) -> str:
        return topic(self.config.device_id, channel)
