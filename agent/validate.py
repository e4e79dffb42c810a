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

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import GateError
from .protocol import DeviceProfile, LatencyStats, ModelManifest

GATES = ("size", "loads", "opset", "io", "golden", "finite", "latency", "memory")

_OPSET_HINTS = ("opset", "ir version", "ir_version", "onnx runtime only guarantees")


def check_size(manifest: ModelManifest, profile: DeviceProfile) -> None:
    """Refuse before downloading: a model bigger than the device may store never fits."""
    budget = profile.model_size_budget_kb
    if budget is not None and manifest.artifact.size > budget * 1024:
        raise GateError(
            "size",
            f"{manifest.artifact.size / 1024:.1f} KB exceeds the profile's {budget:.1f} KB budget",
        )


def classify_load_error(model_path: Path, exc: Exception) -> GateError:
    """A load failure names ``opset`` when the version is the cause, else ``loads``."""
    text = str(exc)
    if any(hint in text.lower() for hint in _OPSET_HINTS):
        return GateError(
            "opset",
            f"onnxruntime {ort.__version__} does not run {model_path.name}'s opset/IR version: "
            f"{text.splitlines()[0][:300]}",
        )
    return GateError("loads", f"onnxruntime cannot load {model_path.name}: {text[:300]}")


def check_io(session: ort.InferenceSession, manifest: ModelManifest) -> None:
    """Names, dtypes, ranks and fixed dimensions match the manifest."""
    for kind, actual, expected in (
        ("input", session.get_inputs(), manifest.inputs),
        ("output", session.get_outputs(), manifest.outputs),
    ):
        got = [(a.name, _numpy_dtype(a.type), len(a.shape)) for a in actual]
        want = [(s.name, s.dtype, len(s.shape)) for s in expected]
        if got != want:
            raise GateError("io", f"{kind}s are {got}, manifest says {want}")
        for node, spec in zip(actual, expected, strict=True):
            for axis, (have, need) in enumerate(zip(node.shape, spec.shape, strict=True)):
                if isinstance(have, int) and isinstance(need, int) and have != need:
                    raise GateError(
                        "io",
                        f"{kind} {node.name!r} axis {axis} is {have}, manifest says {need}",
                    )


def _numpy_dtype(onnx_type: str) -> str:
    mapping = {
        "tensor(float)": "float32",
        "tensor(float16)": "float16",
        "tensor(double)": "float64",
    }
    return mapping.get(onnx_type, onnx_type.removeprefix("tensor(").removesuffix(")"))


@dataclass(frozen=True)
class Golden:
    """Golden inputs by name (batch first) and the first output they must reproduce."""

    inputs: dict[str, np.ndarray]
    outputs: np.ndarray

    @property
    def count(self) -> int:
        return len(next(iter(self.inputs.values())))

    def sample(self, index: int) -> dict[str, np.ndarray]:
        return {name: array[index : index + 1] for name, array in self.inputs.items()}


def load_golden(path: Path, input_names: list[str]) -> Golden:
    """Read a golden npz: ``inputs`` (single-input models) or ``input_<name>`` per input,
    and ``outputs``. Pickled objects are refused.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            if "inputs" in data.files and len(input_names) == 1:
                inputs = {input_names[0]: data["inputs"]}
            else:
                inputs = {name: data[f"input_{name}"] for name in input_names}
            golden = Golden(inputs, data["outputs"])
    except Exception as exc:
        raise GateError(
            "golden",
            f"{path.name} is not a golden npz with inputs ({'/'.join(input_names)}) and "
            f"outputs: {exc}",
        ) from exc
    if len({len(a) for a in golden.inputs.values()}) != 1 or golden.count == 0:
        raise GateError("golden", f"{path.name}: golden inputs disagree on the batch size")
    return golden


def check_golden(session: ort.InferenceSession, golden: Golden, manifest: ModelManifest) -> float:
    """Golden inputs reproduce golden outputs within tolerance; returns the max abs error."""
    result = session.run(None, golden.inputs)[0]
    if result.shape != golden.outputs.shape:
        raise GateError("golden", f"output shape {result.shape}, golden {golden.outputs.shape}")
    if not np.all(np.isfinite(result)):
        raise GateError("finite", "model produced NaN or Inf on the golden inputs")
    max_err = float(np.max(np.abs(result.astype(np.float64) - golden.outputs)))
    if not np.allclose(
        result, golden.outputs, atol=manifest.golden_atol, rtol=manifest.golden_rtol
    ):
        raise GateError(
            "golden",
            f"max abs error {max_err:.3g} exceeds atol {manifest.golden_atol} / rtol "
            f"{manifest.golden_rtol}",
        )
    return max_err


def check_budgets(latency: LatencyStats, peak_rss_mb: float, profile: DeviceProfile) -> None:
    if latency.p95_ms > profile.latency_budget_ms:
        raise GateError(
            "latency",
            f"p95 {latency.p95_ms:.3f} ms exceeds the profile's {profile.latency_budget_ms} ms",
        )
    if peak_rss_mb > profile.memory_budget_mb:
        raise GateError(
            "memory",
            f"peak RSS {peak_rss_mb:.1f} MB exceeds the profile's {profile.memory_budget_mb} MB",
        )
