"""Validation gates a model must pass before it may serve on a device.

Each gate raises :class:`GateError` with its own name, so a report says exactly which gate
refused the model and why. Gates, in the order they run (cheap and certain first):

``size`` (file within the profile's size budget) → ``loads`` (onnxruntime opens it) →
``opset`` (its opset/IR version is one this onnxruntime runs) → ``io`` (input/output names,
dtypes and shapes match the manifest) → ``golden`` (golden inputs give the golden outputs
within tolerance) → ``finite`` (no NaN/Inf) → ``latency`` (p95 within budget) → ``memory``
(peak RSS within budget).

The budgets come from :func:`effective_profile`: the device's own configured profile, which a
desired state may tighten but never relax. Everything here is pure (no disk, no network); the
child process of :mod:`edgeloop.agent.sandbox` runs the gates that need onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable
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

BUDGET_GATES = (Gate.LATENCY, Gate.MEMORY, Gate.SIZE)
"""The gates that compare a measurement with a profile budget (``report.budget_detail``)."""

_OPSET_HINTS = ("opset", "ir version", "ir_version", "onnx runtime only guarantees")


def effective_profile(own: DeviceProfile, asked: DeviceProfile) -> DeviceProfile:
    """The profile an update is judged by: the device's own, tightened by what ``asked`` says.

    A desired state arrives over the network, while the device's configured profile is what
    its owner knows the hardware affords; a message that could relax it would let any
    publisher commit a model the device cannot run. So each budget is the stricter of the
    two: the smaller latency, memory and size budget and thread count, the higher
    ``min_accuracy``, and only the execution providers both allow (in ``asked``'s order; the
    device's own list when they share none, as a profile needs one). Name and arch stay the
    device's own.
    """
    providers = [p for p in asked.execution_providers if p in own.execution_providers]
    return own.model_copy(
        update={
            "cpu_threads": min(own.cpu_threads, asked.cpu_threads),
            "memory_budget_mb": min(own.memory_budget_mb, asked.memory_budget_mb),
            "latency_budget_ms": min(own.latency_budget_ms, asked.latency_budget_ms),
            "model_size_budget_kb": _stricter(
                own.model_size_budget_kb, asked.model_size_budget_kb, min
            ),
            "min_accuracy": _stricter(own.min_accuracy, asked.min_accuracy, max),
            "execution_providers": providers or list(own.execution_providers),
        }
    )


def _stricter(
    own: float | None, asked: float | None, pick: Callable[[float, float], float]
) -> float | None:
    """None is no limit, so the other side's limit, if any, is the stricter one."""
    if own is None or asked is None:
        return asked if own is None else own
    return pick(own, asked)


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


def budget_of(profile: DeviceProfile, gate: Gate) -> float | None:
    """The profile's budget a budget gate compares with (None: no such budget, or no limit)."""
    budgets = {
        Gate.LATENCY: profile.latency_budget_ms,
        Gate.MEMORY: profile.memory_budget_mb,
        Gate.SIZE: profile.model_size_budget_kb,
    }
    return budgets.get(gate)


def budget_verdicts(
    profile: DeviceProfile,
    *,
    latency: LatencyStats | None,
    peak_rss_mb: float,
    size_bytes: int,
) -> dict[Gate, bool]:
    """Each budget gate on its own (True: within), for ``report.budget_detail``.

    Every budget is judged even when an earlier one already refuses the model: the server
    calibrates its picture of the device class from each verdict, and a model over two
    budgets must not read as over only the first. Latency is left out when it was never
    measured.
    """
    size_budget = profile.model_size_budget_kb
    verdicts: dict[Gate, bool] = {}
    if latency is not None:
        verdicts[Gate.LATENCY] = latency.p95_ms <= profile.latency_budget_ms
    verdicts[Gate.MEMORY] = peak_rss_mb <= profile.memory_budget_mb
    verdicts[Gate.SIZE] = size_budget is None or size_bytes <= size_budget * 1024
    return verdicts


def check_budgets(latency: LatencyStats, peak_rss_mb: float, profile: DeviceProfile) -> None:
    """Raises GateError for the first of latency and memory over the profile's budget."""
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
