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
    """The default recipe (YAML text) of the example ``name``."""
    if name not in EXAMPLES:
        raise ValueError(f"unknown example {name!r}; known: {', '.join(EXAMPLES)}")
    return resources.files("edgeloop.compressor").joinpath(f"recipes/{name}.yaml").read_text()
