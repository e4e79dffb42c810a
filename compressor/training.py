"""One small training loop for every pass that trains: fine-tuning after pruning or low-rank, and
distillation into a narrower student.

They all do the same thing: make a student reproduce a fixed teacher's outputs on the task's
training inputs, optionally helped by ground truth. Keeping that in one place means one set of
loss conventions (per task kind) and one notion of determinism for the whole compressor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from edgeloop.compressor.task import Task, TaskKind

__all__ = ["LossFn", "distill", "first_tensor", "kind_loss", "recover"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(student_output, teacher_output)``: a task's own distillation loss."""

TEACHER_CACHE_BYTES = 1 << 30
"""Teacher outputs above this size are recomputed per batch instead of held in memory."""


def first_tensor(output: Any) -> torch.Tensor:
    """The tensor a model's output stands for: itself, or the first tensor of a tuple, list,
    dict or HuggingFace ``ModelOutput`` (``last_hidden_state`` / ``logits`` come first there).
    """
    if isinstance(output, torch.Tensor):
        return output
    values: Sequence[Any] | None = None
    if isinstance(output, Mapping):
        values = list(output.values())
    elif isinstance(output, Sequence):
        values = output
    for value in values or ():
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(
        f"cannot find a tensor in the model output of type {type(output).__name__}; make the "
        "model return a tensor, a tuple of tensors or a ModelOutput"
    )


def kind_loss(
    kind: TaskKind, *, temperature: float, alpha: float
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """The default loss for a task kind, as ``loss(student, teacher, targets_or_None)``.

    Classification uses Hinton's soft targets (T² keeps the gradient scale independent of T);
    regression and embeddings have no "soft" form, so the teacher's output is the target itself.
    Ground truth, when given, pulls with weight ``1 - alpha``.
    """
    if kind == "classification":

        def classification(
            student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor | None
        ) -> torch.Tensor:
            soft = functional.kl_div(
                functional.log_softmax(student / temperature, dim=-1),
                functional.log_softmax(teacher / temperature, dim=-1),
                reduction="batchmean",
                log_target=True,
            ) * (temperature**2)
            if targets is None:
                return soft
            return alpha * soft + (1 - alpha) * functional.cross_entropy(student, targets)

        return classification
    if kind == "regression":

        def regression(
            student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor | None
        ) -> torch.Tensor:
            loss = functional.mse_loss(student, teacher)
            if targets is None:
                return loss
            return loss + (1 - alpha) * functional.mse_loss(student, targets.view_as(student))

        return regression
    if kind == "embedding":

        def embedding(
            student: torch.Tensor, teacher: torch.Tensor, _targets: torch.Tensor | None
        ) -> torch.Tensor:
            cosine = functional.cosine_similarity(student, teacher, dim=-1)
            return (1 - cosine).mean() + functional.mse_loss(student, teacher)

        return embedding
    raise ValueError(
        f"unknown task kind {kind!r}; expected classification, regression or embedding"
    )


@torch.no_grad()
def _teacher_outputs(
    teacher: nn.Module, inputs: tuple[torch.Tensor, ...], batch_size: int
) -> torch.Tensor | None:
    """All teacher outputs, or None when they would not fit in :data:`TEACHER_CACHE_BYTES`."""
    first = first_tensor(teacher(*(x[:batch_size] for x in inputs)))
    per_sample = first[0].numel() * first.element_size()
    if per_sample * len(inputs[0]) > TEACHER_CACHE_BYTES:
        return None
    rest = [
        first_tensor(teacher(*(x[start : start + batch_size] for x in inputs)))
        for start in range(batch_size, len(inputs[0]), batch_size)
    ]
    return torch.cat([first, *rest])


def distill(
    student: nn.Module,
    teacher: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    *,
    kind: TaskKind,
    targets: torch.Tensor | None = None,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    temperature: float = 4.0,
    alpha: float = 0.7,
    seed: int = 0,
    loss: LossFn | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Train ``student`` (in place, returned in eval mode) to reproduce ``teacher``.

    Args:
        inputs: the model's positional inputs, first axis = samples.
        kind: picks the default loss (see :func:`kind_loss`); ``targets`` are optional labels
            or values for the same samples.
        loss: a task's own ``loss(student_output, teacher_output)``; replaces the default and
            ignores ``targets``, ``temperature`` and ``alpha``.
        progress: called after each epoch with ``(epoch, mean loss)``.

    Both models run in eval mode while training: the student should copy the teacher's
    deterministic function, and dropout or batch-norm statistics would only add noise to that.
    Given a seed, batches and initial state are the same on every run on one host.

    Raises:
        ValueError: no inputs, inputs of different lengths, or targets of another length.
    """
    if not inputs or len(inputs[0]) == 0:
        raise ValueError("distill needs at least one input tensor with at least one sample")
    count = len(inputs[0])
    if any(len(x) != count for x in inputs) or (targets is not None and len(targets) != count):
        raise ValueError(
            "every input tensor (and the targets) must have the same number of samples on axis 0"
        )
    torch.manual_seed(seed)
    shuffle = torch.Generator().manual_seed(seed)
    teacher.eval()
    student.eval()
    cached = _teacher_outputs(teacher, inputs, batch_size) if epochs > 0 else None
    default_loss = kind_loss(kind, temperature=temperature, alpha=alpha)
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    for epoch in range(epochs):
        total = 0.0
        for batch in torch.randperm(count, generator=shuffle).split(batch_size):
            batch_inputs = tuple(x[batch] for x in inputs)
            if cached is not None:
                teacher_out = cached[batch]
            else:
                with torch.no_grad():
                    teacher_out = first_tensor(teacher(*batch_inputs))
            student_out = first_tensor(student(*batch_inputs))
            if loss is not None:
                value = loss(student_out, teacher_out)
            else:
                batch_targets = targets[batch] if targets is not None else None
                value = default_loss(student_out, teacher_out, batch_targets)
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            total += value.item() * len(batch)
        if progress is not None:
            progress(epoch, total / count)
    return student.eval()


def recover(
    student: nn.Module, teacher: nn.Module, task: Task, *, epochs: int, lr: float, seed: int
) -> nn.Module:
    """Fine-tune a compressed model towards the model it was compressed from, on the task's data.

    Distilling from the uncompressed model rather than training on labels alone is what lets a
    few epochs on a small training set recover: the teacher's full outputs carry far more signal
    per sample than one label, and exist for tasks without labels (embeddings).
    """
    return distill(
        student,
        teacher,
        task.train_inputs(),
        kind=task.kind,
        targets=task.train_targets(),
        epochs=epochs,
        lr=lr,
        seed=seed,
        loss=task.distill_loss(),
    )
