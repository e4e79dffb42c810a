"""In-process inference (``edgeloop.agent.local``): an application runs the agent's model in
its own process, as a 1 kHz control loop must.

Everything here is real: onnxruntime sessions, the agent's workdir, a real updater applying
models from the control plane's artifact store, a real agent daemon publishing to Mosquitto.
The application follows every activation, commit and rollback between its calls without a
failed call; its calls count in the agent's probation (errors, latency, and a shadow run of its
own inputs on the previous model) and reach the agent's telemetry as ``control``; and nothing
it writes into ``local/`` can take the agent down.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from agent_models import (
    BASE_WEIGHTS,
    FEATURES,
    GOLDEN_INPUTS,
    ROOMY,
    Published,
    downloader,
    golden_npz,
    linear_model,
    publish,
)
from onnx import TensorProto, helper, numpy_helper

from edgeloop.agent.config import AgentConfig
from edgeloop.agent.golden import golden_bytes
from edgeloop.agent.host import BadRequestError, ModelHost
from edgeloop.agent.local import (
    LOCAL_DIR,
    MAX_REPORT_BYTES,
    Counts,
    LocalModel,
    ProcessReport,
    read_reports,
    read_serving,
)
from edgeloop.agent.protocol import (
    Channel,
    DeviceProfile,
    Hello,
    Phase,
    Report,
    Telemetry,
    TensorSpec,
    decode,
    topic,
)
from edgeloop.agent.states import Update
from edgeloop.agent.updater import Hooks, Updater
from edgeloop.lab.broker import Broker
from edgeloop.lab.launch import ServerProcess

DEVICE = "arm-01"
PROBATION_S = 1.5
"""Long enough for an application to notice a probation, load the previous model for its
shadow and report a few times (every 0.1 s here)."""
REPORT_S = 0.1
OBSERVATION = GOLDEN_INPUTS[:1]


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
    """The agent's update flow on a workdir, with the reports it sends."""

    def __init__(self, workdir: Path, server_url: str) -> None:
        self.reports: list[Report] = []
        self.config = AgentConfig(
            device_id=DEVICE,
            workdir=workdir,
            profile=ROOMY,
            inferences=20,
            probation_s=PROBATION_S,
            shadow_every=1,
        )
        self.updater = Updater(
            self.config,
            ModelHost(),
            Hooks(on_report=self.reports.append),
            http=downloader(server_url),
        )
        self.updater.start()
        self.server_url = server_url
        self.revision = 0

    def apply(self, published: Published, probation_s: float = PROBATION_S) -> Report:
        """Apply ``published``, watching it ``probation_s`` (shorter where no application
        needs to take part)."""
        self.revision += 1
        self.config.probation_s = probation_s
        self.updater.apply(
            Update(
                device_id=DEVICE, revision=self.revision, model=published.manifest, profile=ROOMY
            )
        )
        return self.reports[-1]

    def scaled(self, factor: float) -> Published:
        """linear:<factor>: the first model's classes, each output ``factor`` times larger."""
        weights = BASE_WEIGHTS * factor
        return publish(self.server_url, f"{factor:g}", linear_model(weights), weights=weights)


@pytest.fixture()
def device(tmp_path: Path, control_plane: ServerProcess) -> Device:
    """A device that committed linear:1 and announces it in ``serving.json``."""
    unit = Device(tmp_path / "agent", control_plane.url)
    assert unit.apply(unit.scaled(1), probation_s=0.2).ok
    return unit


