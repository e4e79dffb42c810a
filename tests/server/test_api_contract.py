"""The REST contract, end to end: every operation documents a typed answer and the one error
shape; a real server's answer to every GET follows its OpenAPI document, on a fleet that has
devices (registered by MQTT hello), reports, telemetry, a model, a rollout, loop decisions
and a calibration; Schemathesis, sending made-up valid and invalid requests to every
operation of such a fleet, finds no answer outside the document and no server error; a device
class's reports on a model are one request; and the loop measures each class with exactly
that one request per round."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
from helpers import JETSON, PI, publish, signing_repository, wait_until

from edgeloop.agent.protocol import (
    Channel,
    Energy,
    Gate,
    Hello,
    LatencyStats,
    Phase,
    Report,
    Telemetry,
    TensorSpec,
    encode,
    topic,
)
from edgeloop.lab.broker import Broker
from edgeloop.lab.launch import ServerProcess
from edgeloop.server.client import ApiClient
from edgeloop.server.schemas import (
    LoopDecisionCreate,
    ModelCreate,
    ModelFigures,
    RolloutCreate,
    Target,
)

DEVICES = {"pi-0": PI, "pi-1": PI, "jetson-0": JETSON}
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


# --------------------------------------------------------------------------- the document


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The OpenAPI document of the app as it is built, without a broker."""
    from edgeloop.server.app import create_app
    from edgeloop.server.config import Settings

    workdir = tmp_path_factory.mktemp("openapi")
    settings = Settings(
        database_url=f"sqlite:///{workdir / 'edgeloop.db'}",
        artifact_dir=workdir / "artifacts",
        public_url="http://127.0.0.1:8000",
        tuf_dir=signing_repository(workdir),
    )
    return create_app(settings, with_mqtt=False).openapi()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield method.upper(), path, operation


def is_typed(schema: dict[str, Any]) -> bool:
    """A named model, a list of typed items, or a file: never ``{}`` or a bare object."""
    if "$ref" in schema:
        return True
    if schema.get("type") == "array":
        return is_typed(schema.get("items", {}))
    return schema.get("type") == "string" and schema.get("format") == "binary"


def test_every_operation_documents_a_typed_answer_and_the_one_error_shape(
    openapi: dict[str, Any],
) -> None:
    problem = {"$ref": "#/components/schemas/Problem"}
    for method, path, operation in operations(openapi):
        answers = {code: r for code, r in operation["responses"].items() if code.startswith("2")}
        assert answers, f"{method} {path} documents no success answer"
        for code, answer in answers.items():
            contents = answer.get("content", {})
            assert contents, f"{method} {path} {code} documents no body"
            for media_type, content in contents.items():
                assert is_typed(content.get("schema", {})), (method, path, code, media_type)
        for code, answer in operation["responses"].items():
            if code == "416" and path == "/artifacts/{sha256}":
                continue  # Starlette's own answer to a range past the end of a file: no body
            if code.startswith("4"):
                schema = answer["content"]["application/json"]["schema"]
                assert schema == problem, f"{method} {path} {code} is documented as {schema}"
    assert "HTTPValidationError" not in openapi["components"]["schemas"], (
        "FastAPI's own 422 body is documented, but the server answers a Problem"
    )


def test_a_model_card_takes_every_figure_of_the_compressors_report() -> None:
    from edgeloop.compressor.report import ModelReport

    assert set(ModelReport.model_fields) <= set(ModelFigures.model_fields)
    report = ModelReport(
        variant="int8",
        recipe=["export", "quantize_static"],
        size_bytes=1000,
        accuracy=0.97,
        baseline_accuracy=0.98,
        accuracy_drop=0.01,
        compression_ratio=3.9,
        host_latency_p50_ms=0.2,
        host_latency_p95_ms=0.3,
        host_threads=1,
        golden_atol=0.01,
        metrics={"accuracy": 0.97, "f1": 0.96},
        peak_rss_mb=80.0,
        output_max_abs_err=0.02,
        weight_error={"mse": 1e-5},
        agreement_metric="cosine",
    )
    figures = ModelFigures.model_validate(report.model_dump())
    assert figures.model_dump(include=set(ModelReport.model_fields)) == report.model_dump()


# --------------------------------------------------------------------------- a live fleet


@dataclass
class LiveFleet:
    """A control plane process with something behind every GET, and the ids to ask for."""

    server: ServerProcess
    client: ApiClient
    sha256: str
    rollout_id: int

    def known(self) -> dict[str, list[str | int]]:
        """Path parameter → a value that exists on this server."""
        return {
            "device_id": ["pi-0"],
            "name": ["m"],
            "version": ["1"],
            "rollout_id": [self.rollout_id],
            "profile": ["pi"],
            "sha256": [self.sha256],
            "file": ["timestamp.json"],
        }

    def path(self, template: str) -> str:
        return template.format(**{name: values[0] for name, values in self.known().items()})


