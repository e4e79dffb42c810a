"""The compression cases shipped with edgeloop, by name: a task and its default recipe."""

from __future__ import annotations

import importlib
from importlib import resources

from edgeloop.compressor.task import Task

EXAMPLES: dict[str, str] = {
    "image": "edgeloop.compressor.examples.digits:DigitsTask",
    "image-wide": "edgeloop.compressor.examples.digits:WideDigitsTask",
    "nlp": "edgeloop.compressor.examples.minilm:MiniLMTask",
    "control": "edgeloop.compressor.examples.pendulum:PendulumTask",
}


def example_task(name: str) -> Task:
    """Instantiate the example task ``name``.

    Raises:
        ValueError: unknown example; lists the known ones.
    """
    if name not in EXAMPLES:
        raise ValueError(f"unknown example {name!r}; known: {', '.join(EXAMPLES)}")
    module, _, cls = EXAMPLES[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


def example_recipe(name: str) -> str:
    """A shipped recipe (YAML text): the example ``name``'s default, or another recipe in
    ``compressor/recipes/`` by name (e.g. ``nlp-loop``)."""
    recipe = resources.files("edgeloop.compressor").joinpath(f"recipes/{name}.yaml")
    if not recipe.is_file():
        shipped = sorted(
            p.name.removesuffix(".yaml")
            for p in resources.files("edgeloop.compressor").joinpath("recipes").iterdir()
        )
        raise ValueError(f"unknown example or recipe {name!r}; shipped: {', '.join(shipped)}")
    return recipe.read_text()
