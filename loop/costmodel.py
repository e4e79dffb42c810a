"""Predict what a candidate model costs on a device profile, before any device runs it.

Three figures per (profile, model): latency (p95 ms, batch 1), peak memory (RSS MB) and energy
per inference (mJ). They start from what the compressor already measured on its own host and
are corrected by a per-profile :class:`Calibration` fitted from the devices' own reports:

- **latency** = host p95 × Σ_k s_k × share_k, where share_k is op class k's share of the
  model's work (:func:`features`) and s_k that class's device/host ratio, so a device whose
  int8 kernels are relatively slower than the host's gets its own ``matmul_int8`` scale. A class
  the profile has no per-class scale for uses the class-wide scale (the median ratio).
- **memory** = host peak RSS + the profile's median offset (the agent process around the model).
- **energy** = predicted latency × threads × watts per busy core: the agent's nominal
  :data:`~edgeloop.agent.sensors.ESTIMATED_WATTS_PER_BUSY_CORE` (0.9 W) until a profile's
  reports carry energy, then the median of what they imply.

Uncalibrated, every scale is 1: the host's own figures, which is what the search used so far.

Invariants: no network, no database. The only I/O is reading an ONNX file (:func:`features`)
and running it on this host (:func:`measure_host`). ``onnx`` and ``onnxruntime`` are imported
inside those two functions, so the server can hold, fit and persist a :class:`CostModel` with
numpy alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeloop.agent.sensors import ESTIMATED_WATTS_PER_BUSY_CORE

if TYPE_CHECKING:
    import onnx

    from edgeloop.agent.golden import Golden
    from edgeloop.agent.protocol import DeviceProfile
    from edgeloop.compressor.search import Trial

__all__ = [
    "OP_CLASSES",
    "Calibration",
    "CostModel",
    "HostMeasurement",
    "ModelFeatures",
    "Observation",
    "Prediction",
    "features",
    "mape",
    "measure_host",
]

OP_CLASSES = (
    "matmul_fp32",
    "matmul_int8",
    "matmul_fp16",
    "conv_fp32",
    "conv_int8",
    "conv_fp16",
    "other",
)
"""Op classes, each counted in multiply-accumulates except ``other`` (output elements)."""

SHRINKAGE = 0.01
"""Weight of the pull of each per-class scale toward the class-wide scale (ridge penalty on
ratios, whose rows are op-class shares in [0, 1]). Small enough that well-posed synthetic data
is recovered to ~1%, large enough that two classes always seen in the same proportions split
their ratio evenly instead of arbitrarily."""

_MATMUL_OPS = {
    "MatMul",
    "Gemm",
    "MatMulInteger",
    "QLinearMatMul",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "FusedMatMul",
    "QGemm",
}
_INT8_MATMUL_OPS = {
    "MatMulInteger",
    "QLinearMatMul",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QGemm",
}
_CONV_OPS = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "FusedConv"}
_INT8_CONV_OPS = {"ConvInteger", "QLinearConv"}
_FREE_OPS = {
    "Constant",
    "Shape",
    "Size",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Dropout",
}
"""Ops that move no data at inference time (metadata or views), so they count as no work."""

# Index of the weight input of each matmul/conv op; the activation is input 0 for all of them.
_WEIGHT_INPUT = {"QLinearMatMul": 3, "QLinearConv": 3, "QGemm": 3}
_INT8_TYPES = {"int8", "uint8"}


# --------------------------------------------------------------------------- features


@dataclass(frozen=True)
class ModelFeatures:
    """Static cost features of one ONNX model at batch 1.

    ``macs`` maps op class (:data:`OP_CLASSES`) to multiply-accumulates, except ``other``,
    which counts output elements of every remaining op; only classes with work appear.
    ``size_bytes`` includes external data files.
    """

    macs: dict[str, int]
    parameters: int
    size_bytes: int
    dominant: str

    @property
    def total_work(self) -> int:
        return sum(self.macs.values())

    def shares(self) -> dict[str, float]:
        """Each op class's fraction of :attr:`total_work` (empty for a model with no work)."""
        total = self.total_work
        return {k: v / total for k, v in self.macs.items() if v} if total else {}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelFeatures:
        return cls(
            macs={str(k): int(v) for k, v in data["macs"].items()},
            parameters=int(data["parameters"]),
            size_bytes=int(data["size_bytes"]),
            dominant=str(data["dominant"]),
        )


