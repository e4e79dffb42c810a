"""The Pareto front as a picture: metric vs latency, marker area by size."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgeloop.compressor.search import SearchResult


def plot_pareto(result: SearchResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = [t for t in [result.baseline, *result.trials] if t.ok]
    front = set(result.pareto)
    biggest = max(t.size_bytes or 1 for t in trials)
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    for trial in trials:
        on_front = trial.key in front
        ax.scatter(
            trial.latency_p50_ms,
            trial.metric,
            s=30 + 400 * (trial.size_bytes or 0) / biggest,
            c="tab:orange" if on_front else "tab:gray",
            alpha=0.8 if on_front else 0.4,
            edgecolors="black" if result.chosen and trial.key == result.chosen.key else "none",
            linewidths=2,
        )
        if on_front:
            ax.annotate(
                trial.label,
                (trial.latency_p50_ms or 0, trial.metric or 0),
                fontsize=6,
                xytext=(4, 4),
                textcoords="offset points",
            )
    budget = result.profile.latency_budget_ms
    if budget <= 1.5 * max(t.latency_p50_ms or 0 for t in trials):
        ax.axvline(
            budget,
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label=f"latency budget ({budget:g} ms, p95)",
        )
    else:
        ax.plot([], [], " ", label=f"latency budget {budget:g} ms (p95): right of the chart")
    ax.set_xlabel(f"latency p50, ms (batch 1, {result.profile.cpu_threads} thread(s))")
    ax.set_ylabel(result.metric)
    ax.set_title(
        f"{result.task} on '{result.profile.name}': Pareto front in orange, "
        "chosen outlined; area ∝ size",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