def report(device_id: str, model: str, p95_ms: float, minute: int, ok: bool = True) -> Report:
    return Report(
        device_id=device_id,
        sent_at=T0 + timedelta(minutes=minute),
        revision=1,
        model=model,
        artifact_sha256="a" * 64,
        ok=ok,
        phase=Phase.COMMITTED if ok else Phase.ROLLED_BACK,
        verified=True,
        latency=LatencyStats(n=50, p50_ms=p95_ms / 2, p95_ms=p95_ms, p99_ms=p95_ms, mean_ms=1),
        peak_rss_mb=90.0 + minute,
        energy=Energy(joules_per_inference=0.001, avg_power_w=2, source="estimate", estimated=True),
        within_budget=ok,
        budget_detail={"latency": ok},
        gate=None if ok else Gate.LATENCY,
        error=None if ok else "p95 over budget",
        running=model if ok else None,
    )


REPORTS = [
    # (device, model, p95 ms, minute): pi-0 reported on m:1 twice, then on m:2.
    report("pi-0", "m:1", 4.0, 1),
    report("jetson-0", "m:1", 1.0, 2),
    report("pi-1", "m:1", 3.0, 3),
    report("pi-0", "m:1", 2.0, 4),
    report("pi-0", "m:2", 9.0, 5, ok=False),
]


@contextmanager
def live_fleet(workdir: Path, mosquitto: Broker, database_url: str | None) -> Iterator[LiveFleet]:
    """A control plane process with something behind every GET (``database_url`` None: its
    own SQLite file)."""
    server = ServerProcess(
        workdir / "server", mosquitto.port, database_url=database_url, anonymous_downloads=False
    )
    try:
        server.wait_ready()
        client = server.client()
        files = []
        for name in ("model.onnx", "golden.npz"):
            files.append(workdir / name)
            files[-1].write_bytes(name.encode() * 100)
        artifact, golden = (client.upload_artifact(f) for f in files)
        for version in ("1", "2"):
            client.register_model(
                ModelCreate(
                    name="m",
                    version=version,
                    artifact_sha256=artifact.sha256,
                    golden_sha256=golden.sha256,
                    inputs=[TensorSpec(name="x", dtype="float32", shape=["batch", 4])],
                    outputs=[TensorSpec(name="y", dtype="float32", shape=["batch", 2])],
                    report=ModelFigures(accuracy=0.9, size_bytes=400, variant="fp32"),
                )
            )
        hellos = [
            (topic(d, Channel.HELLO), encode(Hello(device_id=d, agent_version="t", profile=p)))
            for d, p in DEVICES.items()
        ]
        publish(mosquitto.port, hellos, "contract-test")
        wait_until(lambda: len(client.devices()) == len(DEVICES), 20, "every hello stored")
        sample = Telemetry(device_id="pi-0", sent_at=T0, model="m:1", rss_mb=80, seq=1)
        messages = [(topic(r.device_id, Channel.REPORT), encode(r)) for r in REPORTS]
        messages.append((topic("pi-0", Channel.TELEMETRY), encode(sample)))
        publish(mosquitto.port, messages, "contract-test")
        wait_until(lambda: len(client.reports()) == len(REPORTS), 20, "every report stored")
        client.assign_application("default", "spare")
        rollout = client.create_rollout(
            RolloutCreate(model="m:2", target=Target(profile="jetson"), waves=["100%"])
        )
        client.record_decision(
            LoopDecisionCreate(
                loop="m",
                round=1,
                profile="pi",
                action="keep",
                model="m:1",
                reason="within budget",
                figures={"measured": {"p95_ms": 2.0}, "budget": {"latency_p95_ms": 5.0}},
            )
        )
        client.put_calibration("pi", {"profile": "pi", "threads": 1, "class_scale": 2.0}, 2)
        yield LiveFleet(server, client, artifact.sha256, rollout.id)
    finally:
        server.stop()


def database(request: pytest.FixtureRequest) -> str | None:
    """The database ``request.param`` names: None for the server's own SQLite file."""
    if request.param == "postgresql":
        return request.getfixturevalue("postgres").create_database()
    return None


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, mosquitto: Broker
) -> Iterator[LiveFleet]:
    """One populated control plane per database, shared by the module's tests, which only
    read it."""
    with live_fleet(tmp_path_factory.mktemp("contract"), mosquitto, database(request)) as live:
        yield live


def test_every_get_answers_what_the_openapi_document_says(fleet: LiveFleet) -> None:
    document = requests.get(f"{fleet.server.url}/openapi.json", timeout=5).json()
    asked = 0
    for method, path, operation in operations(document):
        if method != "GET":
            continue
        response = fleet.server.http.get(fleet.server.url + fleet.path(path), timeout=5)
        assert response.status_code == 200, (path, response.text)
        (media_type,) = operation["responses"]["200"]["content"]
        assert response.headers["content-type"].startswith(media_type), path
        if media_type == "application/json":
            schema = operation["responses"]["200"]["content"][media_type]["schema"]
            body = response.json()
            assert body, f"{path} answered nothing to check"
            jsonschema.validate(body, {**schema, "components": document["components"]})
        asked += 1
    assert asked >= 15, "every GET of the API"


