"""fp16 weights and compute: half the download, no CPU speed-up (weights are cast back on the
CPU EP, field notes); it pays on GPU execution providers such as a Jetson's CUDA/TensorRT."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnx
from onnx import numpy_helper

from edgeloop.compressor.passes.base import OnnxModel, Pass, PassConfig, PassContext


class Fp16Config(PassConfig):
    keep_io_types: bool = True


class Fp16(Pass):
    name = "fp16"
    input_kind = "onnx"
    output_kind = "onnx"
    Config: ClassVar = Fp16Config
    summary = "convert weights and compute to float16 (inputs/outputs stay float32)"

    def run(self, model: OnnxModel, config: Fp16Config, ctx: PassContext) -> OnnxModel:
        from onnxconverter_common import float16

        source = onnx.load_model(str(model.path))
        converted = float16.convert_float_to_float16(source, keep_io_types=config.keep_io_types)
        out = ctx.work_dir / "model.onnx"
        onnx.save_model(converted, str(out))
        return OnnxModel(out, model.notes | _cast_error(source, converted))


def _cast_error(source: onnx.ModelProto, converted: onnx.ModelProto) -> dict[str, float]:
    halves = {
        i.name: numpy_helper.to_array(i).astype(np.float64)
        for i in converted.graph.initializer
        if i.data_type == onnx.TensorProto.FLOAT16
    }
    diffs = [
        (numpy_helper.to_array(i).astype(np.float64) - halves[i.name]).ravel()
        for i in source.graph.initializer
        if i.name in halves
    ]
    if not diffs:
        return {}
    flat = np.concatenate(diffs)
    return {"weight_mse": float((flat**2).mean()), "weight_max_abs": float(np.abs(flat).max())}
