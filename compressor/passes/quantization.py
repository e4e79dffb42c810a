"""Quantization passes over ONNX files, all built on ``onnxruntime.quantization``.

- ``quantize_dynamic``: int8/uint8 weights, activations quantized per call. Restricting it to
  MatMul/Gemm (``ops="matmul"``) matters on small CNNs: dynamic Conv becomes ConvInteger and
  runs ~3x slower than fp32 (field notes).
- ``quantize_static``: QDQ graph calibrated on the task's training inputs (MinMax, Entropy or
  Percentile), symmetric or asymmetric, per-tensor or per-channel, int8 or uint8 activations.
  The reasons behind the defaults are in :mod:`edgeloop.compressor.quantize`.
- ``quantize_int4``: 4-bit block-wise weight-only MatMul (``MatMulNBits``), for MatMul-heavy
  models; onnxruntime dequantizes blocks on the fly.

Each pass records the weight error it introduced (MSE and max-abs of dequantized weights
against the input model's float weights) in the handle's notes, for the report.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import onnx
from onnx import numpy_helper

from edgeloop.compressor.passes.base import OnnxModel, Pass, PassConfig, PassContext, searchable

MATMUL_OPS = ["MatMul", "Gemm"]


class QuantizeDynamicConfig(PassConfig):
    weight_type: Literal["int8", "uint8"] = searchable("int8", ["uint8"], "weight integer type")
    per_channel: bool = searchable(True, [False], "one scale per output channel")
    ops: Literal["matmul", "all"] = searchable(
        "matmul", ["all"], "quantize MatMul/Gemm only, or every supported op (Conv too)"
    )
    reduce_range: bool = searchable(False, [True], "7-bit weights (for CPUs without VNNI)")


class QuantizeDynamic(Pass):
    name = "quantize_dynamic"
    input_kind = "onnx"
    output_kind = "onnx"
    Config: ClassVar = QuantizeDynamicConfig
    summary = "int8 weights, activations quantized at run time"

    def run(self, model: OnnxModel, config: QuantizeDynamicConfig, ctx: PassContext) -> OnnxModel:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out = ctx.work_dir / "model.onnx"
        quantize_dynamic(
            str(model.path),
            str(out),
            weight_type=QuantType.QInt8 if config.weight_type == "int8" else QuantType.QUInt8,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            op_types_to_quantize=MATMUL_OPS if config.ops == "matmul" else None,
        )
        return OnnxModel(out, model.notes | weight_error(model.path, out))


class QuantizeStaticConfig(PassConfig):
    calibrate_method: Literal["minmax", "entropy", "percentile"] = searchable(
        "minmax", ["entropy", "percentile"], "how activation ranges are calibrated"
    )
    activation_type: Literal["int8", "uint8"] = searchable("int8", ["uint8"], "activation type")
    per_channel: bool = searchable(True, [False], "one weight scale per output channel")
    symmetric_activations: bool = searchable(False, [True], "zero point fixed at 0")
    symmetric_weights: bool = True
    reduce_range: bool = searchable(
        True, [False], "7-bit weights: exact on AVX2 without VNNI, where 8-bit saturates"
    )
    keep_input_conv_fp32: bool = searchable(
        True, [False], "leave a Conv fed by the graph input in fp32 (faster at batch 1)"
    )
    float_outputs: bool = True
    calibration_samples: int = searchable(200, [50, 500], "batch-1 calibration feeds", ge=1)


class QuantizeStatic(Pass):
    name = "quantize_static"
    input_kind = "onnx"
    output_kind = "onnx"
    Config: ClassVar = QuantizeStaticConfig
    summary = "int8 QDQ with calibrated activation ranges"

    def run(self, model: OnnxModel, config: QuantizeStaticConfig, ctx: PassContext) -> OnnxModel:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from edgeloop.compressor.quantize import input_convs

        feeds = ctx.task.calibration_feeds(config.calibration_samples)

        class Feeds(CalibrationDataReader):
            def __init__(self) -> None:
                self.rewind()

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self._iter, None)

            def rewind(self) -> None:
                self._iter = iter(feeds)

        method = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[config.calibrate_method]
        out = ctx.work_dir / "model.onnx"
        extra: dict[str, object] = {
            "ActivationSymmetric": config.symmetric_activations,
            "WeightSymmetric": config.symmetric_weights,
        }
        if config.float_outputs:
            extra["OpTypesToExcludeOutputQuantization"] = ["Gemm", "MatMul"]
        with tempfile.TemporaryDirectory(prefix="edgeloop-qstatic-") as scratch:
            prepared = Path(scratch) / "prepared.onnx"
            quant_pre_process(str(model.path), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(out),
                Feeds(),
                quant_format=QuantFormat.QDQ,
                per_channel=config.per_channel,
                reduce_range=config.reduce_range,
                activation_type=(
                    QuantType.QInt8 if config.activation_type == "int8" else QuantType.QUInt8
                ),
                weight_type=QuantType.QInt8,
                calibrate_method=method,
                nodes_to_exclude=input_convs(prepared) if config.keep_input_conv_fp32 else None,
                extra_options=extra,
            )
        return OnnxModel(out, model.notes | weight_error(model.path, out))


class QuantizeInt4Config(PassConfig):
    block_size: int = searchable(32, [64, 128], "weights per quantization block")
    symmetric: bool = searchable(True, [False], "symmetric blocks (no zero point)")
    accuracy_level: int = searchable(
        0, [4], "MatMulNBits compute type: 0 = default fp32, 4 = int8 activations"
    )


class QuantizeInt4(Pass):
    name = "quantize_int4"
    input_kind = "onnx"
    output_kind = "onnx"
    Config: ClassVar = QuantizeInt4Config
    summary = "4-bit block-wise weight-only MatMul (MatMulNBits)"

    def run(self, model: OnnxModel, config: QuantizeInt4Config, ctx: PassContext) -> OnnxModel:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(
            onnx.load_model(str(model.path)),
            block_size=config.block_size,
            is_symmetric=config.symmetric,
            accuracy_level=config.accuracy_level or None,
        )
        quantizer.process()
        out = ctx.work_dir / "model.onnx"
        quantizer.model.save_model_to_file(str(out), use_external_data_format=False)
        nbits = sum(1 for n in onnx.load_model(str(out)).graph.node if n.op_type == "MatMulNBits")
        return OnnxModel(out, model.notes | {"int4_matmuls": nbits})


def weight_error(float_path: Path, quantized_path: Path) -> dict[str, float]:
    """MSE and max-abs between each float weight and its dequantized counterpart.

    onnxruntime names a quantized weight ``<name>_quantized`` with ``<name>_scale`` and
    ``<name>_zero_point``; per-channel scales run along the axis whose length matches.
    """
    originals = {
        init.name: numpy_helper.to_array(init)
        for init in onnx.load_model(str(float_path)).graph.initializer
        if init.data_type == onnx.TensorProto.FLOAT
    }
    quantized = {
        init.name: numpy_helper.to_array(init)
        for init in onnx.load_model(str(quantized_path)).graph.initializer
    }
    squared, count, worst = 0.0, 0, 0.0
    for name, weight in originals.items():
        q = quantized.get(f"{name}_quantized")
        scale = quantized.get(f"{name}_scale")
        if q is None or scale is None:
            continue
        zero = quantized.get(f"{name}_zero_point", np.zeros_like(scale))
        diff = _closest_dequantization(q, scale, zero, weight) - weight
        squared += float((diff**2).sum())
        count += diff.size
        worst = max(worst, float(np.abs(diff).max()))
    if count == 0:
        return {}
    return {"weight_mse": squared / count, "weight_max_abs": worst}


def _closest_dequantization(
    q: np.ndarray, scale: np.ndarray, zero: np.ndarray, weight: np.ndarray
) -> np.ndarray:
    """Dequantize along the channel axis; a square weight is tried on both axes.

    The per-channel axis depends on the consuming op (MatMul: last, Conv/Gemm: first), which
    a bare initializer does not say; the right axis is the one that reproduces the weight.
    """
    axes: list[int | None]
    if scale.size == 1:
        axes = [None]
    else:
        axes = [a for a, length in enumerate(weight.shape) if length == scale.size]
        if not axes:
            raise ValueError(f"scale of size {scale.size} fits no axis of weight {weight.shape}")
    best: np.ndarray | None = None
    for axis in axes:
        candidate = (q.astype(np.float64) - _along(zero, weight, axis)) * _along(
            scale, weight, axis
        )
        if best is None or np.abs(candidate - weight).max() < np.abs(best - weight).max():
            best = candidate
    assert best is not None
    return best


def _along(values: np.ndarray, weight: np.ndarray, axis: int | None) -> np.ndarray:
    values = values.astype(np.float64)
    if axis is None:
        return values.reshape(())
    shape = [1] * weight.ndim
    shape[axis] = values.size
    return values.reshape(shape)
