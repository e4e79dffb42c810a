"""A task of the user's own, named on the command line: the documented controller example
(``docs/examples/controller_task.py``) compresses a Pendulum controller by its closed-loop
return, and a class that is not a usable task is refused with what to change."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgeloop.agent.golden import load_golden
from edgeloop.cli.main import main
from edgeloop.compressor.examples.pendulum import EnergyLqrExpert, PendulumPolicy
from edgeloop.compressor.sources import load_task

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "controller_task.py"
CONTROLLER_TASK = f"{EXAMPLE}:ControllerTask"
FILES = {"policy": "policy.ts", "states": "states.npz", "seeds": "seeds.npz"}


def uniform_states(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    angle, velocity = rng.uniform(-np.pi, np.pi, count), rng.uniform(-8, 8, count)
    return np.stack([np.cos(angle), np.sin(angle), velocity], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A user's small controller (32+32 units, cloned from the energy/LQR expert in seconds),
    saved as TorchScript, with states it meets and the episodes to judge it on."""
    root = tmp_path_factory.mktemp("controller")
    states = uniform_states(20_000, seed=0)
    torques = EnergyLqrExpert()(states)
    torch.manual_seed(0)
    policy = PendulumPolicy(hidden=32, layers=2)
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    inputs, targets = torch.from_numpy(states), torch.from_numpy(torques)
    for _ in range(10):
        for batch in torch.randperm(len(inputs)).split(512):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(policy(inputs[batch]), targets[batch]).backward()
            optimizer.step()
    policy.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.trace(policy, inputs[:1]), str(root / "policy.ts"))
    np.savez(root / "states.npz", x=uniform_states(2_000, seed=1))
    np.savez(root / "seeds.npz", seeds=np.arange(4))
    return {name: root / file for name, file in FILES.items()}


def test_the_controller_example_compresses_a_policy_by_its_closed_loop_return(
    controller: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "passes:\n"
        "  - {pass: prune_structured, params: {ratio: 0.5, finetune_epochs: 2}, optional: true}\n"
        "  - {pass: export}\n"
        "constraints: {max_relative_drop: 0.5}\n"
    )
    out = tmp_path / "out"
    code = main(
        [
            "compress", str(controller["policy"]),
            "--task", CONTROLLER_TASK,
            "--train", str(controller["states"]),
            "--eval", str(controller["seeds"]),
            "--recipe", str(recipe),
            "--out", str(out),
        ]
    )  # fmt: skip
    said = capsys.readouterr()
    assert code == 0, said.out + said.err
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "pendulum-controller"
    assert report["metric"] == "return_mean" and report["higher_is_better"] is True
    baseline, (pruned,) = report["baseline"], report["trials"]
    assert set(baseline["metrics"]) == {"return_mean", "return_std", "return_min"}
    assert -16.3 * 200 <= baseline["metric"] < 0, "a return: the sum of Pendulum's costs"
    assert pruned["ok"], pruned["error"]
    assert pruned["notes"]["params_after"] < pruned["notes"]["params_before"]

    card = json.loads((out / "model_report.json").read_text())
    assert card["metric_name"] == "return_mean" and card["accuracy"] < 0, "publishable as is"
    session = ort.InferenceSession(str(out / "model.onnx"))
    golden = load_golden(out / "golden.npz", [i.name for i in session.get_inputs()])
    np.testing.assert_allclose(session.run(None, golden.inputs)[0], golden.outputs, atol=1e-6)


def test_the_example_says_what_is_wrong_with_its_eval_file(
    controller: dict[str, Path], tmp_path: Path
) -> None:
    wrong = tmp_path / "episodes.npz"
    np.savez(wrong, episodes=np.arange(3))
    with pytest.raises(ValueError, match=r"episodes\.npz: give the episode seeds as a 1-D array"):
        load_task(str(controller["policy"]), CONTROLLER_TASK, controller["states"], wrong)


@pytest.mark.parametrize(
    ("code", "name", "model", "message"),
    [
        (
            "class Thing:\n    pass\n",
            "Thing",
            None,
            "is not a subclass of edgeloop.compressor.task.Task",
        ),
        (
            "from edgeloop.compressor.task import Task\n"
            "class Partial(Task):\n    name = 'p'\n    kind = 'regression'\n    metric = 'm'\n",
            "Partial",
            None,
            "does not implement latency_feed, score",
        ),
        (
            "from edgeloop.compressor.task import Task\n"
            "class Fixed(Task):\n    name = 'f'\n    kind = 'regression'\n    metric = 'm'\n"
            "    def score(self, model_path, threads=1): return {}\n"
            "    def latency_feed(self): return {}\n",
            "Fixed",
            "model.onnx",
            "Fixed takes no 'model' argument, so MODEL cannot be used with it",
        ),
        ("raise RuntimeError('broken import')\n", "Any", None, "RuntimeError: broken import"),
    ],
)
def test_a_user_task_that_cannot_be_used_is_refused_with_what_to_change(
    tmp_path: Path, code: str, name: str, model: str | None, message: str
) -> None:
    script = tmp_path / "my_task.py"
    script.write_text(code)
    with pytest.raises((TypeError, ImportError)) as refused:
        load_task(model, f"{script}:{name}", None, None)
    assert message in str(refused.value)
