"""What the compressor needs to know about a model's job, independent of the technique.

A :class:`Task` supplies the model the pipelines start from, data for fine-tuning,
distillation and calibration, how to export it, and how to score an ONNX file with the task's
own metric. Passes only talk to the task through this interface, so each case is one class:
the shipped examples in ``compressor/examples/``, the built-in kinds for a model plus data
files in :mod:`edgeloop.compressor.filetask`, or a user's own script given as
``edgeloop compress --task my_task.py:MyTask`` (``docs/examples/controller_task.py`` is a
complete one).

Writing a task
--------------
Every task sets ``name``, ``kind`` (the default distillation loss and the agreement metric a
device's probation uses), ``metric`` and ``higher_is_better``, and implements
:meth:`~Task.score` and :meth:`~Task.latency_feed`. What else it needs depends on where its
model starts:

- **A PyTorch model** (the default; every pass applies): :meth:`~Task.teacher`,
  :meth:`~Task.export_spec` and :meth:`~Task.train_inputs`; optionally
  :meth:`~Task.train_targets` (labels help fine-tuning), :meth:`~Task.student` (a narrower
  model, for the ``distill`` pass) and :meth:`~Task.distill_loss`.
- **An ONNX file only** (quantization and fp16 apply; torch passes are dropped from the
  recipe, each with :meth:`~Task.onnx_only_reason`): override :meth:`~Task.source` to return
  the file's path, and :meth:`~Task.calibration_feeds` and :meth:`~Task.eval_feeds` to draw
  from the task's own data.

A user task is created by ``edgeloop compress`` with the keyword arguments its ``__init__``
accepts among ``model`` (the command's MODEL argument, a string), ``train`` and ``eval``
(``--train`` / ``--eval`` paths); :func:`edgeloop.compressor.usermodel.open_model` opens a
model file or entry point the way the built-in kinds do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

TaskKind = Literal["classification", "regression", "embedding"]


@dataclass(frozen=True)
class ExportSpec:
    """How to trace the torch model: example inputs (batch 1), names and dynamic axes."""

    example_inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]


class Task(ABC):
    """One compression case. ``higher_is_better`` applies to :meth:`score`'s ``metric``."""

    name: str
    kind: TaskKind
    metric: str
    higher_is_better: bool = True

    # ------------------------------------------------------------------ the model

    def source(self) -> torch.nn.Module | Path:
        """The model every pipeline starts from: a PyTorch module, :meth:`teacher` by default.

        Return the path of an ONNX file for a model that exists only as ONNX; the fp32
        baseline is then that file itself, and recipes lose their torch steps (see
        :meth:`onnx_only_reason`).
        """
        return self.teacher()

    def source_onnx(self) -> Path | None:
        """The ONNX file a PyTorch :meth:`source` stands for, if it came from one (a model
        converted from ONNX, or a TorchScript file exported once): exporting the untouched
        source yields this very file, so it is the fp32 baseline. None: export the source."""
        return None

    def onnx_only_reason(self) -> str | None:
        """Why this task's model is available only as ONNX (printed next to each torch pass a
        recipe loses), or None when :meth:`source` is a PyTorch model."""
        return None

    def teacher(self) -> torch.nn.Module:
        """The trained full-size model (deterministic for a given seed).

        Required unless :meth:`source` is overridden to return an ONNX file.
        """
        raise NotImplementedError(
            f"task {self.name!r} has no PyTorch model: implement Task.teacher(), or override "
            "Task.source() to return the path of an ONNX file"
        )

    def export_spec(self) -> ExportSpec:
        """Example inputs and names for exporting the torch model (PyTorch sources only)."""
        raise NotImplementedError(
            f"task {self.name!r} cannot export a PyTorch model: implement Task.export_spec()"
        )

    def student(self, width: float) -> torch.nn.Module | None:
        """A fresh, narrower model (``width`` x the teacher's) for distillation, if supported."""
        return None

    # ------------------------------------------------------------------ data

    def train_inputs(self) -> tuple[torch.Tensor, ...]:
        """Inputs (first axis = samples) for fine-tuning, distillation and calibration."""
        raise NotImplementedError(
            f"task {self.name!r} has no training inputs: implement Task.train_inputs() (or "
            "Task.calibration_feeds() for an ONNX-only task)"
        )

    def train_targets(self) -> torch.Tensor | None:
        """Ground truth for the training inputs, if the task has labels (classification)."""
        return None

    def calibration_feeds(self, count: int = 200) -> list[dict[str, np.ndarray]]:
        """Batch-1 feeds for static-quantization calibration, drawn from the training inputs."""
        inputs = self.train_inputs()
        names = self.export_spec().input_names
        picks = np.random.default_rng(0).permutation(len(inputs[0]))[:count]
        return [
            {name: tensor[i : i + 1].numpy() for name, tensor in zip(names, inputs, strict=True)}
            for i in picks
        ]

    def eval_feeds(self, count: int = 64) -> list[dict[str, np.ndarray]]:
        """Feeds on which candidates' raw outputs are compared with the fp32 model's (the
        report's output error). Override to use held-out data; defaults to training inputs."""
        return self.calibration_feeds(count)

    # ------------------------------------------------------------------ judging

    @abstractmethod
    def score(self, model_path: Path, threads: int = 1) -> dict[str, float]:
        """Evaluate an ONNX file; must contain ``self.metric`` and may add more figures."""

    @abstractmethod
    def latency_feed(self) -> dict[str, np.ndarray]:
        """One batch-1 input, as a device serving one request would feed it."""

    def distill_loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """Override to replace the default loss for this task's kind."""
        return None
