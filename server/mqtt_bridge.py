"""The server's one MQTT connection: ingests device messages, publishes desired states.

Device messages are decoded with the protocol module and handed to :class:`Fleet`; any
payload that does not follow the contract is logged with the reason and dropped, and an
exception while storing one message never stops the bridge.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid

import paho.mqtt.client as mqtt

from edgeloop.agent.protocol import (
    Channel,
    Desired,
    Hello,
    ProtocolError,
    Report,
    Status,
    Telemetry,
    decode,
    encode,
    subscription,
    topic,
)

from .fleet import Fleet

log = logging.getLogger("edgeloop.server.mqtt")

INBOUND = (Channel.HELLO, Channel.STATUS, Channel.REPORT, Channel.TELEMETRY)


class MqttBridge:
    def __init__(self, fleet: Fleet, host: str, port: int, session_key: str | None = None) -> None:
        """``session_key`` names a persistent broker session (e.g. the database URL): while
        this server is down the broker queues the devices' QoS 1 reports for it, and the
        restarted server reads them. Without one, the session is clean and throwaway."""
        self.fleet = fleet
        self.host, self.port = host, port
        self.connected = threading.Event()
        self.dropped = 0
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
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *args: self.connected.clear()
        self.client.on_message = self._on_message
        fleet.publish = self.publish_desired

    def start(self, timeout_s: float = 10.0) -> None:
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(timeout_s):
            raise ConnectionError(
                f"MQTT broker {self.host}:{self.port} not reachable within {timeout_s:.0f}s; "
                "start Mosquitto or pass --mqtt HOST:PORT"
            )

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish_desired(self, desired: Desired) -> None:
        """Retained at QoS 1, so the device gets it whenever it (re)connects."""
        self.client.publish(
            topic(desired.device_id, Channel.DESIRED), encode(desired), qos=1, retain=True
        )

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        client.subscribe([(subscription(channel), 1) for channel in INBOUND])
        self.connected.set()
        log.info("bridge connected to %s:%d", self.host, self.port)

    def _on_message(self, client, userdata, message) -> None:
        try:
            parsed = decode(message.payload, message.topic)
        except ProtocolError as exc:
            self.dropped += 1
            log.warning("dropped message on %s: %s", message.topic, exc)
            return
        try:
            match parsed:
                case Hello():
                    self.fleet.on_hello(parsed)
                case Status():
                    self.fleet.on_status(parsed)
                case Report():
                    self.fleet.on_report(parsed)
                case Telemetry():
                    self.fleet.on_telemetry(parsed)
                case _:
                    self.dropped += 1
                    log.warning("dropped %s message sent by a device", parsed.type)
        except Exception:
            log.exception("failed to store %s from %s", parsed.type, parsed.device_id)
