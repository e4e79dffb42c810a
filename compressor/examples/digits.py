"""The smallest real case: a CNN on scikit-learn's 8x8 digits, shipped as fp32 and int8.

It needs no download (the data set ships with scikit-learn) and builds in seconds, so it is
the model the end-to-end loop and its tests run on. Training is seeded and runs on one torch
thread, so a seed gives the same weights and the same ``model.onnx`` bytes on every run of one
host; only the latencies in ``report.json`` vary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from edgeloop.agent.runtime import io_specs
from edgeloop.compressor import evaluate
from edgeloop.compressor.report import BuiltModel, ModelReport
from edgeloop.compressor.task import ExportSpec, Task

__all__ = [
    "INPUT_NAME",
    "NAME",
    "OUTPUT_NAME",
    "DigitsCNN",
    "DigitsTask",
    "build_digits",
    "load_split",
]

NAME = "digits-cnn"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
GOLDEN_SAMPLES = 8
CALIBRATION_SAMPLES = 200
HOST_THREADS = 1

FP32_GOLDEN_ATOL = 1e-4
"""fp32 kernels differ across CPUs only in summation order; on logits of magnitude ~20 that is
~1e-5 (measured: NCHWc-optimized vs unoptimized graph here)."""

INT8_GOLDEN_ATOL_FRACTION = 0.01
"""int8 tolerance, as a fraction of the largest golden logit (|logit| ~20, so ~0.2).

Another CPU may land an activation one quantization step away: the fp32 input conv feeds a
QuantizeLinear, so float rounding differences there can flip a step, and requantization may
round differently. One step in the last hidden layer moves a logit by scale x |weight|
(0.17 x 0.31 = 0.05 here); the worst drift measured between the fused int8 kernels and the
float reference of the same quantized graph, over the 360 test images, was 0.09. 1% of the
logit scale allows that twice over, while a wrong or corrupted model moves logits by units.
"""


class DigitsCNN(nn.Module):
    """``width`` scales every hidden layer (1.0 = 16/32 conv channels, 64 hidden units)."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, hidden = (max(1, round(n * width)) for n in (16, 32, 64))
        self.layers = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * 4 * 4, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.layers(image)


def load_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, x_test, y_train, y_test)``: images float32 [n, 1, 8, 8] in 0..1, int64 labels."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, np.newaxis]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, random_state=seed, stratify=labels
    )
    return x_train, x_test, y_train, y_test


def train(
    x: np.ndarray,
    y: np.ndarray,
    *,
    seed: int,
    epochs: int,
    progress: bool,
    batch_size: int = 64,
    width: float = 1.0,
) -> DigitsCNN:
    """Adam on seeded shuffles; one torch thread, because summation order changes the weights."""
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = DigitsCNN(width)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = nn.CrossEntropyLoss()
        inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
        shuffle = torch.Generator().manual_seed(seed)
        model.train()
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(f"training {NAME}", total=epochs)
            for _ in range(epochs):
                for batch in torch.randperm(len(inputs), generator=shuffle).split(batch_size):
                    optimizer.zero_grad()
                    loss_fn(model(inputs[batch]), targets[batch]).backward()
                    optimizer.step()
                bar.advance(task)
    finally:
        torch.set_num_threads(threads_before)
    return model.eval()


