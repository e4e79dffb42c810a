"""``edgeloop compress``: search compression pipelines for a device profile, and publish the
chosen model with ``--push``.

Two ways in:

- a shipped example: ``edgeloop compress example NAME`` (or ``edgeloop compress NAME``, or
  ``--recipe R`` whose ``task:`` names one);
- a model of your own: ``edgeloop compress MODEL --task KIND --train TRAIN --eval EVAL``, with
  KIND one of classification, regression, embedding, or your task class (``file.py:Class``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from edgeloop.cli.output import token_option

if TYPE_CHECKING:
    from edgeloop.compressor.passes.base import ModelKind
    from edgeloop.compressor.recipe import Recipe
    from edgeloop.compressor.report import BuiltModel
    from edgeloop.compressor.task import Task
    from edgeloop.server.schemas import ModelCard

USAGE = (
    "edgeloop compress MODEL --task KIND --train TRAIN --eval EVAL [--profile P] [--recipe R], "
    "or: edgeloop compress example NAME [--profile P]"
)


def register(commands: argparse._SubParsersAction) -> None:
    compress = commands.add_parser(
        "compress",
        help="search compression pipelines for a device profile",
        description=USAGE,
    )
    compress.add_argument(
        "target",
        nargs="*",
        metavar="MODEL|TASK",
        help="with --task: a model (.onnx, TorchScript .ts/.pt, torch.export .pt2, or "
        "file.py:factory); without: an example task name (image, nlp, control), or `example NAME`",
    )
    compress.add_argument(
        "--task",
        dest="task_kind",
        metavar="KIND",
        help="what the model does: classification, regression, embedding, or a Task class of "
        "your own as file.py:Class / package.module:Class",
    )
    compress.add_argument(
        "--train", type=Path, help=".npz (or folder of .npy): inputs by name or `x`, targets `y`"
    )
    compress.add_argument("--eval", type=Path, help="held-out data, laid out as --train")
    compress.add_argument(
        "--recipe", type=Path, help="recipe YAML/JSON (default: the example's, or one by kind)"
    )
    compress.add_argument(
        "--profile", default="host-1t", help="built-in profile name or a JSON/TOML profile file"
    )
    compress.add_argument(
        "--out", type=Path, help="output directory (default .edgeloop/compress/NAME)"
    )
    compress.add_argument("--max-trials", type=int)
    compress.add_argument("--time-budget", type=float, help="seconds; returns the best so far")
    compress.add_argument("--strategy", choices=["grid", "random"])
    compress.add_argument(
        "--push", metavar="URL", help="register the chosen model with the control plane at URL"
    )
    compress.add_argument("--app", help="application the pushed model serves (default: `default`)")
    compress.add_argument(
        "--plan", action="store_true", help="with --push: re-plan the fleet after registering"
    )
    compress.add_argument(
        "--name", help="model name to register (default: the model file's name, or the example)"
    )
    compress.add_argument("--version", help="version to register (default: a content hash)")
    token_option(compress)
    compress.set_defaults(run=_compress)


def _compress(args: argparse.Namespace) -> int:
    # Models converted or exported from the user's file live here for the run; every trial
    # copies what it keeps into the output directory.
    with tempfile.TemporaryDirectory(prefix="edgeloop-source-") as scratch:
        return _search_and_publish(args, Path(scratch))


def _search_and_publish(args: argparse.Namespace, scratch: Path) -> int:
    from edgeloop.agent.profiles import load_profile
    from edgeloop.compressor.compress import compress
    from edgeloop.compressor.passes.base import RecipeError

    try:
        for flag in ("app", "plan"):
            if getattr(args, flag) and not args.push:
                raise ValueError(f"--{flag} goes with --push URL")
        profile = load_profile(args.profile)
        if args.task_kind is not None:
            task, recipe = _user_model(args, scratch)
        else:
            task, recipe = _example(args)
        if args.strategy:
            recipe.search.strategy = args.strategy
    except (ValueError, OSError, ImportError, TypeError) as exc:
        return _refuse(exc)
    out = args.out or Path(".edgeloop/compress") / task.name
    try:
        result = compress(
            task, recipe, profile, out, max_trials=args.max_trials, time_budget_s=args.time_budget
        )
    except RecipeError as exc:  # a pass that cannot work on this task's model at all
        return _refuse(exc)
    print(f"report: {out / 'report.json'}  plot: {out / 'pareto.png'}")
    if result.chosen is None:
        return 1
    from edgeloop.cli.models import upload_bars
    from edgeloop.compressor.compress import built_model
    from edgeloop.server.client import ApiClient, ApiError

    version = args.version or result.chosen.key[:12]
    try:
        built = built_model(task, result, out, name=args.name or task.name, version=version)
    except ValueError as exc:
        print(f"edgeloop compress: not publishable: {exc}", file=sys.stderr)
        return 1 if args.push else 0
    # What `edgeloop models push DIR` registers as the version's metadata.
    (out / "model_report.json").write_text(built.report.model_dump_json(indent=2))
    if args.push:
        try:
            client = ApiClient(args.push, token=args.token)
            pareto = out / "pareto.png"
            with upload_bars() as progress:
                client.push_model(
                    model_card(built, application=args.app or "default"),
                    built.model_path,
                    built.golden_path,
                    plan=args.plan,
                    pareto_path=pareto if pareto.is_file() else None,
                    progress=progress,
                )
        except ApiError as exc:
            print(f"edgeloop compress: not pushed: {exc}", file=sys.stderr)
            return 1
        print(f"registered {built.name}:{built.version} at {args.push}")
    return 0


def _example(args: argparse.Namespace) -> tuple[Task, Recipe]:
    """A shipped example and its recipe (or ``--recipe``)."""
    from edgeloop.compressor.examples import example_recipe, example_task
    from edgeloop.compressor.recipe import load_recipe

    target = args.target[1:] if args.target[:1] == ["example"] else args.target
    if len(target) > 1:
        raise ValueError("name one task, e.g. `edgeloop compress example image`")
    if target and _looks_like_a_model(target[0]):
        raise ValueError(
            f"{target[0]} looks like a model: say what it does with --task KIND "
            "(classification, regression, embedding or file.py:Class) and give --train/--eval"
        )
    for flag in ("train", "eval"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag} goes with a model of your own and --task KIND")
    if args.recipe:
        recipe = load_recipe(args.recipe)
    elif target:
        recipe = load_recipe(example_recipe(target[0]))
    else:
        raise ValueError(f"give a model and --task, or an example task; usage: {USAGE}")
    name = target[0] if target else recipe.task
    if name is None:
        raise ValueError("the recipe names no `task:`; give one, e.g. `edgeloop compress image`")
    return example_task(name), recipe


def _user_model(args: argparse.Namespace, scratch: Path) -> tuple[Task, Recipe]:
    """The user's model and data as a task, the recipe fitted to it, both explained."""
    from edgeloop.compressor.filetask import FileTask
    from edgeloop.compressor.recipe import load_recipe
    from edgeloop.compressor.sources import default_recipe, load_task

    if len(args.target) > 1:
        raise ValueError(f"give one model, got {' '.join(args.target)}")
    model = args.target[0] if args.target else None
    task = load_task(model, args.task_kind, args.train, args.eval, work_dir=scratch)
    if isinstance(task, FileTask):
        for line in task.model.messages:
            print(line)
    recipe = load_recipe(args.recipe) if args.recipe else default_recipe(task)
    start: ModelKind = "onnx" if isinstance(task.source(), Path) else "torch"
    _, skipped = recipe.for_source(start, why=task.onnx_only_reason())
    for line in skipped:
        print(line)
    return task, recipe


def _looks_like_a_model(target: str) -> bool:
    return Path(target).suffix in {".onnx", ".ts", ".pt", ".pth", ".pt2", ".jit"} or (":" in target)


def _refuse(exc: Exception) -> int:
    from edgeloop.compressor.datafiles import DataFileError
    from edgeloop.compressor.passes.base import RecipeError

    kind = (
        "recipe"
        if isinstance(exc, RecipeError)
        else "data"
        if isinstance(exc, DataFileError)
        else "input"
    )
    print(f"edgeloop compress: bad {kind}: {exc}", file=sys.stderr)
    return 2


def model_card(built: BuiltModel, *, application: str = "default") -> ModelCard:
    """What the control plane registers about a compressor output: its I/O contract, the
    golden tolerance the compressor chose, its report as the version's figures, and the
    application it serves."""
    from edgeloop.server.schemas import ModelCard, ModelFigures

    return ModelCard(
        name=built.name,
        version=built.version,
        inputs=built.inputs,
        outputs=built.outputs,
        golden_atol=built.report.golden_atol,
        report=ModelFigures.model_validate(built.report.model_dump()),
        application=application,
    )
