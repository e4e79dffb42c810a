"""``edgeloop bench NAME --json PATH``: one format for every benchmark.

Output: ``{"bench": NAME, "machine": {...}, "figures": [{"name", "value", "unit", "goal",
"met"}]}``. A goal is a comparison such as ``">= 2"`` or ``"<= 120"``; ``met`` says whether
the measured value satisfies it. A missed goal is reported as missed, never tuned away.
"""

from __future__ import annotations

import json
import operator
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}


@dataclass
class Figure:
    name: str
    value: float | None  # None: the figure could not be measured (reported as missed)
    unit: str
    goal: str
    met: bool | None = field(default=None)

    def __post_init__(self) -> None:
        if self.met is None and self.value is not None:
            self.met = goal_met(self.value, self.goal)


def goal_met(value: float, goal: str) -> bool | None:
    """Evaluate a goal like ``">= 0.8"``; ``None`` when the goal is informational."""
    for symbol in sorted(_OPS, key=len, reverse=True):
        if goal.startswith(symbol):
            try:
                return bool(_OPS[symbol](value, float(goal[len(symbol) :].strip())))
            except ValueError:
                return None
    return None


def machine_info() -> dict[str, Any]:
    import onnxruntime

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu or platform.machine(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
    }


def write_bench(
    name: str,
    figures: list[Figure],
    json_path: Path | None,
    console: Console | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    result = {"bench": name, "machine": machine_info(), "figures": [asdict(f) for f in figures]}
    result |= extra or {}
    table = Table(title=f"bench {name}")
    for column in ("figure", "value", "unit", "goal", "met"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for f in figures:
        met = {True: "[green]met[/]", False: "[red]missed[/]", None: "—"}[f.met]
        value = "—" if f.value is None else f"{f.value:.4g}"
        table.add_row(f.name, value, f.unit, f.goal, met)
    (console or Console(width=None if sys.stdout.isatty() else 150)).print(table)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2))
    return result


BENCHES: dict[str, str] = {
    "demo": "edgeloop.lab.bench.demo",
    "compress": "edgeloop.lab.bench.compress",
    "agent": "edgeloop.lab.bench.agent",
    "loop": "edgeloop.lab.bench.loop",
    "robustness": "edgeloop.lab.bench.robustness",
    "security": "edgeloop.lab.bench.security",
    "dashboard": "edgeloop.lab.bench.dashboard",
}
"""Benchmark name -> its module; each module's ``run(args)`` measures and returns figures."""


def run_bench(name: str, args: Any) -> list[Figure]:
    """Import the benchmark's module only now: the compress bench loads torch, the others not."""
    import importlib

    module = importlib.import_module(BENCHES[name])
    return list(module.run(args))
