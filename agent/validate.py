"""Validation gates a model must pass before it may serve on a device.

Each gate raises :class:`GateError` with its own name, so a report says exactly which gate
refused the model and why. Gates, in the order they run (cheap and certain first):

``size`` (file within the profile's size budget) → ``loads`` (onnxruntime opens it) →
``opset`` (its opset/IR version is one this onnxruntime runs) → ``io`` (input/output names,
dtypes and shapes match the manifest) → ``golden`` (golden inputs give the golden outputs
within tolerance) → ``finite`` (no NaN/Inf) → ``latency`` (p95 within budget) → ``memory``
(peak RSS within budget).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import GateError
from .golden import Golden
from .protocol import DeviceProfile, Gate, LatencyStats, ModelManifest

GATES = (
    Gate.SIZE,
    Gate.LOADS,
    Gate.OPSET,
    Gate.IO,
    Gate.GOLDEN,
    Gate.FINITE,
    Gate.LATENCY,
    Gate.MEMORY,
)

_OPSET_HINTS = ("opset", "ir version", "ir_version", "onnx runtime only guarantees")


def check_size(manifest: ModelManifest, profile: DeviceProfile) -> None:
    """Refuse before downloading: a model bigger than the device may store never fits."""
    budget = profile.model_size_budget_kb
    if budget is not None and manifest.artifact.size > budget * 1024:
        raise GateError(
            Gate.SIZE,
            f"{manifest.artifact.size / 1024:.1f} KB exceeds the profile's {budget:.1f} KB budget",
        )


def classify_load_error(model_path: Path, exc: Exception) -> GateError:
    """A load failure names ``opset`` when the version is the cause, else ``loads``."""
    text = str(exc)
    if any(hint in text.lower() for hint in _OPSET_HINTS):
        return GateError(
            Gate.OPSET,
            f"onnxruntime {ort.__version__} does not run {model_path.name}'s opset/IR version: "
            f"{text.splitlines()[0][:300]}",
        )
    return GateError(Gate.LOADS, f"onnxruntime cannot load {model_path.name}: {text[:300]}")


def check_io(session: ort.InferenceSession, manifest: ModelManifest) -> None:
    """Names, dtypes, ranks and fixed dimensions match the manifest."""
    for kind, actual, expected in (
        ("input", session.get_inputs(), manifest.inputs),
        ("output", session.get_outputs(), manifest.outputs),
    ):
        got = [(a.name, _numpy_dtype(a.type), len(a.shape)) for a in actual]
        want = [(s.name, s.dtype, len(s.shape)) for s in expected]
        if got != want:
            raise GateError(Gate.IO, f"{kind}s are {got}, manifest says {want}")
        for node, spec in zip(actual, expected, strict=True):
            for axis, (have, need) in enumerate(zip(node.shape, spec.shape, strict=True)):
                if isinstance(have, int) and isinstance(need, int) and have != need:
                    raise GateError(
                        Gate.IO,
                        f"{kind} {node.name!r} axis {axis} is {have}, manifest says {need}",
                    )


def _numpy_dtype(onnx_type: str) -> str:
    mapping = {
        "tensor(float)": "float32",
        "tensor(float16)": "float16",
        "tensor(double)": "float64",
    }
    return mapping.get(onnx_type, onnx_type.removeprefix("tensor(").removesuffix(")"))


def check_golden(session: ort.InferenceSession, golden: Golden, manifest: ModelManifest) -> float:
    """Golden inputs reproduce golden outputs within tolerance; returns the max abs error."""
    result = session.run(None, golden.inputs)[0]
    if result.shape != golden.outputs.shape:
        raise GateError(Gate.GOLDEN, f"output shape {result.shape}, golden {golden.outputs.shape}")
    if not np.all(np.isfinite(result)):
        raise GateError(Gate.FINITE, "model produced NaN or Inf on the golden inputs")
    max_err = float(np.max(np.abs(result.astype(np.float64) - golden.outputs)))
    if not np.allclose(
        result, golden.outputs, atol=manifest.golden_atol, rtol=manifest.golden_rtol
    ):
        raise GateError(
            Gate.GOLDEN,
            f"max abs error {max_err:.3g} exceeds atol {manifest.golden_atol} / rtol "
            f"{manifest.golden_rtol}",
        )
    return max_err


def check_budgets(latency: LatencyStats, peak_rss_mb: float, profile: DeviceProfile) -> None:
    if latency.p95_ms > profile.latency_budget_ms:
        raise GateError(
            Gate.LATENCY,
            f"p95 {latency.p95_ms:.3f} ms exceeds the profile's {profile.latency_budget_ms} ms",
        )
    if peak_rss_mb > profile.memory_budget_mb:
        raise GateError(
            Gate.MEMORY,
            f"peak RSS {peak_rss_mb:.1f} MB exceeds the profile's {profile.memory_budget_mb} MB",
        )
