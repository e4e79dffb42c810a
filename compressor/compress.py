"""``edgeloop compress``: search a recipe for a profile, write the chosen artifact and a report.

Output directory::

    report.json     every trial (recipe, metric, drop absolute and relative, size, zstd size,
                    ratio, latency p50/p95, peak memory, weight and output error), the Pareto
                    front, the choice and why, the metric's direction, the recipe steps skipped
    pareto.png      the front: metric vs latency, size as marker area
    model.onnx      the chosen candidate (absent when nothing fits)
    golden.npz      its golden inputs/outputs for the device gate
    model_report.json  the chosen model's :class:`ModelReport` with the search's trials
                    (``edgeloop compress`` writes it with :func:`built_model`; a push registers
                    it, and uploads pareto.png with it)
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgeloop.agent.protocol import DeviceProfile
from edgeloop.compressor.plots import plot_pareto
from edgeloop.compressor.recipe import Recipe
from edgeloop.compressor.report import (
    MAX_TRIAL_POINTS,
    BuiltModel,
    ModelReport,
    TrialPoint,
    golden_atol,
)
from edgeloop.compressor.search import Search, SearchResult, Trial
from edgeloop.compressor.task import Task


def compress(
    task: Task,
    recipe: Recipe,
    profile: DeviceProfile,
    out_dir: Path,
    *,
    max_trials: int | None = None,
    time_budget_s: float | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> SearchResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    search = Search(task, recipe, profile, out_dir / "work")
    result = search.run(max_trials=max_trials, time_budget_s=time_budget_s, progress=progress)
    (out_dir / "report.json").write_text(json.dumps(result.to_json(), indent=2, default=str))
    plot_pareto(result, out_dir / "pareto.png")
    if result.chosen is not None and result.chosen.model_path:
        shutil.copyfile(result.chosen.model_path, out_dir / "model.onnx")
        write_golden(task, out_dir / "model.onnx", out_dir / "golden.npz")
    if progress:
        print_result(result, console or Console(width=None if sys.stdout.isatty() else 200))
    return result


def built_model(
    task: Task, result: SearchResult, out_dir: Path, *, name: str, version: str
) -> BuiltModel:
    """The chosen candidate as a publishable model, its report as the server's metadata.

    Any finite metric is publishable: the report carries its name and direction
    (``metric_name``, ``higher_is_better``), and its drop both in the metric's units and
    relative to the baseline.

    Raises:
        ValueError: nothing was chosen, or its metric or the baseline's is not a finite number.
    """

    from edgeloop.agent.runtime import host_profile, io_specs, open_session

    chosen, baseline = result.chosen, result.baseline
    if chosen is None:
        raise ValueError(f"nothing to publish: {result.reason}")
    if not all(math.isfinite(m) for m in (chosen.metric, baseline.metric) if m is not None):
        raise ValueError(
            f"{task.metric} is not a finite number ({chosen.metric} vs {baseline.metric} for "
            "the baseline); a model is published with a number the control plane can rank"
        )
    model_path, golden_path = out_dir / "model.onnx", out_dir / "golden.npz"
    inputs, outputs = io_specs(open_session(model_path, host_profile(1)))
    quantized = any(step["pass"].startswith("quantize") for step in chosen.pipeline)
    report = ModelReport(
        variant=chosen.label,
        recipe=[step["pass"] for step in chosen.pipeline],
        size_bytes=chosen.size_bytes or 0,
        accuracy=chosen.metric or 0.0,
        baseline_accuracy=baseline.metric or 0.0,
        accuracy_drop=chosen.metric_drop or 0.0,
        relative_drop=chosen.relative_drop,
        higher_is_better=task.higher_is_better,
        compression_ratio=chosen.compression_ratio or 1.0,
        host_latency_p50_ms=chosen.latency_p50_ms or 0.0,
        host_latency_p95_ms=chosen.latency_p95_ms or 0.0,
        host_threads=result.profile.cpu_threads,
        golden_atol=golden_atol(golden_path, quantized=quantized),
        metric_name=task.metric,
        metrics=chosen.metrics,
        peak_rss_mb=chosen.peak_rss_mb,
        output_max_abs_err=chosen.output_max_abs_err,
        weight_error={k: v for k, v in chosen.notes.items() if k.startswith("weight_")},
        agreement_metric="argmax" if task.kind == "classification" else "cosine",
        trials=trial_points(result),
    )
    return BuiltModel(name, version, model_path, golden_path, inputs, outputs, report)


def trial_points(result: SearchResult) -> list[TrialPoint]:
    """The baseline and the trials that ran with every figure the plot needs, at most
    :data:`MAX_TRIAL_POINTS` of them (the baseline first, then in the order they ran)."""
    front = set(result.pareto)
    chosen_key = result.chosen.key if result.chosen else None
    points = [
        TrialPoint(
            label=trial.label[:256],
            metric=trial.metric,
            latency_p50_ms=trial.latency_p50_ms,
            size_bytes=trial.size_bytes,
            on_front=trial.key in front,
            chosen=trial.key == chosen_key,
        )
        for trial in [result.baseline, *result.trials]
        if trial.ok
        and trial.metric is not None
        and math.isfinite(trial.metric)
        and trial.latency_p50_ms is not None
        and trial.size_bytes
    ]
    return points[:MAX_TRIAL_POINTS]


def write_golden(task: Task, model_path: Path, golden_path: Path) -> None:
    """The device gate's reference for ``model_path``: eight of the task's evaluation inputs
    and the outputs the artifact itself gives for them."""
    from edgeloop.agent.runtime import record_golden

    feeds = task.eval_feeds(8)
    record_golden(model_path, {name: value[:8] for name, value in feeds[0].items()}, golden_path)


def print_result(result: SearchResult, console: Console) -> None:
    table = Table(title=f"{result.task} for profile '{result.profile.name}'")
    for column in (
        "candidate",
        result.metric,
        "drop",
        "size KB",
        "ratio",
        "zstd KB",
        "p50 ms",
        "p95 ms",
        "speed-up",
        "mem MB",
        "fits",
    ):
        table.add_column(column, justify="left" if column == "candidate" else "right")
    front = set(result.pareto)
    for trial in [result.baseline, *result.trials]:
        table.add_row(*_row(trial, trial.key in front, result.chosen))
    console.print(table)
    console.print(("[green]chosen[/]: " if result.chosen else "[red]none[/]: ") + result.reason)
    if result.stopped_early:
        console.print(f"[yellow]stopped early[/]: {result.stopped_early}")


def _row(t: Trial, on_front: bool, chosen: Trial | None) -> list[str]:
    name = ("★ " if chosen and t.key == chosen.key else "") + t.label + (" ◆" if on_front else "")
    if not t.ok:
        return [name, f"[red]failed[/] {t.error or ''}"[:60], *[""] * 9]
    return [
        name,
        f"{t.metric:.4f}",
        f"{t.metric_drop or 0:+.4f}"
        + (f" ({t.relative_drop:+.1%})" if t.relative_drop is not None else ""),
        f"{(t.size_bytes or 0) / 1024:.1f}",
        f"{t.compression_ratio or 0:.2f}×",
        f"{(t.size_zstd_bytes or 0) / 1024:.1f}",
        f"{t.latency_p50_ms:.3f}",
        f"{t.latency_p95_ms:.3f}",
        f"{t.speedup or 0:.2f}×",
        f"{t.peak_rss_mb:.0f}",
        "[green]yes[/]" if t.fits else "[red]no[/] " + "; ".join(t.misses),
    ]
