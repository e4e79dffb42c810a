"""From a user's model file and two data files to a compressed model directory, through the real
``edgeloop compress MODEL --task KIND --train TRAIN --eval EVAL`` command.

The models are the session's own (``conftest.user_models``): a digits classifier as ONNX and
TorchScript, a classifier whose ONNX onnx2torch cannot convert, a diabetes regressor as ONNX,
TorchScript, torch.export and Python code, and an untrained digits embedder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from user_models import PIXELS, UserModels

from edgeloop.agent.golden import load_golden
from edgeloop.cli.main import main
from edgeloop.compressor.datafiles import DataFileError, load_dataset
from edgeloop.compressor.sources import load_task

CLASSIFIER_RECIPE = """
passes:
  - pass: prune_structured
    params: {ratio: 0.5, finetune_epochs: 3}
    optional: true
  - pass: export
  - pass: quantize_static
    params: {calibration_samples: 50}
    optional: true
constraints: {max_metric_drop: 0.02}
"""


TORCH_RECIPE = """
passes:
  - pass: prune_structured
    params: {ratio: 0.5, finetune_epochs: 3}
  - pass: export
  - pass: quantize_dynamic
    params: {per_channel: true}
"""
"""Written for a PyTorch model: on an ONNX-only model, two of its three steps cannot run."""


def compress(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """``edgeloop compress ARGV``: exit code, stdout, stderr."""
    code = main(["compress", *(str(a) for a in argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def recipe_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def golden_matches_the_model(out: Path) -> None:
    """The golden file holds the outputs onnxruntime gives for its inputs on model.onnx."""
    session = ort.InferenceSession(str(out / "model.onnx"))
    names = [i.name for i in session.get_inputs()]
    golden = load_golden(out / "golden.npz", names)
    np.testing.assert_allclose(
        session.run(None, golden.inputs)[0], golden.outputs, rtol=1e-5, atol=1e-6
    )


# ---------------------------------------------------------------------------- ONNX in


def test_an_onnx_classifier_onnx2torch_converts_gets_every_pass_and_a_model_directory(
    user_models: UserModels, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = compress(
        capsys,
        user_models.classifier_onnx,
        "--task", "classification",
        "--train", user_models.digits_train,
        "--eval", user_models.digits_eval,
        "--recipe", recipe_file(tmp_path, CLASSIFIER_RECIPE),
        "--out", out,
    )  # fmt: skip
    assert code == 0, stdout + stderr
    assert "classifier.onnx: converted to PyTorch by onnx2torch" in stdout
    assert "skipped" not in stdout
    for name in ("model.onnx", "golden.npz", "model_report.json", "report.json", "pareto.png"):
        assert (out / name).is_file(), name
    golden_matches_the_model(out)

    report = json.loads((out / "report.json").read_text())
    baseline = report["baseline"]
    assert baseline["size_bytes"] == user_models.classifier_onnx.stat().st_size, (
        "the fp32 baseline is the user's ONNX file itself"
    )
    assert baseline["metrics"].keys() == {"accuracy", "top5"}
    pruned = [t for t in report["trials"] if t["pipeline"][0]["pass"] == "prune_structured"]
    assert pruned and all(t["ok"] for t in pruned), "pruning works on the converted module"
    assert all(t["notes"]["params_after"] < t["notes"]["params_before"] for t in pruned)
    assert all(t["size_bytes"] < baseline["size_bytes"] for t in pruned)

    card = json.loads((out / "model_report.json").read_text())
    chosen = report["chosen"]
    assert card["metric_name"] == "accuracy" and card["higher_is_better"] is True
    assert card["accuracy"] == chosen["metric"]
    assert card["accuracy_drop"] == pytest.approx(baseline["metric"] - chosen["metric"])
    assert card["relative_drop"] == pytest.approx(card["accuracy_drop"] / baseline["metric"])
    assert card["agreement_metric"] == "argmax"


def test_an_onnx_model_onnx2torch_cannot_convert_keeps_its_onnx_passes_and_says_what_it_skipped(
    user_models: UserModels, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = compress(
        capsys,
        user_models.gelu_onnx,
        "--task", "classification",
        "--train", user_models.digits_train,
        "--eval", user_models.digits_eval,
        "--recipe", recipe_file(tmp_path, TORCH_RECIPE),
        "--out", out,
    )  # fmt: skip
    assert code == 0, stdout + stderr
    why = "gelu.onnx could not be converted by onnx2torch: Converter is not implemented"
    assert f"{why} (OperationDescription(domain='', operation_type='Gelu'" in stdout
    assert f"skipped prune_structured: needs a PyTorch model; {why}" in stdout
    assert "skipped export: the model is already ONNX" in stdout

    report = json.loads((out / "report.json").read_text())
    assert [line.split(":")[0] for line in report["skipped"]] == [
        "skipped prune_structured",
        "skipped export",
    ]
    assert report["baseline"]["label"] == "original"
    assert [t["label"] for t in report["trials"]] == ["quantize_dynamic"]
    shipped = onnx.load_model(str(out / "model.onnx"), load_external_data=False)
    assert not any(i.data_location == onnx.TensorProto.EXTERNAL for i in shipped.graph.initializer)
    assert list(out.glob("model.onnx.*")) == [], "the exporter's weights sidecar is folded in"
    golden_matches_the_model(out)


# ---------------------------------------------------------------------------- PyTorch in


def test_a_torchscript_classifier_is_exported_once_and_pruned_through_onnx2torch(
    user_models: UserModels, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    recipe = "passes: [{pass: prune_structured, params: {ratio: 0.5, finetune_epochs: 2}}, " + (
        "{pass: export}]"
    )
    code, stdout, stderr = compress(
        capsys,
        user_models.classifier_ts,
        "--task", "classification",
        "--train", user_models.digits_train,
        "--eval", user_models.digits_eval_x,
        "--recipe", recipe_file(tmp_path, recipe),
        "--out", out,
    )  # fmt: skip
    assert code in (0, 1), stdout + stderr
    assert "classifier.ts: exported to ONNX and converted to PyTorch by onnx2torch" in stdout
    report = json.loads((out / "report.json").read_text())
    (pruned,) = report["trials"]
    assert pruned["ok"], pruned["error"]
    assert pruned["size_bytes"] < 0.5 * report["baseline"]["size_bytes"]
    assert report["baseline"]["metric"] > 0.9


@pytest.mark.parametrize("form", ["onnx", "torchscript", "torch.export", "python"])
def test_every_model_form_opens_as_an_editable_pytorch_model_that_matches_the_original(
    user_models: UserModels, tmp_path: Path, form: str
) -> None:
    model = {
        "onnx": str(user_models.regressor_onnx),
        "torchscript": str(user_models.regressor_ts),
        "torch.export": str(user_models.regressor_pt2),
        "python": user_models.regressor_factory,
    }[form]
    task = load_task(
        model,
        "regression",
        user_models.diabetes_train,
        user_models.diabetes_eval_folder,
        work_dir=tmp_path,
    )
    assert isinstance(task.source(), torch.nn.Module)
    assert task.onnx_only_reason() is None
    onnx_file = task.source_onnx()
    assert (onnx_file is None) == (form == "python"), "only code is exported by the export pass"
    assert task.metric == "mae" and task.higher_is_better is False
    if onnx_file is not None:
        scores = task.score(onnx_file)
        assert set(scores) == {"mae", "rmse"}
        assert 30 < scores["mae"] < 60, "the regressor as trained (diabetes MAE ~45)"


# ---------------------------------------------------------------------------- refusals


def test_when_nothing_fits_the_profile_the_command_fails_and_names_the_closest(
    user_models: UserModels, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = tmp_path / "tiny.json"
    profile.write_text(
        json.dumps(
            {
                "name": "tiny",
                "cpu_threads": 1,
                "memory_budget_mb": 2048,
                "latency_budget_ms": 100,
                "model_size_budget_kb": 1,
            }
        )
    )
    out = tmp_path / "out"
    code, stdout, stderr = compress(
        capsys,
        user_models.embedder_onnx,
        "--task", "embedding",
        "--train", user_models.embedding_train,
        "--eval", user_models.embedding_eval,
        "--recipe", recipe_file(tmp_path, "start: onnx\npasses: [{pass: fp16}]"),
        "--profile", profile,
        "--out", out,
    )  # fmt: skip
    assert code == 1, stderr
    said = " ".join(stdout.split())
    assert re.search(r"none: no candidate fits 'tiny'; closest is [^:]+: size \d+ KB > 1 KB", said)
    assert not (out / "model.onnx").exists()


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"image": np.zeros((4, 64), np.float32), "y": np.zeros(4)}, "no array 'pixels'"),
        ({"x": np.zeros((4, 64), np.float32)}, "no array 'y' with the targets"),
        (
            {"x": np.zeros((4, 64), np.float32), "y": np.zeros(3)},
            "disagree on the number of samples (first axis): pixels: 4, y: 3",
        ),
        ({"x": np.zeros((4, 63), np.float32), "y": np.zeros(4)}, "has shape [4, 63] but"),
        ({"x": np.zeros((4, 64), "U2"), "y": np.zeros(4)}, "is <U2, not numbers"),
        ({"x": np.empty((4, 64), object), "y": np.zeros(4)}, "pickled Python objects"),
        ({"x": np.zeros((0, 64), np.float32), "y": np.zeros(0)}, "holds no samples"),
    ],
)
def test_a_data_file_that_does_not_fit_the_model_is_refused_naming_the_problem(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(DataFileError, match=r"^--train .*data\.npz: ") as refused:
        load_dataset(
            path,
            [PIXELS],
            dtypes={PIXELS: np.dtype(np.float32)},
            shapes={PIXELS: [64]},
            role="--train",
        )
    assert message in str(refused.value)


def test_labels_the_model_cannot_score_are_refused(user_models: UserModels, tmp_path: Path) -> None:
    labels = tmp_path / "labels.npz"
    with np.load(user_models.digits_eval) as data:
        np.savez(labels, x=data[PIXELS], y=data["y"] + 5)
    with pytest.raises(DataFileError, match=r"'y' holds classes 5..14 but the model scores 10"):
        load_task(
            str(user_models.classifier_onnx),
            "classification",
            labels,
            labels,
            work_dir=tmp_path / "work",
        )


def test_bad_data_on_the_command_line_exits_2_with_one_line_naming_the_array(
    user_models: UserModels, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "eval"
    wrong.mkdir()
    np.save(wrong / "images.npy", np.zeros((4, 64), np.float32))
    np.save(wrong / "y.npy", np.zeros(4, np.int64))
    code, _, stderr = compress(
        capsys,
        user_models.classifier_onnx,
        "--task", "classification",
        "--train", user_models.digits_train,
        "--eval", wrong,
        "--out", tmp_path / "out",
    )  # fmt: skip
    assert code == 2
    assert stderr.startswith(f"edgeloop compress: bad data: --eval {wrong}: no array 'pixels'")
    assert "found: images, y" in stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["model.onnx"], "looks like a model: say what it does with --task KIND"),
        (
            ["m.onnx", "--task", "segmentation", "--train", "t.npz", "--eval", "e.npz"],
            "unknown task 'segmentation'; built-in kinds: classification, regression, embedding",
        ),
        (["m.onnx", "--task", "regression"], "a regression task needs --train, --eval"),
        (
            ["missing.onnx", "--task", "regression", "--train", "t.npz", "--eval", "e.npz"],
            "missing.onnx: no such model file",
        ),
    ],
)
def test_a_command_missing_what_it_needs_says_so(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, stderr = compress(capsys, *argv)
    assert code == 2
    assert message in stderr


def test_distillation_and_low_rank_work_on_a_model_converted_from_onnx(
    user_models: UserModels, tmp_path: Path
) -> None:
    from edgeloop.compressor.passes import OnnxModel, PassContext, TorchModel, get_pass

    task = load_task(
        str(user_models.classifier_onnx),
        "classification",
        user_models.digits_train,
        user_models.digits_eval,
        work_dir=tmp_path / "source",
    )
    source = task.source()
    assert isinstance(source, torch.nn.Module)
    for name, params in (
        ("distill", {"width": 0.5, "epochs": 15, "lr": 0.003}),
        ("lowrank", {"energy": 0.9, "finetune_epochs": 2}),
    ):
        work = tmp_path / name
        work.mkdir()
        pass_cls, export = get_pass(name), get_pass("export")
        smaller = pass_cls().run(
            TorchModel(source), pass_cls.config(params), PassContext(task, work)
        )
        assert smaller.notes["params_after"] < smaller.notes["params_before"], name
        exported = export().run(smaller, export.config(), PassContext(task, work))
        assert isinstance(exported, OnnxModel)
        assert task.score(exported.path)["accuracy"] > 0.5, f"{name}: still a digits classifier"
