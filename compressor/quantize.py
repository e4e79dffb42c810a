"""Why the ``quantize_static`` pass defaults are what they are (batch-1 latency, small CNNs).

Why these settings (measured on the digits CNN, 2-core AVX2 host without VNNI, 1 thread):

- Static QDQ, not dynamic: dynamic turns Conv into ConvInteger, ~3x slower than fp32. With QDQ,
  onnxruntime fuses the Q/DQ pairs into QLinearConv/QGemm at session load.
- ``reduce_range`` (7-bit weights): AVX2 without VNNI multiplies u8 x s8 pairs into int16 with
  saturation. With 8-bit weights the fused kernels drifted 3.7 logits from the quantized graph's
  own float semantics and flipped 0.6% of predictions, so outputs depended on the CPU and a
  golden file made here would fail on an ARM or VNNI device. With 7 bits the drift is 1e-5.
- Per-channel weights, signed int8 activations: accuracy equal to per-tensor / uint8 within one
  test image and speed equal within noise; int8 activations suit the ARM targets.
- Gemm outputs are not quantized (``OpTypesToExcludeOutputQuantization``): a hidden Gemm is
  re-quantized after its ReLU anyway and onnxruntime still fuses it into QGemm, while the last
  one then returns float logits instead of logits on a grid of ~0.2, with one node fewer.
- A Conv fed directly by the graph input stays fp32: with one or three input channels its int8
  GEMM has K=9..27 and gains nothing, while quantizing it adds a QuantizeLinear and a layout
  Transpose per call. Keeping it fp32 cost 0.4 KB and moved batch-1 latency from ~7% slower
  than fp32 to parity.
- ``quant_pre_process`` runs first (onnxruntime's recommended step: folds BatchNorm and
  constants, infers shapes), but without symbolic shape inference, which took 3 s here and
  changed nothing for a graph whose only dynamic axis is the batch.
"""

from __future__ import annotations

from pathlib import Path

import onnx

__all__ = ["input_convs"]


def input_convs(model_path: Path) -> list[str]:
    """Names of Conv nodes whose data input is a graph input."""
    graph = onnx.load_model(str(model_path), load_external_data=False).graph
    graph_inputs = {value.name for value in graph.input}
    return [
        node.name
        for node in graph.node
        if node.op_type == "Conv" and node.name and node.input[0] in graph_inputs
    ]
