"""``edgeloop compress``: search compression pipelines for a device profile, and publish the
chosen model with ``--push``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edgeloop.cli.output import token_option

if TYPE_CHECKING:
    from edgeloop.compressor.report import BuiltModel
    from edgeloop.server.schemas import ModelCard


def register(commands: argparse._SubParsersAction) -> None:
    compress = commands.add_parser(
        "compress",
        help="search compression pipelines for a device profile",
        description="edgeloop compress --recipe R --profile P TASK, or: edgeloop compress "
        "example NAME [--profile P]",
    )
    compress.add_argument(
        "target",
        nargs="*",
        metavar="TASK",
        help="an example task name (image, nlp, control), or `example NAME`",
    )
    compress.add_argument("--recipe", type=Path, help="recipe YAML/JSON (default: the example's)")
    compress.add_argument(
        "--profile", default="host-1t", help="built-in profile name or a JSON/TOML profile file"
    )
    compress.add_argument(
        "--out", type=Path, help="output directory (default .edgeloop/compress/TASK)"
    )
    compress.add_argument("--max-trials", type=int)
    compress.add_argument("--time-budget", type=float, help="seconds; returns the best so far")
    compress.add_argument("--strategy", choices=["grid", "random"])
    compress.add_argument(
        "--push", metavar="URL", help="register the chosen model with the control plane at URL"
    )
    compress.add_argument("--version", help="version to register (default: a content hash)")
    token_option(compress)
    compress.set_defaults(run=_compress)


def _compress(args: argparse.Namespace) -> int:
    from edgeloop.agent.profiles import load_profile
    from edgeloop.compressor.compress import compress
    from edgeloop.compressor.examples import example_recipe, example_task
    from edgeloop.compressor.passes.base import RecipeError
    from edgeloop.compressor.recipe import load_recipe

    target = args.target[1:] if args.target[:1] == ["example"] else args.target
    if len(target) > 1:
        print(
            "edgeloop compress: name one task, e.g. `edgeloop compress example image`",
            file=sys.stderr,
        )
        return 2
    try:
        profile = load_profile(args.profile)
        if args.recipe:
            recipe = load_recipe(args.recipe)
        elif target:
            recipe = load_recipe(example_recipe(target[0]))
        else:
            raise ValueError("give a task (e.g. `example image`) or --recipe FILE")
        name = target[0] if target else recipe.task
        if name is None:
            raise ValueError(
                "the recipe names no `task:`; give one, e.g. `edgeloop compress image`"
            )
        if args.strategy:
            recipe.search.strategy = args.strategy
        task = example_task(name)
    except (ValueError, OSError) as exc:
        kind = "recipe" if isinstance(exc, RecipeError) else "input"
        print(f"edgeloop compress: bad {kind}: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path(".edgeloop/compress") / name
    result = compress(
        task, recipe, profile, out, max_trials=args.max_trials, time_budget_s=args.time_budget
    )
    print(f"report: {out / 'report.json'}  plot: {out / 'pareto.png'}")
    if result.chosen is None:
        return 1
    from edgeloop.compressor.compress import built_model
    from edgeloop.server.client import ApiClient, ApiError

    version = args.version or result.chosen.key[:12]
    try:
        built = built_model(task, result, out, name=name, version=version)
    except ValueError as exc:
        print(f"edgeloop compress: not publishable: {exc}", file=sys.stderr)
        return 1 if args.push else 0
    # What `edgeloop models push DIR` registers as the version's metadata.
    (out / "model_report.json").write_text(built.report.model_dump_json(indent=2))
    if args.push:
        try:
            client = ApiClient(args.push, token=args.token)
            client.push_model(model_card(built), built.model_path, built.golden_path)
        except ApiError as exc:
            print(f"edgeloop compress: not pushed: {exc}", file=sys.stderr)
            return 1
        print(f"registered {name}:{version} at {args.push}")
    return 0


def model_card(built: BuiltModel) -> ModelCard:
    """What the control plane registers about a compressor output: its I/O contract, the
    golden tolerance the compressor chose, and its report as the version's figures."""
    from edgeloop.server.schemas import ModelCard, ModelFigures

    return ModelCard(
        name=built.name,
        version=built.version,
        inputs=built.inputs,
        outputs=built.outputs,
        golden_atol=built.report.golden_atol,
        report=ModelFigures.model_validate(built.report.model_dump()),
    )
