"""Validation gates a model must pass before it may run on a device.

Each gate raises :class:`GateError` with its own name, so a report says exactly which gate
refused the model and why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import GateError
from .protocol import ModelManifest


def check_io(session: ort.InferenceSession, manifest: ModelManifest) -> None:
    """The model's inputs and outputs have the manifest's names, dtypes and ranks."""
    for kind, actual, expected in (
        ("input", session.get_inputs(), manifest.inputs),
        ("output", session.get_outputs(), manifest.outputs),
    ):
        got = [(a.name, _numpy_dtype(a.type), len(a.shape)) for a in actual]
        want = [(s.name, s.dtype, len(s.shape)) for s in expected]
        if got != want:
            raise GateError("io", f"{kind}s are {got}, manifest says {want}")


def _numpy_dtype(onnx_type: str) -> str:
    mapping = {
        "tensor(float)": "float32",
        "tensor(float16)": "float16",
        "tensor(double)": "float64",
    }
    return mapping.get(onnx_type, onnx_type.removeprefix("tensor(").removesuffix(")"))


def load_golden(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the golden ``inputs``/``outputs`` arrays; pickled objects are refused."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return data["inputs"], data["outputs"]
    except Exception as exc:
        raise GateError(
            "golden", f"{path.name} is not a golden npz with inputs/outputs: {exc}"
        ) from exc


def check_golden(
    session: ort.InferenceSession, inputs: np.ndarray, outputs: np.ndarray, manifest: ModelManifest
) -> float:
    """Golden inputs reproduce golden outputs within tolerance; returns the max abs error."""
    result = session.run(None, {session.get_inputs()[0].name: inputs})[0]
    if result.shape != outputs.shape:
        raise GateError("golden", f"output shape {result.shape}, golden {outputs.shape}")
    if not np.all(np.isfinite(result)):
        raise GateError("finite", "model produced NaN or Inf on the golden inputs")
    max_err = float(np.max(np.abs(result.astype(np.float64) - outputs)))
    if not np.allclose(result, outputs, atol=manifest.golden_atol, rtol=manifest.golden_rtol):
        raise GateError(
            "golden",
            f"max abs error {max_err:.3g} exceeds atol {manifest.golden_atol} / rtol "
            f"{manifest.golden_rtol}",
        )
    return max_err
