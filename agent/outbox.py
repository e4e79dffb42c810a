"""The agent's offline buffer: reports and telemetry wait in SQLite until the broker has them.

Contract (what the control plane may rely on):

- **At least once.** A row is deleted only after the broker acknowledged the message (PUBACK
  at QoS 1), so a kill -9, a power cut or a broker outage between ``put`` and PUBACK sends it
  again later. Duplicates are possible (paho re-sends its own in-flight messages after a
  reconnect, and the publisher re-sends from the oldest unacknowledged row); receivers must
  be idempotent (telemetry carries ``seq``, a report its ``revision``).
- **First deliveries keep put order.** When the broker first sees message *n*, it has already
  seen every message before *n* that is still owed (not dropped). The publisher sends the
  oldest rows first over one connection, acknowledges rows strictly as a prefix in id order,
  and after any disconnect starts again from the oldest unacknowledged row (one narrow
  exception is described at :class:`OutboxPublisher`).
- **Bounded, and never silently.** Past ``max_messages`` the oldest rows are dropped in the
  same transaction as the insert; the number is added to a persisted ``dropped`` counter that
  the agent reports (``telemetry.dropped``).

The SQLite row, not paho's in-memory queue, is the source of truth: paho's queue dies with
the process and its bookkeeping for a message published while disconnected is unusable (see
:class:`OutboxPublisher`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import paho.mqtt.client as mqtt

log = logging.getLogger("edgeloop.agent.outbox")

WINDOW = 20
"""Messages in flight at once. Matches paho's default ``max_inflight_messages``, fills a LAN
or loopback round trip, and bounds what one reconnect sends twice."""
ACK_TIMEOUT_S = 10.0
"""Connected time without a PUBACK for the oldest in-flight message before it is re-sent."""
POLL_S = 0.05
"""How often connection state is looked at while messages are in flight."""
IDLE_S = 1.0
"""Longest sleep when there is nothing to do or no connection; :meth:`OutboxPublisher.wake`
ends it at once, so this only bounds how late a missed wake-up is noticed."""

MAX_PAYLOAD = 268_435_455  # MQTT's remaining-length limit, which paho enforces on publish
MAX_TOPIC = 65_535

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) SELECT '_rows', COUNT(*) FROM messages;
CREATE TRIGGER IF NOT EXISTS messages_rows_insert AFTER INSERT ON messages
BEGIN UPDATE meta SET value = value + 1 WHERE key = '_rows'; END;
CREATE TRIGGER IF NOT EXISTS messages_rows_delete AFTER DELETE ON messages
BEGIN UPDATE meta SET value = value - 1 WHERE key = '_rows'; END;
"""
"""The row count lives in ``meta`` and triggers keep it exact, whoever writes the file, so the
bound check in every put and ``len()`` cost an index probe, not a scan of up to
``max_messages`` rows (payloads included) on a small device's SD card. It is set up in the
same transaction as the triggers, so no write can slip between the count and them."""


@dataclass(frozen=True)
class OutboxEntry:
    """One queued message. ``id`` grows with put order and is never reused (AUTOINCREMENT),
    so it is both the delivery order and a stable handle for :meth:`Outbox.ack`."""

    id: int
    topic: str
    payload: bytes
    qos: int
    created: float


