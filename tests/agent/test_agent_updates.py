"""The agent's update flow, in-process against the real control plane's artifact store.

Every bad model is refused by the gate named for its fault, and the model committed before
keeps serving applications throughout. A model that passes every gate but disagrees with its
predecessor on live inputs is rolled back by probation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from agent_models import (
    BASE_WEIGHTS,
    GOLDEN_INPUTS,
    ROOMY,
    Published,
    downloader,
    golden_npz,
    linear_model,
    publish,
)

from edgeloop.agent.config import AgentConfig
from edgeloop.agent.host import ModelHost
from edgeloop.agent.protocol import DeviceProfile, Phase, Report, TensorSpec
from edgeloop.agent.states import (
    MAX_RESUMES,
    TRANSITIONS,
    Event,
    StateFileError,
    StateStore,
    Update,
)
from edgeloop.agent.updater import Hooks, Updater
from edgeloop.lab.broker import Broker
from edgeloop.lab.launch import ServerProcess

DEVICE = "unit-01"


@pytest.fixture(scope="module")
def control_plane(
    tmp_path_factory: pytest.TempPathFactory, mosquitto: Broker
) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("control-plane"), mosquitto.port)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


class Device:
    """An updater with its host, recording every report and state it goes through."""

    def __init__(self, workdir: Path, server_url: str, profile: DeviceProfile = ROOMY) -> None:
        self.profile = profile
        self.server_url = server_url
        self.reports: list[Report] = []
        self.states: list[Phase] = []
        self.config = AgentConfig(
            device_id=DEVICE,
            workdir=workdir,
            profile=profile,
            inferences=20,
            probation_s=0.2,
            shadow_every=1,
        )
        self.host = ModelHost()
        self.revision = 0
        self.updater = Updater(
            self.config,
            self.host,
            Hooks(on_state=lambda r: self.states.append(r.state), on_report=self.reports.append),
            http=downloader(server_url),
        )
        self.updater.start()

    def apply(self, published: Published, profile: DeviceProfile | None = None) -> Report:
        self.revision += 1
        self.updater.apply(
            Update(
                device_id=DEVICE,
                revision=self.revision,
                model=published.manifest,
                profile=profile or self.profile,
            )
        )
        return self.reports[-1]

    def serving(self) -> str | None:
        return self.host.model.label if self.host.model else None

    def answers(self) -> np.ndarray:
        return self.host.infer({"x": GOLDEN_INPUTS[:2]})["logits"]


@pytest.fixture()
def device(tmp_path: Path, control_plane: ServerProcess) -> Device:
    """A device already running linear:1, so every later failure has something to keep."""
    unit = Device(tmp_path / "agent", control_plane.url)
    report = unit.apply(publish(control_plane.url, "1", linear_model(BASE_WEIGHTS)))
    assert report.ok and report.phase == Phase.COMMITTED, report
    return unit


def test_a_good_model_walks_every_state_to_committed(
    device: Device, control_plane: ServerProcess
) -> None:
    weights = BASE_WEIGHTS * 1.01
    report = device.apply(publish(control_plane.url, "2", linear_model(weights), weights=weights))
    assert report.ok, report
    walked = [s for i, s in enumerate(device.states) if i == 0 or device.states[i - 1] != s]
    assert walked[-6:] == [
        Phase.DOWNLOADING,
        Phase.VERIFYING,
        Phase.VALIDATING,
        Phase.ACTIVATING,
        Phase.PROBATION,
        Phase.COMMITTED,
    ]
    assert device.serving() == "linear:2"
    assert report.agreement == 1.0, "the shadow compared v2 with v1 on the golden traffic"
    assert report.latency is not None and report.latency.n == 20
    record = device.updater.record
    assert record.committed is not None and record.previous is not None
    assert (record.committed.label, record.previous.label) == ("linear:2", "linear:1")
    assert record.committed.slot != record.previous.slot, "A/B: the previous model stays on disk"
    slot_dir = device.config.workdir / "slots" / record.previous.slot.value
    assert (slot_dir / "model.onnx").exists()
    assert not (device.config.workdir / "blobs").exists(), "downloads are cleaned once settled"


BAD_MODELS = {
    # name: (how to build the bad version, the gate that must refuse it)
    "truncated file": (
        lambda url: publish(url, "bad", linear_model(BASE_WEIGHTS)[:-40]),
        "loads",
    ),
    "wrong hash": (
        lambda url: _wrong_hash(url),
        "verify",
    ),
    "wrong input name": (
        lambda url: publish(url, "bad", linear_model(BASE_WEIGHTS, input_name="pixels")),
        "io",
    ),
    "wrong output shape in manifest": (
        lambda url: publish(
            url,
            "bad",
            linear_model(BASE_WEIGHTS),
            outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", 3, 1])],
        ),
        "io",
    ),
    "golden outputs not reproduced": (
        lambda url: publish(
            url, "bad", linear_model(BASE_WEIGHTS), golden_npz(GOLDEN_INPUTS @ BASE_WEIGHTS + 1)
        ),
        "golden",
    ),
    "NaN output": (
        lambda url: publish(
            url,
            "bad",
            linear_model(BASE_WEIGHTS, nan=True),
            golden_npz(np.full((len(GOLDEN_INPUTS), 3), np.nan, np.float32)),
        ),
        "finite",
    ),
    "unsupported opset": (
        lambda url: publish(url, "bad", linear_model(BASE_WEIGHTS, opset=99)),
        "opset",
    ),
}


def _wrong_hash(url: str) -> Published:
    good = publish(url, "bad", linear_model(BASE_WEIGHTS))
    other = publish(url, "other", linear_model(BASE_WEIGHTS * 3))
    forged = good.manifest.model_copy(
        update={
            "artifact": good.manifest.artifact.model_copy(
                update={"url": other.manifest.artifact.url, "size": other.manifest.artifact.size}
            )
        }
    )
    return Published(good.model, good.golden, forged)


@pytest.mark.parametrize("fault", list(BAD_MODELS))
def test_a_bad_model_is_refused_by_its_gate_and_the_old_model_keeps_serving(
    fault: str, device: Device, control_plane: ServerProcess
) -> None:
    build, gate = BAD_MODELS[fault]
    before = device.answers()
    report = device.apply(build(control_plane.url))
    assert not report.ok
    assert report.phase == Phase.FAILED
    assert report.gate == gate, report.error
    assert report.error
    assert report.running == "linear:1"
    assert device.serving() == "linear:1"
    np.testing.assert_array_equal(device.answers(), before)


@pytest.mark.parametrize(
    ("profile_change", "gate"),
    [
        ({"latency_budget_ms": 1e-6}, "latency"),
        ({"memory_budget_mb": 1}, "memory"),
        ({"model_size_budget_kb": 1}, "size"),
    ],
)
def test_a_model_over_the_profiles_budget_is_refused(
    profile_change: dict, gate: str, device: Device, control_plane: ServerProcess
) -> None:
    weights = BASE_WEIGHTS * 1.01
    published = publish(
        control_plane.url, "2", linear_model(weights, padding_bytes=4096), weights=weights
    )
    tight = ROOMY.model_copy(update=profile_change)
    report = device.apply(published, profile=tight)
    assert (report.ok, report.gate) == (False, gate), report.error
    assert device.serving() == "linear:1"
    if gate == "size":
        assert report.latency is None, "refused before a byte was downloaded"
    else:
        # What the device measured travels with the refusal: the server calibrates from it.
        assert report.latency is not None and report.peak_rss_mb is not None
        assert report.within_budget is False and report.budget_detail[gate] is False


def test_each_validation_reports_its_own_memory_peak_not_the_lifetime_one(
    device: Device, control_plane: ServerProcess
) -> None:
    weights = BASE_WEIGHTS * 1.01
    big = device.apply(
        publish(
            control_plane.url, "2", linear_model(weights, padding_bytes=80_000_000), weights=weights
        )
    )
    small = device.apply(publish(control_plane.url, "3", linear_model(BASE_WEIGHTS)))
    assert big.ok and small.ok
    assert big.peak_rss_mb is not None and small.peak_rss_mb is not None
    assert small.peak_rss_mb < big.peak_rss_mb - 40, (big.peak_rss_mb, small.peak_rss_mb)


def test_probation_rolls_back_a_model_that_disagrees_with_its_predecessor(
    device: Device, control_plane: ServerProcess
) -> None:
    swapped = BASE_WEIGHTS[:, ::-1].copy()  # same gates pass, other classes win
    report = device.apply(
        publish(control_plane.url, "2", linear_model(swapped), weights=swapped, min_agreement=0.9)
    )
    assert report.phase == Phase.ROLLED_BACK and not report.ok
    assert report.gate == "agreement"
    assert report.agreement is not None and report.agreement < 0.9
    assert "agrees with the previous model" in (report.error or "")
    assert device.serving() == "linear:1"
    assert device.updater.slots.active() == device.updater.record.committed.slot


def test_operator_rollback_returns_to_the_previous_committed_model(
    device: Device, control_plane: ServerProcess
) -> None:
    weights = BASE_WEIGHTS * 1.01
    assert device.apply(publish(control_plane.url, "2", linear_model(weights), weights=weights)).ok
    record = device.updater.operator_rollback()
    assert record.state == Phase.ROLLED_BACK
    assert device.serving() == "linear:1"
    assert device.reports[-1].gate == "operator"
    with pytest.raises(Exception, match="nothing to roll back to"):
        device.updater.operator_rollback()


def test_a_restarted_agent_serves_the_committed_model_from_its_slot(
    device: Device,
) -> None:
    again = Device(device.config.workdir, device.server_url)
    assert again.serving() == "linear:1"
    assert again.updater.record.state == Phase.COMMITTED
    assert len(again.reports) == 0, "a settled update is not reported twice"


def test_an_update_that_keeps_killing_the_agent_is_abandoned(
    device: Device, control_plane: ServerProcess
) -> None:
    store = device.updater.store
    record = store.load()
    stuck = record.enter(Phase.VALIDATING, resumes=0).model_copy(
        update={"resumes": MAX_RESUMES, "candidate": record.committed, "desired": record.desired}
    )
    store.save(stuck)
    again = Device(device.config.workdir, device.server_url)
    assert again.updater.record.state == Phase.FAILED
    assert again.reports[-1].gate == "restarts"
    assert again.serving() == "linear:1"


def test_every_state_has_a_way_out_and_the_table_has_no_dead_ends() -> None:
    sources = {state for state, _ in TRANSITIONS}
    targets = set(TRANSITIONS.values())
    assert targets <= sources | {Phase.IDLE}
    for state in (Phase.DOWNLOADING, Phase.VERIFYING, Phase.VALIDATING, Phase.ACTIVATING):
        assert (state, Event.RESTARTED_TOO_OFTEN) in TRANSITIONS


def test_a_damaged_state_file_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"schema_version": 1, "state": "sideways"}')
    with pytest.raises(StateFileError, match="move it away"):
        StateStore(path).load()
    path.write_text(json.dumps({"schema_version": 7}))
    with pytest.raises(StateFileError, match="schema 7"):
        StateStore(path).load()
    fresh = StateStore(tmp_path / "absent.json").load()
    assert (fresh.state, fresh.committed, fresh.revision) == (Phase.IDLE, None, None)


def test_a_state_file_of_the_previous_schema_is_read_with_no_failed_models(
    device: Device,
) -> None:
    """Schema 1 (before failed models were remembered) is what an upgraded agent finds."""
    path = device.updater.store.path
    data = json.loads(path.read_text())
    del data["failed"]
    path.write_text(json.dumps({**data, "schema_version": 1}))
    again = Device(device.config.workdir, device.server_url)
    assert again.updater.record.failed == []
    assert again.serving() == "linear:1"


def test_the_local_endpoint_keeps_serving_through_an_update_and_swaps_between_requests(
    device: Device, control_plane: ServerProcess
) -> None:
    import threading

    from edgeloop.agent.endpoint import InferenceEndpoint
    from edgeloop.agent.endpoint_client import EndpointError, InferenceClient

    endpoint = InferenceEndpoint(device.host, 0).start()
    client = InferenceClient(endpoint.url)
    served: list[str | None] = []
    failures: list[Exception] = []
    done = threading.Event()

    def hammer() -> None:
        while not done.is_set():
            try:
                outputs = client.infer({"x": GOLDEN_INPUTS[:1]})
                assert outputs["logits"].shape == (1, 3)
                served.append(client.model)
            except Exception as exc:
                failures.append(exc)

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        weights = BASE_WEIGHTS * 1.01
        report = device.apply(
            publish(control_plane.url, "2", linear_model(weights), weights=weights)
        )
    finally:
        done.set()
        worker.join()
    try:
        assert report.ok, report
        assert not failures, failures[:3]
        assert served[0] == "linear:1" and served[-1] == "linear:2"
        switch = served.index("linear:2")
        assert set(served[switch:]) == {"linear:2"}, "once swapped, never back"
        with pytest.raises(EndpointError, match=r"HTTP 400.*do not match"):
            client.infer({"pixels": GOLDEN_INPUTS[:1]})
        assert client.health()["model"] == "linear:2"
    finally:
        client.close()
        endpoint.stop()
