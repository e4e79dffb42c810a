"""Search compression pipelines for a device profile, by measurement.

Every trial is exported, scored with the task's metric, timed with onnxruntime at the
profile's thread count and execution providers, and probed for peak memory. Results are
saved one file per trial as each finishes (keyed by content: teacher, pipeline, profile), so
an interrupted or time-limited search keeps what it measured and a re-run is cheap.

The baseline is the fp32 export of a PyTorch source, or an ONNX source file itself; the recipe
is fitted to the source first (:meth:`Recipe.for_source`), and the steps it lost are listed in
the result with why.

Choice: the most accurate candidate that meets the profile's latency (p95), memory, size
and accuracy budgets and the recipe's constraints. A candidate slower than the fp32 baseline
is never chosen for speed: when the baseline's latency fits, slower candidates are only
eligible if the baseline fails another budget (size, memory) that they meet.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zstandard
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgeloop.agent.protocol import DeviceProfile
from edgeloop.agent.runtime import latency_stats, open_session
from edgeloop.compressor import evaluate
from edgeloop.compressor.passes import RecipeError, get_pass
from edgeloop.compressor.pipeline import Pipeline, StageCache, _hash
from edgeloop.compressor.recipe import Recipe, describe, label
from edgeloop.compressor.task import Task

log = logging.getLogger("edgeloop.compressor.search")

TRIAL_SCHEMA = 2
"""Bumped whenever what a trial measures changes, so older saved trials are measured again."""

SLOWER_TOLERANCE = 1.05
"""A candidate within 5% of the baseline's p50 counts as "not slower": single-call medians
on a shared 2-core host move by a few percent between identical runs."""


@dataclass
class Trial:
    key: str
    label: str
    pipeline: list[dict[str, Any]]
    ok: bool
    metrics: dict[str, float] = field(default_factory=dict)
    metric: float | None = None
    metric_drop: float | None = None
    relative_drop: float | None = None
    size_bytes: int | None = None
    size_zstd_bytes: int | None = None
    compression_ratio: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    speedup: float | None = None
    peak_rss_mb: float | None = None
    output_max_abs_err: float | None = None
    output_mean_abs_err: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    model_path: str | None = None
    seconds: float = 0.0
    fits: bool | None = None
    misses: list[str] = field(default_factory=list)


@dataclass
class SearchResult:
    task: str
    metric: str
    profile: DeviceProfile
    baseline: Trial
    trials: list[Trial]
    pareto: list[str]
    chosen: Trial | None
    reason: str
    stopped_early: str | None = None
    higher_is_better: bool = True
    skipped: list[str] = field(default_factory=list)
    """Recipe steps that do not apply to the task's model, each with why."""

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "skipped": self.skipped,
            "profile": self.profile.model_dump(mode="json"),
            "baseline": asdict(self.baseline),
            "trials": [asdict(t) for t in self.trials],
            "pareto": self.pareto,
            "chosen": asdict(self.chosen) if self.chosen else None,
            "reason": self.reason,
            "stopped_early": self.stopped_early,
        }