class Outbox:
    """A durable, bounded FIFO of MQTT messages in one SQLite file.

    Once :meth:`put` has returned, the message survives kill -9 of this process (and, with
    ``synchronous=FULL``, a power cut). One connection is shared by all threads behind a lock;
    other processes (``edgeloop-agent status``, an operator rollback) may open the same file
    at the same time.
    """

    def __init__(self, path: Path, max_messages: int = 10_000) -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        self.path = Path(path)
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._dropping = False  # warn once per overflow episode, not on every put
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit (isolation_level=None): every statement is its own transaction unless we
        # BEGIN explicitly, so no write ever lingers uncommitted in the driver. The timeout is
        # SQLite's busy handler for a second process holding the write lock.
        self._db = sqlite3.connect(
            self.path, timeout=10.0, check_same_thread=False, isolation_level=None
        )
        try:
            # WAL: a reader in another process never blocks the agent's writes, and a commit is
            # one append to the -wal file. Durability: a committed transaction is in the WAL
            # file (in the OS page cache at least) before COMMIT returns, so kill -9 of the
            # process loses nothing under any `synchronous` level. FULL additionally fsyncs the
            # WAL on every commit, so a power cut, the usual way an edge device "crashes", keeps
            # every message put before it; NORMAL could roll back the last commits there. At a
            # few messages per second the fsync is affordable, and losing reports is not.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\nCOMMIT;")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._db.close()
            raise

    # ------------------------------------------------------------------ queue

    def put(self, topic: str, payload: bytes, qos: int = 1) -> int:
        """Queue one message durably and return its id.

        When the queue then holds more than ``max_messages``, the oldest rows are deleted and
        counted in :attr:`dropped` in the same transaction: the bound and the count can never
        disagree, not even after a crash. The message is validated here, because a message
        paho refuses at publish time would block the head of the queue forever.
        """
        _validate(topic, payload, qos)
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO messages (topic, payload, qos, created) VALUES (?, ?, ?, ?)",
                (topic, bytes(payload), qos, time.time()),
            )
            excess = self._rows() - self.max_messages
            if excess > 0:
                db.execute(
                    "DELETE FROM messages WHERE id IN "
                    "(SELECT id FROM messages ORDER BY id LIMIT ?)",
                    (excess,),
                )
                self._add_counter("dropped", excess)
            warn = excess > 0 and not self._dropping
            self._dropping = excess > 0
        if warn:
            log.warning("outbox full (%d): dropping the oldest messages", self.max_messages)
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock. IMMEDIATE takes SQLite's write lock up front,
        so a second process makes this wait (busy timeout) instead of failing halfway."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _rows(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = '_rows'").fetchone()
        return int(row[0])

    def peek(self, limit: int, *, after: int = 0) -> list[OutboxEntry]:
        """Up to ``limit`` queued messages with id > ``after``, oldest first. Nothing is
        removed: a message leaves the queue only through :meth:`ack` (or the drop bound)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, created FROM messages WHERE id > ? "
                "ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
        return [OutboxEntry(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows]

    def ack(self, ids: Iterable[int]) -> None:
        """Delete delivered messages. Call only once the broker has acknowledged them; ids
        that are already gone (dropped meanwhile) are ignored."""
        rows = [(int(i),) for i in ids]
        if not rows:
            return
        with self._transaction() as db:
            db.executemany("DELETE FROM messages WHERE id = ?", rows)

    def _discard(self, entry_id: int) -> None:
        """Delete a message that can never be published, counting it as dropped."""
        with self._transaction() as db:
            gone = db.execute("DELETE FROM messages WHERE id = ?", (entry_id,)).rowcount
            self._add_counter("dropped", gone)

    def __len__(self) -> int:
        with self._lock:
            return self._rows()

    # ------------------------------------------------------------------ counters

    @property
    def dropped(self) -> int:
        """Messages lost to the bound since the file was created (persisted, never reset)."""
        return self.counter("dropped")

    def counter(self, name: str) -> int:
        """A persisted integer (the drop count, the telemetry sequence); 0 when never set."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def set_counter(self, name: str, value: int) -> None:
        if name.startswith("_"):
            raise ValueError(f"counter names starting with '_' are the outbox's own: {name!r}")
        with self._lock:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    def _add_counter(self, name: str, amount: int) -> None:
        # Caller holds the lock and an open transaction.
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
            (name, amount),
        )

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _validate(topic: str, payload: bytes, qos: int) -> None:
    if not isinstance(topic, str) or not topic:
        raise ValueError("topic must be a non-empty string")
    if "+" in topic or "#" in topic or "\0" in topic:
        raise ValueError(f"cannot publish to topic {topic!r} (wildcard or NUL)")
    if len(topic.encode()) > MAX_TOPIC:
        raise ValueError("topic longer than 65535 bytes")
    if qos not in (0, 1, 2):
        raise ValueError(f"qos must be 0, 1 or 2, got {qos!r}")
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("payload larger than MQTT allows")


@dataclass
class _InFlight:
    entry: OutboxEntry
    info: mqtt.MQTTMessageInfo


