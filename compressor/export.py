"""PyTorch to ONNX, as one self-contained file.

Devices fetch and hash exactly one artifact per model, so weights must live inside the
``.onnx`` file: the torch 2.13 dynamo exporter writes a ``.onnx.data`` sidecar even for tiny
models, which is why this uses the TorchScript exporter (``dynamo=False``) and still re-saves
inline if a sidecar appears.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch

from edgeloop.compressor.task import ExportSpec

__all__ = ["BATCH_DIM", "OPSET", "export_model"]

OPSET = 17
BATCH_DIM = "batch"


def export_model(
    model: torch.nn.Module, spec: ExportSpec, path: Path, *, opset: int = OPSET
) -> Path:
    """Export a model with any number of inputs as described by a task's :class:`ExportSpec`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    with torch.no_grad():
        torch.onnx.export(
            model,
            spec.example_inputs,
            str(path),
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes,
            opset_version=opset,
            dynamo=False,
        )
    inline_sidecars(path)
    onnx.checker.check_model(str(path))
    return path


def inline_sidecars(path: Path) -> None:
    """Fold weights an exporter wrote beside ``path`` into it: devices fetch one file."""
    sidecars = [p for p in path.parent.iterdir() if p.name.startswith(path.name + ".")]
    if sidecars:
        inline = onnx.load_model(str(path), load_external_data=True)
        for sidecar in sidecars:
            sidecar.unlink()
        onnx.save_model(inline, str(path), save_as_external_data=False)
