"""Recipes meet the model a task really starts from: torch steps leave an ONNX-only model with
the reason, an ONNX recipe gets the export step in front of a PyTorch model, ``one_of`` offers
alternatives for one step, and the default recipe follows the model's kind and form."""

from __future__ import annotations

from pathlib import Path

import pytest
from user_models import UserModels

from edgeloop.compressor.examples import example_recipe
from edgeloop.compressor.passes import RecipeError
from edgeloop.compressor.recipe import label, load_recipe
from edgeloop.compressor.sources import default_recipe, load_task

TORCH_RECIPE = """
passes:
  - pass: prune_structured
    params: {ratio: [0.25, 0.5]}
    optional: true
  - pass: export
  - one_of:
      - {pass: quantize_dynamic, params: {per_channel: [true, false]}}
      - {pass: fp16}
    optional: true
"""


def labels(text: str | None = None) -> list[str]:
    recipe = load_recipe(text or TORCH_RECIPE)
    return [label(p) for p in recipe.trials()]


def test_one_of_offers_each_alternative_in_place_of_one_step_never_two_in_a_row() -> None:
    tried = labels()
    assert len(tried) == 3 * 4  # no/two prunes, then none/dynamic x2/fp16
    assert "export → fp16" in tried
    assert not any("quantize_dynamic" in t and "fp16" in t for t in tried)


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        (
            "passes: [{pass: export}, {pass: fp16, one_of: [{pass: quantize_dynamic}]}]",
            "a step names either `pass` or `one_of`, not both or neither",
        ),
        (
            "passes: [{one_of: [{pass: export}, {pass: prune_structured}]}]",
            "the alternatives of step 'export/prune_structured' must all give the same kind",
        ),
        (
            "passes: [{pass: export}, {one_of: [{pass: fp16, params: {bits: 4}}]}]",
            "pass 'fp16' has no parameter 'bits'",
        ),
        (
            "start: onnx\npasses: [{pass: prune_structured}, {pass: fp16}]",
            "this recipe starts from ONNX (`start: onnx`), where only ONNX passes apply",
        ),
        ("passes: [{pass: fp16}]", "or `start: onnx` for an ONNX model"),
    ],
)
def test_a_recipe_whose_steps_cannot_chain_is_refused(recipe: str, message: str) -> None:
    with pytest.raises(RecipeError) as refused:
        load_recipe(recipe)
    assert message in str(refused.value)


def test_on_an_onnx_model_torch_steps_and_export_are_dropped_with_the_reason() -> None:
    recipe = load_recipe(TORCH_RECIPE)
    fitted, skipped = recipe.for_source("onnx", why="m.onnx could not be converted: Gelu")
    assert skipped == [
        "skipped prune_structured: needs a PyTorch model; m.onnx could not be converted: Gelu",
        "skipped export: the model is already ONNX",
    ]
    assert fitted.start == "onnx"
    assert [label(p) for p in fitted.trials()] == [
        "quantize_dynamic",
        "quantize_dynamic(per_channel=False)",
        "fp16",
        "original",
    ]
    assert fitted.for_source("onnx") == (fitted, []), "fitting twice changes nothing"


def test_an_onnx_recipe_on_a_pytorch_model_exports_first() -> None:
    recipe = load_recipe("start: onnx\npasses: [{pass: fp16, optional: true}]")
    fitted, skipped = recipe.for_source("torch")
    assert skipped == []
    assert [label(p) for p in fitted.trials()] == ["export → fp16", "export"]


def test_a_recipe_with_nothing_for_an_onnx_model_is_refused() -> None:
    recipe = load_recipe("name: prune-only\npasses: [{pass: prune_structured}, {pass: export}]")
    with pytest.raises(RecipeError, match="no step of recipe 'prune-only' works on an ONNX"):
        recipe.for_source("onnx", why="no PyTorch model")


def test_the_shipped_recipes_are_unchanged_for_their_pytorch_teachers() -> None:
    for name in ("image", "image-wide", "nlp", "control"):
        recipe = load_recipe(example_recipe(name))
        assert recipe.for_source("torch") == (recipe, [])


def test_the_default_recipe_follows_the_models_kind_and_form(
    user_models: UserModels, tmp_path: Path
) -> None:
    onnx_only = load_task(
        str(user_models.gelu_onnx),
        "classification",
        user_models.digits_train,
        user_models.digits_eval,
        work_dir=tmp_path / "gelu",
    )
    recipe = default_recipe(onnx_only)
    assert recipe.start == "onnx"
    assert [label(p) for p in recipe.trials()] == [
        "quantize_dynamic",
        "quantize_static",
        "fp16",
    ], "int8 dynamic or static per channel, or fp16 (no MatMul weights for int4)"
    assert recipe.constraints.max_metric_drop == 0.01

    regressor = load_task(
        str(user_models.regressor_ts),
        "regression",
        user_models.diabetes_train,
        user_models.diabetes_eval_folder,
        work_dir=tmp_path / "regressor",
    )
    recipe = default_recipe(regressor)
    assert recipe.start == "torch"
    assert [s.title for s in recipe.passes] == [
        "prune_structured",
        "export",
        "quantize_dynamic/quantize_static",
    ]
    assert recipe.passes[0].optional and recipe.passes[2].optional
    assert recipe.constraints.max_relative_drop == 0.05

    embedder = load_task(
        str(user_models.embedder_onnx),
        "embedding",
        user_models.embedding_train,
        user_models.embedding_eval,
        work_dir=tmp_path / "embedder",
    )
    assert default_recipe(embedder).constraints.min_metric == 0.99
