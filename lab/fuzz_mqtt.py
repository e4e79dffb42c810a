"""Hostile MQTT payloads, generated fast and reproducibly.

Hypothesis drives the property tests of :func:`edgeloop.agent.protocol.decode`; this module
makes the volume a benchmark needs (``edgeloop bench robustness`` sends 100,000 of them
through a real broker to a live server and agent), seeded so that a failure can be replayed.

Payloads are built from valid messages of every type and then broken the ways a careless or
hostile peer breaks them: fields dropped, retyped or replaced by huge numbers, deep nesting,
non-finite numbers, long strings, unknown fields, another device's id, bytes that are not
UTF-8 or not JSON, payloads over the size cap. A few stay valid, so the receiver also does its
normal work under the flood.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass

from edgeloop.agent.profiles import PROFILES
from edgeloop.agent.protocol import (
    Channel,
    Desired,
    Hello,
    LatencyStats,
    Phase,
    Report,
    Status,
    TargetRef,
    Telemetry,
    decode,
    topic,
)

_PROFILE = PROFILES["sensor-hub"]
_SHA = "0" * 64
_LATENCY = LatencyStats(n=10, p50_ms=1, p95_ms=2, p99_ms=3, mean_ms=1.5)

_JUNK: tuple[object, ...] = (
    None,
    True,
    -1,
    0,
    2**63,
    -(2**70),
    1e308,
    "",
    "x" * 300,
    [],
    {},
    [[[[]]]],
    {"a": {"b": {"c": None}}},
    "\u0000",
    "\ud7ff\ue000\U0010ffff",
    "../../etc/passwd",
    "complex1024",
)
_RAW_NUMBERS = ("9" * 5000, "1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1" + "0" * 400)


@dataclass(frozen=True)
class Payload:
    topic: str
    body: bytes
    kind: str
    """How it was made (``valid``, ``mutated``, ``deep``, ``digits``, ``bytes``, …)."""


def _valid(kind: str, device_id: str, rng: random.Random) -> dict:
    revision = rng.randrange(0, 1000)
    message = {
        "hello": lambda: Hello(device_id=device_id, agent_version="fuzz", profile=_PROFILE),
        "status": lambda: Status(device_id=device_id, online=True, phase=Phase.IDLE),
        "report": lambda: Report(
            device_id=device_id,
            revision=revision,
            model="fuzz:1",
            artifact_sha256=_SHA,
            ok=False,
            phase=Phase.FAILED,
            verified=True,
            latency=_LATENCY,
        ),
        "telemetry": lambda: Telemetry(
            device_id=device_id, rss_mb=10, latency=_LATENCY, seq=revision
        ),
        "desired": lambda: Desired(
            device_id=device_id,
            revision=revision,
            target=TargetRef(path="models/fuzz/1", sequence=revision + 1),
            profile=_PROFILE,
        ),
    }[kind]()
    return json.loads(message.model_dump_json())


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a JSON value (dict keys and list indexes), six levels deep."""
    found = [prefix] if prefix else []
    if len(prefix) >= 6:
        return found
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


def _set(document: object, path: tuple, value: object) -> None:
    for part in path[:-1]:
        document = document[part]  # type: ignore[index]
    document[path[-1]] = value  # type: ignore[index]


def _delete(document: object, path: tuple) -> None:
    for part in path[:-1]:
        document = document[part]  # type: ignore[index]
    del document[path[-1]]  # type: ignore[union-attr, arg-type]


