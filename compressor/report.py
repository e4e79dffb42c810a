"""What the compressor says about each model it builds.

A ``ModelReport`` is measured on the build host, never on a device: devices measure themselves
and send their own ``Report``. It is stored next to the artifact as ``report.json`` so the server
can register a model without re-running anything. This module imports no torch, so the server
may read reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgeloop.agent.protocol import TensorSpec

__all__ = ["MAX_TRIAL_POINTS", "BuiltModel", "ModelReport", "TrialPoint", "golden_atol"]

MAX_TRIAL_POINTS = 200
"""The most search trials a report carries (the control plane refuses more)."""


class TrialPoint(BaseModel):
    """One candidate the search measured, as the Pareto plot shows it. The control plane's
    ``ModelFigures.trials`` holds the same fields (the server does not import the compressor)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(min_length=1, max_length=256, description="e.g. fp32, int8-static")
    metric: float = Field(allow_inf_nan=False, description="the task metric (`metric_name`)")
    latency_p50_ms: float = Field(ge=0, description="host, batch 1")
    size_bytes: int = Field(gt=0, description="the .onnx file")
    on_front: bool = Field(description="on the search's Pareto front")
    chosen: bool = Field(description="the candidate this report is about")


class ModelReport(BaseModel):
    """Host-side figures for one model variant, compared with the uncompressed baseline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    variant: str = Field(min_length=1, description="e.g. fp32, int8")
    recipe: list[str] = Field(
        description="passes that made it, in order; empty for a model shipped as it was given"
    )
    size_bytes: int = Field(gt=0, description="the single self-contained .onnx file")
    accuracy: float = Field(
        allow_inf_nan=False,
        description="the value of the task's ranked metric (`metric_name`), e.g. test accuracy, "
        "an MAE, a mean return",
    )
    baseline_accuracy: float = Field(allow_inf_nan=False, description="the same, fp32 baseline")
    accuracy_drop: float = Field(
        allow_inf_nan=False,
        description="how much worse than the baseline, in the metric's units (positive = worse "
        "in the metric's direction); 0.005 is half a point of accuracy",
    )
    compression_ratio: float = Field(gt=0, description="baseline size / size")
    host_latency_p50_ms: float = Field(ge=0, description="batch 1, single calls")
    host_latency_p95_ms: float = Field(ge=0)
    host_threads: int = Field(ge=1, description="onnxruntime intra-op threads when timed")
    golden_atol: float = Field(ge=0, description="tolerance a device gate allows on golden outputs")
    metric_name: str = Field(default="accuracy", description="what `accuracy` measures")
    metrics: dict[str, float] = Field(default_factory=dict, description="every task figure")
    peak_rss_mb: float | None = Field(default=None, ge=0, description="model process, host")
    output_max_abs_err: float | None = Field(default=None, description="vs fp32, eval set")
    weight_error: dict[str, float] = Field(default_factory=dict, description="weight MSE/max")
    higher_is_better: bool = Field(default=True, description="the direction of `accuracy`")
    relative_drop: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="accuracy_drop / |baseline_accuracy| (the relative performance loss); None "
        "when the baseline is 0",
    )
    agreement_metric: Literal["argmax", "cosine"] = Field(
        default="argmax",
        description="how a device's probation compares this model with its predecessor",
    )
    trials: list[TrialPoint] = Field(
        default_factory=list,
        max_length=MAX_TRIAL_POINTS,
        description="the search's candidates that ran, the baseline first",
    )


@dataclass(frozen=True)
class BuiltModel:
    """A model version ready to publish: the files plus the I/O contract the manifest needs."""

    name: str
    version: str
    model_path: Path
    golden_path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    report: ModelReport


def golden_atol(golden_path: Path, *, quantized: bool) -> float:
    """The tolerance a device's golden check allows: the same graph on another CPU rounds
    differently, by up to 1% of the output range for quantized models and 1e-5 otherwise."""
    import numpy as np

    with np.load(golden_path, allow_pickle=False) as golden:
        scale = float(np.abs(golden["outputs"]).max())
    return round(max(1e-4, scale * (0.01 if quantized else 1e-5)), 6)
