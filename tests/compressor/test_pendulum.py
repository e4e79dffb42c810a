"""The control case: the expert really swings up, and ONNX policies are scored in the real env."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeloop.compressor.examples.pendulum import (
    RETURN_RATIO_FLOOR,
    EnergyLqrExpert,
    PendulumTask,
    build_control,
    return_ratio,
    run_episodes,
)
from edgeloop.compressor.export import export_model
from edgeloop.compressor.training import distill

SEEDS = range(5)
EXPERT_BOUND = -200.0
"""Seeds 0..4 give the expert about -143 (-137.6 over 0..19); a controller that only pumps
energy, or only balances, stays far below -300."""


@pytest.fixture(scope="module")
def rough_task(tmp_path_factory: pytest.TempPathFactory) -> PendulumTask:
    """A teacher trained for seconds (no DAgger): enough to test the plumbing, not the figures."""
    return PendulumTask(
        cache_dir=tmp_path_factory.mktemp("cache"),
        eval_seeds=range(4),
        teacher_epochs=3,
        dagger_rounds=0,
    )


def test_expert_swings_up_and_balances() -> None:
    expert = run_episodes(EnergyLqrExpert(), SEEDS)
    idle = run_episodes(lambda obs: np.zeros((len(obs), 1), np.float32), SEEDS)
    assert expert.returns.mean() > EXPERT_BOUND
    assert expert.returns.mean() > 4 * idle.returns.mean()  # returns are negative
    final = expert.observations[:, -1]
    assert np.all(final[:, 0] > 0.99), "every episode ends upright (cos θ ≈ 1)"
    assert np.all(np.abs(final[:, 2]) < 0.1), "... and at rest"


def test_return_ratio_reads_as_fraction_of_teacher() -> None:
    assert return_ratio(-150.0, -150.0) == 1.0
    assert return_ratio(-150.0, -300.0) == 0.5
    assert return_ratio(-150.0, -150.0 / 0.95) == pytest.approx(RETURN_RATIO_FLOOR)
    assert return_ratio(-150.0, -140.0) > 1.0
    with pytest.raises(ValueError, match="<= 0"):
        return_ratio(-150.0, 3.0)


def test_distilled_student_runs_in_env_and_scores_deterministically(
    rough_task: PendulumTask, tmp_path: Path
) -> None:
    student = distill(
        rough_task.student(0.0625),
        rough_task.teacher(),
        rough_task.train_inputs(),
        kind="regression",
        targets=rough_task.train_targets(),
        epochs=2,
        lr=3e-3,
        batch_size=512,
    )
    path = export_model(student, rough_task.export_spec(), tmp_path / "student.onnx")
    first = rough_task.score(path)
    assert set(first) >= {"return_mean", "return_std", "return_min", "return_ratio"}
    assert -16.3 * 200 <= first["return_mean"] <= 0  # the env's per-step bounds
    assert rough_task.score(path) == first


def test_teacher_scores_ratio_one_against_itself(rough_task: PendulumTask, tmp_path: Path) -> None:
    path = export_model(rough_task.teacher(), rough_task.export_spec(), tmp_path / "t.onnx")
    assert rough_task.score(path)["return_ratio"] == 1.0


def test_teacher_is_cached(rough_task: PendulumTask) -> None:
    again = PendulumTask(
        cache_dir=rough_task.cache_dir.parent, teacher_epochs=3, dagger_rounds=0
    ).teacher()
    for ours, theirs in zip(
        rough_task.teacher().state_dict().values(), again.state_dict().values(), strict=True
    ):
        assert np.array_equal(ours.numpy(), theirs.numpy())


@pytest.mark.slow
def test_build_control_keeps_the_return(tmp_path: Path) -> None:
    summary = build_control(tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    teacher, chosen = summary["teacher"], summary["chosen"]
    assert teacher["return_mean"] > 0.97 * summary["expert_return_mean"] - 5
    assert chosen["return_ratio"] >= RETURN_RATIO_FLOOR
    assert summary["figures"]["control.size_ratio"] > 10
    assert (tmp_path / "out" / "control.json").exists()