class ControlLoop:
    """A thread calling the model (batch 1) as fast as it can, keeping every output (up to
    a few million) and the first failures."""

    def __init__(self, model: LocalModel, feeds: dict[str, np.ndarray]) -> None:
        self.model, self.feeds = model, feeds
        self._outputs = np.empty((4_000_000, 3), np.float32)
        self.answered = 0
        self.failures: list[Exception] = []
        self.calls = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop)

    @property
    def outputs(self) -> np.ndarray:
        return self._outputs[: self.answered]

    def _loop(self) -> None:
        while not self._done.is_set():
            self.calls += 1
            try:
                output = self.model.run(self.feeds)["logits"]
            except Exception as exc:
                if len(self.failures) < 10_000:
                    self.failures.append(exc)
                continue
            if self.answered < len(self._outputs):
                self._outputs[self.answered] = output[0]
                self.answered += 1

    def __enter__(self) -> ControlLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def switching_model(weights: np.ndarray, switched: np.ndarray, threshold: float) -> bytes:
    """``x @ weights``, but ``x @ switched`` for samples whose first feature is above
    ``threshold``: a model that passes every gate on inputs below it."""
    nodes = [
        helper.make_node("Slice", ["x", "zero", "one", "one"], ["first"]),
        helper.make_node("Greater", ["first", "threshold"], ["above"]),
        helper.make_node("MatMul", ["x", "W"], ["usual"]),
        helper.make_node("MatMul", ["x", "S"], ["other"]),
        helper.make_node("Where", ["above", "other", "usual"], ["logits"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array(threshold, np.float32), "threshold"),
        numpy_helper.from_array(weights, "W"),
        numpy_helper.from_array(switched, "S"),
    ]
    graph = helper.make_graph(
        nodes,
        "switching",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


# --------------------------------------------------------------------------- swaps


def test_a_control_loop_follows_every_swap_between_calls_and_no_call_fails(
    device: Device,
) -> None:
    factors = (1, 2, 3)

    with LocalModel(device.config.workdir, report_s=REPORT_S) as model:
        assert model.wait() == "linear:1"
        with ControlLoop(model, {"x": OBSERVATION}) as loop:
            assert device.apply(device.scaled(2), probation_s=0.5).ok
            assert model.wait("linear:2", timeout_s=5)
            assert device.apply(device.scaled(3), probation_s=0.5).ok
            assert model.wait("linear:3", timeout_s=5)
            device.updater.operator_rollback()
            assert model.wait("linear:2", timeout_s=5)
            time.sleep(0.1)

    assert loop.failures == []
    assert loop.calls == loop.answered > 1000
    matches = np.stack(
        [
            np.isclose(loop.outputs, OBSERVATION[0] @ (BASE_WEIGHTS * f), rtol=1e-5).all(axis=1)
            for f in factors
        ]
    )
    assert matches.any(axis=0).all(), "every output is one of the models' own"
    served = np.asarray(factors)[matches.argmax(axis=0)]
    assert [factor for factor, _ in itertools.groupby(served.tolist())] == [1, 2, 3, 2]


def test_an_application_started_before_any_model_serves_the_first_one_announced(
    tmp_path: Path, control_plane: ServerProcess
) -> None:
    workdir = tmp_path / "agent"
    workdir.mkdir()
    with LocalModel(workdir, report_s=REPORT_S) as model:
        assert model.label is None
        with pytest.raises(Exception, match="serves no model"):
            model.run({"x": OBSERVATION})
        unit = Device(workdir, control_plane.url)
        assert unit.apply(unit.scaled(1), probation_s=0.2).ok
        assert model.wait("linear:1", timeout_s=5)
        assert np.allclose(model({"x": OBSERVATION}), OBSERVATION @ BASE_WEIGHTS, rtol=1e-5)
    serving = read_serving(workdir)
    assert serving is not None and serving.model is not None
    assert (serving.model.label, serving.probation) == ("linear:1", None)
    assert oct(os.stat(workdir / "serving.json").st_mode & 0o777) == "0o644"


# --------------------------------------------------------------------------- probation


def test_a_candidate_that_fails_on_the_applications_inputs_is_rolled_back_on_errors(
    device: Device,
) -> None:
    """The new export renamed its input: every gate passes on its own golden file, the
    endpoint is never called, only the in-process application sees it fail."""
    renamed = publish(
        device.server_url,
        "2",
        linear_model(BASE_WEIGHTS, input_name="features"),
        golden_bytes({"features": GOLDEN_INPUTS}, GOLDEN_INPUTS @ BASE_WEIGHTS),
        inputs=[TensorSpec(name="features", dtype="float32", shape=["batch", FEATURES])],
    )
    with LocalModel(device.config.workdir, report_s=REPORT_S) as model:
        model.wait("linear:1")
        with ControlLoop(model, {"x": OBSERVATION}) as loop:
            report = device.apply(renamed)
            assert model.wait("linear:1", timeout_s=5)
            recovered = len(loop.outputs)
            time.sleep(0.1)

    assert (report.phase, report.gate) == (Phase.ROLLED_BACK, "errors"), report
    assert "in-process calls, from 1 application processes" in (report.error or "")
    assert loop.failures and all(isinstance(f, BadRequestError) for f in loop.failures)
    assert len(loop.outputs) > recovered, "calls succeed again on linear:1 after the rollback"
    assert device.updater.host.model is not None
    assert device.updater.host.model.label == "linear:1"


def test_a_candidate_that_disagrees_only_on_the_applications_inputs_is_rolled_back(
    device: Device,
) -> None:
    """On the golden inputs (the agent's own probe) the candidate agrees with linear:1
    exactly; on the inputs the application sees it picks other classes. Only the
    application's shadow run can tell."""
    rotated = np.roll(BASE_WEIGHTS, 1, axis=1)  # every class moves: never the same argmax
    candidate = publish(
        device.server_url,
        "2",
        switching_model(BASE_WEIGHTS, rotated, threshold=10.0),
        golden_npz(GOLDEN_INPUTS @ BASE_WEIGHTS),
        min_agreement=0.9,
    )
    assert np.abs(GOLDEN_INPUTS[:, 0]).max() < 10
    observation = OBSERVATION.copy()
    observation[0, 0] = 20.0
    with LocalModel(device.config.workdir, report_s=REPORT_S) as model:
        model.wait("linear:1")
        with ControlLoop(model, {"x": observation}) as loop:
            report = device.apply(candidate)
            assert model.wait("linear:1", timeout_s=5)

    assert loop.failures == []
    assert (report.phase, report.gate) == (Phase.ROLLED_BACK, "agreement"), report
    assert report.agreement is not None and report.agreement < 0.5
    assert "of them in-process" in (report.error or "")


def test_a_candidate_the_application_agrees_with_is_committed_and_its_calls_counted(
    device: Device,
) -> None:
    with LocalModel(device.config.workdir, report_s=REPORT_S) as model:
        model.wait("linear:1")
        with ControlLoop(model, {"x": OBSERVATION}) as loop:
            report = device.apply(device.scaled(2))
            time.sleep(3 * REPORT_S)
    reports = read_reports(device.config.workdir)  # the final one, written by close()

    assert report.ok and report.agreement == 1.0, report
    assert loop.failures == []
    (mine,) = [r.report for r in reports if r.report.pid == os.getpid()]
    assert mine.model is not None and mine.model.label == "linear:2"
    assert mine.shadow is not None and mine.shadow.compared > 0
    assert mine.shadow.agreement == 1.0
    assert mine.total.calls == loop.calls


# --------------------------------------------------------------------------- telemetry


class RunningAgent:
    """The agent daemon on the device's workdir, in a thread, with what it publishes."""

    def __init__(self, config: AgentConfig, broker: Broker) -> None:
        from edgeloop.agent.daemon import Agent

        self.heard: list[Hello | Telemetry] = []
        self.listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-local")
        self.listener.on_message = lambda client, userdata, message: self.heard.append(
            decode(message.payload, message.topic)  # type: ignore[arg-type]
        )
        self.listener.connect("127.0.0.1", broker.port)
        self.listener.subscribe(
            [(topic(DEVICE, Channel.HELLO), 1), (topic(DEVICE, Channel.TELEMETRY), 1)]
        )
        self.listener.loop_start()
        self.agent = Agent(config)
        self.thread = threading.Thread(target=self.agent.run)

    def __enter__(self) -> RunningAgent:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.agent.stop()
        self.thread.join(timeout=30)
        self.listener.loop_stop()
        self.listener.disconnect()

    def telemetry(self) -> list[Telemetry]:
        return [m for m in list(self.heard) if isinstance(m, Telemetry)]

    def in_process_calls(self) -> int:
        return sum(m.control.calls for m in self.telemetry() if m.control)


def daemon_config(device: Device, broker: Broker, **changes: object) -> AgentConfig:
    return device.config.model_copy(
        update={
            "broker": f"127.0.0.1:{broker.port}",
            "telemetry_interval_s": 0.3,
            "endpoint_port": 0,
            **changes,
        }
    )


def wait_for(predicate: Callable[[], object], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_deadline_misses_and_in_process_calls_reach_the_agents_telemetry(
    device: Device, mosquitto: Broker
) -> None:
    profile = ROOMY.model_copy(update={"deadline_ms": 0.001})  # 1 µs: every call misses
    config = daemon_config(device, mosquitto, profile=profile, application="pick-and-place")
    calls = 300
    with RunningAgent(config, mosquitto) as running:
        wait_for(lambda: _announced_deadline(config.workdir) == 0.001, "the profile's deadline")
        with (
            LocalModel(config.workdir, report_s=REPORT_S) as strict,
            LocalModel(config.workdir, deadline_ms=10_000, report_s=REPORT_S) as lenient,
        ):
            strict.wait("linear:1")
            lenient.wait("linear:1")
            for _ in range(calls):
                strict.run_first({"x": OBSERVATION})
                lenient.run_first({"x": OBSERVATION})
            wait_for(lambda: running.in_process_calls() == 2 * calls, "every call in telemetry")
        assert running.thread.is_alive()

    hello = next(m for m in running.heard if isinstance(m, Hello))
    assert hello.application == "pick-and-place"
    controls = [m.control for m in running.telemetry() if m.control and m.control.calls]
    assert sum(c.deadline_misses for c in controls) == calls, "the strict one's, every call"
    assert all(c.deadline_ms == 0.001 and c.errors == 0 for c in controls)
    assert all(c.processes == 1 and c.latency is not None for c in controls)
    assert sum(c.latency.n for c in controls if c.latency) == 2 * calls


def _announced_deadline(workdir: Path) -> float | None:
    serving = read_serving(workdir)
    return serving.profile.deadline_ms if serving else None


# --------------------------------------------------------------------------- hostile reports


def test_a_malformed_or_forged_report_is_ignored_with_a_warning_and_the_agent_goes_on(
    device: Device, mosquitto: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    local = device.config.workdir / LOCAL_DIR
    pid = os.getpid()
    good = ProcessReport(pid=pid, instance=1, started_at=time.time(), total=Counts()).model_dump()
    inconsistent = {**good, "instance": 901, "total": {"calls": 5, "histogram": {}}}
    huge = {**good, "instance": 902, "total": {"calls": 2**60, "errors": 2**60}}
    other = {**good, "instance": 905, "pid": 1}
    (local / f"{pid}-900.json").write_text("{not json")
    (local / f"{pid}-901.json").write_text(json.dumps(inconsistent))
    (local / f"{pid}-902.json").write_text(json.dumps(huge))
    (local / f"{pid}-903.json").write_text(" " * MAX_REPORT_BYTES + json.dumps(good))
    (local / f"{pid}-904.json").symlink_to("/dev/zero")
    os.mkfifo(local / f"{pid}-905.json")
    (local / f"{pid}-906.json").write_text(json.dumps(other))
    (local / f"{pid}-1.json").write_text(json.dumps(good))

    with caplog.at_level(logging.WARNING, logger="edgeloop.agent.local"):
        reports = read_reports(device.config.workdir)

    assert [r.name for r in reports] == [f"{pid}-1.json"]
    for instance in range(900, 907):
        assert f"{pid}-{instance}.json" in caplog.text, instance
    assert "is not a valid report" in caplog.text and "is over 65536 bytes" in caplog.text
    assert "not a regular file" in caplog.text or "cannot be opened" in caplog.text

    with RunningAgent(daemon_config(device, mosquitto), mosquitto) as running:
        with LocalModel(device.config.workdir, report_s=REPORT_S) as model:
            model.wait("linear:1")
            for _ in range(5):
                model.run({"x": OBSERVATION})
            wait_for(lambda: running.in_process_calls() == 5, "the good report's calls")
        assert running.thread.is_alive()
    assert all(m.control.processes <= 1 for m in running.telemetry() if m.control)


def test_reports_of_processes_gone_for_a_minute_are_removed(tmp_path: Path) -> None:
    local = tmp_path / LOCAL_DIR
    local.mkdir()
    gone = _a_finished_pid()
    report = ProcessReport(pid=gone, instance=1, started_at=0, total=Counts())
    path = local / f"{gone}-1.json"
    path.write_text(report.model_dump_json())
    assert read_reports(tmp_path) == []
    assert path.exists(), "kept a while: its final counts may still be read"
    os.utime(path, (time.time() - 120, time.time() - 120))
    assert read_reports(tmp_path) == []
    assert not path.exists()


def _a_finished_pid() -> int:
    import subprocess
    import sys

    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(child.stdout)


def test_a_profile_without_budgets_round_trips_through_serving_json(tmp_path: Path) -> None:
    from edgeloop.agent.local import ServedModel, Serving, announce
    from edgeloop.agent.runtime import host_profile
    from edgeloop.agent.states import Slot

    serving = Serving(
        model=ServedModel(label="linear:1", slot=Slot.A, sha256="a" * 64),
        profile=host_profile(2),
    )
    announce(tmp_path, serving)
    assert read_serving(tmp_path) == serving
    assert oct(os.stat(tmp_path / LOCAL_DIR).st_mode & 0o7777) == "0o1733"
    assert isinstance(serving.profile, DeviceProfile)


# --------------------------------------------------------------------------- configuration


def test_the_devices_application_comes_from_its_config_file_or_the_run_flag(
    tmp_path: Path,
) -> None:
    from edgeloop.agent.cli import RUN_FLAGS, build_parser
    from edgeloop.agent.config import load_config
    from edgeloop.agent.errors import ConfigError

    path = tmp_path / "agent.toml"
    path.write_text('device_id = "arm-01"\nprofile = "pi4"\napplication = "pick-and-place"\n')
    assert load_config(path, {}).application == "pick-and-place"
    args = build_parser().parse_args(["run", "--config", str(path), "--application", "welding"])
    assert load_config(path, {k: getattr(args, k) for k in RUN_FLAGS}).application == "welding"
    with pytest.raises(ConfigError, match="application"):
        load_config(path, {"application": "../welding"})
    repository = Path(__file__).resolve().parents[2]
    assert load_config(repository / "deploy" / "agent.toml", {}).application is None
