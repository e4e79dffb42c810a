"""The smallest real case: a CNN on scikit-learn's 8x8 digits, shipped as fp32 and int8.

It needs no download (the data set ships with scikit-learn) and builds in seconds, so it is
the model the end-to-end loop and its tests run on. Everything is seeded and torch runs on
one thread, so a seed gives the same weights, files and figures on every run of one host.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from edgeloop.compressor import evaluate
from edgeloop.compressor.export import export_onnx, tensor_specs
from edgeloop.compressor.quantize import quantize_static_int8
from edgeloop.compressor.report import BuiltModel, ModelReport

__all__ = ["NAME", "INPUT_NAME", "OUTPUT_NAME", "build_digits", "DigitsCNN"]

NAME = "digits-cnn"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
GOLDEN_SAMPLES = 8
CALIBRATION_SAMPLES = 200
HOST_THREADS = 1

FP32_GOLDEN_ATOL = 1e-4
"""fp32 kernels differ across CPUs only in summation order; logits here are O(10), so
float32 rounding stays far below 1e-4."""

INT8_GOLDEN_ATOL = 0.05
"""An int8 kernel on another CPU (VNNI vs AVX2, ARM dot-product) may round an intermediate
activation one quantization step differently. One step of the last hidden layer moves a logit
by roughly (activation scale x |weight|) summed over few terms, i.e. a few hundredths at this
model's logit scale (~10-20), so 0.05 allows an off-by-one rounding while still failing on a
wrong model or corrupted weights, which move logits by whole units."""


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.layers(image)


def load_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, x_test, y_train, y_test)``; images as float32 [n, 1, 8, 8] in 0..1."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, np.newaxis]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, random_state=seed, stratify=labels
    )
    return x_train, x_test, y_train, y_test


def train(
    x: np.ndarray, y: np.ndarray, *, seed: int, epochs: int, progress: bool, batch_size: int = 64
) -> DigitsCNN:
    """Adam on shuffled mini-batches, one torch thread so the result depends on the seed only."""
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    shuffle = torch.Generator().manual_seed(seed)
    model.train()
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("training digits-cnn", total=epochs)
        for _ in range(epochs):
            for batch in torch.randperm(len(inputs), generator=shuffle).split(batch_size):
                optimizer.zero_grad()
                loss_fn(model(inputs[batch]), targets[batch]).backward()
                optimizer.step()
            bar.advance(task)
    return model.eval()


def build_digits(
    out_dir: Path, *, seed: int = 0, epochs: int = 40, progress: bool = True
) -> list[BuiltModel]:
    """Train, export and quantize the digits CNN; returns ``[fp32, int8]``.

    Layout: ``out_dir/<version>/{model.onnx, golden.npz, report.json}``. The fp32 model is the
    baseline the int8 report compares against.
    """
    x_train, x_test, y_train, y_test = load_split(seed)
    model = train(x_train, y_train, seed=seed, epochs=epochs, progress=progress)

    fp32_dir, int8_dir = out_dir / "1-fp32", out_dir / "1-int8"
    fp32_path = export_onnx(
        model,
        torch.from_numpy(x_test[:1]),
        fp32_dir / "model.onnx",
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
    )
    calibration = x_train[np.random.default_rng(seed).permutation(len(x_train))][
        :CALIBRATION_SAMPLES
    ]
    int8_path = quantize_static_int8(fp32_path, int8_dir / "model.onnx", calibration, INPUT_NAME)

    baseline_size = fp32_path.stat().st_size
    baseline_accuracy = evaluate.accuracy(fp32_path, x_test, y_test, threads=HOST_THREADS)
    variants = [
        ("fp32", "1-fp32", fp32_path, ["train", "export-onnx"], FP32_GOLDEN_ATOL),
        (
            "int8",
            "1-int8",
            int8_path,
            ["train", "export-onnx", "quantize-static-qdq-int8"],
            INT8_GOLDEN_ATOL,
        ),
    ]
    built = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("evaluating digits-cnn", total=len(variants))
        for variant, version, path, recipe, golden_atol in variants:
            size = path.stat().st_size
            model_accuracy = evaluate.accuracy(path, x_test, y_test, threads=HOST_THREADS)
            p50, p95 = evaluate.latency(path, x_test[:1], threads=HOST_THREADS)
            golden_path = evaluate_golden(path, x_test[:GOLDEN_SAMPLES])
            report = ModelReport(
                variant=variant,
                recipe=recipe,
                size_bytes=size,
                accuracy=model_accuracy,
                baseline_accuracy=baseline_accuracy,
                accuracy_drop=baseline_accuracy - model_accuracy,
                compression_ratio=baseline_size / size,
                host_latency_p50_ms=p50,
                host_latency_p95_ms=p95,
                host_threads=HOST_THREADS,
                golden_atol=golden_atol,
            )
            (path.parent / "report.json").write_text(report.model_dump_json(indent=2) + "\n")
            inputs, outputs = tensor_specs(path)
            built.append(
                BuiltModel(
                    name=NAME,
                    version=version,
                    model_path=path,
                    golden_path=golden_path,
                    inputs=inputs,
                    outputs=outputs,
                    report=report,
                )
            )
            bar.advance(task)
    return built


def evaluate_golden(model_path: Path, inputs: np.ndarray) -> Path:
    golden_path = model_path.parent / "golden.npz"
    evaluate.make_golden(model_path, inputs, golden_path)
    return golden_path
