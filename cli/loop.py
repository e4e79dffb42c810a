"""``edgeloop loop run|history|calibrations``: the closed loop, over the control plane."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from pydantic import JsonValue
from rich.console import Console
from rich.table import Table

from edgeloop.cli.output import api_options, ms, over_api, print_json
from edgeloop.server.client import ApiClient, ApiError


def register(commands: argparse._SubParsersAction) -> None:
    loop = commands.add_parser(
        "loop", help="the closed compression loop: its decisions and calibrations"
    )
    loop.add_argument("action", choices=["run", "history", "calibrations"])
    loop.add_argument(
        "example", nargs="?", help="run: the example task to compress (image, image-wide, nlp)"
    )
    loop.add_argument("--recipe", type=Path, help="run: recipe (default: the example's)")
    loop.add_argument("--loop", dest="loop_name", help="the loop's name (default: the example)")
    loop.add_argument("--max-rounds", type=int, default=4, help="run: stop after N rounds")
    loop.add_argument(
        "--workdir", type=Path, default=Path(".edgeloop/loop"), help="run: candidates cache"
    )
    api_options(loop)
    loop.set_defaults(run=over_api(_loop))


def _loop_run(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    """Tune every device class registered with the control plane (its devices' profiles)."""
    from edgeloop.agent.protocol import DeviceProfile
    from edgeloop.compressor.examples import example_recipe, example_task
    from edgeloop.compressor.recipe import load_recipe
    from edgeloop.loop import CandidatePool, Loop

    if not args.example:
        raise ApiError("loop run needs an EXAMPLE task, e.g. `edgeloop loop run image`")
    profiles: dict[str, DeviceProfile] = {}
    for device in client.devices():
        profiles.setdefault(device.profile.name, device.profile)
    if not profiles:
        raise ApiError("no devices are registered: start agents first")
    try:
        task = example_task(args.example)
        recipe = load_recipe(args.recipe or example_recipe(args.example))
    except ValueError as exc:
        raise ApiError(str(exc)) from None
    pool = CandidatePool(task, recipe, args.workdir / args.example, progress=True)
    loop = Loop(
        client, args.loop_name or args.example, list(profiles.values()), pool,
        max_rounds=args.max_rounds,
        on_round=lambda record, _: console.print(
            f"round {record.round}: "
            + "; ".join(f"{d.profile} {d.action}" for d in record.decisions)
        ),
    )  # fmt: skip
    result = loop.run()
    console.print(result.reason)
    return 0 if result.converged else 1


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