def _mutate(document: dict, rng: random.Random) -> bytes:
    """One to three breakages of a valid message; some leave it valid."""
    raw_number: str | None = None  # text put in verbatim: what json.dumps cannot write
    for _ in range(rng.randint(1, 3)):
        paths = _paths(document)
        path = rng.choice(paths)
        action = rng.random()
        if action < 0.3:
            _set(document, path, rng.choice(_JUNK))
        elif action < 0.45:
            _delete(document, path)
        elif action < 0.6:
            document[f"x_{rng.randrange(1000)}"] = rng.choice(_JUNK)  # unknown field
        elif action < 0.7:
            document["protocol"] = rng.choice((0, 2, 99, "1", None, 1.0))
        elif action < 0.8:
            document["type"] = rng.choice(("hello", "status", "desired", "report", "x", 7))
        elif action < 0.9:
            _set(document, path, "\u0000RAW\u0000")
            raw_number = rng.choice(_RAW_NUMBERS)
        else:
            _set(document, path, "\u0000RAW\u0000")
            depth = rng.choice(
                (10, 100, 1000, 5000, 100_000) if rng.random() < 0.02 else (10, 100, 1000)
            )
            raw_number = "[" * depth + "]" * depth
        if not isinstance(document, dict) or not document:
            break
    text = json.dumps(document)
    if raw_number is not None:
        text = text.replace('"\\u0000RAW\\u0000"', raw_number)
    return text.encode()


def payloads(
    count: int,
    *,
    server_devices: int = 50,
    agent_id: str | None = None,
    agent_share: float = 0.2,
    seed: int = 0,
    max_bytes: int = 256 * 1024,
) -> Iterator[Payload]:
    """``count`` hostile payloads: to the server's inbound topics of ``server_devices``
    made-up devices and, when ``agent_id`` is given, ``agent_share`` of them to that agent's
    ``desired`` topic. None of the agent's is a valid desired state: a fuzz must not make the
    device install anything, only try to make it fall over."""
    rng = random.Random(seed)
    inbound = (Channel.HELLO, Channel.STATUS, Channel.REPORT, Channel.TELEMETRY)
    for _ in range(count):
        to_agent = agent_id is not None and rng.random() < agent_share
        if to_agent:
            device_id, channel = agent_id, Channel.DESIRED
        else:
            device_id = f"fuzz-{rng.randrange(server_devices)}"
            channel = rng.choice(inbound)
        name = topic(device_id, channel)  # type: ignore[arg-type]
        roll = rng.random()
        if roll < 0.02 and not to_agent:
            kind, body = "valid", json.dumps(_valid(channel.value, device_id, rng)).encode()
        elif roll < 0.6:
            document = _valid(channel.value, device_id, rng)
            if to_agent:
                document["revision"] = -1 - rng.randrange(1000)  # never a valid desired
            kind, body = "mutated", _mutate(document, rng)
        elif roll < 0.68:
            kind, body = (
                "deep",
                b"[" * (100_000 if rng.random() < 0.1 else 1000) + b"]" * rng.randint(0, 10),
            )
        elif roll < 0.74:
            kind, body = (
                "digits",
                b"9" * (100_000 if rng.random() < 0.1 else rng.choice((4400, 5000))),
            )
        elif roll < 0.8:
            kind = "other-device"
            other = _valid(channel.value, f"other-{rng.randrange(100)}", rng)
            if to_agent:
                other["revision"] = -1
            body = json.dumps(other).encode()
        elif roll < 0.86:
            kind, body = "bytes", rng.randbytes(rng.randint(0, 512))
        elif roll < 0.9:
            kind, body = "not-object", rng.choice((b"null", b"[]", b"1", b'"x"', b"true", b""))
        elif roll < 0.93:
            kind, body = "bad-utf8", b'{"type": "hello", "device_id": "\xff\xfe"}'
        elif roll < 0.935:
            kind, body = "oversized", b'{"pad": "' + b"x" * (max_bytes + 1) + b'"}'
        else:
            kind = "truncated"
            whole = json.dumps(_valid(channel.value, device_id, rng)).encode()
            body = whole[: rng.randint(0, len(whole) - 1)]
        if to_agent and _decodes(body, name):
            kind, body = "mutated", b'{"protocol": 1, "type": "desired", "revision": -1}'
        yield Payload(name, body, kind)


def _decodes(body: bytes, name: str) -> bool:
    try:
        decode(body, name)
    except Exception:
        return False
    return True
