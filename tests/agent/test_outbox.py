"""The agent's offline buffer against real SQLite files, a real Mosquitto and a real kill -9.

Payloads carry a sequence number, so every check is on content: which messages arrived, and
in which order each was *first* delivered (duplicates are allowed: the contract is
at-least-once).
"""

from __future__ import annotations

import itertools
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgeloop.agent.outbox import Outbox, OutboxPublisher
from edgeloop.lab.broker import Broker, MosquittoBroker, find_mosquitto

OUTAGE_S = 5.0
"""How long the broker is down in the outage test."""
BACKLOG = 500
"""Messages queued before the publisher starts in the drain test."""
KILLED_PUTS = 200
"""Messages a process puts right before it SIGKILLs itself."""

needs_mosquitto = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")


def payload(seq: int) -> bytes:
    return f"seq={seq:06d}".encode()


def seq_of(data: bytes) -> int:
    assert data.startswith(b"seq="), data
    return int(data[4:])


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Subscriber:
    """A QoS 1 subscriber that records every delivery, duplicates included, and subscribes
    again on every (re)connect."""

    def __init__(self, port: int, topic: str) -> None:
        self.topic = topic
        self.received: list[int] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(5), "no SUBACK"

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_message(self, client, userdata, message) -> None:
        with self.lock:
            self.received.append(seq_of(message.payload))

    def first_seen(self) -> list[int]:
        """Sequence numbers in the order of their first delivery."""
        with self.lock:
            return list(dict.fromkeys(self.received))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Publisher:
    """A paho client the way the agent runs it (loop_start, reconnect on its own, wake on
    connect) with an :class:`OutboxPublisher` on top."""

    def __init__(self, port: int, outbox: Outbox, gate: threading.Event | None = None) -> None:
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}"
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        if gate is not None:  # (re)connect only while the gate is open
            self.client.on_pre_connect = lambda client, userdata: gate.wait(10)
        self.publisher = OutboxPublisher(outbox, self.client)
        self.client.on_connect = lambda *args: self.publisher.wake()
        self.publisher.start()
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()

    def close(self) -> None:
        self.publisher.stop(2)
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture()
def topic() -> str:
    return f"edgeloop/test/outbox/{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.sqlite") as box:
        yield box


def assert_complete_in_order(first_seen: list[int], count: int) -> None:
    missing = sorted(set(range(count)) - set(first_seen))
    assert not missing, f"{len(missing)} lost, first {missing[:10]}"
    overtaken = [(a, b) for a, b in itertools.pairwise(first_seen) if b != a + 1]
    assert first_seen == list(range(count)), f"first deliveries out of order at {overtaken[:5]}"


# ---------------------------------------------------------------------------- SQLite only


def test_entries_survive_reopening_and_come_back_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as box:
        ids = [box.put(f"t/{i % 3}", payload(i), qos=i % 2) for i in range(50)]
        assert ids == sorted(ids) and len(set(ids)) == 50
        box.ack(ids[:10])
    with Outbox(path) as box:
        entries = box.peek(100)
        assert len(box) == 40
        assert [e.id for e in entries] == ids[10:]
        assert [seq_of(e.payload) for e in entries] == list(range(10, 50))
        assert [(e.topic, e.qos) for e in entries] == [(f"t/{i % 3}", i % 2) for i in range(10, 50)]
        assert all(isinstance(e.payload, bytes) for e in entries)
        assert [e.id for e in box.peek(5, after=ids[20])] == ids[21:26]
        assert box.dropped == 0


def test_a_file_without_the_row_count_gets_it_on_open(tmp_path: Path) -> None:
    """Files written before the count was kept in ``meta`` (or by hand) are counted once."""
    path = tmp_path / "outbox.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
        " payload BLOB NOT NULL, qos INTEGER NOT NULL, created REAL NOT NULL);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
    )
    db.executemany(
        "INSERT INTO messages (topic, payload, qos, created) VALUES ('t', ?, 1, 0)",
        [(payload(i),) for i in range(7)],
    )
    db.commit()
    db.close()
    with Outbox(path, max_messages=8) as box:
        assert len(box) == 7
        box.put("t", payload(7))
        box.put("t", payload(8))
        assert len(box) == 8 and box.dropped == 1
        assert [seq_of(e.payload) for e in box.peek(100)] == list(range(1, 9))
        with pytest.raises(ValueError):
            box.set_counter("_rows", 0)


