"""Device identity on the broker, tried as a misbehaving device would.

:class:`Peer` is one paho client over TLS holding a certificate of a fleet CA (or none);
:func:`violations` plays every way one device could speak or listen for another against a
broker in the shipped secure configuration (``deploy/mosquitto-secure.conf`` with
``deploy/mosquitto.acl``) and says, for each, whether it was refused. MQTT 3.1.1 has no
"denied" answer to a publish, so refusal is shown by non-delivery, without sleeping on a guess:
after each forbidden message, an allowed one follows; Mosquitto handles one event at a time and
forwards in order, so once the allowed one arrives, the forbidden one would have arrived
before it. The test suite asserts it; ``edgeloop bench security`` counts it.
"""

from __future__ import annotations

import queue
import socket
import threading
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from edgeloop.agent.protocol import Channel, topic
from edgeloop.lab.broker import MosquittoBroker
from edgeloop.server.pki import SERVER_COMMON_NAME, CaDir


class Peer:
    """One paho client over TLS, trusting ``ca`` and presenting ``ca``'s certificate for
    ``name`` (none when ``name`` is None), recording what it receives."""

    def __init__(
        self,
        port: int,
        ca: CaDir,
        name: str | None,
        client_id: str = "",
        client_ca: CaDir | None = None,
        tls: bool = True,
        will: str | None = None,
    ) -> None:
        self.port = port
        self.received: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connected = threading.Event()
        self.closed = threading.Event()
        self.answered = threading.Event()  # CONNACK either way, or the broker hung up
        # No reconnecting behind the test's back: a refusal stays a refusal.
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        if will:
            self.client.will_set(will, b"offline", qos=1)
        own = client_ca or ca
        if tls:
            self.client.tls_set(
                ca_certs=str(ca.cert),
                certfile=str(own.issued_cert(name)) if name else None,
                keyfile=str(own.issued_key(name)) if name else None,
            )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda c, u, message: self.received.put(
            (message.topic, message.payload)
        )

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        (self.closed if reason_code.is_failure else self.connected).set()
        self.answered.set()

    def _on_disconnect(self, *args: object) -> None:
        self.closed.set()
        self.answered.set()

    def connect(self, timeout_s: float = 5) -> bool:
        """True once the broker accepts the connection; False when it refuses or hangs up."""
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=30)
        except OSError:  # ssl.SSLError included: the handshake itself was refused
            return False
        self.client.loop_start()
        if self.answered.wait(timeout_s) and not self.closed.is_set():
            return True
        self.close()
        return False

    def subscribe(self, name: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *args: done.set()
        self.client.subscribe(name, qos=1)
        assert done.wait(5), f"no SUBACK for {name}"

    def publish(self, name: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(name, payload, qos=1, retain=retain).wait_for_publish(5)

    def next_message(self, timeout_s: float = 5) -> tuple[str, bytes]:
        return self.received.get(timeout=timeout_s)

    def lose_power(self) -> None:
        """End the connection the way a device that loses power does: no DISCONNECT."""
        self.client.socket().shutdown(socket.SHUT_RDWR)
        assert self.closed.wait(5)
        self.client.loop_stop()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connected(broker: MosquittoBroker, ca: CaDir, name: str | None, **kwargs) -> Peer:
    peer = Peer(broker.port, ca, name, **kwargs)
    assert peer.connect(), f"{name} could not connect; see {broker.log_path}"
    return peer


def publish_once(
    broker: MosquittoBroker, ca: CaDir, name: str, topic_name: str, payload: bytes
) -> bool:
    """Connect as ``name``, publish once at QoS 1 and hang up. True once the broker has dealt
    with the message: acknowledged it (MQTT 3.1.1 has no way to say "denied"), or, for a
    denied one, possibly closed the connection instead (see docs/security.md)."""
    peer = connected(broker, ca, name)
    try:
        sent = peer.client.publish(topic_name, payload, qos=1)
        for _ in range(100):
            if sent.is_published() or peer.closed.is_set():
                return True
            peer.closed.wait(0.05)
        return False
    finally:
        peer.close()


def connects(broker: MosquittoBroker, ca: CaDir, name: str | None, **kwargs) -> bool:
    peer = Peer(broker.port, ca, name, **kwargs)
    accepted = peer.connect()
    peer.close()
    return accepted


@dataclass
class Violation:
    name: str
    refused: bool
    detail: str = ""


def violations(
    broker: MosquittoBroker, ca: CaDir, a: str = "dev-a", b: str = "dev-b"
) -> list[Violation]:
    """Device ``a`` (certificate issued) tries to act for device ``b`` (certificate issued)
    in every way the ACL forbids; also a client without a certificate. ``refused``: nothing
    of it reached the server or ``b``."""
    results: list[Violation] = []
    server = connected(broker, ca, SERVER_COMMON_NAME)
    server.subscribe(topic("+", Channel.HELLO).rsplit("/", 2)[0] + "/#")
    device_b = connected(broker, ca, b, client_id=f"edgeloop-agent-{b}")
    device_b.subscribe(topic(b, Channel.DESIRED))
    try:
        for channel in (Channel.HELLO, Channel.STATUS, Channel.REPORT, Channel.TELEMETRY):
            forged = topic(b, channel)
            publish_once(broker, ca, a, forged, b"forged")
            publish_once(broker, ca, a, topic(a, Channel.TELEMETRY), b"marker")
            got = _drain_until(server, (topic(a, Channel.TELEMETRY), b"marker"))
            leaked = [t for t, _ in got if t == forged]
            results.append(
                Violation(f"publish {b}'s {channel}", not leaked, f"{len(leaked)} got through")
            )
        publish_once(broker, ca, a, topic(b, Channel.DESIRED), b"forged desired")
        server.publish(topic(b, Channel.DESIRED), b"genuine")
        got = _drain_until(device_b, (topic(b, Channel.DESIRED), b"genuine"))
        results.append(
            Violation(f"publish {b}'s desired", b"forged desired" not in [p for _, p in got])
        )
        spy = connected(broker, ca, a)
        try:
            spy.subscribe(topic(b, Channel.DESIRED))
            spy.subscribe(topic("+", Channel.DESIRED))
            server.publish(topic(b, Channel.DESIRED), b"for b only")
            server.publish(topic(a, Channel.DESIRED), b"for a")
            got = _drain_until(spy, (topic(a, Channel.DESIRED), b"for a"))
            results.append(
                Violation(
                    f"subscribe to {b}'s desired",
                    all(t != topic(b, Channel.DESIRED) for t, _ in got),
                )
            )
        finally:
            spy.close()
        impostor = connected(broker, ca, a, client_id=f"edgeloop-agent-{b}")
        impostor.close()
        server.publish(topic(b, Channel.DESIRED), b"still yours")
        got = _drain_until(device_b, (topic(b, Channel.DESIRED), b"still yours"))
        results.append(
            Violation(f"take over {b}'s client id", not device_b.closed.is_set() and bool(got))
        )
        will = Peer(broker.port, ca, a, will=topic(b, Channel.STATUS))
        if will.connect():
            will.lose_power()
        publish_once(broker, ca, a, topic(a, Channel.TELEMETRY), b"marker")
        got = _drain_until(server, (topic(a, Channel.TELEMETRY), b"marker"))
        results.append(
            Violation(
                f"leave a last will as {b}", all(t != topic(b, Channel.STATUS) for t, _ in got)
            )
        )
        results.append(Violation("connect without a certificate", not connects(broker, ca, None)))
        results.append(Violation("connect in the clear", not connects(broker, ca, None, tls=False)))
    finally:
        device_b.close()
        server.close()
    return results


def _drain_until(
    peer: Peer, marker: tuple[str, bytes], timeout_s: float = 5
) -> list[tuple[str, bytes]]:
    """Messages ``peer`` received up to and including ``marker`` (raises if it never comes)."""
    got: list[tuple[str, bytes]] = []
    while True:
        message = peer.next_message(timeout_s)
        got.append(message)
        if message == marker:
            return got
