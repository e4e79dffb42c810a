"""A hostile client against the REST API of a real ``edgeloop serve`` process: whatever it
sends, the server answers a documented 4xx with the one error shape and never a 5xx; it
stores only what its document allows (finite numbers, safe names, real dtypes and shapes);
an artifact under a hash is that hash's bytes; bodies have size limits it enforces before
reading them; and files no live model version needs can be removed, one by one or all at
once, without touching the ones still in use."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from helpers import JETSON, publish, run_command, wait_until

from edgeloop.agent.protocol import Channel, Hello, encode, topic
from edgeloop.lab.broker import Broker
from edgeloop.lab.launch import ServerProcess
from edgeloop.server.client import ApiError

JSON_LIMIT = 64 * 1024
ARTIFACT_LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, mosquitto: Broker) -> Iterator[ServerProcess]:
    """One server for the module, with small body limits set as an operator would."""
    workdir = tmp_path_factory.mktemp("hostile")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("EDGELOOP_MAX_JSON_BODY", "64KiB")
        env.setenv("EDGELOOP_MAX_ARTIFACT_SIZE", "1MiB")
        server = ServerProcess(workdir, mosquitto.port)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def artifact_dir(api: ServerProcess) -> Path:
    return Path(api.log_path).parent.parent / "artifacts"


def upload(api: ServerProcess, data: bytes) -> str:
    sha256 = hashlib.sha256(data).hexdigest()
    response = api.http.put(f"{api.url}/api/v1/artifacts/{sha256}", data=data, timeout=10)
    assert response.status_code == 201, response.text
    return sha256


def card(**changes: Any) -> dict[str, Any]:
    """A valid registration body; ``changes`` replace its fields (``report`` included)."""
    body: dict[str, Any] = {
        "name": "hostile",
        "version": "1",
        "artifact_sha256": "1" * 64,
        "golden_sha256": "2" * 64,
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 2]}],
        "report": {"accuracy": 0.5},
    }
    return {**body, **changes}


def post_raw(api: ServerProcess, path: str, text: str | bytes) -> requests.Response:
    """A body sent as is: ``NaN`` and ``Infinity`` are what Python's own JSON writer emits."""
    return api.http.post(
        api.url + path, data=text, headers={"Content-Type": "application/json"}, timeout=10
    )


def assert_problem(response: requests.Response, status: int, *words: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str), detail
    for word in words:
        assert word in detail, (word, detail)


# --------------------------------------------------------------------------- what is stored


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"report": {"accuracy": "high"}}, "report.accuracy"),
        ({"report": {"accuracy": True}}, "report.accuracy"),
        ({"report": {"accuracy": 0.5, "metrics": {"f1": "0.9"}}}, "report.metrics"),
        ({"name": "../../etc/passwd"}, "body.name"),
        ({"name": "a:b"}, "body.name"),
        ({"version": "../x"}, "body.version"),
        ({"version": " 1"}, "body.version"),
        ({"inputs": [{"name": "x", "dtype": "complex1024", "shape": [1]}]}, "inputs.0.dtype"),
        ({"inputs": [{"name": "x", "dtype": "float32", "shape": [-5, "x"]}]}, "inputs.0.shape"),
        ({"golden_rtol": -1}, "body.golden_rtol"),
    ],
)
def test_a_registration_the_document_does_not_allow_is_refused_and_nothing_is_stored(
    api: ServerProcess, changes: dict[str, Any], where: str
) -> None:
    response = api.http.post(f"{api.url}/api/v1/models", json=card(**changes), timeout=10)
    assert_problem(response, 422, where)
    assert api.http.get(f"{api.url}/api/v1/models?name=hostile", timeout=10).json()["total"] == 0


NUMBER = "@number@"
"""Where a test puts a number JSON cannot carry, in a body otherwise valid."""


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/models", card(golden_atol=NUMBER)),
        ("/api/v1/models", card(report={"accuracy": 0.5, "metrics": {"f1": NUMBER}})),
        (
            "/api/v1/loop/decisions",
            {
                "loop": "hostile",
                "round": 1,
                "profile": "pi",
                "action": "keep",
                "reason": "measured",
                "figures": {"measured": {"p95_ms": NUMBER}},
            },
        ),
        ("/api/v1/rollouts", {"model": "m:1", "criteria": {"wave_timeout_s": NUMBER}}),
        ("/api/v1/artifact-gc", {"min_age_s": NUMBER}),
    ],
)
def test_a_number_json_cannot_carry_is_refused_at_any_depth(
    api: ServerProcess, path: str, body: dict[str, Any], literal: str
) -> None:
    """NaN and Infinity are not JSON (Python writes them all the same); stored, they came back
    as ``null`` where the document promises a number, or failed the answer."""
    text = json.dumps(body).replace(f'"{NUMBER}"', literal)
    assert_problem(post_raw(api, path, text), 422, "finite number")
    assert api.http.get(f"{api.url}/api/v1/models?name=hostile", timeout=10).json()["total"] == 0
    decisions = api.http.get(f"{api.url}/api/v1/loop/decisions?loop=hostile", timeout=10)
    assert decisions.json()["total"] == 0


