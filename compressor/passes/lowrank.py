"""Low-rank factorization: a weight matrix becomes two thin ones from its truncated SVD.

A Linear ``in → out`` costs ``in·out`` multiply-adds per row; two Linears ``in → r → out`` cost
``r·(in + out)``, so it pays only when ``r`` is well below ``in·out / (in + out)``. Unlike
unstructured pruning, the saving survives export: the ONNX holds two smaller dense MatMuls.

The truncated SVD is the best rank-``r`` approximation in Frobenius norm (Eckart–Young), so
keeping a fraction ``energy`` of the squared singular values bounds each layer's relative
weight error by ``sqrt(1 - energy)``. It is written here with ``torch.linalg.svd``: torch has no
layer-factorization utility, and torch-pruning removes channels rather than factorizing.
"""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field, field_validator

from edgeloop.compressor.passes.base import (
    Pass,
    PassConfig,
    PassContext,
    RecipeError,
    TorchModel,
    searchable,
)
from edgeloop.compressor.passes.prune import output_layer, parameter_count

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["LowRank", "LowRankConfig", "choose_rank"]


class LowRankConfig(PassConfig):
    energy: float = searchable(
        0.95,
        [0.9, 0.95, 0.99],
        "fraction of the squared singular values each factorized layer keeps",
        gt=0,
        le=1,
    )
    rank_ratio: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="fixed rank as a fraction of min(in, out); replaces energy when set",
    )
    include: str | None = Field(
        default=None,
        description="regex on module names (re.search) selecting the layers to factorize; "
        "default: every Linear except the output layer",
    )
    min_saving: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="factorize only if the factors hold fewer than this fraction of the weights",
    )
    conv: bool = Field(
        default=False, description="also factorize Conv2d k×k into k×k (r channels) + 1×1"
    )
    finetune_epochs: int = Field(
        default=0, ge=0, description="distillation epochs from the unfactorized model"
    )
    lr: float = Field(default=1e-3, gt=0, description="Adam learning rate for fine-tuning")

    @field_validator("include")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression ({exc})") from None
        return pattern


def choose_rank(singular: torch.Tensor, *, energy: float, rank_ratio: float | None) -> int:
    """The smallest rank keeping ``energy`` of ``sum(singular**2)``, or ``rank_ratio·len``."""
    import torch

    if rank_ratio is not None:
        return max(1, round(rank_ratio * len(singular)))
    squared = singular.double() ** 2
    kept = torch.cumsum(squared, 0) / squared.sum()
    return min(len(singular), int((kept < energy - 1e-12).sum()) + 1)


class LowRank(Pass):
    """Replace Linear (and optionally Conv2d) layers by two thinner ones from a truncated SVD.

    The rank is chosen per layer, because layers differ in how much of their spectrum carries
    the function; a layer is left alone when its rank would not save at least ``1 - min_saving``
    of its weights (and so of its multiply-adds). The singular values are split evenly between
    the two factors so both have similar scales, which helps fine-tuning.
    """

    name = "lowrank"
    input_kind = "torch"
    output_kind = "torch"
    Config: ClassVar = LowRankConfig
    summary = "factorize Linear layers by truncated SVD (fewer params and FLOPs)"

    def run(self, model: TorchModel, config: LowRankConfig, ctx: PassContext) -> TorchModel:
        from torch import nn

        teacher = model.module
        module = copy.deepcopy(teacher).eval()
        if config.include is None:
            skip = output_layer(module)
            pattern = None
        else:
            skip = None
            pattern = re.compile(config.include)
        candidates = [
            (name, layer)
            for name, layer in module.named_modules()
            if isinstance(layer, nn.Linear | nn.Conv2d)
            and (config.conv or isinstance(layer, nn.Linear))
            and layer is not skip
            and (pattern is None or pattern.search(name))
        ]
        if not candidates:
            raise RecipeError(
                f"pass {self.name!r}: no layer to factorize (include={config.include!r}, "
                f"conv={config.conv}); widen 'include' or set conv=true"
            )
        ranks: dict[str, int] = {}
        for name, layer in candidates:
            factored = _factorize(layer, config)
            if factored is not None:
                parent_name, _, child_name = name.rpartition(".")
                setattr(module.get_submodule(parent_name), child_name, factored[0])
                ranks[name] = factored[1]
        if ranks and config.finetune_epochs:
            from edgeloop.compressor.training import recover

            recover(
                module,
                teacher,
                ctx.task,
                epochs=config.finetune_epochs,
                lr=config.lr,
                seed=ctx.seed,
            )
        notes = model.notes | {
            "ranks": ranks,
            "params_before": model.notes.get("params_before", parameter_count(teacher)),
            "params_after": parameter_count(module),
        }
        return TorchModel(module, notes)


def _factorize(
    layer: nn.Linear | nn.Conv2d, config: LowRankConfig
) -> tuple[nn.Sequential, int] | None:
    """``(in → r → out replacement, r)``, or None where the rank would not save enough."""
    import torch
    from torch import nn

    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        return None
    weight = layer.weight.detach()
    out_features = weight.shape[0]
    matrix = weight.reshape(out_features, -1)
    in_size = matrix.shape[1]
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    rank = choose_rank(s, energy=config.energy, rank_ratio=config.rank_ratio)
    if rank * (in_size + out_features) >= in_size * out_features * config.min_saving:
        return None
    root = s[:rank].sqrt()
    first_weight = (root[:, None] * vh[:rank]).to(weight.dtype)
    second_weight = (u[:, :rank] * root[None, :]).to(weight.dtype)
    bias = layer.bias is not None
    first: nn.Module
    second: nn.Module
    if isinstance(layer, nn.Linear):
        first = nn.Linear(in_size, rank, bias=False)
        second = nn.Linear(rank, out_features, bias=bias)
        first.weight.data.copy_(first_weight)
        second.weight.data.copy_(second_weight)
    else:
        first = nn.Conv2d(
            layer.in_channels,
            rank,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            bias=False,
            padding_mode=layer.padding_mode,
        )
        second = nn.Conv2d(rank, out_features, 1, bias=bias)
        first.weight.data.copy_(first_weight.reshape(rank, *weight.shape[1:]))
        second.weight.data.copy_(second_weight.reshape(out_features, rank, 1, 1))
    if layer.bias is not None and second.bias is not None:
        second.bias.data.copy_(layer.bias.detach())
    return nn.Sequential(first, second), rank
