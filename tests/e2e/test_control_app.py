"""The robotics path on real parts: the Pendulum controller is a version of its own
application, looped (its metric is a closed-loop return, not a 0..1 score) and rolled out to
the robot's device only; a device of another application is never touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeloop.agent.protocol import DeviceProfile
from edgeloop.compressor.examples.pendulum import PendulumTask
from edgeloop.compressor.recipe import load_recipe
from edgeloop.lab.broker import Broker
from edgeloop.lab.launch import AgentProcess, ServerProcess, wait_for_devices
from edgeloop.loop import CandidatePool, Loop

pytestmark = pytest.mark.slow

ARM = DeviceProfile(name="arm-ctl", cpu_threads=1, memory_budget_mb=256, latency_budget_ms=5)

RECIPE = """
name: control-small
task: control
passes:
  - pass: distill
    params: {width: [0.125], epochs: 4, lr: 0.003, batch_size: 512, alpha: 0.5}
    optional: true
  - pass: export
  - pass: quantize_dynamic
    optional: true
"""


def test_the_bundled_control_example_publishes_its_return_as_its_metric(
    tmp_path: Path, server: ServerProcess
) -> None:
    """``edgeloop compress example control --push`` once refused: a return is not a 0..1
    score. The same steps, on a teacher trained for seconds."""
    from edgeloop.agent.runtime import host_profile
    from edgeloop.cli.compress import model_card
    from edgeloop.compressor.compress import built_model, compress

    task = PendulumTask(
        cache_dir=tmp_path / "cache", eval_seeds=range(3), teacher_epochs=3, dagger_rounds=0
    )
    out = tmp_path / "out"
    result = compress(task, load_recipe(RECIPE), host_profile(1), out, progress=False)
    built = built_model(task, result, out, name="policy", version="1")
    registered = server.client().push_model(
        model_card(built, application="robot"), built.model_path, built.golden_path, plan=False
    )
    assert registered.application == "robot"
    assert registered.report.metric_name == "return_mean" and registered.report.accuracy < 0
    assert registered.report.higher_is_better is True
    assert registered.report.agreement_metric == "cosine"


def test_the_controller_is_looped_and_rolled_out_only_to_its_application(
    tmp_path: Path, mosquitto: Broker, server: ServerProcess
) -> None:
    task = PendulumTask(
        cache_dir=tmp_path / "cache", eval_seeds=range(3), teacher_epochs=3, dagger_rounds=0
    )
    pool = CandidatePool(task, load_recipe(RECIPE), tmp_path / "pool")
    agents = [
        AgentProcess(
            "arm-00", ARM, tmp_path, mosquitto.port, inferences=50, probation_s=0.3,
            server=server, application="robot",
        ),
        AgentProcess(
            "cam-00", ARM, tmp_path, mosquitto.port, inferences=50, probation_s=0.3,
            server=server, application="vision",
        ),
    ]  # fmt: skip
    client = server.client()
    try:
        wait_for_devices(client, 2, agents)
        loop = Loop(client, "policy", [ARM], pool, max_rounds=3, application="robot")
        result = loop.run()
        devices = {d.device_id: d for d in client.devices()}
    finally:
        for agent in agents:
            agent.stop()

    assert result.converged, result.reason
    decision = result.classes[ARM.name].last
    assert decision is not None and decision.candidate is not None
    assert devices["arm-00"].application == "robot"
    assert devices["arm-00"].current_model == f"policy:{decision.candidate.version}"
    assert devices["cam-00"].current_model is None and devices["cam-00"].desired is not None
    assert devices["cam-00"].desired.model is None, "another application's device: untouched"

    versions = client.models()
    assert versions and all(v.application == "robot" for v in versions)
    returns = [v.report.accuracy for v in versions]
    assert all(r < 0 for r in returns), "Pendulum returns are negative: no 0..1 assumption"
    assert all(v.report.metric_name == "return_mean" for v in versions)
    assert all(v.report.agreement_metric == "cosine" for v in versions)
    reports = client.reports(model=devices["arm-00"].current_model)
    assert reports and reports[0].ok and reports[0].verified
