"""Pruning: zero the smallest weights (unstructured) or remove whole channels (structured).

Only structured pruning makes the exported model smaller and faster: unstructured pruning
leaves dense zeros, so the ONNX file keeps its size and latency and only a compressor (zstd on
the download) sees the sparsity (field notes).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from edgeloop.compressor.passes.base import (
    Pass,
    PassConfig,
    PassContext,
    RecipeError,
    TorchModel,
    searchable,
)

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "PruneStructured",
    "PruneStructuredConfig",
    "PruneUnstructured",
    "PruneUnstructuredConfig",
    "ffn_pairs",
    "output_layer",
    "parameter_count",
]


def _weight_layers(module: nn.Module) -> list[nn.Linear | nn.Conv1d | nn.Conv2d]:
    from torch import nn

    return [m for m in module.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)]


def output_layer(module: nn.Module) -> nn.Module:
    """The Linear/Conv layer taken to produce the model's output: the last one in module order.

    That holds for sequential stacks (a classifier head is defined last). Models that define
    extra heads after the real output (a BERT pooler) are handled by the callers' output-shape
    check, which refuses a result whose output changed.

    Raises:
        RecipeError: the model has no Linear or Conv layer.
    """
    layers = _weight_layers(module)
    if not layers:
        raise RecipeError(
            f"{type(module).__name__} has no Linear or Conv layer; nothing to compress here"
        )
    return layers[-1]


def ffn_pairs(module: nn.Module) -> list[tuple[nn.Linear, nn.Linear]]:
    """Every BERT-style feed-forward block as ``(intermediate.dense, output.dense)``.

    Found by the HuggingFace layout (a layer with ``intermediate.dense`` and ``output.dense``),
    which BERT, RoBERTa, MiniLM and their relatives share.
    """
    from torch import nn

    pairs = []
    for layer in module.modules():
        up = getattr(getattr(layer, "intermediate", None), "dense", None)
        down = getattr(getattr(layer, "output", None), "dense", None)
        if (
            isinstance(up, nn.Linear)
            and isinstance(down, nn.Linear)
            and up.out_features == down.in_features
        ):
            pairs.append((up, down))
    return pairs


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class PruneUnstructuredConfig(PassConfig):
    amount: float = searchable(
        0.5, [0.3, 0.5, 0.7, 0.9], "fraction of Linear/Conv weights set to zero", gt=0, lt=1
    )
    finetune_epochs: int = Field(
        default=0, ge=0, description="distillation epochs from the unpruned model, mask kept"
    )
    lr: float = Field(default=1e-3, gt=0, description="Adam learning rate for fine-tuning")


class PruneUnstructured(Pass):
    """Global L1 magnitude pruning of Linear/Conv weights.

    Global, not per layer: layers differ in how much they can lose, and one threshold over all
    weights lets the redundant ones give up more. The masks stay during fine-tuning so pruned
    weights stay zero, then are folded in. The dense ONNX file stays the same size and speed;
    the gain is only in a compressed download (zstd sees the zeros).
    """

    name = "prune_unstructured"
    input_kind = "torch"
    output_kind = "torch"
    Config: ClassVar = PruneUnstructuredConfig
    summary = "zero the smallest weights (smaller zstd download, same ONNX size and speed)"

    def run(
        self, model: TorchModel, config: PruneUnstructuredConfig, ctx: PassContext
    ) -> TorchModel:
        import torch
        from torch.nn.utils import prune

        module = copy.deepcopy(model.module).eval()
        layers = _weight_layers(module)
        if not layers:
            raise RecipeError(f"pass {self.name!r}: the model has no Linear or Conv layer to prune")
        targets = [(layer, "weight") for layer in layers]
        prune.global_unstructured(
            targets, pruning_method=prune.L1Unstructured, amount=config.amount
        )
        if config.finetune_epochs:
            from edgeloop.compressor.training import recover

            recover(
                module,
                model.module,
                ctx.task,
                epochs=config.finetune_epochs,
                lr=config.lr,
                seed=ctx.seed,
            )
        for layer, parameter in targets:
            prune.remove(layer, parameter)
        with torch.no_grad():
            zeros = sum(int(torch.count_nonzero(layer.weight == 0)) for layer in layers)
            total = sum(int(layer.weight.numel()) for layer in layers)
        return TorchModel(module, model.notes | {"sparsity": zeros / total})


class PruneStructuredConfig(PassConfig):
    ratio: float = searchable(
        0.5, [0.25, 0.5, 0.75], "fraction of channels/neurons removed per layer", gt=0, lt=1
    )
    finetune_epochs: int = searchable(
        10, [0, 10, 30], "distillation epochs from the unpruned model", ge=0
    )
    lr: float = Field(default=1e-3, gt=0, description="Adam learning rate for fine-tuning")
    scope: Literal["all", "ffn"] = Field(
        default="all",
        description="'all': every prunable channel group; 'ffn': only the intermediate neurons "
        "of BERT-style feed-forward blocks (hidden size and attention heads kept)",
    )


class PruneStructured(Pass):
    """Remove the lowest-L1 channels/neurons for real, then recover by distillation.

    torch-pruning's dependency graph finds every layer coupled to a removed channel (the next
    layer's inputs, batch norms, residual adds), so the result is a smaller dense model whose
    ONNX is smaller and faster. The layer producing the output is never pruned, so the output
    shape is the task's. Transformers need ``scope="ffn"``: their hidden size is shared by every
    residual and reshaped into attention heads, so pruning it would change the output and the
    head layout; the FFN's intermediate neurons are independent and hold most of the matmul
    work.
    """

    name = "prune_structured"
    input_kind = "torch"
    output_kind = "torch"
    Config: ClassVar = PruneStructuredConfig
    summary = "remove whole channels/neurons (smaller and faster ONNX), then fine-tune"

    def run(self, model: TorchModel, config: PruneStructuredConfig, ctx: PassContext) -> TorchModel:
        import torch
        import torch_pruning as tp
        from torch import nn

        from edgeloop.compressor.training import first_tensor

        teacher = model.module.eval()
        pruned = copy.deepcopy(teacher).eval()
        example = ctx.task.export_spec().example_inputs
        with torch.no_grad():
            expected = first_tensor(teacher(*example)).shape
        pairs = ffn_pairs(pruned)
        if config.scope == "ffn":
            if not pairs:
                raise RecipeError(
                    f"pass {self.name!r}: scope='ffn' found no BERT-style feed-forward block "
                    "(intermediate.dense / output.dense); use scope='all' for this model"
                )
            roots = {up for up, _ in pairs}
            ignored: list[nn.Module] = [
                layer for layer in _weight_layers(pruned) if layer not in roots
            ]
            root_types: list[type[nn.Module]] = [nn.Linear]
        else:
            if pairs or any(isinstance(m, nn.MultiheadAttention) for m in pruned.modules()):
                raise RecipeError(
                    f"pass {self.name!r}: scope='all' would prune a transformer's hidden size "
                    "and attention heads; use scope='ffn'"
                )
            ignored = [output_layer(pruned)]
            root_types = [nn.Linear, nn.Conv1d, nn.Conv2d]
        pruner = tp.pruner.MetaPruner(
            pruned,
            example,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=config.ratio,
            ignored_layers=ignored,
            root_module_types=root_types,
        )
        pruner.step()
        with torch.no_grad():
            produced = first_tensor(pruned(*example)).shape
        if produced != expected:
            raise RecipeError(
                f"pass {self.name!r}: pruning changed the output shape from {tuple(expected)} "
                f"to {tuple(produced)}: the last Linear/Conv in module order, which is kept "
                "intact, is not the layer producing the output; define the output layer last"
            )
        if config.scope == "ffn":
            _record_intermediate_size(pruned, pairs)
        if config.finetune_epochs:
            from edgeloop.compressor.training import recover

            recover(
                pruned,
                teacher,
                ctx.task,
                epochs=config.finetune_epochs,
                lr=config.lr,
                seed=ctx.seed,
            )
        notes = model.notes | {
            "params_before": model.notes.get("params_before", parameter_count(teacher)),
            "params_after": parameter_count(pruned),
        }
        return TorchModel(pruned, notes)


def _record_intermediate_size(module: nn.Module, pairs: list[tuple[nn.Linear, nn.Linear]]) -> None:
    """Keep a HuggingFace config truthful, so a reload or a size report sees the pruned width."""
    sizes = {up.out_features for up, _ in pairs}
    if len(sizes) != 1:
        return
    for sub in module.modules():
        config = getattr(sub, "config", None)
        if config is not None and hasattr(config, "intermediate_size"):
            config.intermediate_size = next(iter(sizes))
