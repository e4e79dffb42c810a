"""torch → ONNX: the step every recipe takes once, between torch and onnxruntime passes."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from edgeloop.compressor.passes.base import OnnxModel, Pass, PassConfig, PassContext, TorchModel


class ExportConfig(PassConfig):
    opset: int = Field(default=17, ge=13, le=21, description="ONNX opset for the exporter")


class Export(Pass):
    name = "export"
    input_kind = "torch"
    output_kind = "onnx"
    Config: ClassVar = ExportConfig
    summary = "export the torch model to one self-contained ONNX file"

    def run(self, model: TorchModel, config: ExportConfig, ctx: PassContext) -> OnnxModel:
        from edgeloop.compressor.export import export_model

        path = ctx.work_dir / "model.onnx"
        export_model(model.module, ctx.task.export_spec(), path, opset=config.opset)
        return OnnxModel(path, dict(model.notes))
