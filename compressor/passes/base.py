"""What a compression pass is: one class, a typed config with a declared search space, one hook.

A pass turns a model handle into another (``TorchModel`` → ``TorchModel`` for pruning,
low-rank and distillation; ``TorchModel`` → ``OnnxModel`` for export; ``OnnxModel`` →
``OnnxModel`` for quantization and fp16). Each config field has a default and, where the
search may vary it, a ``search`` list of values::

    class Config(PassConfig):
        ratio: float = searchable(0.5, [0.25, 0.5, 0.75], "fraction of channels removed")

Registration, validation and the fixed/searchable split live here; a new technique is one
file in ``compressor/passes/`` with one :class:`Pass` subclass. Heavy imports go inside
``run``.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    import torch

    from edgeloop.compressor.task import Task

ModelKind = Literal["torch", "onnx"]


class RecipeError(ValueError):
    """A recipe names an unknown pass, a bad parameter, or passes in an impossible order."""


class PassConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def searchable(default: Any, space: list[Any], description: str, **constraints: Any) -> Any:
    """A config field the search may vary over ``space`` (which must contain ``default``)."""
    if default not in space:
        space = [default, *space]
    return Field(
        default=default, description=description, json_schema_extra={"search": space}, **constraints
    )


@dataclass
class TorchModel:
    """A PyTorch module plus what the passes learned about it (sparsity, ranks, ...)."""

    module: torch.nn.Module
    notes: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[ModelKind] = "torch"

    def clone(self) -> TorchModel:
        return TorchModel(copy.deepcopy(self.module), dict(self.notes))

    def fingerprint(self) -> str:
        import torch

        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in self.module.state_dict().items()}, buffer)
        return hashlib.sha256(repr(self.module).encode() + buffer.getvalue()).hexdigest()


@dataclass
class OnnxModel:
    """One self-contained ONNX file plus notes (quantization error, ...)."""

    path: Path
    notes: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[ModelKind] = "onnx"

    def fingerprint(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


Handle = TorchModel | OnnxModel


@dataclass
class PassContext:
    """What every pass may use: the task (data, teacher, metric), a scratch dir, a seed."""

    task: Task
    work_dir: Path
    seed: int = 0
    threads: int = 1


class Pass(ABC):
    """Base of every compression pass. Subclasses set the class attributes and ``run``."""

    name: ClassVar[str]
    input_kind: ClassVar[ModelKind]
    output_kind: ClassVar[ModelKind]
    Config: ClassVar[type[PassConfig]]
    summary: ClassVar[str] = ""

    registry: ClassVar[dict[str, type[Pass]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            Pass.registry[cls.name] = cls

    @classmethod
    def search_space(cls) -> dict[str, list[Any]]:
        """Parameter name → values the search may try."""
        space = {}
        for name, info in cls.Config.model_fields.items():
            extra = info.json_schema_extra
            if isinstance(extra, dict) and "search" in extra:
                space[name] = list(extra["search"])  # type: ignore[arg-type]
        return space

    @classmethod
    def config(cls, params: dict[str, Any] | None = None) -> PassConfig:
        """Validate ``params`` against the pass's config.

        Raises:
            RecipeError: an unknown parameter or a value of the wrong type/range, named.
        """
        try:
            return cls.Config.model_validate(params or {})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<params>'}: {e['msg']}"
                for e in exc.errors()
            )
            raise RecipeError(f"pass {cls.name!r}: {problems}") from None

    @abstractmethod
    def run(self, model: Any, config: Any, ctx: PassContext) -> Handle:
        """Return a new handle; never mutate ``model`` (earlier stages are cached)."""


def config_key(name: str, config: PassConfig) -> str:
    return json.dumps({"pass": name, "params": config.model_dump(mode="json")}, sort_keys=True)
