"""Recipes: which passes run in which order, and which of their parameters the search varies.

A recipe is YAML or JSON::

    name: image
    passes:
      - pass: prune_structured
        params: {ratio: [0.25, 0.5], finetune_epochs: 30}   # a list = values to search
        optional: true                                     # the search may also skip it
      - pass: export
      - one_of:                                          # alternatives for one step
          - {pass: quantize_static, params: {calibrate_method: declared}}  # declared space
          - {pass: quantize_dynamic}
        optional: true
    constraints:
      max_metric_drop: 0.005     # vs the fp32 export of the teacher, in metric units
    search:
      strategy: grid             # or random
      max_trials: 24

A recipe starts from a PyTorch model unless it says ``start: onnx`` (then it holds only ONNX
passes). :meth:`Recipe.for_source` fits a recipe to the model a task really starts from: on an
ONNX model the torch steps and ``export`` are dropped, each with the reason, and an ONNX recipe
on a PyTorch model gets the ``export`` step in front.

Validation happens on load: an unknown pass, an unknown parameter, a value the pass refuses,
or a torch pass after export is a :class:`RecipeError` naming it.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgeloop.compressor.passes import Pass, PassConfig, RecipeError, get_pass
from edgeloop.compressor.passes.base import ModelKind

DECLARED = "declared"


class Alternative(BaseModel):
    """One pass of a ``one_of`` step."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    pass_name: str = Field(alias="pass")
    params: dict[str, Any] = Field(default_factory=dict)


class StepSpec(BaseModel):
    """One step: a pass (``pass`` + ``params``), or ``one_of`` several passes the search tries
    in its place (e.g. int8 dynamic, int8 static or fp16: one of them, never two in a row)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    pass_name: str | None = Field(default=None, alias="pass")
    params: dict[str, Any] = Field(default_factory=dict)
    one_of: list[Alternative] | None = Field(default=None, min_length=1)
    optional: bool = False

    @model_validator(mode="after")
    def _one_kind_of_step(self) -> StepSpec:
        if (self.pass_name is None) == (self.one_of is None):
            raise ValueError("a step names either `pass` or `one_of`, not both or neither")
        if self.one_of is not None and self.params:
            raise ValueError("`params` go inside each `one_of` alternative")
        return self

    def alternatives(self) -> list[Alternative]:
        """The passes this step may run (one for a plain step)."""
        if self.one_of is not None:
            return self.one_of
        assert self.pass_name is not None
        return [Alternative.model_validate({"pass": self.pass_name, "params": self.params})]

    @property
    def title(self) -> str:
        """The step's pass names, for messages (``quantize_dynamic/fp16`` for a ``one_of``)."""
        return "/".join(a.pass_name for a in self.alternatives())


class Constraints(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_metric_drop: float | None = Field(default=None, ge=0)
    min_metric: float | None = Field(
        default=None, description="the metric must reach this (higher-is-better metrics)"
    )
    max_metric: float | None = Field(
        default=None, description="the metric must not exceed this (e.g. an MAE)"
    )
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
    start: ModelKind = Field(
        default="torch", description="what the first pass receives: a PyTorch model or ONNX"
    )
    passes: list[StepSpec] = Field(min_length=1)
    constraints: Constraints = Constraints()
    search: SearchSpec = SearchSpec()

    def model_post_init(self, context: Any) -> None:
        kind = self.start
        for step in self.passes:
            classes = [get_pass(a.pass_name) for a in step.alternatives()]
            for cls in classes:
                if cls.input_kind != kind:
                    raise RecipeError(_misplaced(cls, kind, self.start))
            outputs = {cls.output_kind for cls in classes}
            if len(outputs) > 1:
                raise RecipeError(
                    f"the alternatives of step {step.title!r} must all give the same kind of "
                    "model (all torch or all onnx)"
                )
            kind = outputs.pop()
            for alternative in step.alternatives():
                cls = get_pass(alternative.pass_name)
                choices = _choices(alternative)
                firsts = {name: values[0][name] for name, values in choices.items()}
                for values in choices.values():
                    for choice in values:
                        cls.config(firsts | choice)
        if kind != "onnx":
            raise RecipeError("the recipe never exports to ONNX; add a step `- pass: export`")

    def for_source(self, kind: ModelKind, *, why: str | None = None) -> tuple[Recipe, list[str]]:
        """This recipe as it applies to a model of ``kind``, and the steps it lost, with why.

        An ONNX model drops every torch step (``why`` says why the model is not available as
        PyTorch) and ``export``; a PyTorch model under an ONNX recipe gets ``export`` first.

        Raises:
            RecipeError: nothing of the recipe works on an ONNX model.
        """
        if kind == self.start:
            return self, []
        data = self.model_dump(by_alias=True, exclude_none=True)
        if kind == "torch":
            data["passes"] = [{"pass": "export"}, *data["passes"]]
            return Recipe.model_validate(data | {"start": "torch"}), []
        kept, skipped = [], []
        for step, dumped in zip(self.passes, data["passes"], strict=True):
            if step.title == "export":
                skipped.append("skipped export: the model is already ONNX")
            elif get_pass(step.alternatives()[0].pass_name).input_kind == "torch":
                skipped.append(
                    f"skipped {step.title}: needs a PyTorch model" + (f"; {why}" if why else "")
                )
            else:
                kept.append(dumped)
        if not kept:
            raise RecipeError(
                f"no step of recipe {self.name!r} works on an ONNX model ({'; '.join(skipped)}); "
                "give a recipe with ONNX passes (quantize_dynamic, quantize_static, fp16, ...)"
            )
        return Recipe.model_validate(data | {"start": "onnx", "passes": kept}), skipped

    def trials(self) -> list[list[tuple[str, PassConfig]]]:
        """Every concrete pipeline the recipe allows, in grid order (or shuffled for random)."""
        per_step: list[list[tuple[str, PassConfig] | None]] = []
        for step in self.passes:
            options: list[tuple[str, PassConfig] | None] = []
            for alternative in step.alternatives():
                cls = get_pass(alternative.pass_name)
                space = {k: [c[k] for c in v] for k, v in _choices(alternative).items()}
                names = list(space)
                options += [
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


def _misplaced(cls: type[Pass], kind: ModelKind, start: ModelKind) -> str:
    if cls.input_kind == "torch" and start == "onnx":
        hint = "this recipe starts from ONNX (`start: onnx`), where only ONNX passes apply"
    elif cls.input_kind == "torch":
        hint = "move it before the export step"
    else:
        hint = "add a step `- pass: export` before it (or `start: onnx` for an ONNX model)"
    return (
        f"pass {cls.name!r} works on {cls.input_kind} models but gets a {kind} model here; {hint}"
    )


def _choices(step: Alternative) -> dict[str, list[dict[str, Any]]]:
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
    return " → ".join(parts) or ORIGINAL


ORIGINAL = "original"
"""The label of the empty pipeline: the model as given (the baseline of an ONNX start)."""


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
