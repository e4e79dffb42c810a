"""The built-in task kinds judge in their own direction: a regressor's MAE is lower-is-better all
the way from the search's choice to the published report, an embedding is scored against the
original model's outputs, and a push registers a model of either kind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from user_models import UserModels

from edgeloop.agent.protocol import DeviceProfile
from edgeloop.cli.main import main
from edgeloop.compressor.filetask import FileTask
from edgeloop.compressor.recipe import load_recipe
from edgeloop.compressor.search import Search, Trial, pareto_front
from edgeloop.compressor.sources import load_task

ROOMY = DeviceProfile(name="roomy", cpu_threads=1, memory_budget_mb=2048, latency_budget_ms=50)

REGRESSOR_RECIPE = """
passes:
  - pass: prune_structured
    params: {ratio: 0.75, finetune_epochs: 0}
    optional: true
  - pass: export
  - pass: fp16
    optional: true
constraints: {max_relative_drop: 0.05}
"""


def compress(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main(["compress", *(str(a) for a in argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def regressor(user_models: UserModels, tmp_path_factory: pytest.TempPathFactory) -> FileTask:
    task = load_task(
        str(user_models.regressor_onnx),
        "regression",
        user_models.diabetes_train,
        user_models.diabetes_eval_folder,
        work_dir=tmp_path_factory.mktemp("regressor"),
    )
    assert isinstance(task, FileTask)
    return task


# ---------------------------------------------------------------------------- regression


def test_a_regressor_is_compressed_with_mae_lower_is_better_from_choice_to_report(
    user_models: UserModels, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(REGRESSOR_RECIPE)
    out = tmp_path / "out"
    code, stdout, stderr = compress(
        capsys,
        user_models.regressor_ts,
        "--task", "regression",
        "--train", user_models.diabetes_train,
        "--eval", user_models.diabetes_eval_folder,
        "--recipe", recipe,
        "--out", out,
    )  # fmt: skip
    assert code == 0, stdout + stderr
    report = json.loads((out / "report.json").read_text())
    assert report["metric"] == "mae" and report["higher_is_better"] is False
    baseline, trials = report["baseline"], report["trials"]
    assert set(baseline["metrics"]) == {"mae", "rmse"}
    for trial in trials:
        assert trial["ok"], trial["error"]
        worse_by = trial["metric"] - baseline["metric"]
        assert trial["metric_drop"] == pytest.approx(worse_by), "positive drop = a larger MAE"
        assert trial["relative_drop"] == pytest.approx(worse_by / baseline["metric"])
    pruned = [t for t in trials if t["pipeline"][0]["pass"] == "prune_structured"]
    assert pruned and all(t["metric_drop"] > 0.05 * baseline["metric"] for t in pruned), (
        "removing 75% of the units without fine-tuning costs more than 5% of the MAE"
    )
    assert all(any("5% of the fp32 value" in m for m in t["misses"]) for t in pruned)
    fitting = [t for t in [baseline, *trials] if t["fits"]]
    assert report["chosen"]["metric"] == min(t["metric"] for t in fitting)

    card = json.loads((out / "model_report.json").read_text())
    assert card["metric_name"] == "mae" and card["higher_is_better"] is False
    assert card["accuracy"] == report["chosen"]["metric"] > 1, "an MAE, not a 0..1 score"
    assert card["agreement_metric"] == "cosine"


def test_a_larger_mae_is_never_preferred_to_a_smaller_one_that_fits(
    regressor: FileTask, tmp_path: Path
) -> None:
    def trial(name: str, mae: float, size: int) -> Trial:
        return Trial(
            name,
            name,
            [],
            ok=True,
            metric=mae,
            latency_p50_ms=1.0,
            latency_p95_ms=1.0,
            size_bytes=size,
            peak_rss_mb=80,
            speedup=1.0,
        )

    recipe = load_recipe(REGRESSOR_RECIPE)
    search = Search(regressor, recipe, ROOMY, tmp_path)
    baseline = trial("fp32", 45.0, 1000)
    worse = trial("int8", 46.5, 250)  # 3.3% worse: fits the 5%
    better = trial("pruned", 44.0, 500)  # better than fp32
    too_bad = trial("tiny", 48.0, 50)  # 6.7% worse
    for t in (baseline, worse, better, too_bad):
        search._judge(t, baseline)
    assert (worse.metric_drop, better.metric_drop) == (pytest.approx(1.5), pytest.approx(-1.0))
    assert too_bad.misses and not worse.misses
    chosen, _ = search._choose(baseline, [worse, better, too_bad])
    assert chosen is better
    assert [t.key for t in pareto_front([baseline, worse, better, too_bad], False)] == [
        "int8",
        "pruned",
        "tiny",
    ], "fp32 is dominated by the smaller model with the lower MAE"

    by_size = load_recipe(REGRESSOR_RECIPE + "search: {objective: size}\n")
    search = Search(regressor, by_size, ROOMY, tmp_path)
    for t in (baseline, worse, better, too_bad):
        t.misses = []
        search._judge(t, baseline)
    chosen, reason = search._choose(baseline, [worse, better, too_bad])
    assert chosen is worse and reason.startswith("smallest of 2 candidates")


def test_a_metric_ceiling_reads_in_the_metrics_own_units(
    regressor: FileTask, tmp_path: Path
) -> None:
    recipe = load_recipe(REGRESSOR_RECIPE.replace("{max_relative_drop: 0.05}", "{max_metric: 46}"))
    search = Search(regressor, recipe, ROOMY, tmp_path)
    fine = Trial("a", "a", [], ok=True, metric=45.5, size_bytes=1)
    over = Trial("b", "b", [], ok=True, metric=47.0, size_bytes=1)
    for t in (fine, over):
        search._judge(t, fine)
    assert not fine.misses
    assert over.misses == ["mae 47.0000 > 46"]


# ---------------------------------------------------------------------------- embedding


def test_an_embedding_is_scored_by_cosine_to_the_original_under_the_default_recipe(
    user_models: UserModels, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = compress(
        capsys,
        user_models.embedder_onnx,
        "--task", "embedding",
        "--train", user_models.embedding_train,
        "--eval", user_models.embedding_eval,
        "--max-trials", "2",
        "--out", out,
    )  # fmt: skip
    assert code == 0, stdout + stderr
    report = json.loads((out / "report.json").read_text())
    baseline = report["baseline"]
    assert report["metric"] == "cosine" and report["higher_is_better"] is True
    assert baseline["metrics"]["cosine"] == pytest.approx(1.0, abs=1e-9)
    assert baseline["metrics"]["nn_agreement"] == 1.0
    for trial in report["trials"]:
        assert set(trial["metrics"]) == {"cosine", "cosine_worst", "nn_agreement"}
        assert trial["metrics"]["cosine_worst"] <= trial["metrics"]["cosine"] < 1.0
        assert trial["pipeline"][0] == {
            "pass": "prune_structured",
            "params": {"ratio": 0.25, "finetune_epochs": 10, "lr": 0.001, "scope": "all"},
        }, "the default recipe for a PyTorch model starts with optional structured pruning"
    card = json.loads((out / "model_report.json").read_text())
    assert card["metric_name"] == "cosine" and card["agreement_metric"] == "cosine"
    with np.load(out / "golden.npz") as golden:
        assert golden["outputs"].shape == (8, 16)


# ---------------------------------------------------------------------------- publishing


def test_a_regressor_is_pushed_with_its_direction_to_an_application_without_replanning(
    user_models: UserModels, tmp_path: Path, capsys: pytest.CaptureFixture[str], server
) -> None:
    from edgeloop.server.client import ApiClient

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("start: onnx\npasses: [{pass: fp16}]\nconstraints: {max_relative_drop: 0.05}")
    code, stdout, stderr = compress(
        capsys,
        user_models.regressor_onnx,
        "--task", "regression",
        "--train", user_models.diabetes_train,
        "--eval", user_models.diabetes_eval_folder,
        "--recipe", recipe,
        "--out", tmp_path / "out",
        "--push", server.url,
        "--app", "thermostat",
        "--version", "1",
    )  # fmt: skip
    assert code == 0, stdout + stderr
    assert f"registered regressor:1 at {server.url}" in stdout
    (registered,) = ApiClient(server.url).models()
    assert registered.application == "thermostat"
    assert registered.report.metric_name == "mae"
    assert registered.report.higher_is_better is False
    assert registered.report.accuracy > 1