def test_a_calibration_with_infinity_in_it_is_refused(api: ServerProcess) -> None:
    response = api.http.put(
        f"{api.url}/api/v1/calibrations/pi",
        data='{"calibration": {"class_scale": Infinity}, "observations": 1}',
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert_problem(response, 422, "calibration.class_scale", "finite number")
    assert api.http.get(f"{api.url}/api/v1/calibrations/pi", timeout=10).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        b'{"keep": "\xff"}',  # not UTF-8
        b"[" * 60_000,  # nested past Python's recursion limit
        b'{"keep": 1',  # cut short
        b"",
    ],
)
def test_a_body_that_is_not_json_is_a_422_problem(api: ServerProcess, body: bytes) -> None:
    response = post_raw(api, "/api/v1/models/retention", body)
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], str)


# --------------------------------------------------------------------------- numbers in URLs


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/rollouts?offset=99999999999999999999",
        "/api/v1/loop/decisions?offset=99999999999999999999",
        "/api/v1/devices/pi-0/telemetry?offset=99999999999999999999",
        "/api/v1/reports?offset=99999999999999999999",
        "/api/v1/models?offset=99999999999999999999",
        "/api/v1/rollouts/99999999999999999999",
        "/api/v1/rollouts/0",
        "/api/v1/devices/pi-0/telemetry?since=12345",
        "/api/v1/devices/pi-0/telemetry?until=2026-12-01",
        "/api/v1/devices/no%20such%20id/reports",
        "/api/v1/models/m/..x",
        "/api/v1/models?name=..%2F..%2Fetc%2Fpasswd",
        "/api/v1/reports?model=m",
    ],
)
def test_a_parameter_out_of_its_documented_range_is_a_422(api: ServerProcess, path: str) -> None:
    assert_problem(api.http.get(api.url + path, timeout=10), 422)


@pytest.mark.parametrize(
    "query",
    [
        "since=9999-12-31T23:59:59-14:00",
        "since=0001-01-01T00:00:00%2B14:00&until=9999-12-31T23:59:59-14:00",
        "since=2026-12-02T00:00:00Z&until=2026-12-01T00:00:00Z",
    ],
)
def test_a_time_window_at_the_ends_of_the_calendar_or_backwards_holds_no_samples(
    api: ServerProcess, mosquitto: Broker, query: str
) -> None:
    """Not a 500 (UTC has no such day), and not a 422 either: the document allows them."""
    hello = Hello(device_id="clock-0", agent_version="t", profile=JETSON)
    publish(mosquitto.port, [(topic("clock-0", Channel.HELLO), encode(hello))], "hostile")
    url = f"{api.url}/api/v1/devices/clock-0/telemetry?{query}"
    wait_until(lambda: api.http.get(url, timeout=10).status_code == 200, 20, "the hello stored")
    assert api.http.get(url, timeout=10).json()["items"] == []


def test_a_method_a_path_does_not_answer_is_a_405_that_names_every_method_it_does(
    api: ServerProcess,
) -> None:
    response = api.http.patch(f"{api.url}/api/v1/rollouts", timeout=10)
    assert_problem(response, 405, "PATCH")
    assert response.headers["Allow"] == "GET, POST"


# --------------------------------------------------------------------------- body limits


def test_a_json_body_over_the_limit_is_refused_before_the_server_reads_it(
    api: ServerProcess,
) -> None:
    server = psutil.Process(api.pid)
    rss_before = server.memory_info().rss
    body = b'{"keep": 1, "name": "' + b"x" * (100 * 1024**2) + b'"}'
    started = time.monotonic()
    response = post_raw(api, "/api/v1/models/retention", body)
    assert_problem(response, 413, "64.0KiB", "--max-json-body")
    assert time.monotonic() - started < 10
    assert server.memory_info().rss - rss_before < 20 * 1024**2, "the body was not read"


