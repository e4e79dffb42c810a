"""What the compressor needs to know about a model's job, independent of the technique.

A :class:`Task` supplies the trained (teacher) model, data for fine-tuning, distillation and
calibration, how to export it, and how to score an ONNX file with the task's own metric.
Passes only talk to the task through this interface, so each case (image, nlp, control) is
one module in ``compressor/examples/``.
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
    """One compression case. ``higher_is_better`` applies to :meth:`score`."""

    name: str
    kind: TaskKind
    metric: str
    higher_is_better: bool = True

    @abstractmethod
    def teacher(self) -> torch.nn.Module:
        """The trained full-size model (deterministic for a given seed)."""

    @abstractmethod
    def export_spec(self) -> ExportSpec: ...

    @abstractmethod
    def train_inputs(self) -> tuple[torch.Tensor, ...]:
        """Inputs (first axis = samples) for fine-tuning, distillation and calibration."""

    def train_targets(self) -> torch.Tensor | None:
        """Ground truth for the training inputs, if the task has labels (classification)."""
        return None

    def student(self, width: float) -> torch.nn.Module | None:
        """A fresh, narrower model (``width`` x the teacher's) for distillation, if supported."""
        return None

    @abstractmethod
    def score(self, model_path: Path, threads: int = 1) -> dict[str, float]:
        """Evaluate an ONNX file; must contain ``self.metric`` and may add more figures."""

    @abstractmethod
    def latency_feed(self) -> dict[str, np.ndarray]:
        """One batch-1 input, as a device serving one request would feed it."""

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

    def distill_loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """Override to replace the default loss for this task's kind."""
        return None