def build_digits(
    out_dir: Path, *, seed: int = 0, epochs: int = 40, progress: bool = True
) -> list[BuiltModel]:
    """Train, export and quantize the digits CNN; returns ``[fp32, int8]``.

    Layout: ``out_dir/<version>/{model.onnx, golden.npz, report.json}``, versions ``1-fp32``
    and ``1-int8``. fp32 is the baseline the int8 report compares against. Accuracy is measured
    on the held-out 20%; latency at batch 1 on :data:`HOST_THREADS` onnxruntime threads.
    """
    from edgeloop.compressor.passes import PassContext, TorchModel, get_pass

    task = DigitsTask(seed=seed, epochs=epochs, progress=progress)
    x_test, y_test = task.x_test, task.y_test
    export, quantize = get_pass("export"), get_pass("quantize_static")
    stages = {version: out_dir / version for version in ("1-fp32", "1-int8")}
    for stage in stages.values():
        stage.mkdir(parents=True, exist_ok=True)
    fp32 = export().run(
        TorchModel(task.teacher()), export.config(), PassContext(task, stages["1-fp32"], seed)
    )
    int8 = quantize().run(
        fp32,
        quantize.config({"calibration_samples": CALIBRATION_SAMPLES}),
        PassContext(task, stages["1-int8"], seed),
    )
    fp32_path, int8_path = fp32.path, int8.path
    variants = [
        ("fp32", fp32_path, ["train", "export-onnx"]),
        ("int8", int8_path, ["train", "export-onnx", "quantize-static-qdq-int8"]),
    ]

    baseline_size = fp32_path.stat().st_size
    baseline_accuracy = evaluate.accuracy(fp32_path, x_test, y_test, threads=HOST_THREADS)
    golden_inputs = x_test[:GOLDEN_SAMPLES]
    built = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"evaluating {NAME}", total=len(variants))
        for variant, model_path, recipe in variants:
            golden_path = model_path.parent / "golden.npz"
            logit_scale = evaluate.make_golden(model_path, golden_inputs, golden_path)
            size = model_path.stat().st_size
            accuracy = evaluate.accuracy(model_path, x_test, y_test, threads=HOST_THREADS)
            p50, p95 = evaluate.latency(model_path, x_test[:1], threads=HOST_THREADS)
            report = ModelReport(
                variant=variant,
                recipe=recipe,
                size_bytes=size,
                accuracy=accuracy,
                baseline_accuracy=baseline_accuracy,
                accuracy_drop=baseline_accuracy - accuracy,
                compression_ratio=baseline_size / size,
                host_latency_p50_ms=p50,
                host_latency_p95_ms=p95,
                host_threads=HOST_THREADS,
                golden_atol=(
                    FP32_GOLDEN_ATOL
                    if variant == "fp32"
                    else round(INT8_GOLDEN_ATOL_FRACTION * logit_scale, 4)
                ),
            )
            (model_path.parent / "report.json").write_text(report.model_dump_json(indent=2) + "\n")
            inputs, outputs = io_specs(evaluate.session(model_path))
            built.append(
                BuiltModel(
                    name=NAME,
                    version=f"1-{variant}",
                    model_path=model_path,
                    golden_path=golden_path,
                    inputs=inputs,
                    outputs=outputs,
                    report=report,
                )
            )
            bar.advance(task)
    return built


class DigitsTask(Task):
    """The image case for the search: teacher = the trained CNN, metric = test accuracy."""

    name = "image"
    kind = "classification"
    metric = "accuracy"
    width = 1.0

    def __init__(self, *, seed: int = 0, epochs: int = 40, progress: bool = False) -> None:
        self.seed, self.epochs, self.progress = seed, epochs, progress
        self.x_train, self.x_test, self.y_train, self.y_test = load_split(seed)
        self._teacher: DigitsCNN | None = None

    def teacher(self) -> nn.Module:
        if self._teacher is None:
            self._teacher = train(
                self.x_train,
                self.y_train,
                seed=self.seed,
                epochs=self.epochs,
                progress=self.progress,
                width=self.width,
            )
        return self._teacher

    def export_spec(self) -> ExportSpec:
        return ExportSpec(
            example_inputs=(torch.from_numpy(self.x_test[:1]),),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )

    def train_inputs(self) -> tuple[torch.Tensor, ...]:
        return (torch.from_numpy(self.x_train),)

    def train_targets(self) -> torch.Tensor:
        return torch.from_numpy(self.y_train)

    def student(self, width: float) -> nn.Module:
        torch.manual_seed(self.seed)
        return DigitsCNN(self.width * width)

    def score(self, model_path: Path, threads: int = 1) -> dict[str, float]:
        return {
            "accuracy": evaluate.accuracy(model_path, self.x_test, self.y_test, threads=threads)
        }

    def latency_feed(self) -> dict[str, np.ndarray]:
        return {INPUT_NAME: self.x_test[:1]}

    def eval_feeds(self, count: int = 64) -> list[dict[str, np.ndarray]]:
        return [{INPUT_NAME: self.x_test[:count]}]


class WideDigitsTask(DigitsTask):
    """The digits CNN twelve times wider (192/384 channels, 768 hidden): ~47 M multiply-adds,
    a millisecond-scale inference whose cost moves with pruning and device speed. The closed
    loop (``edgeloop bench loop``) tunes it for emulated device classes."""

    name = "image-wide"
    width = 12.0

    def __init__(self, *, seed: int = 0, epochs: int = 5, progress: bool = False) -> None:
        super().__init__(seed=seed, epochs=epochs, progress=progress)