def test_a_chunked_json_body_is_counted_as_it_streams_and_refused_past_the_limit(
    api: ServerProcess,
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"keep": 1, "name": "'
        for _ in range(100):
            yield b"x" * 16 * 1024
        yield b'"}'

    response = api.http.post(
        f"{api.url}/api/v1/models/retention",
        data=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert "Content-Length" not in response.request.headers
    assert_problem(response, 413, "64.0KiB", "--max-json-body")


@pytest.mark.parametrize("chunked", [False, True])
def test_an_artifact_over_the_limit_is_refused_and_leaves_no_file(
    api: ServerProcess, chunked: bool
) -> None:
    data = os.urandom(ARTIFACT_LIMIT + 1)
    sha256 = hashlib.sha256(data).hexdigest()
    body: bytes | Iterator[bytes] = (
        iter([data[i : i + 65536] for i in range(0, len(data), 65536)]) if chunked else data
    )
    response = api.http.put(f"{api.url}/api/v1/artifacts/{sha256}", data=body, timeout=10)
    assert_problem(response, 413, "1.0MiB", "--max-artifact-size")
    assert api.http.get(f"{api.url}/artifacts/{sha256}", timeout=10).status_code == 404
    assert not [p.name for p in artifact_dir(api).iterdir() if p.name.startswith(".upload-")]


def test_an_artifact_at_the_limit_is_stored(api: ServerProcess) -> None:
    data = os.urandom(ARTIFACT_LIMIT)
    sha256 = upload(api, data)
    assert api.http.get(f"{api.url}/artifacts/{sha256}", timeout=10).content == data


# --------------------------------------------------------------------------- artifacts


def test_other_bytes_under_a_stored_hash_are_refused_and_the_stored_file_stays(
    api: ServerProcess,
) -> None:
    original = b"the real model" * 100
    sha256 = upload(api, original)
    response = api.http.put(f"{api.url}/api/v1/artifacts/{sha256}", data=b"evil", timeout=10)
    assert_problem(response, 422, "not the claimed")
    assert api.http.get(f"{api.url}/artifacts/{sha256}", timeout=10).content == original
    again = api.http.put(f"{api.url}/api/v1/artifacts/{sha256}", data=original, timeout=10)
    assert again.status_code == 201 and again.json()["size"] == len(original)


def register(api: ServerProcess, version: str, artifact: str, golden: str) -> None:
    response = api.http.post(
        f"{api.url}/api/v1/models",
        params={"plan": "false"},
        json=card(name="gc", version=version, artifact_sha256=artifact, golden_sha256=golden),
        timeout=10,
    )
    assert response.status_code == 201, response.text


def test_a_file_a_live_version_uses_is_not_deleted_until_the_version_is_retired(
    api: ServerProcess,
) -> None:
    model, golden = upload(api, b"model of v1" * 50), upload(api, b"golden of v1" * 50)
    register(api, "1", model, golden)
    refused = api.http.delete(f"{api.url}/api/v1/artifacts/{model}", timeout=10)
    assert_problem(refused, 409, "gc:1", "retire")
    assert api.http.get(f"{api.url}/artifacts/{model}", timeout=10).status_code == 200

    retired = api.http.post(f"{api.url}/api/v1/models/gc/1/retire", timeout=10)
    assert retired.status_code == 200, retired.text
    deleted = api.http.delete(f"{api.url}/api/v1/artifacts/{model}", timeout=10)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"sha256": model, "bytes_freed": len(b"model of v1" * 50)}
    assert api.http.get(f"{api.url}/artifacts/{model}", timeout=10).status_code == 404
    assert_problem(api.http.delete(f"{api.url}/api/v1/artifacts/{model}", timeout=10), 404)

    again = api.http.post(
        f"{api.url}/api/v1/models",
        json=card(name="gc", version="2", artifact_sha256=model, golden_sha256=golden),
        timeout=10,
    )
    assert_problem(again, 409, model, "PUT it first")
    upload(api, b"model of v1" * 50)
    register(api, "2", model, golden)


def test_garbage_collection_removes_what_no_live_version_uses_and_abandoned_uploads(
    api: ServerProcess,
) -> None:
    kept = upload(api, b"model of v3" * 50), upload(api, b"golden of v3" * 50)
    register(api, "3", *kept)
    orphan = upload(api, b"uploaded, never registered" * 50)
    retired = upload(api, b"model of v4" * 50), upload(api, b"golden of v4" * 50)
    register(api, "4", *retired)
    assert api.http.post(f"{api.url}/api/v1/models/gc/4/retire", timeout=10).status_code == 200
    stray = artifact_dir(api) / ".upload-abandoned"
    stray.write_bytes(b"x" * 1000)
    two_hours_ago = time.time() - 7200
    os.utime(stray, (two_hours_ago, two_hours_ago))
    fresh = upload(api, b"pushed a moment ago" * 50)

    young_kept = api.http.post(f"{api.url}/api/v1/artifact-gc", json={}, timeout=10).json()
    assert young_kept["removed"] == [] and young_kept["stray_uploads"] == 1
    assert young_kept["bytes_freed"] == 1000 and not stray.exists()

    dry = api.http.post(
        f"{api.url}/api/v1/artifact-gc", json={"min_age_s": 0, "dry_run": True}, timeout=10
    ).json()
    gone = {orphan, *retired, fresh}
    assert gone <= {r["sha256"] for r in dry["removed"]} and dry["dry_run"] is True
    assert all(api.http.head(f"{api.url}/artifacts/{s}", timeout=10).ok for s in gone)

    collected = api.http.post(
        f"{api.url}/api/v1/artifact-gc", json={"min_age_s": 0}, timeout=10
    ).json()
    assert {r["sha256"] for r in collected["removed"]} == {r["sha256"] for r in dry["removed"]}
    assert collected["bytes_freed"] == sum(r["bytes_freed"] for r in collected["removed"])
    for sha256 in gone:
        assert api.http.head(f"{api.url}/artifacts/{sha256}", timeout=10).status_code == 404
    for sha256 in kept:
        assert api.http.head(f"{api.url}/artifacts/{sha256}", timeout=10).status_code == 200
    listed = api.http.get(f"{api.url}/api/v1/models?include_retired=true&name=gc", timeout=10)
    assert {m["label"] for m in listed.json()["items"]} >= {"gc:3", "gc:4"}, "rows stay"


def test_an_operator_collects_unused_files_from_the_command_line(api: ServerProcess) -> None:
    client = api.client()
    needed = upload(api, b"model of v5" * 50), upload(api, b"golden of v5" * 50)
    register(api, "5", *needed)
    with pytest.raises(ApiError, match="gc:5") as refused:
        client.delete_artifact(needed[0])
    assert refused.value.status == 409
    orphan = upload(api, b"an operator's stray upload" * 50)

    dry = run_command("edgeloop.cli.main", "models", "gc", "--min-age", "0", "--dry-run",
                      *api.cli_args)  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "would remove" in dry.stdout and orphan in dry.stdout and needed[0] not in dry.stdout
    assert api.http.head(f"{api.url}/artifacts/{orphan}", timeout=10).status_code == 200

    done = run_command("edgeloop.cli.main", "models", "gc", "--min-age", "0", *api.cli_args)
    assert done.returncode == 0 and "removed" in done.stdout, done.stderr
    assert api.http.head(f"{api.url}/artifacts/{orphan}", timeout=10).status_code == 404
    assert client.collect_artifacts(min_age_s=0).removed == []


def test_numbers_stored_before_they_had_to_be_finite_still_list(api: ServerProcess) -> None:
    """An older server stored NaN in free-form figures; listing them must not fail."""
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{artifact_dir(api).parent / 'edgeloop.db'}")
    with engine.begin() as db:
        db.execute(
            text(
                "INSERT INTO loop_decisions (loop, round, profile, action, model, reason, "
                "figures, created_at) VALUES ('legacy', 1, 'pi', 'keep', 'fp32', 'old', "
                "'{\"p95_ms\": NaN}', '2026-01-01 00:00:00')"
            )
        )
        db.execute(
            text(
                "INSERT INTO calibrations (profile, calibration, observations, updated_at) "
                "VALUES ('legacy', '{\"class_scale\": Infinity}', 1, '2026-01-01 00:00:00')"
            )
        )
    engine.dispose()
    decisions = api.http.get(f"{api.url}/api/v1/loop/decisions?loop=legacy", timeout=10)
    assert decisions.status_code == 200, decisions.text
    assert decisions.json()["items"][0]["figures"] == {"p95_ms": None}
    calibration = api.http.get(f"{api.url}/api/v1/calibrations/legacy", timeout=10)
    assert calibration.status_code == 200, calibration.text
    assert calibration.json()["calibration"] == {"class_scale": None}