def features(model_path: Path, dims: Mapping[str, int] | None = None) -> ModelFeatures:
    """Count the work of ``model_path`` per op class, statically, at batch 1.

    Shapes come from onnx shape inference (with data propagation) after every symbolic input
    dimension is set: to ``dims[name]`` when given (e.g. ``{"sequence": 128}`` for a
    transformer), to 1 otherwise (batch 1). A dimension still unknown counts as 1, so models
    whose shapes inference cannot follow (e.g. attention's head size behind computed
    Reshapes) are under-counted, never refused. Weights in external files are
    not read (only their shapes), but their files count in ``size_bytes``. Nodes inside
    control-flow subgraphs (If, Loop, Scan) are not counted.

    A MatMul/Gemm/Conv is int8 when it is an integer op (MatMulInteger, QLinearMatMul,
    DynamicQuantizeMatMul, ConvInteger, ...) or when its weight comes from a
    DequantizeLinear of an int8/uint8 tensor (QDQ); fp16 when its weight or activation is
    float16; fp32 otherwise.

    Raises:
        FileNotFoundError: ``model_path`` does not exist.
        ValueError: the file is not an ONNX model.
    """
    import onnx

    model_path = Path(model_path)
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{model_path} is not an ONNX model: {exc}") from exc
    parameters = sum(math.prod(t.dims) for t in model.graph.initializer)
    size_bytes = model_path.stat().st_size + _external_bytes(model, model_path.parent)
    _pin_symbolic_dims(model, dims or {})
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # inference is best effort: fall back to the declared shapes
        pass
    macs = _count_work(model)
    dominant = max(macs, key=lambda k: (macs[k], k)) if macs else "other"
    return ModelFeatures(macs, parameters, size_bytes, dominant)


def _external_bytes(model: onnx.ModelProto, folder: Path) -> int:
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    locations = {
        ExternalDataInfo(t).location for t in model.graph.initializer if uses_external_data(t)
    }
    return sum((folder / loc).stat().st_size for loc in locations if (folder / loc).exists())


def _pin_symbolic_dims(model: onnx.ModelProto, dims: Mapping[str, int]) -> None:
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = dims.get(dim.dim_param, 1)


def _count_work(model: onnx.ModelProto) -> dict[str, int]:
    from onnx import helper

    graph = model.graph
    shapes: dict[str, list[int]] = {}
    dtypes: dict[str, str] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        if tensor.elem_type:
            dtypes[value.name] = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        if tensor.HasField("shape"):
            shapes[value.name] = [max(d.dim_value, 0) for d in tensor.shape.dim]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
        dtypes[init.name] = helper.tensor_dtype_to_np_dtype(init.data_type).name
    producer = {out: node for node in graph.node for out in node.output}

    def weight_dtype(name: str) -> str | None:
        node = producer.get(name)
        # QDQ: the weight reaches the op through DequantizeLinear (maybe via a Transpose).
        while node is not None and node.op_type in {"Transpose", "Reshape", "Cast"}:
            node = producer.get(node.input[0])
        if node is not None and node.op_type == "DequantizeLinear":
            return dtypes.get(node.input[0])
        return dtypes.get(name)

    # onnxruntime folds nodes computed from constants alone (a QDQ weight's DequantizeLinear)
    # at load time, so they cost nothing per call.
    constant = {init.name for init in graph.initializer}
    work = dict.fromkeys(OP_CLASSES, 0)
    for node in graph.node:
        op = node.op_type
        if all(name in constant for name in node.input if name):
            constant.update(node.output)
        elif op in _MATMUL_OPS or op in _CONV_OPS:
            family = "matmul" if op in _MATMUL_OPS else "conv"
            weight_name = node.input[_WEIGHT_INPUT.get(op, 1)]
            weight = weight_dtype(weight_name)
            activation = dtypes.get(node.input[0])
            if op in _INT8_MATMUL_OPS or op in _INT8_CONV_OPS or weight in _INT8_TYPES:
                precision = "int8"
            elif "float16" in (weight, activation):
                precision = "fp16"
            else:
                precision = "fp32"
            counted = _matmul_macs(node, shapes) if family == "matmul" else _conv_macs(node, shapes)
            work[f"{family}_{precision}"] += counted
        elif op not in _FREE_OPS:
            work["other"] += sum(_elements(shapes.get(out, [])) for out in node.output if out)
    return {k: v for k, v in work.items() if v}


