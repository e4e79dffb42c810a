"""The server's one MQTT connection: ingests device messages, publishes desired states.

Device messages are decoded with the protocol module and handed to :class:`Fleet`. Nothing a
device sends can stop ingestion: a payload that does not follow the contract, or one whose
storing fails, is logged, counted by reason (:attr:`MqttBridge.intake`, shown by
``/healthz``) and dropped, and every paho callback is guarded, because an exception escaping
one ends paho's network thread while the process still looks connected. A dropped QoS 1
message is acknowledged like any other, so a persistent session never redelivers it.

On every (re)connect the bridge re-sends each device's desired state: the broker may have
lost its retained messages (a restart without persistence), or the server may have crashed
between a commit and its publish.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections import Counter

import paho.mqtt.client as mqtt

from edgeloop.agent.identity import MqttTls
from edgeloop.agent.protocol import (
    Channel,
    Desired,
    Hello,
    Intake,
    ProtocolError,
    Refusal,
    Report,
    Status,
    Telemetry,
    encode,
    subscription,
    topic,
)

from .fleet import Fleet

log = logging.getLogger("edgeloop.server.mqtt")

INBOUND = (Channel.HELLO, Channel.STATUS, Channel.REPORT, Channel.TELEMETRY)


class MqttBridge:
    def __init__(
        self,
        fleet: Fleet,
        host: str,
        port: int,
        session_key: str | None = None,
        tls: MqttTls | None = None,
    ) -> None:
        """``session_key`` names a persistent broker session (e.g. the database URL): while
        this server is down the broker queues the devices' QoS 1 reports for it, and the
        restarted server reads them. Without one, the session is clean and throwaway.
        ``tls``: the server's certificate (CN ``edgeloop-server``) for a TLS broker."""
        self.fleet = fleet
        self.host, self.port = host, port
        self.connected = threading.Event()
        self.intake = Intake(log, failure_reason="store_failed")
        self._handled_by_channel: Counter[str] = Counter()
        self._handled_lock = threading.Lock()
        self._republish = threading.Event()
        self._stopping = threading.Event()
        self._republisher = threading.Thread(
            target=self._republish_loop, name="mqtt-republish", daemon=True
        )
        if session_key is None:
            client_id, clean = f"edgeloop-server-{uuid.uuid4().hex[:8]}", True
        else:
            digest = hashlib.sha256(session_key.encode()).hexdigest()[:12]
            client_id, clean = f"edgeloop-server-{digest}", False
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=clean,
        )
        self.client.max_queued_messages_set(0)
        if tls is not None:
            tls.apply(self.client)
        else:
            log.warning(
                "MQTT to %s:%d in the clear and without a certificate; production brokers "
                "take --mqtt-ca/--mqtt-cert/--mqtt-key (docs/security.md)",
                host,
                port,
            )
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        # Each callback is guarded; this is the net under the guard.
        self.client.suppress_exceptions = True
        self.client.on_connect = self.intake.guard(self._on_connect)
        self.client.on_disconnect = self.intake.guard(self._on_disconnect)
        self.client.on_message = self.intake.guard(self._on_message)
        fleet.publish = self.publish_desired
        fleet.clear_desired = self.clear_desired

    def start(self, timeout_s: float = 10.0) -> None:
        self._republisher.start()
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(timeout_s):
            raise ConnectionError(
                f"MQTT broker {self.host}:{self.port} not reachable within {timeout_s:.0f}s; "
                "start Mosquitto or pass --mqtt HOST:PORT"
            )

    def stop(self) -> None:
        self._stopping.set()
        self._republish.set()
        self.client.disconnect()
        self.client.loop_stop()
        if self._republisher.is_alive():
            self._republisher.join(timeout=10)

    def handled_by_channel(self) -> dict[str, int]:
        """Messages stored, by channel (``/metrics``): what ``intake`` counts as handled."""
        with self._handled_lock:
            return dict(self._handled_by_channel)

    def publish_desired(self, desired: Desired) -> None:
        """Retained at QoS 1, so the device gets it whenever it (re)connects."""
        self.client.publish(
            topic(desired.device_id, Channel.DESIRED), encode(desired), qos=1, retain=True
        )

    def clear_desired(self, device_id: str) -> None:
        """An empty retained payload deletes the retained desired state (a revoked device)."""
        self.client.publish(topic(device_id, Channel.DESIRED), b"", qos=1, retain=True)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        client.subscribe([(subscription(channel), 1) for channel in INBOUND])
        self.connected.set()
        self._republish.set()
        log.info("bridge connected to %s:%d", self.host, self.port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if not self._stopping.is_set():
            log.warning("bridge lost the broker (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, message) -> None:
        self.intake.receive(message.topic, message.payload, self._store)

    def _store(self, message: Hello | Status | Desired | Report | Telemetry) -> None:
        match message:
            case Hello():
                self.fleet.on_hello(message)
            case Status():
                self.fleet.on_status(message)
            case Report():
                self.fleet.on_report(message)
            case Telemetry():
                self.fleet.on_telemetry(message)
            case _:
                raise ProtocolError(
                    f"a {message.type!r} message is for devices; the server does not take one",
                    Refusal.WRONG_TOPIC,
                )
        with self._handled_lock:
            self._handled_by_channel[message.type] += 1

    def _republish_loop(self) -> None:
        """Re-sends every desired state after each connect, off paho's network thread: it
        reads the database, and the network thread must keep reading the socket meanwhile."""
        while True:
            self._republish.wait()
            self._republish.clear()
            if self._stopping.is_set():
                return
            try:
                self.fleet.republish_all()
            except Exception:
                log.exception("re-sending desired states after a connect failed")
