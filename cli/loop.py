"""``edgeloop loop run|history|calibrations``: the closed loop, over the control plane."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import JsonValue
from rich.console import Console
from rich.table import Table

from edgeloop.agent.protocol import DeviceProfile
from edgeloop.cli.output import api_options, ms, over_api, print_json
from edgeloop.server.client import ApiClient, ApiError

if TYPE_CHECKING:
    from edgeloop.compressor.recipe import Recipe
    from edgeloop.compressor.task import Task


def register(commands: argparse._SubParsersAction) -> None:
    loop = commands.add_parser(
        "loop", help="the closed compression loop: its decisions and calibrations"
    )
    loop.add_argument("action", choices=["run", "history", "calibrations"])
    loop.add_argument(
        "example",
        nargs="?",
        help="run: a bundled example task to compress (image, image-wide, nlp, control); or "
        "give your own model with --model/--task/--train/--eval",
    )
    loop.add_argument(
        "--app",
        help="run: the application whose devices the loop serves (default: `default`); its "
        "candidates are registered as versions of it",
    )
    loop.add_argument("--model", help="run: your model (.onnx, TorchScript, .pt2, pkg.mod:factory)")
    loop.add_argument(
        "--task",
        help="run: classification, regression, embedding, or a script's task (file.py:Class)",
    )
    loop.add_argument("--train", type=Path, help="run: training data (.npz or a folder of .npy)")
    loop.add_argument("--eval", type=Path, help="run: evaluation data (.npz or a folder of .npy)")
    loop.add_argument("--recipe", type=Path, help="run: recipe (default: the task's)")
    loop.add_argument(
        "--loop",
        dest="loop_name",
        help="the loop's name, also the model name (default: the application, else the example)",
    )
    loop.add_argument("--max-rounds", type=int, default=4, help="run: stop after N rounds")
    loop.add_argument(
        "--workdir", type=Path, default=Path(".edgeloop/loop"), help="run: candidates cache"
    )
    api_options(loop)
    loop.set_defaults(run=over_api(_loop))


def _loop_run(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    """Tune every device class of the application registered with the control plane (its
    devices' profiles)."""
    from edgeloop.loop import CandidatePool, Loop

    application = args.app or "default"
    task, recipe, name = _loop_task(args)
    profiles: dict[str, DeviceProfile] = {}
    for device in client.devices(application=application):
        profiles.setdefault(device.profile.name, device.profile)
    if not profiles:
        raise ApiError(
            f"no devices of application '{application}' are registered: start agents first"
            + ("" if args.app else " (or name the application with --app)")
        )
    loop_name = args.loop_name or (args.app if args.app else name)
    pool = CandidatePool(task, recipe, args.workdir / loop_name, progress=True)
    loop = Loop(
        client, loop_name, list(profiles.values()), pool,
        max_rounds=args.max_rounds,
        application=application,
        on_round=lambda record, _: console.print(
            f"round {record.round}: "
            + "; ".join(f"{d.profile} {d.action}" for d in record.decisions)
        ),
    )  # fmt: skip
    result = loop.run()
    console.print(result.reason)
    return 0 if result.converged else 1


def _loop_task(args: argparse.Namespace) -> tuple[Task, Recipe, str]:
    """The task and recipe to build candidates from: a bundled example, or the user's model
    and data (as ``edgeloop compress MODEL --task ...`` takes them)."""
    from edgeloop.compressor.examples import example_recipe, example_task
    from edgeloop.compressor.recipe import load_recipe

    own = [args.model, args.task, args.train, args.eval]
    try:
        if any(own):
            if args.example:
                raise ValueError("give an EXAMPLE or your own --model, not both")
            if not all(own):
                raise ValueError("your own model needs --model, --task, --train and --eval")
            from edgeloop.compressor.sources import default_recipe, load_task

            task = load_task(args.model, args.task, args.train, args.eval)
            recipe = load_recipe(args.recipe) if args.recipe else default_recipe(task)
            return task, recipe, task.name
        if not args.example:
            raise ValueError(
                "loop run needs an EXAMPLE task (e.g. `edgeloop loop run image`) or your own "
                "model (--model M --task KIND --train T.npz --eval E.npz)"
            )
        task = example_task(args.example)
        return task, load_recipe(args.recipe or example_recipe(args.example)), args.example
    except (ValueError, OSError) as exc:
        raise ApiError(str(exc)) from None


def _loop(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    if args.action == "run":
        return _loop_run(client, args, console)
    if args.action == "calibrations":
        from edgeloop.loop.costmodel import Calibration

        rows = client.calibrations()
        if args.json:
            print_json(rows)
            return 0
        table = Table(title="cost-model calibration per device class (from device reports)")
        for column in ("class", "reports", "class-wide scale", "per op class", "error (LOO)",
                       "memory offset MB", "W/core"):  # fmt: skip
            table.add_column(column, justify="left" if column == "class" else "right")
        for row in rows:
            try:
                c = Calibration.from_json(row.calibration)
            except (TypeError, KeyError, ValueError) as exc:
                raise ApiError(
                    f"the stored calibration of {row.profile} is not one this edgeloop reads "
                    f"({exc}); the next `edgeloop loop run` replaces it"
                ) from None
            loo = c.latency_loo_error
            table.add_row(
                row.profile,
                str(row.observations),
                f"{c.class_scale:.3f}",
                ", ".join(f"{k} {v:.2f}" for k, v in sorted(c.scales.items())) or "-",
                f"{loo:.1%}" if loo is not None else "-",
                f"{c.memory_offset_mb:.1f}",
                f"{c.watts_per_core:.2f}",
            )
        console.print(table)
        return 0
    rows = client.decisions(loop=args.loop_name)
    if args.json:
        print_json(rows)
        return 0
    table = Table(title=f"loop history ({len(rows)} decisions)")
    for column in ("round", "class", "decision", "model", "measured p95 ms", "budget ms", "why"):
        table.add_column(column, overflow="fold")
    for row in rows:
        budget = _figure(row.figures, "budget", "latency_p95_ms")
        table.add_row(
            str(row.round),
            row.profile,
            row.action,
            row.model or "-",
            ms(_figure(row.figures, "measured", "p95_ms")),
            f"{budget:g}" if budget else "-",
            row.reason,
        )
    console.print(table)
    return 0


def _figure(figures: Mapping[str, JsonValue], group: str, name: str) -> float | None:
    """One number of a decision's figures (the loop records them as free-form JSON)."""
    values = figures.get(group)
    value = values.get(name) if isinstance(values, dict) else None
    return float(value) if isinstance(value, int | float) else None
