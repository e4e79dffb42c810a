"""A task of your own: a Pendulum-v1 controller, judged by what it does in closed loop.

A controller whose torques match the original's to three decimals can still drop the pendulum,
and one that differs more may balance it just as well, so this task's metric is the mean return
of the compressed ONNX controller driving gymnasium's ``Pendulum-v1`` one observation at a time
(batch 1, as on a device), on seeded episodes. Returns are negative costs: higher is better.

Run it::

    edgeloop compress policy.ts --task docs/examples/controller_task.py:ControllerTask \\
        --train states.npz --eval seeds.npz --profile host-1t

- ``policy.ts``: the trained controller, observation ``[batch, 3]`` → torque ``[batch, 1]``, in
  any form ``edgeloop compress`` opens (TorchScript, ONNX, torch.export, ``file.py:factory``).
- ``--train states.npz``: states the controller meets, under ``x`` (or the model's input name).
  Pruning's fine-tune distils the original controller on them, and static quantization
  calibrates on them; no targets are needed.
- ``--eval seeds.npz`` (optional): ``seeds``, the episodes to score on (default 0..7).

``edgeloop compress`` creates the class with the keyword arguments its ``__init__`` takes among
``model``, ``train`` and ``eval``. What the :class:`~edgeloop.compressor.task.Task` interface
asks for is below, in its order: what the task is (``name``, ``kind``, ``metric``,
``higher_is_better``), the model (``source`` and, for a PyTorch model, ``teacher``,
``export_spec``, ``student``), its data (``train_inputs``), and how to judge an ONNX file
(``score``, ``latency_feed``). The model is opened the way the built-in kinds open theirs
(``open_model``: converted to an editable PyTorch module when it can be, so every pass applies).
The closed-loop pieces come from the shipped control example.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeloop.compressor.datafiles import DataFileError, load_arrays, load_dataset
from edgeloop.compressor.examples.pendulum import PendulumPolicy, onnx_policy, run_episodes
from edgeloop.compressor.task import ExportSpec, Task
from edgeloop.compressor.usermodel import open_model

DEFAULT_SEEDS = tuple(range(8))
"""Evaluation episodes when no --eval is given: eight starts cover swing-ups from both sides."""


class ControllerTask(Task):
    """Compress a Pendulum-v1 controller; metric: mean closed-loop return (higher is better)."""

    name = "pendulum-controller"
    kind = "regression"  # torques: fine-tuning matches them by MSE; probation compares by cosine
    metric = "return_mean"
    higher_is_better = True

    def __init__(self, model: str, train: Path, eval: Path | None = None) -> None:
        self.policy = open_model(model)
        float_inputs = {name: np.dtype(np.float32) for name in self.policy.input_names}
        self.states = load_dataset(
            train,
            self.policy.input_names,
            dtypes=self.policy.input_dtypes or float_inputs,
            targets_required=False,
            role="--train",
        )
        self.seeds = DEFAULT_SEEDS if eval is None else _seeds(eval)
        # Where a TorchScript controller's ONNX export lives while this task does.
        self._scratch = tempfile.TemporaryDirectory(prefix="edgeloop-controller-")
        self.policy.prepare(self.states.head(16), Path(self._scratch.name))

    # ------------------------------------------------------------------ the model

    def source(self) -> nn.Module | Path:
        return self.policy.source()

    def source_onnx(self) -> Path | None:
        return self.policy.source_onnx()

    def onnx_only_reason(self) -> str | None:
        return self.policy.onnx_only_reason

    def teacher(self) -> nn.Module:
        if self.policy.module is None:
            return super().teacher()
        return self.policy.module

    def export_spec(self) -> ExportSpec:
        return self.policy.export_spec(self.states.head(1))

    def student(self, width: float) -> nn.Module | None:
        """A fresh MLP controller, ``width`` times as wide, for the ``distill`` pass."""
        if self.policy.module is None:
            return None
        linears = [m for m in self.policy.module.modules() if isinstance(m, nn.Linear)]
        torch.manual_seed(0)
        return PendulumPolicy(
            hidden=max(1, round(linears[0].out_features * width)), layers=len(linears) - 1
        )

    # ------------------------------------------------------------------ data

    def train_inputs(self) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(self.states.inputs[n]) for n in self.policy.input_names)

    # ------------------------------------------------------------------ judging

    def score(self, model_path: Path, threads: int = 1) -> dict[str, float]:
        returns = run_episodes(onnx_policy(model_path, threads), self.seeds).returns
        return {
            "return_mean": float(returns.mean()),
            "return_std": float(returns.std()),
            "return_min": float(returns.min()),
        }

    def latency_feed(self) -> dict[str, np.ndarray]:
        return self.states.head(1)


def _seeds(path: Path) -> tuple[int, ...]:
    arrays = load_arrays(path, role="--eval")
    if "seeds" not in arrays or arrays["seeds"].ndim != 1 or len(arrays["seeds"]) == 0:
        raise DataFileError(f"--eval {path}: give the episode seeds as a 1-D array 'seeds'")
    return tuple(int(seed) for seed in arrays["seeds"])
