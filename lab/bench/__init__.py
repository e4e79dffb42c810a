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
from collections.abc import Callable
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


def bench_demo(args: Any) -> list[Figure]:
    from .demo import run_demo

    devices = args.devices
    result = run_demo(devices=devices, workdir=args.workdir / "bench-demo", broker=args.broker)
    reporting = sum(1 for d in result.devices if d["ok"])
    return [
        Figure("demo.devices_reporting", reporting, "devices", f">= {devices}"),
        Figure("demo.wall_s", round(result.wall_s, 2), "s", "<= 120"),
    ]


def bench_compress(args: Any) -> list[Figure]:
    from edgeloop.compressor.benchmark import GOALS, run_cases

    cases = args.cases.split(",") if getattr(args, "cases", None) else ["image", "nlp", "control"]
    figures, rows = run_cases(args.workdir / "bench-compress", cases)
    table = Table(title="compression cases (latency p50, batch 1)")
    for column in ("case", "model", "size KB", "metric", "value", "1 thread ms", "2 threads ms"):
        table.add_column(
            column, justify="left" if column in ("case", "model", "metric") else "right"
        )
    for row in rows:
        table.add_row(
            row.case,
            row.model,
            f"{row.size_bytes / 1024:.1f}",
            row.metric_name,
            f"{row.metric:.4f}",
            f"{row.latency_1t_ms:.3f}",
            f"{row.latency_2t_ms:.3f}",
        )
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    args.extra = {"cases": [row.to_json() for row in rows]}
    missing = [name for name in GOALS if name.split(".")[0] in cases and name not in figures]
    return [
        Figure(name, round(value, 5), *GOALS.get(name, ("", ""))) for name, value in figures.items()
    ] + [Figure(name, None, GOALS[name][0], GOALS[name][1], met=False) for name in missing]


def bench_agent(args: Any) -> list[Figure]:
    """The device agent: footprint, transfer, endpoint, kill -9 campaign, broker outage."""
    import shutil

    from .agentbench import footprint, kill9_campaign, outage_campaign

    root = args.workdir / "bench-agent"
    shutil.rmtree(root, ignore_errors=True)
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print("[bold]agent footprint, download, resume and endpoint[/]")
    foot = footprint(root / "footprint", padding_floats=0)
    runs = getattr(args, "runs", None) or 200
    console.print(f"[bold]kill -9 at {runs} random moments of updates[/]")
    kills = kill9_campaign(root / "kill9", runs, progress=True)
    outage_s = getattr(args, "outage", None) or 60.0
    console.print(f"[bold]broker stopped for {outage_s:.0f} s while telemetry flows[/]")
    outage = outage_campaign(root / "outage", outage_s)
    args.extra = {
        "footprint": foot.__dict__,
        "kill9": kills.__dict__,
        "outage": outage.__dict__,
    }
    return [
        Figure("agent.idle_rss_mb", round(foot.idle_rss_mb, 1), "MB", ""),
        Figure("agent.bare_runtime_rss_mb", round(foot.bare_rss_mb, 1), "MB", ""),
        Figure(
            "agent.idle_rss_ratio", round(foot.idle_rss_mb / foot.bare_rss_mb, 3), "x", "<= 1.15"
        ),
        Figure("agent.import_s", round(foot.import_s, 3), "s", "<= 1"),
        Figure("agent.download_vs_curl", round(foot.curl_s / foot.download_s, 3), "x", ">= 0.8"),
        Figure("agent.resume_resent_bytes", foot.resume_resent_bytes, "bytes", "<= 65536"),
        Figure("agent.resume_used_range", int(foot.resumed_with_range), "bool", ">= 1"),
        Figure("agent.endpoint_overhead_ms", round(foot.endpoint_ms - foot.direct_ms, 3), "ms", ""),
        Figure("agent.kill9_consistent", kills.consistent, "runs", f">= {kills.runs}"),
        Figure("agent.kill9_runs", kills.runs, "runs", f">= {runs}"),
        Figure("agent.outage_lost", outage.lost, "messages", "<= 0"),
        Figure("agent.outage_out_of_order", outage.out_of_order, "messages", "<= 0"),
        Figure("agent.outage_produced", outage.produced, "messages", ""),
    ]


def bench_loop(args: Any) -> list[Figure]:
    """The closed loop on emulated device classes (server/loopbench.py)."""
    from .loopbench import run_loop_bench

    runs = getattr(args, "runs", None) or 100
    bench = run_loop_bench(args.workdir / "bench-loop", broker=args.broker, runs=runs)
    args.extra = {
        "profiles": {n: p.model_dump(mode="json") for n, p in bench.profiles.items()},
        "optimal": bench.optimal,
        "mape_by_round": bench.mape_by_round,
        "truth_p95_ms": {
            name: {c.label: p95[c.key] for c in bench.candidates}
            for name, p95 in bench.truth.p95.items()
        },
        "mechanism": bench.truth.mechanism,
        "history": [{k: v for k, v in entry.items() if k != "figures"} for entry in bench.history],
        "wall_s": round(bench.wall_s, 1),
    }
    f = bench.figures
    classes = int(f["loop.classes"] or 0)

    def rounded(name: str) -> float | None:
        value = f[name]
        return None if value is None else round(value, 4)

    return [
        Figure("loop.rounds_to_converge", f["loop.rounds_to_converge"], "rounds", "<= 2"),
        Figure("loop.latency_mape_before", rounded("loop.latency_mape_before"), "fraction", ""),
        Figure("loop.latency_mape_after", rounded("loop.latency_mape_after"), "fraction", "<= 0.1"),
        Figure("loop.latency_mape_final", rounded("loop.latency_mape_final"), "fraction", ""),
        Figure("loop.device_vs_truth_mape", rounded("loop.device_vs_truth_mape"), "fraction", ""),
        Figure("loop.optimal_classes", f["loop.optimal_classes"], "classes", f">= {classes}"),
        Figure("loop.classes", classes, "classes", ">= 3"),
    ]


BENCHES: dict[str, Callable[[Any], list[Figure]]] = {
    "demo": bench_demo,
    "compress": bench_compress,
    "agent": bench_agent,
    "loop": bench_loop,
}
