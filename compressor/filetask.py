"""The built-in task kinds for a user's model and data files: classification, regression and
embedding, each with its metric and direction.

============== =============================================== ==================================
kind           ranked metric                                   also reported
============== =============================================== ==================================
classification ``accuracy``: top-1 on EVAL (higher is better)  ``top5``: top-k, k = min(5, C)
regression     ``mae`` against EVAL's ``y`` (lower is better)  ``rmse``
embedding      ``cosine``: mean cosine similarity of each      ``cosine_worst`` (the lowest);
               eval output to the ORIGINAL model's (higher)    ``nn_agreement``: share of eval
                                                               samples whose nearest neighbour
                                                               among eval embeddings is the
                                                               same as under the original
============== =============================================== ==================================

Every figure comes from the ONNX file (onnxruntime on the EVAL data), as for the shipped
examples. TRAIN serves fine-tuning and distillation (with ``y`` as ground truth for
classification and regression) and static-quantization calibration; EVAL serves scoring, the
output-error comparison and the golden file.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeloop.compressor.datafiles import DataFileError, Dataset
from edgeloop.compressor.task import ExportSpec, Task, TaskKind
from edgeloop.compressor.usermodel import UserModel, run_onnx

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["METRICS", "FileTask"]

METRICS: dict[TaskKind, tuple[str, bool]] = {
    "classification": ("accuracy", True),
    "regression": ("mae", False),
    "embedding": ("cosine", True),
}
"""Per kind: the ranked metric and whether higher is better."""


class FileTask(Task):
    """A user's model (:class:`~edgeloop.compressor.usermodel.UserModel`, prepared) with its
    TRAIN and EVAL data, judged by the metric of its ``kind``.

    Raises (on creation):
        DataFileError: targets that do not fit the model's output (class labels out of range
            or not integers, regression values of another width), or an embedding EVAL set of
            fewer than two samples.
    """

    def __init__(
        self, model: UserModel, kind: TaskKind, train: Dataset, eval: Dataset, *, seed: int = 0
    ) -> None:
        self.model, self.kind = model, kind
        self.metric, self.higher_is_better = METRICS[kind]
        self.name = _publishable(Path(model.label).stem)
        self.train, self.eval, self.seed = train, eval, seed
        self._reference: np.ndarray | None = None
        sample = model.original_outputs(eval.head(2))
        for data, role in ((train, "--train"), (eval, "--eval")):
            self._check_targets(data, sample, role)

    # ------------------------------------------------------------------ the model

    def source(self) -> nn.Module | Path:
        return self.model.source()

    def source_onnx(self) -> Path | None:
        return self.model.source_onnx()

    def onnx_only_reason(self) -> str | None:
        return self.model.onnx_only_reason

    def teacher(self) -> nn.Module:
        if self.model.module is None:
            return super().teacher()
        return self.model.module

    def export_spec(self) -> ExportSpec:
        return self.model.export_spec(self.eval.head(1))

    def student(self, width: float) -> nn.Module | None:
        """The teacher with ``width`` of its channels in every prunable layer (torch-pruning
        finds the coupled layers), every weight re-initialized: a fresh, narrower model of the
        same architecture. None when the model cannot be edited as PyTorch."""
        import torch
        import torch_pruning as tp

        from edgeloop.compressor.passes.prune import output_layer

        if self.model.module is None:
            return None
        student = copy.deepcopy(self.model.module).eval()
        if width < 1:
            pruner = tp.pruner.MetaPruner(
                student,
                self.export_spec().example_inputs,
                importance=tp.importance.MagnitudeImportance(p=1),
                pruning_ratio=1 - width,
                ignored_layers=[output_layer(student)],
            )
            pruner.step()
        torch.manual_seed(self.seed)
        for layer in student.modules():
            reset = getattr(layer, "reset_parameters", None)
            if callable(reset):
                reset()
        return student

    # ------------------------------------------------------------------ data

    def train_inputs(self) -> tuple[torch.Tensor, ...]:
        import torch

        return tuple(torch.from_numpy(self.train.inputs[n]) for n in self.model.input_names)

    def train_targets(self) -> torch.Tensor | None:
        import torch

        targets = self.train.targets
        if targets is None or self.kind == "embedding":
            return None
        if self.kind == "classification":
            return torch.from_numpy(targets.reshape(len(targets)).astype(np.int64))
        return torch.from_numpy(targets.astype(np.float32).reshape(len(targets), -1))

    def calibration_feeds(self, count: int = 200) -> list[dict[str, np.ndarray]]:
        picks = np.random.default_rng(self.seed).permutation(len(self.train))[:count]
        return [{n: a[i : i + 1] for n, a in self.train.inputs.items()} for i in picks]

    def eval_feeds(self, count: int = 64) -> list[dict[str, np.ndarray]]:
        head = self.eval.head(count)
        if self.model.batch_dynamic:
            return [head]
        return [{n: a[i : i + 1] for n, a in head.items()} for i in range(len(self.eval))[:count]]

    def latency_feed(self) -> dict[str, np.ndarray]:
        return self.eval.head(1)

    # ------------------------------------------------------------------ judging

    def score(self, model_path: Path, threads: int = 1) -> dict[str, float]:
        from edgeloop.compressor.evaluate import session

        produced = run_onnx(session(model_path, threads), self.eval.inputs)
        if self.kind == "classification":
            return _classification(produced, self._labels(self.eval))
        if self.kind == "regression":
            assert self.eval.targets is not None
            return _regression(produced, self.eval.targets)
        return _embedding(produced, self.reference_outputs())

    def reference_outputs(self) -> np.ndarray:
        """The original model's outputs on EVAL (what an embedding's cosine compares with)."""
        if self._reference is None:
            self._reference = self.model.original_outputs(self.eval.inputs)
        return self._reference

    def _labels(self, data: Dataset) -> np.ndarray:
        assert data.targets is not None
        return data.targets.reshape(len(data.targets)).astype(np.int64)

    def _check_targets(self, data: Dataset, sample: np.ndarray, role: str) -> None:
        where = f"{role} {data.origin}"
        if self.kind == "embedding":
            if role == "--eval" and len(data) < 2:
                raise DataFileError(f"{where}: an embedding is judged on at least 2 samples")
            return
        targets = data.targets
        assert targets is not None
        if self.kind == "classification":
            if sample.ndim != 2 or sample.shape[1] < 2:
                raise DataFileError(
                    f"classification needs per-class scores [n, classes] from the model, "
                    f"but {self.model.label} outputs {list(sample.shape)}"
                )
            flat = targets.reshape(-1) if targets.ndim <= 2 else targets
            if flat.ndim != 1 or len(flat) != len(data):
                raise DataFileError(f"{where}: 'y' holds one class index per sample")
            if not np.array_equal(flat, np.round(flat)):
                raise DataFileError(f"{where}: 'y' must be class indices (whole numbers)")
            classes = sample.shape[1]
            if flat.min() < 0 or flat.max() >= classes:
                raise DataFileError(
                    f"{where}: 'y' holds classes {int(flat.min())}..{int(flat.max())} but the "
                    f"model scores {classes} classes (0..{classes - 1})"
                )
            return
        width = int(np.prod(sample.shape[1:], dtype=np.int64))
        given = int(np.prod(targets.shape[1:], dtype=np.int64))
        if width != given:
            raise DataFileError(
                f"{where}: 'y' has {given} value(s) per sample but the model outputs {width} "
                f"({list(sample.shape)})"
            )


def _classification(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    k = min(5, logits.shape[1])
    top_k = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return {
        "accuracy": float((logits.argmax(axis=1) == labels).mean()),
        "top5": float((top_k == labels[:, None]).any(axis=1).mean()),
    }


def _regression(predicted: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    error = predicted.reshape(len(predicted), -1).astype(np.float64) - targets.reshape(
        len(targets), -1
    )
    return {"mae": float(np.abs(error).mean()), "rmse": float(np.sqrt((error**2).mean()))}


def _embedding(produced: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    ours = _unit(produced)
    theirs = _unit(reference)
    cosine = (ours * theirs).sum(axis=1)
    return {
        "cosine": float(cosine.mean()),
        "cosine_worst": float(cosine.min()),
        "nn_agreement": float((_nearest(ours) == _nearest(theirs)).mean()),
    }


def _unit(vectors: np.ndarray) -> np.ndarray:
    flat = vectors.reshape(len(vectors), -1).astype(np.float64)
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)


def _nearest(unit: np.ndarray) -> np.ndarray:
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(axis=1)


def _publishable(stem: str) -> str:
    """A model name the control plane accepts (letters, digits, ``_.+-``)."""
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "-", stem).strip("-_.+") or "model"
    return name[:128]
