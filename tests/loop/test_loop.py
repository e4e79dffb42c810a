"""The closed loop: what a round decides per device class, and the loop over real parts
(agents on emulated classes, Mosquitto, the control plane) converging, leaving alone what
fits, and stopping with a report where nothing can fit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_command

from edgeloop.agent.protocol import DeviceProfile, Gate
from edgeloop.compressor.report import golden_atol
from edgeloop.lab.broker import Broker
from edgeloop.lab.demo import DEMO_RECIPE
from edgeloop.lab.emulation import DeviceClass
from edgeloop.lab.launch import AgentProcess, ServerProcess, wait_for_devices
from edgeloop.loop import Candidate, CandidatePool, ClassState, Loop, Measured, decide
from edgeloop.loop.costmodel import HostMeasurement, ModelFeatures, Prediction

PROFILE = DeviceProfile(name="pi", cpu_threads=1, memory_budget_mb=200, latency_budget_ms=2.0)


def candidate(key: str, accuracy: float, host_p95: float, size: int = 1000) -> Candidate:
    return Candidate(
        key=key * 12,
        label=key,
        accuracy=accuracy,
        size_bytes=size,
        model_path=Path(f"/models/{key}.onnx"),
        golden_path=Path(f"/models/{key}.npz"),
        features=ModelFeatures({"matmul_fp32": 1000}, 100, size, "matmul_fp32"),
        host={1: HostMeasurement(host_p95 * 0.8, host_p95, 80.0, 1)},
    )


FP32 = candidate("a", 0.98, 3.0)
INT8 = candidate("b", 0.97, 1.5)
SMALL = candidate("c", 0.95, 0.5)
CANDIDATES = [FP32, INT8, SMALL]


def predicted(scale: float = 1.0) -> dict[str, Prediction]:
    return {c.key: Prediction(c.host[1].p95_ms * scale, 90.0, 1.0, "test") for c in CANDIDATES}


def measured(c: Candidate, p95: float, ok: bool = True, gate: Gate | None = None) -> Measured:
    return Measured(f"m:{c.version}", ok, p95, 90.0, 1.0, 1, gate, None if ok else "refused")


def test_a_class_within_budget_on_the_most_accurate_fitting_candidate_is_left_alone() -> None:
    state = ClassState(PROFILE, current=INT8)
    decision = decide(state, CANDIDATES, predicted(), measured(INT8, 1.4))
    assert decision.action == "keep" and decision.candidate is INT8
    assert "within budget: p95 1.40 of 2 ms" in decision.reason
    assert decision.figures["measured"]["p95_ms"] == 1.4


def test_a_miss_deploys_the_most_accurate_candidate_predicted_to_fit_and_never_retries_it() -> None:
    state = ClassState(PROFILE, current=FP32)
    decision = decide(
        state, CANDIDATES, predicted(), measured(FP32, 3.1, ok=False, gate=Gate.LATENCY)
    )
    assert decision.action == "deploy" and decision.candidate is INT8
    assert "refused by the device gate `latency`" in decision.reason
    assert FP32.key in state.refused
    # The device measured INT8 over budget too (the calibration was off): next is SMALL.
    state.current = INT8
    decision = decide(
        state, CANDIDATES, predicted(), measured(INT8, 2.5, ok=False, gate=Gate.LATENCY)
    )
    assert decision.candidate is SMALL and set(state.refused) == {FP32.key, INT8.key}


def test_headroom_moves_a_class_to_a_more_accurate_candidate() -> None:
    state = ClassState(PROFILE, current=SMALL)
    # Calibrated: this class is twice as fast as the host, so even fp32 is predicted to fit.
    decision = decide(state, CANDIDATES, predicted(scale=0.5), measured(SMALL, 0.3))
    assert decision.action == "deploy" and decision.candidate is FP32
    assert "headroom" in decision.reason


def test_an_unreachable_budget_ends_with_a_report_naming_the_closest_candidate() -> None:
    tight = PROFILE.model_copy(update={"latency_budget_ms": 0.1})
    state = ClassState(tight, current=FP32)
    decision = decide(
        state, CANDIDATES, predicted(), measured(FP32, 3.0, ok=False, gate=Gate.LATENCY)
    )
    assert decision.action == "unreachable" and decision.candidate is None
    assert "closest is c: predicted p95 0.50 ms > 0.10 ms" in decision.reason
    assert "Relax the budget" in decision.reason


def test_a_class_whose_devices_have_not_reported_waits_instead_of_guessing() -> None:
    state = ClassState(PROFILE, current=FP32)
    decision = decide(state, CANDIDATES, predicted(), None)
    assert decision.action == "wait" and decision.candidate is FP32
    assert "no report yet" in decision.reason and not state.refused


def test_a_margin_asks_predictions_to_fit_with_room_to_spare() -> None:
    state = ClassState(PROFILE, current=FP32)
    miss = measured(FP32, 3.0, ok=False, gate=Gate.LATENCY)
    assert decide(state, CANDIDATES, predicted(), miss).candidate is INT8
    state = ClassState(PROFILE, current=FP32)
    assert decide(state, CANDIDATES, predicted(), miss, margin=0.7).candidate is SMALL


# --------------------------------------------------------------------------- real parts


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> CandidatePool:
    from edgeloop.compressor.examples.digits import DigitsTask
    from edgeloop.compressor.recipe import load_recipe

    return CandidatePool(
        DigitsTask(epochs=20), load_recipe(DEMO_RECIPE), tmp_path_factory.mktemp("pool")
    )


@pytest.fixture()
def control_plane(tmp_path: Path, mosquitto: Broker) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "server", mosquitto.port)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_the_loop_converges_on_emulated_classes_and_stops_where_nothing_fits(
    pool: CandidatePool, control_plane: ServerProcess, mosquitto: Broker, tmp_path: Path
) -> None:
    candidates = pool.search([1, 2])
    assert len(candidates) == 4 and sum(c.baseline for c in candidates) == 1
    sizes = sorted(c.size_bytes for c in candidates)
    # Budgets on size and memory are exact, so the right answer does not depend on timing
    # noise; latency budgets are generous (the benchmark exercises tight ones).
    classes = {
        "roomy": DeviceClass(name="roomy", threads=2),
        "small": DeviceClass(name="small", threads=1, cpus=(0,)),
        "tiny": DeviceClass(name="tiny", threads=1, cpus=(1,), memory_limit_mb=512),
    }
    room = {"roomy": None, "small": (sizes[1] + sizes[2]) / 2 / 1024, "tiny": sizes[0] / 2 / 1024}
    profiles = {
        name: device_class.profile(
            latency_budget_ms=50, memory_budget_mb=1024, model_size_budget_kb=room[name]
        )
        for name, device_class in classes.items()
    }
    agents = [
        AgentProcess(
            f"{name}-00",
            profiles[name],
            tmp_path,
            mosquitto.port,
            inferences=50,
            probation_s=0.3,
            device_class=device_class,
            server=control_plane,
        )
        for name, device_class in classes.items()
    ]
    client = control_plane.client()
    try:
        wait_for_devices(client, 3, agents)
        loop = Loop(client, "digits", list(profiles.values()), pool, max_rounds=4)
        result = loop.run()
    finally:
        for agent in agents:
            agent.stop()

    assert result.converged, result.reason
    assert result.rounds_to_converge is not None and result.rounds_to_converge <= 2
    final = {name: state.last for name, state in result.classes.items()}
    assert final["tiny"] is not None and final["tiny"].action == "unreachable"
    assert "no candidate is predicted to fit 'tiny'" in final["tiny"].reason
    for name in ("roomy", "small"):
        decision = final[name]
        assert decision is not None and decision.action == "keep", decision
        budget = profiles[name].model_size_budget_kb
        fitting = [c for c in candidates if budget is None or c.size_bytes / 1024 <= budget]
        assert decision.candidate is not None
        assert decision.candidate.accuracy == max(c.accuracy for c in fitting), name
        # The device really runs it, verified.
        (device,) = client.devices(profile=name)
        assert device.current_model == f"digits:{decision.candidate.version}"

    # Quantized versions are registered with the wider golden tolerance another CPU needs.
    assert {c.quantized for c in candidates} == {True, False}
    assert all(c.quantized == ("int8" in c.label) for c in candidates)
    by_version = {c.version: c for c in candidates}
    for model in client.models():
        built = by_version[model.version]
        assert model.golden_atol == golden_atol(built.golden_path, quantized=built.quantized)

    # A kept class gets no rollout: one rollout per deploy decision, per class.
    deploys = [d for d in loop.history if d.action == "deploy"]
    rollouts = client.rollouts(limit=100).items
    assert len(rollouts) == len(deploys)

    server = control_plane.cli_args
    history = run_command("edgeloop.cli.main", "loop", "history", *server, "--json")
    rows = json.loads(history.stdout)
    assert [r["action"] for r in rows][-1] == "stop"
    assert {r["profile"] for r in rows} >= {"roomy", "small", "tiny"}
    table = run_command("edgeloop.cli.main", "loop", "history", *server)
    assert "loop history" in table.stdout and "unreachable" in table.stdout
    calibrations = run_command("edgeloop.cli.main", "loop", "calibrations", *server, "--json")
    assert {c["profile"] for c in json.loads(calibrations.stdout)} >= {"roomy"}


def test_a_new_loop_starts_from_the_calibration_the_server_kept(
    control_plane: ServerProcess,
) -> None:
    from edgeloop.loop.costmodel import Calibration

    client = control_plane.client()
    client.put_calibration("pi", Calibration("pi", threads=1, class_scale=2.5).to_json(), 1)
    client.put_calibration("elsewhere", Calibration("elsewhere", 1, 9.0).to_json(), 1)
    stale_threads = PROFILE.model_copy(update={"name": "pi2", "cpu_threads": 2})
    client.put_calibration("pi2", Calibration("pi2", threads=1, class_scale=3.0).to_json(), 1)
    loop = Loop(client, "m", [PROFILE, stale_threads], CandidatePool(None, None, Path()))  # type: ignore[arg-type]
    loop.load_calibrations()
    assert set(loop.cost.calibrations) == {"pi"}, "other classes and other thread counts skipped"
    prediction = loop.cost.predict("pi", FP32.features, FP32.host[1])
    assert prediction.latency_p95_ms == pytest.approx(3.0 * 2.5)