class OutboxPublisher:
    """Drains an :class:`Outbox` into a paho client whose connection the caller manages.

    The caller builds the client (``CallbackAPIVersion.VERSION2``), runs ``loop_start`` and
    reconnects; it should call :meth:`wake` after each ``put`` and from ``on_connect``.

    How the contract is kept:

    - Up to ``window`` of the oldest rows are published in id order; a row is acknowledged in
      SQLite only when its ``MQTTMessageInfo.is_published()`` (PUBACK received) and every
      older in-flight row is acknowledged too, so the queue only ever loses a prefix.
    - Nothing is published unless ``client.is_connected()``. Whenever the connection is seen
      down, or a publish does not return ``MQTT_ERR_SUCCESS``, the window is forgotten and,
      once connected again, publishing restarts from the oldest row still in SQLite. Rows
      are therefore re-sent by us in order ahead of anything newer, whatever paho does with
      its own copies (paho re-sends its in-flight messages after a reconnect; one published
      while disconnected stays in paho's queue with ``rc == MQTT_ERR_NO_CONN``, and its info
      then raises instead of ever reporting the PUBACK). Those copies only add duplicates.
    - If the oldest in-flight message gets no PUBACK for ``ack_timeout`` seconds of connected
      time (paho refused or lost it), the window is re-sent from the oldest row.

    Residual: a disconnect *and* reconnect that both fall between two looks at
    ``is_connected()`` (every ``POLL_S`` while messages are in flight; paho waits at least
    its reconnect ``min_delay``, 1 s by default, before reconnecting) would go unnoticed, and
    a new message could then overtake paho's re-send of a lost one. Nothing is lost even then.
    """

    def __init__(
        self,
        outbox: Outbox,
        client: mqtt.Client,
        *,
        window: int = WINDOW,
        ack_timeout: float = ACK_TIMEOUT_S,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.outbox = outbox
        self.client = client
        self.window = window
        self.ack_timeout = ack_timeout
        self.published = 0
        """Rows acknowledged by the broker and deleted by this publisher."""
        self.resent = 0
        """Times the window was abandoned and re-sent from the oldest row (diagnostics)."""
        self._inflight: deque[_InFlight] = deque()
        self._progress_at = time.monotonic()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Look for work now (after a put, or once connected) instead of within ``IDLE_S``."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread, first draining what is queued while connected, for at most
        ``timeout`` seconds. Whatever is not acknowledged by then stays in SQLite for the next
        run; stopping never deletes an unacknowledged row."""
        self._stopping.set()
        self._wake.set()
        if not self._thread.is_alive():
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._halt.set()
            self._wake.set()
            self._thread.join(max(1.0, 2 * POLL_S))

    # ------------------------------------------------------------------ thread

    def _run(self) -> None:
        while not self._halt.is_set():
            try:
                if self._step():
                    return
            except Exception:
                # A locked database or a paho surprise must not end publishing for good.
                log.exception("outbox publisher failed; retrying from the oldest message")
                self._reset()
                self._halt.wait(IDLE_S)

    def _step(self) -> bool:
        """One round; True when the thread should end."""
        self._wake.clear()  # before looking for work, so a wake() after the look is not lost
        if not self.client.is_connected():
            self._reset()
            if self._stopping.is_set():
                return True
            self._wake.wait(IDLE_S)
            return False
        self._collect()
        self._fill()
        if self._inflight:
            try:
                self._inflight[0].info.wait_for_publish(POLL_S)
            except (RuntimeError, ValueError):
                pass  # _collect() sees it again and starts over
            return False
        if self._stopping.is_set() and not self.outbox.peek(1):
            return True  # connected, nothing in flight and nothing queued
        self._wake.wait(IDLE_S)
        return False

    def _collect(self) -> None:
        """Acknowledge the in-flight prefix whose PUBACK arrived."""
        done: list[int] = []
        while self._inflight:
            head = self._inflight[0]
            try:
                if not head.info.is_published():
                    break
            except (RuntimeError, ValueError) as exc:
                # Paho will never report this one as delivered (e.g. rc changed to an error).
                log.warning("publish of outbox message %d failed (%s)", head.entry.id, exc)
                self.outbox.ack(done)
                self.published += len(done)
                self._reset()
                return
            done.append(self._inflight.popleft().entry.id)
        now = time.monotonic()
        if done:
            self.outbox.ack(done)
            self.published += len(done)
            self._progress_at = now
        elif self._inflight and now - self._progress_at > self.ack_timeout:
            log.warning(
                "no PUBACK for outbox message %d in %.0f s; re-sending from the oldest",
                self._inflight[0].entry.id,
                self.ack_timeout,
            )
            self._reset()

    def _fill(self) -> None:
        """Publish the next rows after the window, oldest first, until the window is full."""
        room = self.window - len(self._inflight)
        if room <= 0:
            return
        after = self._inflight[-1].entry.id if self._inflight else 0
        for entry in self.outbox.peek(room, after=after):
            if not self.client.is_connected():
                self._reset()
                return
            try:
                info = self.client.publish(entry.topic, entry.payload, qos=entry.qos)
            except ValueError as exc:
                # Only a row written around put()'s validation gets here; it can never be
                # sent and would block everything behind it, so it is dropped and counted.
                log.error("dropping outbox message %d paho refuses: %s", entry.id, exc)
                self.outbox._discard(entry.id)
                continue
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                log.info(
                    "publish of outbox message %d: %s; retrying after reconnect",
                    entry.id,
                    mqtt.error_string(info.rc),
                )
                self._reset()
                return
            if not self._inflight:
                self._progress_at = time.monotonic()
            self._inflight.append(_InFlight(entry, info))

    def _reset(self) -> None:
        """Forget the window; the next fill starts again from the oldest row in SQLite."""
        if self._inflight:
            self.resent += 1
            self._inflight.clear()