class Search:
    def __init__(
        self, task: Task, recipe: Recipe, profile: DeviceProfile, work_dir: Path, *, seed: int = 0
    ) -> None:
        self.task, self.recipe, self.profile = task, recipe, profile
        self.work_dir = work_dir
        self.stages = StageCache(work_dir / "stages", task, seed)
        self.trial_dir = work_dir / "trials"
        self.trial_dir.mkdir(parents=True, exist_ok=True)
        self._reference: list[np.ndarray] | None = None
        self._baseline_session: Any = None

    def run(
        self,
        *,
        max_trials: int | None = None,
        time_budget_s: float | None = None,
        progress: bool = True,
    ) -> SearchResult:
        max_trials = max_trials or self.recipe.search.max_trials
        time_budget_s = time_budget_s or self.recipe.search.time_budget_s
        source, _ = self.stages.source()
        recipe, skipped = self.recipe.for_source(source.kind, why=self.task.onnx_only_reason())
        baseline_pipeline: Pipeline = (
            [("export", get_pass("export").config())] if source.kind == "torch" else []
        )
        pipelines = [p for p in recipe.trials() if describe(p) != describe(baseline_pipeline)]
        if max_trials is not None:
            pipelines = pipelines[:max_trials]
        started = time.monotonic()
        baseline = self.evaluate(baseline_pipeline)
        if not baseline.ok or baseline.model_path is None:
            raise RuntimeError(f"the fp32 baseline failed: {baseline.error}")
        self._reference = evaluate.outputs(Path(baseline.model_path), self.task.eval_feeds())
        self._baseline_session = open_session(Path(baseline.model_path), self.profile)
        trials: list[Trial] = []
        stopped = None
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[last]}"),
        )
        with Progress(*columns, disable=not progress, transient=False) as bar:
            job = bar.add_task(f"search {self.task.name}", total=len(pipelines), last="")
            for pipeline in pipelines:
                if time_budget_s is not None and time.monotonic() - started > time_budget_s:
                    stopped = f"time budget of {time_budget_s:.0f}s reached"
                    break
                trial = self.evaluate(pipeline)
                trials.append(trial)
                summary = (
                    f"{trial.label}: {self.task.metric}={trial.metric:.4f} "
                    f"p50={trial.latency_p50_ms:.3f}ms"
                    if trial.ok
                    else f"{trial.label}: failed"
                )
                bar.update(job, advance=1, last=summary)
        for trial in [baseline, *trials]:
            self._judge(trial, baseline)
        pareto = pareto_front([t for t in [baseline, *trials] if t.ok], self.task.higher_is_better)
        chosen, reason = self._choose(baseline, trials)
        return SearchResult(
            self.task.name,
            self.task.metric,
            self.profile,
            baseline,
            trials,
            [t.key for t in pareto],
            chosen,
            reason,
            stopped,
            self.task.higher_is_better,
            skipped,
        )

    # ------------------------------------------------------------------ one trial

    def evaluate(self, pipeline: Pipeline) -> Trial:
        """Build and measure one pipeline; a failing pass marks the trial failed, no more."""
        _, source_key = self.stages.source()
        key = _hash(
            str(TRIAL_SCHEMA),
            source_key,
            json.dumps(describe(pipeline), sort_keys=True),
            self.profile.model_dump_json(),
        )
        saved = self.trial_dir / f"{key[:24]}.json"
        if saved.exists():
            trial = Trial(**json.loads(saved.read_text()))
            if trial.model_path is None or Path(trial.model_path).exists():
                return trial
        started = time.perf_counter()
        try:
            model, _ = self.stages.run(pipeline)
            trial = self._measure(key, pipeline, model.path, model.notes)
        except RecipeError:
            raise
        except Exception as exc:  # a pass blowing up fails its trial, never the search
            log.warning("trial %s failed: %s: %s", label(pipeline), type(exc).__name__, exc)
            trial = Trial(
                key,
                label(pipeline),
                describe(pipeline),
                ok=False,
                error=f"{type(exc).__name__}: {exc}",
            )
        trial.seconds = time.perf_counter() - started
        saved.write_text(json.dumps(asdict(trial), default=str))
        return trial

    def _measure(self, key: str, pipeline: Pipeline, path: Path, notes: dict[str, Any]) -> Trial:
        kept = self.trial_dir / key[:24] / "model.onnx"
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, kept)
        data = kept.read_bytes()
        metrics = self.task.score(kept, threads=self.profile.cpu_threads)
        session = open_session(kept, self.profile)
        feed = self.task.latency_feed()
        if self._baseline_session is None:
            times = evaluate.latency_feed(session, feed, runs=200, min_seconds=1.0)
            speedup = 1.0
        else:
            paired = evaluate.interleaved(
                {"trial": session, "baseline": self._baseline_session}, feed, min_seconds=2.0
            )
            times = paired["trial"]
            speedup = float(np.median(paired["baseline"]) / np.median(times))
        stats = latency_stats(times)
        produced = evaluate.outputs(kept, self.task.eval_feeds())
        reference = self._reference if self._reference is not None else produced
        errors = [
            np.abs(a.astype(np.float64) - b) for a, b in zip(produced, reference, strict=True)
        ]
        trial = Trial(
            key=key,
            label=label(pipeline),
            pipeline=describe(pipeline),
            ok=True,
            metrics=metrics,
            metric=metrics[self.task.metric],
            size_bytes=len(data),
            size_zstd_bytes=len(zstandard.ZstdCompressor(level=19).compress(data)),
            latency_p50_ms=stats.p50_ms,
            latency_p95_ms=stats.p95_ms,
            speedup=speedup,
            peak_rss_mb=evaluate.peak_memory_mb(
                kept, self.task.latency_feed(), self.profile.cpu_threads
            ),
            output_max_abs_err=max(float(e.max()) for e in errors),
            output_mean_abs_err=float(np.mean([e.mean() for e in errors])),
            notes=notes,
            model_path=str(kept),
        )
        return trial

    # ------------------------------------------------------------------ choosing

    def _judge(self, trial: Trial, baseline: Trial) -> None:
        if not trial.ok:
            trial.fits = False
            return
        assert trial.metric is not None and baseline.metric is not None
        sign = 1 if self.task.higher_is_better else -1
        trial.metric_drop = sign * (baseline.metric - trial.metric) + 0.0  # never -0.0
        if baseline.metric != 0:
            trial.relative_drop = trial.metric_drop / abs(baseline.metric)
        trial.compression_ratio = (baseline.size_bytes or 0) / max(trial.size_bytes or 1, 1)
        trial.misses = self._misses(trial, baseline)
        trial.fits = not trial.misses

    def _misses(self, trial: Trial, baseline: Trial) -> list[str]:
        p, c = self.profile, self.recipe.constraints
        misses = []
        if trial.latency_p95_ms is not None and trial.latency_p95_ms > p.latency_budget_ms:
            misses.append(f"latency p95 {trial.latency_p95_ms:.3f} ms > {p.latency_budget_ms:g} ms")
        if trial.peak_rss_mb is not None and trial.peak_rss_mb > p.memory_budget_mb:
            misses.append(f"memory {trial.peak_rss_mb:.0f} MB > {p.memory_budget_mb:g} MB")
        if (
            p.model_size_budget_kb is not None
            and (trial.size_bytes or 0) / 1024 > p.model_size_budget_kb
        ):
            misses.append(
                f"size {(trial.size_bytes or 0) / 1024:.0f} KB > {p.model_size_budget_kb:g} KB"
            )
        if (
            p.min_accuracy is not None
            and self.task.kind == "classification"
            and (trial.metric or 0) < p.min_accuracy
        ):
            misses.append(f"{self.task.metric} {trial.metric:.4f} < {p.min_accuracy:g}")
        if c.max_metric_drop is not None and (trial.metric_drop or 0) > c.max_metric_drop + 1e-12:
            misses.append(
                f"{self.task.metric} drop {trial.metric_drop:.4f} > {c.max_metric_drop:g}"
            )
        if c.min_speedup is not None and (trial.speedup or 0) < c.min_speedup:
            misses.append(f"speed-up {trial.speedup or 0:.2f}x < {c.min_speedup:g}x")
        if c.max_relative_drop is not None:
            allowed = c.max_relative_drop * abs(baseline.metric or 0)
            if (trial.metric_drop or 0) > allowed + 1e-12:
                misses.append(
                    f"{self.task.metric} drop {trial.metric_drop:.4g} > "
                    f"{c.max_relative_drop:.0%} of the fp32 value"
                )
        if c.min_metric is not None and (trial.metric or -math.inf) < c.min_metric:
            misses.append(f"{self.task.metric} {trial.metric:.4f} < {c.min_metric:g}")
        if c.max_metric is not None and trial.metric is not None and trial.metric > c.max_metric:
            misses.append(f"{self.task.metric} {trial.metric:.4f} > {c.max_metric:g}")
        return misses

    def _choose(self, baseline: Trial, trials: list[Trial]) -> tuple[Trial | None, str]:
        candidates = [baseline, *[t for t in trials if t.ok]]
        baseline_only_slow = all(m.startswith("latency") for m in baseline.misses)
        eligible = []
        for trial in candidates:
            if not trial.fits:
                continue
            slower = (trial.speedup or 1.0) * SLOWER_TOLERANCE < 1.0
            if slower and trial is not baseline and baseline_only_slow:
                trial.misses.append("slower than the fp32 baseline")
                continue
            eligible.append(trial)
        sign = 1 if self.task.higher_is_better else -1
        if eligible:
            # Ties on the metric are broken by the paired speed-up, which can disagree with the
            # separately timed p50 the front uses; pick from the front so the two never clash.
            front = pareto_front(candidates, self.task.higher_is_better)
            eligible = [t for t in eligible if any(t is f for f in front)] or eligible
            if self.recipe.search.objective == "size":
                best = min(eligible, key=lambda t: (t.size_bytes or 0, -sign * (t.metric or 0)))
                goal = "smallest"
            else:
                best = max(
                    eligible,
                    key=lambda t: (sign * (t.metric or 0), t.speedup or 0, -(t.size_bytes or 0)),
                )
                goal = "most accurate"
            return best, (
                f"{goal} of {len(eligible)} candidates that fit '{self.profile.name}': "
                f"{self.task.metric} {best.metric:.4f}, p95 {best.latency_p95_ms:.3f} ms, "
                f"{(best.size_bytes or 0) / 1024:.1f} KB"
            )
        measured = [t for t in candidates if t.ok]
        closest = min(measured, key=lambda t: (len(t.misses), t.latency_p95_ms or 0))
        return None, (
            f"no candidate fits '{self.profile.name}'; closest is {closest.label}: "
            + "; ".join(closest.misses)
        )


def pareto_front(trials: list[Trial], higher_is_better: bool = True) -> list[Trial]:
    """Trials not dominated on (metric, p50 latency, size)."""
    sign = 1 if higher_is_better else -1

    def dominates(a: Trial, b: Trial) -> bool:
        better_or_equal = (
            sign * (a.metric or 0) >= sign * (b.metric or 0)
            and (a.latency_p50_ms or 0) <= (b.latency_p50_ms or 0)
            and (a.size_bytes or 0) <= (b.size_bytes or 0)
        )
        strictly = (
            sign * (a.metric or 0) > sign * (b.metric or 0)
            or (a.latency_p50_ms or 0) < (b.latency_p50_ms or 0)
            or (a.size_bytes or 0) < (b.size_bytes or 0)
        )
        return better_or_equal and strictly

    return [t for t in trials if not any(dominates(o, t) for o in trials if o is not t)]