def _matmul_macs(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int:
    """Output elements × the reduced dimension; an unknown dimension (0) counts as 1."""
    a = shapes.get(node.input[0])
    b = shapes.get(node.input[_WEIGHT_INPUT.get(node.op_type, 1)])
    if not a or not b:
        return 0
    if node.op_type in {"Gemm", "QGemm"}:
        attrs = {at.name: at.i for at in node.attribute}
        m, k = (a[1], a[0]) if attrs.get("transA") else (a[0], a[1])
        n = b[0] if attrs.get("transB") else b[1]
        return max(m, 1) * max(k, 1) * max(n, 1)
    k = a[-1] or (b[-2] if len(b) > 1 else b[0]) or 1
    out = shapes.get(node.output[0])
    if not out or not all(out):
        batch_a, batch_b = a[:-2], b[:-2]
        width = max(len(batch_a), len(batch_b))
        batch_a = [1] * (width - len(batch_a)) + batch_a
        batch_b = [1] * (width - len(batch_b)) + batch_b
        rows = [a[-2]] if len(a) > 1 else []
        cols = [b[-1]] if len(b) > 1 else []
        out = [max(x, y) for x, y in zip(batch_a, batch_b, strict=True)] + rows + cols
    return math.prod(max(d, 1) for d in out) * k


def _conv_macs(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int:
    weight = shapes.get(node.input[_WEIGHT_INPUT.get(node.op_type, 1)])
    if not weight:
        return 0
    per_output = _elements(weight[1:])
    if node.op_type == "ConvTranspose":  # every input element scatters over the kernel
        return _elements(shapes.get(node.input[0], [])) * per_output
    return _elements(shapes.get(node.output[0], [])) * per_output


def _elements(shape: Sequence[int]) -> int:
    """Elements of a tensor of ``shape``, an unknown dimension (0) counting as 1."""
    return math.prod(max(d, 1) for d in shape)


# --------------------------------------------------------------------------- host figures


@dataclass(frozen=True)
class HostMeasurement:
    """The model timed on the compressor host, batch 1, at the profile's thread count."""

    p50_ms: float
    p95_ms: float
    peak_rss_mb: float
    threads: int

    @classmethod
    def from_trial(cls, trial: Trial, threads: int) -> HostMeasurement:
        """Reuse what the search measured for a trial (it times at the profile's threads).

        Raises:
            ValueError: the trial failed or lacks latency or memory figures.
        """
        if trial.latency_p50_ms is None or trial.latency_p95_ms is None:
            raise ValueError(f"trial {trial.label} has no latency: it failed or was not timed")
        if trial.peak_rss_mb is None:
            raise ValueError(f"trial {trial.label} has no peak RSS; measure it with measure_host")
        return cls(trial.latency_p50_ms, trial.latency_p95_ms, trial.peak_rss_mb, threads)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HostMeasurement:
        return cls(
            float(data["p50_ms"]),
            float(data["p95_ms"]),
            float(data["peak_rss_mb"]),
            int(data["threads"]),
        )


def measure_host(
    model_path: Path,
    inputs: Mapping[str, np.ndarray] | Golden,
    profile: DeviceProfile,
    runs: int = 200,
) -> HostMeasurement:
    """Time ``model_path`` on this host the way a device of ``profile`` would run it.

    Latency comes from :func:`edgeloop.agent.runtime.measure` (the agent's own timing loop) on
    a session opened by :func:`~edgeloop.agent.runtime.open_session`; ``inputs`` is one batch-1
    feed or a golden set to cycle through. Peak RSS comes from a fresh onnxruntime-only process
    (:func:`edgeloop.compressor.evaluate.peak_memory_mb`), as the search measures it. When the
    search already timed a trial, use :meth:`HostMeasurement.from_trial` instead.
    """
    from edgeloop.agent.golden import Golden
    from edgeloop.agent.runtime import measure, open_session
    from edgeloop.compressor.evaluate import peak_memory_mb

    golden = inputs if isinstance(inputs, Golden) else Golden(dict(inputs), np.empty(0))
    session = open_session(Path(model_path), profile)
    stats = measure(session, golden, runs).latency
    rss = peak_memory_mb(Path(model_path), golden.sample(0), profile.cpu_threads)
    return HostMeasurement(stats.p50_ms, stats.p95_ms, rss, profile.cpu_threads)


# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Observation:
    """One model as the host measured it and as a device of the profile reported it."""

    features: ModelFeatures
    host: HostMeasurement
    measured_p95_ms: float
    measured_peak_rss_mb: float | None = None
    measured_energy_mj: float | None = None
    measured_p50_ms: float | None = None
    """The device's median; when given, the latency ratio is taken on medians (see
    :meth:`ratio`)."""

    def ratio(self) -> float:
        """Device time over host time for this model.

        On medians when the device sent one: a p95 over 100-200 calls on a shared host moved
        by 10-60% between identical runs here, the median by a few percent, and one noisy
        report would otherwise skew every prediction for the class. Predictions still scale
        the host's p95, so they remain p95 predictions.
        """
        if self.measured_p50_ms is not None and self.host.p50_ms > 0:
            return self.measured_p50_ms / self.host.p50_ms
        return self.measured_p95_ms / self.host.p95_ms


@dataclass(frozen=True)
class Calibration:
    """Device/host corrections for one profile, and how well they fit.

    Errors are median absolute percentage errors as fractions (0.05 is 5%): ``latency_error``
    in sample, ``latency_loo_error`` leave-one-out (None below two observations), which is the
    honest one: with as many parameters as observations the in-sample error is ~0.
    """

    profile: str
    threads: int
    class_scale: float
    scales: dict[str, float] = field(default_factory=dict)
    memory_offset_mb: float = 0.0
    watts_per_core: float = ESTIMATED_WATTS_PER_BUSY_CORE
    energy_fitted: bool = False
    observations: int = 0
    latency_error: float | None = None
    latency_loo_error: float | None = None
    memory_error: float | None = None
    energy_error: float | None = None

    def latency_scale(self, shares: Mapping[str, float]) -> float:
        """Σ_k s_k × share_k, with the class-wide scale for classes without their own."""
        if not shares:
            return self.class_scale
        return sum(self.scales.get(k, self.class_scale) * share for k, share in shares.items())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calibration:
        return cls(**{**data, "scales": dict(data.get("scales", {}))})


@dataclass(frozen=True)
class Prediction:
    latency_p95_ms: float
    peak_rss_mb: float
    energy_mj: float
    basis: str


class CostModel:
    """Predictions per profile; calibrated where the profile's devices have reported.

    Pure: holds calibrations, fits them from :class:`Observation` lists and predicts; the
    server persists it with :meth:`to_json` / :meth:`from_json`.
    """

    SCHEMA = 1

    def __init__(self, calibrations: Iterable[Calibration] = ()) -> None:
        self.calibrations: dict[str, Calibration] = {c.profile: c for c in calibrations}

    def predict(
        self, profile_name: str, features: ModelFeatures, host: HostMeasurement
    ) -> Prediction:
        """Latency, memory and energy of the model on ``profile_name``.

        Uncalibrated: the host figures themselves (scale 1, no memory offset) and the nominal
        watts per busy core. ``basis`` says which, in words.

        Raises:
            ValueError: the profile is calibrated at another thread count than ``host``.
        """
        calibration = self.calibrations.get(profile_name)
        if calibration is None:
            latency = host.p95_ms
            energy = latency * host.threads * ESTIMATED_WATTS_PER_BUSY_CORE
            basis = (
                f"uncalibrated for '{profile_name}': host p95 at {host.threads} threads, "
                f"host peak RSS, energy at a nominal {ESTIMATED_WATTS_PER_BUSY_CORE} W per core"
            )
            return Prediction(latency, host.peak_rss_mb, energy, basis)
        if calibration.threads != host.threads:
            raise ValueError(
                f"'{profile_name}' is calibrated on host timings at {calibration.threads} "
                f"threads, this one is at {host.threads}: measure at {calibration.threads}"
            )
        shares = features.shares()
        latency = host.p95_ms * calibration.latency_scale(shares)
        basis = _basis(profile_name, calibration, shares)
        return Prediction(
            latency,
            host.peak_rss_mb + calibration.memory_offset_mb,
            latency * host.threads * calibration.watts_per_core,
            basis,
        )

    def calibrate(self, profile_name: str, observations: Sequence[Observation]) -> Calibration:
        """Fit ``profile_name``'s calibration from all its observations, replacing any earlier.

        Latency works on ratios r_i = measured p95 / host p95, so every model weighs alike
        whatever its size. The class-wide scale is the median ratio. With one observation that
        is the whole fit. With n ≥ 2, per-class scales are fitted for at most n op classes
        (those with the largest summed share; the rest stay at the class-wide scale) by
        non-negative least squares of r_i ≈ Σ_k s_k share_ik, regularised toward the
        class-wide scale with weight :data:`SHRINKAGE`. Memory offset: median of
        (measured − host) peak RSS over observations that have it. Watts per core: median of
        measured energy / (measured p95 × threads) over observations that have energy, else
        the nominal constant.

        Raises:
            ValueError: no observations, non-positive latencies, or host timings taken at
                different thread counts.
        """
        if not observations:
            raise ValueError(f"no observations to calibrate '{profile_name}' with")
        threads = {o.host.threads for o in observations}
        if len(threads) != 1:
            raise ValueError(
                f"observations for '{profile_name}' mix host thread counts {sorted(threads)}; "
                "time every model at the profile's thread count"
            )
        if any(o.host.p95_ms <= 0 or o.measured_p95_ms <= 0 for o in observations):
            raise ValueError("every observation needs a positive host and measured p95 latency")
        class_scale, scales = _fit_latency(observations)
        fitted = Calibration(profile_name, threads.pop(), class_scale, scales)
        latency_error = mape(
            [o.host.p95_ms * fitted.latency_scale(o.features.shares()) for o in observations],
            [o.measured_p95_ms for o in observations],
        )
        loo_error = None
        if len(observations) >= 2:
            held_out = []
            for i, o in enumerate(observations):
                rest_scale, rest_scales = _fit_latency([*observations[:i], *observations[i + 1 :]])
                partial = replace(fitted, class_scale=rest_scale, scales=rest_scales)
                held_out.append(o.host.p95_ms * partial.latency_scale(o.features.shares()))
            loo_error = mape(held_out, [o.measured_p95_ms for o in observations])

        # (host, device) peak RSS, and (device p95 × threads, device energy), where reported.
        memory = [
            (o.host.peak_rss_mb, o.measured_peak_rss_mb)
            for o in observations
            if o.measured_peak_rss_mb is not None
        ]
        offset, memory_error = 0.0, None
        if memory:
            offset = float(np.median([device - on_host for on_host, device in memory]))
            memory_error = mape([h + offset for h, _ in memory], [d for _, d in memory])

        energy = [
            (o, o.measured_p95_ms * o.host.threads, o.measured_energy_mj)
            for o in observations
            if o.measured_energy_mj is not None
        ]
        watts, energy_error = ESTIMATED_WATTS_PER_BUSY_CORE, None
        if energy:
            watts = float(np.median([mj / core_ms for _, core_ms, mj in energy]))
            energy_error = mape(
                [
                    o.host.p95_ms
                    * fitted.latency_scale(o.features.shares())
                    * o.host.threads
                    * watts
                    for o, _, _ in energy
                ],
                [mj for _, _, mj in energy],
            )

        calibration = replace(
            fitted,
            memory_offset_mb=offset,
            watts_per_core=watts,
            energy_fitted=bool(energy),
            observations=len(observations),
            latency_error=latency_error,
            latency_loo_error=loo_error,
            memory_error=memory_error,
            energy_error=energy_error,
        )
        self.calibrations[profile_name] = calibration
        return calibration

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.SCHEMA,
            "calibrations": [c.to_json() for c in self.calibrations.values()],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CostModel:
        """Raises ValueError for a schema this code does not know."""
        if data.get("schema") != cls.SCHEMA:
            raise ValueError(
                f"cost model schema {data.get('schema')!r} is not {cls.SCHEMA}; recalibrate"
            )
        return cls(Calibration.from_json(c) for c in data["calibrations"])


def _basis(profile_name: str, calibration: Calibration, shares: Mapping[str, float]) -> str:
    parts = [f"calibrated for '{profile_name}' on {calibration.observations} reports"]
    if calibration.scales:
        parts.append("per-class scales for " + ", ".join(sorted(calibration.scales)))
        fallback = sorted(k for k in shares if k not in calibration.scales)
        if fallback:
            parts.append(f"class-wide {calibration.class_scale:.3g} for {', '.join(fallback)}")
    else:
        parts.append(f"one class-wide scale {calibration.class_scale:.3g}")
    if calibration.latency_loo_error is not None:
        parts.append(f"latency error {calibration.latency_loo_error:.0%} leave-one-out")
    source = "fitted" if calibration.energy_fitted else "nominal"
    parts.append(f"energy at {calibration.watts_per_core:.3g} W per core ({source})")
    return "; ".join(parts)


def _fit_latency(observations: Sequence[Observation]) -> tuple[float, dict[str, float]]:
    ratios = np.array([o.ratio() for o in observations])
    class_scale = float(np.median(ratios))
    if len(observations) < 2:
        return class_scale, {}
    shares = [o.features.shares() for o in observations]
    totals: dict[str, float] = {}
    for row in shares:
        for k, v in row.items():
            totals[k] = totals.get(k, 0.0) + v
    if not totals:
        return class_scale, {}
    fitted = sorted(totals, key=lambda k: (-totals[k], k))[: len(observations)]
    design = np.array([[row.get(k, 0.0) for k in fitted] for row in shares])
    rest = np.array([sum(v for k, v in row.items() if k not in fitted) for row in shares])
    target = ratios - class_scale * rest
    pull = math.sqrt(SHRINKAGE)
    solution = _nnls(
        np.vstack([design, pull * np.eye(len(fitted))]),
        np.concatenate([target, np.full(len(fitted), pull * class_scale)]),
    )
    return class_scale, {k: float(s) for k, s in zip(fitted, solution, strict=True)}


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin ‖a x − b‖ subject to x ≥ 0, by trying every support.

    Hand-written because the server, which calibrates, installs without scipy; with at most
    seven op classes there are ≤ 128 supports, and the optimum's support is one of them (on its
    support the optimum is the unconstrained least-squares solution).
    """
    columns = a.shape[1]
    best, best_cost = np.zeros(columns), float(np.sum(b**2))
    for size in range(1, columns + 1):
        for support in combinations(range(columns), size):
            idx = list(support)
            x_support, *_ = np.linalg.lstsq(a[:, idx], b, rcond=None)
            if np.any(x_support < 0):
                continue
            x = np.zeros(columns)
            x[idx] = x_support
            cost = float(np.sum((a @ x - b) ** 2))
            if cost < best_cost:
                best, best_cost = x, cost
    return best


def mape(predicted: Sequence[float], actual: Sequence[float]) -> float:
    """Median absolute percentage error, as a fraction (0.05 is 5%): median |p − a| / a.

    Raises:
        ValueError: lengths differ, nothing to compare, or an actual value is not positive.
    """
    if len(predicted) != len(actual) or not actual:
        raise ValueError(f"mape needs equal, non-empty lists ({len(predicted)} vs {len(actual)})")
    p, a = np.asarray(predicted, dtype=float), np.asarray(actual, dtype=float)
    if np.any(a <= 0):
        raise ValueError("mape needs positive actual values")
    return float(np.median(np.abs(p - a) / a))
