"""Built-in compression passes; importing this package registers them all.

Each module holds one technique. ``get_pass(name)`` looks one up by its recipe name.
"""

from __future__ import annotations

import importlib

from edgeloop.compressor.passes.base import (
    OnnxModel,
    Pass,
    PassConfig,
    PassContext,
    RecipeError,
    TorchModel,
    searchable,
)

__all__ = [
    "OnnxModel",
    "Pass",
    "PassConfig",
    "PassContext",
    "RecipeError",
    "TorchModel",
    "get_pass",
    "searchable",
]

_MODULES = ("export", "quantization", "fp16", "prune", "lowrank", "distill")

for _module in _MODULES:
    try:
        importlib.import_module(f"edgeloop.compressor.passes.{_module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"edgeloop.compressor.passes.{_module}":
            raise


def get_pass(name: str) -> type[Pass]:
    """The registered pass called ``name`` (importing this package registered the built-ins).

    Raises:
        RecipeError: no such pass; the message lists the known ones.
    """
    try:
        return Pass.registry[name]
    except KeyError:
        known = ", ".join(sorted(Pass.registry))
        raise RecipeError(f"unknown pass {name!r}; known passes: {known}") from None
