"""From a user's model and two data files to a :class:`~edgeloop.compressor.task.Task`, and what
to try on it when no recipe is given.

``load_task(model, task, train, eval)`` takes a built-in kind (classification, regression,
embedding: :mod:`edgeloop.compressor.filetask`) or a task class of the user's own
(``file.py:Class``, :mod:`edgeloop.compressor.usertask`); the model is opened as
:mod:`edgeloop.compressor.usermodel` describes. ``default_recipe(task)`` follows the task's kind
and whether its model is PyTorch or ONNX only. ``edgeloop compress MODEL --task KIND`` and the
closed loop build their candidates with these two.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast, get_args

import numpy as np

from edgeloop.compressor.datafiles import Dataset, load_dataset
from edgeloop.compressor.filetask import FileTask
from edgeloop.compressor.recipe import Recipe
from edgeloop.compressor.task import Task, TaskKind
from edgeloop.compressor.usermodel import open_model
from edgeloop.compressor.usertask import is_code_reference, make_user_task

if TYPE_CHECKING:
    from torch import nn

__all__ = ["KINDS", "default_recipe", "load_task"]

KINDS: tuple[TaskKind, ...] = get_args(TaskKind)

CHECK_SAMPLES = 16
"""Evaluation samples on which a converted module must reproduce the original's outputs."""


def load_task(
    model: str | None,
    task: str,
    train: Path | None,
    eval: Path | None,
    *,
    work_dir: Path | None = None,
) -> Task:
    """The task for ``model`` and two data files: a built-in ``task`` kind
    (``classification``, ``regression``, ``embedding``) or a user's class (``file.py:Class``,
    ``package.module:Class``, created with the arguments it takes among model/train/eval).

    ``work_dir`` keeps converted or exported models (default: a temporary folder that lives
    as long as the task's model).

    Raises:
        ValueError: an unknown kind, a missing model or data file for a built-in kind, data
            that does not fit the model (:class:`~edgeloop.compressor.datafiles.DataFileError`),
            a model that cannot be exported, or what a user task refuses.
        FileNotFoundError, ImportError, TypeError: as :func:`open_model` and
            :func:`~edgeloop.compressor.usertask.make_user_task`.
    """
    if task not in KINDS:
        if is_code_reference(task):
            return make_user_task(task, model=model, train=train, eval=eval)
        raise ValueError(
            f"unknown task {task!r}; built-in kinds: {', '.join(KINDS)}, or a task class of "
            "your own as `file.py:Class` / `package.module:Class`"
        )
    missing = [
        flag
        for flag, value in (("MODEL", model), ("--train", train), ("--eval", eval))
        if value is None
    ]
    if missing:
        raise ValueError(f"a {task} task needs {', '.join(missing)}")
    assert model is not None and train is not None and eval is not None
    source = open_model(model)
    needs_targets = task != "embedding"
    shapes = source.input_shapes or None
    datasets = [
        load_dataset(
            path,
            source.input_names,
            dtypes=source.input_dtypes or None,
            shapes=shapes,
            targets_required=needs_targets,
            role=role,
        )
        for path, role in ((train, "--train"), (eval, "--eval"))
    ]
    if source.is_torch:
        datasets = [_torch_ready(data) for data in datasets]
    train_data, eval_data = datasets
    check = eval_data.head(CHECK_SAMPLES)
    if work_dir is None:
        source.scratch = tempfile.TemporaryDirectory(prefix="edgeloop-source-")
        work_dir = Path(source.scratch.name)
    source.prepare(check, work_dir)
    return FileTask(source, cast(TaskKind, task), train_data, eval_data)


def default_recipe(task: Task) -> Recipe:
    """What to try on a task's model when the user gives no recipe.

    PyTorch source: structured pruning of 25% or 50% with a short fine-tune on the training data
    (when the model has two or more Linear/Conv layers to prune between), export, then int8
    dynamic or static per-channel quantization, each step optional. ONNX source: int8 dynamic
    or static per-channel, fp16, or int4 weight-only where the graph has MatMuls with constant
    weights. Constraints by kind: classification loses at most 1 point of accuracy, regression
    at most 5% of its metric, an embedding keeps a cosine of 0.99 to the original; a custom
    task (any other metric) at most 5% of its metric.
    """
    quantize = [
        {"pass": "quantize_dynamic", "params": {"per_channel": True}},
        {"pass": "quantize_static", "params": {"per_channel": True}},
    ]
    source = task.source()
    start = "onnx" if isinstance(source, Path) else "torch"
    passes: list[dict[str, Any]]
    if isinstance(source, Path):
        alternatives = [*quantize, {"pass": "fp16"}]
        if _has_weight_matmul(source):
            alternatives.append({"pass": "quantize_int4"})
        passes = [{"one_of": alternatives}]
    else:
        passes = []
        if _prunable_layers(source) >= 2:
            passes.append(
                {
                    "pass": "prune_structured",
                    "params": {"ratio": [0.25, 0.5], "finetune_epochs": 10},
                    "optional": True,
                }
            )
        passes += [{"pass": "export"}, {"one_of": quantize, "optional": True}]
    if isinstance(task, FileTask) and task.kind == "classification":
        constraints: dict[str, float] = {"max_metric_drop": 0.01}
    elif isinstance(task, FileTask) and task.kind == "embedding":
        constraints = {"min_metric": 0.99}
    else:
        constraints = {"max_relative_drop": 0.05}
    return Recipe.model_validate(
        {
            "name": f"default-{task.kind}-{start}",
            "start": start,
            "passes": passes,
            "constraints": constraints,
        }
    )


# ---------------------------------------------------------------------------- helpers


def _torch_ready(data: Dataset) -> Dataset:
    """Inputs as PyTorch models take them by default: float32 floats, int64 integers."""
    inputs = {}
    for name, array in data.inputs.items():
        if np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float32)
        elif np.issubdtype(array.dtype, np.integer):
            array = array.astype(np.int64)
        inputs[name] = array
    return Dataset(inputs, data.targets, data.origin)


def _has_weight_matmul(path: Path) -> bool:
    import onnx

    graph = onnx.load_model(str(path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer if len(init.dims) == 2}
    return any(n.op_type == "MatMul" and n.input[1] in weights for n in graph.node)


def _prunable_layers(module: nn.Module) -> int:
    from torch import nn

    return sum(isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d) for m in module.modules())