def test_a_class_reports_on_a_model_are_one_request_each_device_once_newest_first(
    fleet: LiveFleet,
) -> None:
    latest = fleet.client.reports(profile="pi", model="m:1", latest=True)
    assert [(r.device_id, r.latency and r.latency.p95_ms) for r in latest] == [
        ("pi-0", 2.0),
        ("pi-1", 3.0),
    ], "pi-0's newest report on m:1, not its older one, nor its report on m:2"
    assert all(r.received_at.tzinfo is not None for r in latest)
    every = fleet.client.reports(profile="pi", model="m:1")
    assert [r.sent_at.minute for r in every] == [4, 3, 1]
    newest_anywhere = fleet.client.reports(latest=True)
    assert {r.device_id: r.model for r in newest_anywhere} == {
        "pi-0": "m:2",
        "pi-1": "m:1",
        "jetson-0": "m:1",
    }
    refused = fleet.client.device_reports("pi-0", limit=1)[0]
    assert refused.gate == Gate.LATENCY and refused.phase == Phase.ROLLED_BACK
    page = fleet.server.http.get(
        f"{fleet.server.url}/api/v1/reports", params={"limit": 1, "offset": 1}, timeout=5
    ).json()
    assert page["total"] == len(REPORTS) and page["items"][0]["sent_at"].startswith(
        "2026-12-01T12:04"
    )


def test_the_loop_measures_each_class_with_one_request_per_round(fleet: LiveFleet) -> None:
    from edgeloop.loop import Candidate, CandidatePool, Loop
    from edgeloop.loop.costmodel import HostMeasurement, ModelFeatures

    client = fleet.server.client()
    requests_made: list[str] = []
    client.http.hooks["response"].append(
        lambda response, **_: requests_made.append(response.request.path_url)
    )
    no_search = CandidatePool(None, None, Path())  # type: ignore[arg-type]
    loop = Loop(client, "m", [PI, JETSON], no_search)
    candidate = Candidate(
        key="1",
        label="fp32",
        accuracy=0.9,
        size_bytes=400,
        model_path=Path("model.onnx"),
        golden_path=Path("golden.npz"),
        features=ModelFeatures({"matmul_fp32": 1000}, 100, 400, "matmul_fp32"),
        host={1: HostMeasurement(0.5, 1.0, 80.0, 1), 2: HostMeasurement(0.3, 0.6, 80.0, 2)},
    )
    measured = {}
    for state in loop.classes.values():
        state.current = candidate
        measured[state.profile.name] = loop.measure(state)

    assert len(requests_made) == len(loop.classes), requests_made
    assert all(path.startswith("/api/v1/reports?") for path in requests_made)
    pi, jetson = measured["pi"], measured["jetson"]
    assert pi is not None and jetson is not None
    assert (pi.devices, pi.p95_ms, pi.ok) == (2, 2.5, True), "median of pi-0's newest and pi-1"
    assert (jetson.devices, jetson.p95_ms) == (1, 1.0)


@pytest.fixture(params=["sqlite", "postgresql"])
def fuzzed_fleet(
    request: pytest.FixtureRequest, tmp_path: Path, mosquitto: Broker
) -> Iterator[LiveFleet]:
    """A fleet of its own: the fuzzer writes (registers, retires, rolls back, deletes)."""
    with live_fleet(tmp_path, mosquitto, database(request)) as live:
        yield live


FUZZ_EXAMPLES = 8
"""Generated requests per operation, valid and invalid, besides Schemathesis's boundary cases:
a CI budget. ``lab/fuzz_rest.py``'s callers run many more."""


def test_no_request_gets_an_answer_outside_the_document_or_a_server_error(
    fuzzed_fleet: LiveFleet,
) -> None:
    """Every operation, every check: no 5xx; only documented statuses, bodies, content types
    and headers; schema-valid requests accepted (or refused for the fleet's state: 404, 409)
    and schema-invalid ones refused; each operation refuses a request without the operator's
    token, or with a made-up one."""
    pytest.importorskip("schemathesis")
    from edgeloop.lab.fuzz_rest import fuzz_rest

    document = requests.get(f"{fuzzed_fleet.server.url}/openapi.json", timeout=5).json()
    documented = sum(len(methods) for methods in document["paths"].values())
    report = fuzz_rest(
        fuzzed_fleet.server.url,
        examples=FUZZ_EXAMPLES,
        known=fuzzed_fleet.known(),
        token=fuzzed_fleet.server.token,
    )
    assert not report.errors, report.summary()
    assert report.operations == documented, report.summary()
    assert report.cases >= documented * FUZZ_EXAMPLES, report.summary()
    assert report.server_errors == 0, report.summary()
    assert report.failures == [], report.summary()