def test_concurrent_puts_from_threads_are_all_kept(outbox: Outbox) -> None:
    def producer(worker: int) -> None:
        for i in range(50):
            outbox.put("t", payload(worker * 1000 + i))

    threads = [threading.Thread(target=producer, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seqs = [seq_of(e.payload) for e in outbox.peek(1000)]
    assert len(outbox) == 200
    assert sorted(seqs) == sorted(w * 1000 + i for w in range(4) for i in range(50))
    for w in range(4):  # each thread's own puts keep their order
        mine = [s for s in seqs if s // 1000 == w]
        assert mine == sorted(mine)


def test_bound_drops_the_oldest_counts_them_and_the_count_persists(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path, max_messages=10) as box:
        for i in range(13):
            box.put("t", payload(i))
        assert len(box) == 10
        assert [seq_of(e.payload) for e in box.peek(100)] == list(range(3, 13))
        assert box.dropped == 3
        box.ack([e.id for e in box.peek(4)])  # room again: the next puts drop nothing
        for i in range(13, 17):
            box.put("t", payload(i))
        assert box.dropped == 3
        box.put("t", payload(17))
        assert box.dropped == 4
    with Outbox(path, max_messages=10) as box:
        assert box.dropped == 4
        assert [seq_of(e.payload) for e in box.peek(100)] == list(range(8, 18))


def test_put_refuses_what_paho_would_refuse_later(outbox: Outbox) -> None:
    for topic, qos in [("a/+/b", 1), ("a/#", 1), ("", 1), ("t", 3)]:
        with pytest.raises(ValueError):
            outbox.put(topic, b"x", qos=qos)
    with pytest.raises(TypeError):
        outbox.put("t", "text")  # type: ignore[arg-type]
    assert len(outbox) == 0


def test_kill_9_right_after_put_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from edgeloop.agent.outbox import Outbox\n"
        "box = Outbox(Path(sys.argv[1]))\n"
        f"for i in range({KILLED_PUTS}):\n"
        "    box.put('t', b'seq=%06d' % i)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(path)], timeout=60)
    assert result.returncode == -signal.SIGKILL
    with Outbox(path) as box:
        assert len(box) == KILLED_PUTS
        assert [seq_of(e.payload) for e in box.peek(KILLED_PUTS + 1)] == list(range(KILLED_PUTS))


# ---------------------------------------------------------------------------- with a broker


@needs_mosquitto
def test_publisher_drains_a_backlog_in_order_and_empties_the_outbox(
    mosquitto: Broker, outbox: Outbox, topic: str
) -> None:
    for i in range(BACKLOG):
        outbox.put(topic, payload(i))
    subscriber = Subscriber(mosquitto.port, topic)
    publisher = Publisher(mosquitto.port, outbox)
    try:
        wait_until(lambda: len(subscriber.first_seen()) >= BACKLOG, 20, "the backlog")
        wait_until(lambda: len(outbox) == 0, 5, "the outbox to empty")
        # Live messages after the backlog keep going out, woken by put.
        for i in range(BACKLOG, BACKLOG + 20):
            outbox.put(topic, payload(i))
            publisher.publisher.wake()
        wait_until(lambda: len(subscriber.first_seen()) >= BACKLOG + 20, 5, "live messages")
        wait_until(lambda: len(outbox) == 0, 5, "the outbox to empty")
    finally:
        publisher.close()
        subscriber.close()
    assert_complete_in_order(subscriber.first_seen(), BACKLOG + 20)
    assert publisher.publisher.published == BACKLOG + 20


@needs_mosquitto
def test_nothing_is_deleted_without_a_connection_and_it_drains_once_connected(
    mosquitto: Broker, outbox: Outbox, topic: str
) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"late-{uuid.uuid4().hex}")
    publisher = OutboxPublisher(outbox, client)
    client.on_connect = lambda *args: publisher.wake()
    publisher.start()
    subscriber = Subscriber(mosquitto.port, topic)
    try:
        for i in range(30):
            outbox.put(topic, payload(i))
            publisher.wake()
        time.sleep(0.5)
        assert len(outbox) == 30 and publisher.published == 0
        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
        wait_until(lambda: len(outbox) == 0, 5, "the outbox to drain after connecting")
        wait_until(lambda: len(subscriber.first_seen()) >= 30, 5, "the subscriber")
    finally:
        publisher.stop(2)
        client.disconnect()
        client.loop_stop()
        subscriber.close()
    assert_complete_in_order(subscriber.first_seen(), 30)


@needs_mosquitto
def test_the_publisher_sleeps_when_disconnected_or_idle(mosquitto: Broker, outbox: Outbox) -> None:
    """No busy loop: without a connection, or with nothing queued, the publisher thread looks
    about once per ``IDLE_S`` (1 s) unless woken."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"idle-{uuid.uuid4().hex}")
    looks = {"is_connected": 0, "peek": 0}

    def counted(name: str, method: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            looks[name] += 1
            return method(*args, **kwargs)

        return wrapper

    client.is_connected = counted("is_connected", client.is_connected)  # type: ignore[method-assign]
    outbox.peek = counted("peek", outbox.peek)  # type: ignore[method-assign]
    publisher = OutboxPublisher(outbox, client)
    publisher.start()
    try:
        time.sleep(1.5)
        assert looks["is_connected"] <= 3 and looks["peek"] == 0, looks
        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
        wait_until(client.is_connected, 5, "the connection")
        publisher.wake()
        time.sleep(0.2)
        looks.update(is_connected=0, peek=0)
        time.sleep(1.5)
        assert looks["peek"] <= 3, looks
    finally:
        publisher.stop(1)
        client.disconnect()
        client.loop_stop()


@needs_mosquitto
def test_a_broker_outage_loses_nothing_and_keeps_first_delivery_order(
    tmp_path: Path, outbox: Outbox, topic: str
) -> None:
    """Messages are put throughout: before, during and after a broker outage.

    The restarted broker knows no sessions, so the subscriber subscribes again, and the
    publisher's client is held back (``on_pre_connect``) until that SUBACK: otherwise what
    the outbox publishes first would go to a broker without a subscriber, acknowledged and
    lost to this test through no fault of the outbox. Any gap is then the outbox's fault.
    """
    broker = MosquittoBroker(tmp_path / "broker")
    port = broker.port
    subscriber = Subscriber(port, topic)
    may_connect = threading.Event()
    may_connect.set()
    publisher = Publisher(port, outbox, gate=may_connect)
    produced = 0
    stop_producing = threading.Event()

    def produce() -> None:
        nonlocal produced
        while not stop_producing.is_set():
            outbox.put(topic, payload(produced))
            produced += 1
            publisher.publisher.wake()
            time.sleep(0.01)

    producer = threading.Thread(target=produce, name="producer")
    producer.start()
    try:
        wait_until(lambda: len(subscriber.first_seen()) >= 50, 5, "traffic before the outage")
        may_connect.clear()
        subscriber.subscribed.clear()
        broker.stop()
        at_stop = produced
        time.sleep(OUTAGE_S)
        queued_during_outage = len(outbox)
        put_during_outage = produced - at_stop
        broker = MosquittoBroker(tmp_path / "broker", port=port)
        assert subscriber.subscribed.wait(5), "the subscriber did not subscribe again"
        may_connect.set()
        time.sleep(1.0)  # traffic keeps flowing after the restart too
        stop_producing.set()
        producer.join()
        wait_until(lambda: len(outbox) == 0, 15, "the outbox to drain after the outage")
        wait_until(lambda: len(subscriber.first_seen()) >= produced, 10, "every message")
    finally:
        stop_producing.set()
        producer.join()
        may_connect.set()
        publisher.close()
        subscriber.close()
        broker.stop()
    assert put_during_outage > 100
    assert queued_during_outage >= put_during_outage, "the outage must have been buffered"
    assert_complete_in_order(subscriber.first_seen(), produced)
    assert publisher.publisher.published == produced
    assert outbox.dropped == 0


@needs_mosquitto
def test_no_row_is_deleted_before_its_puback_and_a_new_publisher_resends_them(
    tmp_path: Path, outbox: Outbox, topic: str
) -> None:
    """A frozen broker (SIGSTOP) keeps the TCP connection up but sends no PUBACK: the
    publisher must keep every row. Then the agent "dies" (its publisher and paho client are
    dropped, paho's in-flight copies with them) and a new one delivers everything from SQLite.
    """
    with MosquittoBroker(tmp_path / "broker") as broker:
        subscriber = Subscriber(broker.port, topic)
        first = Publisher(broker.port, outbox)
        try:
            wait_until(first.client.is_connected, 5, "the publisher to connect")
            broker.process.send_signal(signal.SIGSTOP)
            try:
                for i in range(30):
                    outbox.put(topic, payload(i))
                    first.publisher.wake()
                time.sleep(1.0)
                assert len(outbox) == 30, "a row was deleted without a PUBACK"
                assert first.publisher.published == 0
                # The agent goes away; what paho holds in memory goes with it.
                first.publisher.stop(0.2)
                first.client.disconnect()
                first.client.loop_stop()
            finally:
                broker.process.send_signal(signal.SIGCONT)
            second = Publisher(broker.port, outbox)
            try:
                wait_until(lambda: len(outbox) == 0, 5, "the new publisher to drain")
                wait_until(lambda: len(subscriber.first_seen()) >= 30, 5, "the subscriber")
            finally:
                second.close()
            assert second.publisher.published == 30
        finally:
            first.close()
            subscriber.close()
    assert_complete_in_order(subscriber.first_seen(), 30)
