"""Recipes: which passes run in which order, and which of their parameters the search varies.

A recipe is YAML or JSON::

    name: image
    passes:
      - pass: prune_structured
        params: {ratio: [0.25, 0.5], finetune_epochs: 30}   # a list = values to search
        optional: true                                     # the search may also skip it
      - pass: export
      - pass: quantize_static
        params: {calibrate_method: declared}               # the pass's declared space
    constraints:
      max_metric_drop: 0.005     # vs the fp32 export of the teacher, in metric units
    search:
      strategy: grid             # or random
      max_trials: 24

Validation happens on load: an unknown pass, an unknown parameter, a value the pass refuses,
or a torch pass after export is a :class:`RecipeError` naming it.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeloop.compressor.passes import PassConfig, RecipeError, get_pass

DECLARED = "declared"


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    pass_name: str = Field(alias="pass")
    params: dict[str, Any] = Field(default_factory=dict)
    optional: bool = False


class Constraints(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_metric_drop: float | None = Field(default=None, ge=0)
    min_metric: float | None = None
    max_relative_drop: float | None = Field(
        default=None, ge=0, description="drop as a fraction of |fp32 metric|, e.g. 0.05"
    )
    min_speedup: float | None = Field(
        default=None, gt=0, description="p50 speed-up over fp32, measured interleaved with it"
    )


class SearchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategy: Literal["grid", "random"] = "grid"
    objective: Literal["metric", "size"] = Field(
        default="metric",
        description="among candidates that fit: the best metric, or the smallest file",
    )
    max_trials: int | None = Field(default=None, ge=1)
    time_budget_s: float | None = Field(default=None, gt=0)
    seed: int = 0


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "recipe"
    task: str | None = Field(default=None, description="example task the recipe is for")
    passes: list[StepSpec] = Field(min_length=1)
    constraints: Constraints = Constraints()
    search: SearchSpec = SearchSpec()

    def model_post_init(self, context: Any) -> None:
        kind = "torch"
        for step in self.passes:
            cls = get_pass(step.pass_name)
            if cls.input_kind != kind:
                hint = (
                    "move it before the export step"
                    if cls.input_kind == "torch"
                    else "add a step `- pass: export` before it"
                )
                raise RecipeError(
                    f"pass {cls.name!r} works on {cls.input_kind} models but gets a {kind} "
                    f"model here; {hint}"
                )
            kind = cls.output_kind
            choices = _choices(step)
            firsts = {name: values[0][name] for name, values in choices.items()}
            for values in choices.values():
                for choice in values:
                    cls.config(firsts | choice)
        if kind != "onnx":
            raise RecipeError("the recipe never exports to ONNX; add a step `- pass: export`")

    def trials(self) -> list[list[tuple[str, PassConfig]]]:
        """Every concrete pipeline the recipe allows, in grid order (or shuffled for random)."""
        per_step: list[list[tuple[str, PassConfig] | None]] = []
        for step in self.passes:
            cls = get_pass(step.pass_name)
            space = {k: [c[k] for c in v] for k, v in _choices(step).items()}
            names = list(space)
            options: list[tuple[str, PassConfig] | None] = [
                (cls.name, cls.config(dict(zip(names, values, strict=True))))
                for values in itertools.product(*(space[n] for n in names))
            ]
            if step.optional:
                options.append(None)
            per_step.append(options)
        pipelines = [
            [step for step in combo if step is not None] for combo in itertools.product(*per_step)
        ]
        unique = list({json.dumps(_describe(p), sort_keys=True): p for p in pipelines}.values())
        if self.search.strategy == "random":
            random.Random(self.search.seed).shuffle(unique)
        return unique


def _choices(step: StepSpec) -> dict[str, list[dict[str, Any]]]:
    """Parameter → list of single-key dicts, one per value to try (fixed params: one value)."""
    cls = get_pass(step.pass_name)
    declared = cls.search_space()
    result: dict[str, list[dict[str, Any]]] = {}
    for name, value in step.params.items():
        if name not in cls.Config.model_fields:
            known = ", ".join(cls.Config.model_fields) or "none"
            raise RecipeError(f"pass {cls.name!r} has no parameter {name!r} (known: {known})")
        if value == DECLARED:
            if name not in declared:
                raise RecipeError(f"pass {cls.name!r}: parameter {name!r} declares no search space")
            value = declared[name]
        values = value if isinstance(value, list) else [value]
        result[name] = [{name: v} for v in values]
    return result


def _describe(pipeline: list[tuple[str, PassConfig]]) -> list[dict[str, Any]]:
    return [{"pass": name, "params": config.model_dump(mode="json")} for name, config in pipeline]


def describe(pipeline: list[tuple[str, PassConfig]]) -> list[dict[str, Any]]:
    """A pipeline as plain data (for cache keys, reports and logs)."""
    return _describe(pipeline)


def label(pipeline: list[tuple[str, PassConfig]]) -> str:
    """Short human-readable name: passes with their non-default parameters."""
    parts = []
    for name, config in pipeline:
        defaults = type(config)().model_dump()
        changed = {k: v for k, v in config.model_dump().items() if defaults.get(k) != v}
        parts.append(
            name + ("(" + ",".join(f"{k}={v}" for k, v in changed.items()) + ")" if changed else "")
        )
    return " → ".join(parts)


def load_recipe(source: Path | str | dict[str, Any]) -> Recipe:
    """Load a recipe from a YAML/JSON file, a YAML/JSON string, or a dict.

    Raises:
        RecipeError: unreadable file, bad structure, unknown pass or parameter, bad value.
    """
    if isinstance(source, dict):
        data = source
    else:
        text = source.read_text() if isinstance(source, Path) else source
        try:
            import yaml

            data = yaml.safe_load(text)
        except Exception as exc:
            raise RecipeError(f"recipe is not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError("a recipe is a mapping with at least `passes:`")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<recipe>'}: "
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise RecipeError(f"invalid recipe: {problems}") from None
