"""Distillation into a narrower student: the input model teaches a fresh, smaller network.

Pruning and low-rank keep the teacher's architecture and trim it; distillation starts from a
smaller architecture the task knows how to build (``Task.student``), so it can reach shapes
that trimming cannot, at the price of a full training run.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from edgeloop.compressor.passes.base import (
    Pass,
    PassConfig,
    PassContext,
    RecipeError,
    TorchModel,
    searchable,
)
from edgeloop.compressor.passes.prune import parameter_count

__all__ = ["Distill", "DistillConfig"]


class DistillConfig(PassConfig):
    width: float = searchable(
        0.5, [0.25, 0.5, 0.75], "student width as a fraction of the teacher's", gt=0, le=1
    )
    temperature: float = searchable(
        4.0, [2.0, 4.0, 8.0], "softmax temperature of the soft targets (classification)", gt=0
    )
    alpha: float = Field(
        default=0.7, ge=0, le=1, description="weight of the teacher's outputs vs ground truth"
    )
    epochs: int = Field(default=30, ge=1, description="passes over the task's training inputs")
    lr: float = Field(default=1e-3, gt=0, description="Adam learning rate")
    batch_size: int = Field(default=64, ge=1, description="samples per step")


class Distill(Pass):
    """Train ``task.student(width)`` to reproduce the input model on the task's training data.

    The teacher is the input model, not ``task.teacher()``, so distillation can follow other
    passes in a recipe. Ground truth joins the loss where the task has it (weight
    ``1 - alpha``); a task's own ``distill_loss`` replaces the default for its kind.
    """

    name = "distill"
    input_kind = "torch"
    output_kind = "torch"
    Config: ClassVar = DistillConfig
    summary = "train a narrower student on the input model's outputs"

    def run(self, model: TorchModel, config: DistillConfig, ctx: PassContext) -> TorchModel:
        from edgeloop.compressor.training import distill

        task = ctx.task
        student = task.student(config.width)
        if student is None:
            raise RecipeError(
                f"pass {self.name!r}: task {task.name!r} has no student family "
                "(Task.student returns None); implement Task.student(width) or drop this pass"
            )
        distill(
            student,
            model.module,
            task.train_inputs(),
            kind=task.kind,
            targets=task.train_targets(),
            epochs=config.epochs,
            lr=config.lr,
            batch_size=config.batch_size,
            temperature=config.temperature,
            alpha=config.alpha,
            seed=ctx.seed,
            loss=task.distill_loss(),
        )
        notes = model.notes | {
            "params_before": model.notes.get("params_before", parameter_count(model.module)),
            "params_after": parameter_count(student),
            "student_width": config.width,
        }
        return TorchModel(student, notes)
