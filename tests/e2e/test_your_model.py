"""A user's own models to a user's own fleet, on real parts: a classifier, a regressor (lower
is better) and an embedding model the test builds itself, each as ONNX and as TorchScript,
compressed from files with ``edgeloop compress MODEL --task KIND --train --eval --push --app``,
rolled out to a real agent of its application that validates it against the golden file the
compressor generated, and reported back. Each application's rollouts leave the others'
devices alone."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import wait_until
from user_models import UserModels, build_user_models

from edgeloop.agent.protocol import DeviceProfile, Phase
from edgeloop.cli.main import main
from edgeloop.lab.broker import Broker
from edgeloop.lab.launch import AgentProcess, ServerProcess, wait_for_devices
from edgeloop.server.schemas import Criteria, RolloutCreate, RolloutState, Target

pytestmark = pytest.mark.slow

DEVICE = DeviceProfile(name="user-box", cpu_threads=1, memory_budget_mb=512, latency_budget_ms=50)

RECIPE = """
passes:
  - pass: export
  - pass: quantize_dynamic
    params: {per_channel: true}
    optional: true
"""
"""Small on purpose: the search's choice is the compressor tests' subject; here it is what
happens to that choice on the way to a device."""


@dataclass(frozen=True)
class App:
    name: str
    kind: str
    onnx: Path
    torchscript: Path
    train: Path
    eval_onnx: Path
    eval_ts: Path
    metric: str
    higher_is_better: bool


@pytest.fixture(scope="module")
def user_models(tmp_path_factory: pytest.TempPathFactory) -> UserModels:
    return build_user_models(tmp_path_factory.mktemp("user-models"))


def apps(models: UserModels) -> list[App]:
    return [
        App("sorter", "classification", models.classifier_onnx, models.classifier_ts,
            models.digits_train, models.digits_eval, models.digits_eval_x, "accuracy", True),
        App("dosing", "regression", models.regressor_onnx, models.regressor_ts,
            models.diabetes_train, models.diabetes_eval_folder, models.diabetes_eval_folder,
            "mae", False),
        App("search", "embedding", models.embedder_onnx, models.embedder_ts,
            models.embedding_train, models.embedding_eval, models.embedding_eval, "cosine", True),
    ]  # fmt: skip


def compress_and_push(
    app: App, source: Path, data: Path, version: str, server: ServerProcess, out: Path
) -> dict:
    """``edgeloop compress`` as a user runs it; the model card it wrote."""
    out.mkdir(parents=True)
    recipe = out / "recipe.yaml"
    recipe.write_text(RECIPE)
    code = main(
        [
            "compress", str(source), "--task", app.kind, "--train", str(app.train),
            "--eval", str(data), "--recipe", str(recipe), "--out", str(out),
            "--push", server.url, "--app", app.name, "--name", f"{app.name}-model",
            "--version", version,
        ]
    )  # fmt: skip
    assert code == 0, f"compress {source.name} exited {code}"
    return json.loads((out / "model_report.json").read_text())


def roll_out(server: ServerProcess, label: str, device_id: str) -> None:
    client = server.client()
    rollout = client.create_rollout(
        RolloutCreate(
            model=label,
            target=Target(devices=[device_id]),
            waves=["100%"],
            criteria=Criteria(wave_timeout_s=90),
        )
    )
    ended = wait_until(
        lambda: (s := client.rollout(rollout.id)).state != RolloutState.RUNNING and s,
        120,
        f"the rollout of {label}",
    )
    assert ended.state == RolloutState.COMPLETED, (label, ended.reason, ended.devices)


def test_each_users_model_reaches_its_applications_device_verified(
    user_models: UserModels, tmp_path: Path, mosquitto: Broker, server: ServerProcess
) -> None:
    fleet = apps(user_models)
    agents = [
        AgentProcess(
            f"{app.name}-01", DEVICE, tmp_path, mosquitto.port, inferences=50,
            probation_s=0.3, server=server, application=app.name,
        )
        for app in fleet
    ]  # fmt: skip
    client = server.client()
    try:
        wait_for_devices(client, len(agents), agents)
        pushed: dict[str, list[str]] = {}
        for app in fleet:
            for version, source, data in (
                ("onnx", app.onnx, app.eval_onnx),
                ("ts", app.torchscript, app.eval_ts),
            ):
                card = compress_and_push(
                    app, source, data, version, server, tmp_path / app.name / version
                )
                assert card["metric_name"] == app.metric
                assert card["higher_is_better"] is app.higher_is_better
                pushed.setdefault(app.name, []).append(f"{app.name}-model:{version}")
        assert all(d.desired is None or d.desired.model is None for d in client.devices()), (
            "a push without --plan sends nothing to any device"
        )

        for app in fleet:
            device_id = f"{app.name}-01"
            for label in pushed[app.name]:
                others = {
                    d.device_id: d.desired for d in client.devices() if d.device_id != device_id
                }
                roll_out(server, label, device_id)
                device = client.device(device_id)
                assert device.current_model == label and device.phase == Phase.COMMITTED
                report = device.latest_report
                assert report is not None and report.ok and report.verified, report
                assert report.model == label and report.golden_max_abs_err is not None
                assert {
                    d.device_id: d.desired for d in client.devices() if d.device_id != device_id
                } == others, f"rolling out {label} touched another application's device"
    finally:
        for agent in agents:
            agent.stop()

    models = {m.label: m for m in client.models()}
    for app in fleet:
        for label in pushed[app.name]:
            assert models[label].application == app.name
            assert models[label].report.metric_name == app.metric


def test_the_loop_converges_on_a_users_model_for_its_application(
    user_models: UserModels, tmp_path: Path, mosquitto: Broker, server: ServerProcess
) -> None:
    agents = [
        AgentProcess(
            "sorter-01", DEVICE, tmp_path, mosquitto.port, inferences=50, probation_s=0.3,
            server=server, application="sorter",
        ),
        AgentProcess(
            "other-01", DEVICE, tmp_path, mosquitto.port, inferences=50, probation_s=0.3,
            server=server,
        ),
    ]  # fmt: skip
    client = server.client()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    try:
        wait_for_devices(client, len(agents), agents)
        code = main(
            [
                "loop", "run", "--app", "sorter", "--model", str(user_models.classifier_onnx),
                "--task", "classification", "--train", str(user_models.digits_train),
                "--eval", str(user_models.digits_eval), "--recipe", str(recipe),
                "--max-rounds", "3", "--workdir", str(tmp_path / "loop"), *server.cli_args,
            ]
        )  # fmt: skip
        devices = {d.device_id: d for d in client.devices()}
    finally:
        for agent in agents:
            agent.stop()

    assert code == 0, "the loop converged"
    running = devices["sorter-01"].current_model
    assert running is not None and running.startswith("sorter:"), running
    assert devices["other-01"].current_model is None, "the default application's device"
    decisions = client.decisions(loop="sorter")
    assert decisions[-1].action == "stop" and "converged" in decisions[-1].reason
    assert {m.application for m in client.models()} == {"sorter"}
