"""The candidates a loop can ship: the search's models for a task and recipe, each timed on
this host at every thread count the device classes use.

The pool runs the compressor locally, like ``edgeloop compress``; the control plane never
imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edgeloop.agent.protocol import DeviceProfile
from edgeloop.agent.runtime import host_profile as this_host

if TYPE_CHECKING:
    from edgeloop.compressor.recipe import Recipe
    from edgeloop.compressor.task import Task
    from edgeloop.loop.costmodel import HostMeasurement, ModelFeatures

__all__ = ["Candidate", "CandidatePool", "variant_name"]


@dataclass(frozen=True)
class Candidate:
    """One compressed model the search built, with what the host measured at each thread
    count the classes use."""

    key: str
    label: str
    accuracy: float
    size_bytes: int
    model_path: Path
    golden_path: Path
    features: ModelFeatures
    host: dict[int, HostMeasurement]
    baseline: bool = False
    quantized: bool = False
    metric_name: str = "accuracy"
    higher_is_better: bool = True

    @property
    def rank(self) -> float:
        """The task metric turned so that larger is better (an error counts negated)."""
        return self.accuracy if self.higher_is_better else -self.accuracy

    @property
    def version(self) -> str:
        return self.key[:12]


class CandidatePool:
    """The search's candidates for a task and recipe, measured on this host per thread count.

    ``search(threads)`` runs :class:`~edgeloop.compressor.search.Search` for a host profile
    at that thread count; stages and trials are cached on disk by content, so a second call
    (the next round) re-reads rather than re-measures.
    """

    def __init__(
        self,
        task: Task,
        recipe: Recipe,
        workdir: Path,
        *,
        progress: bool = False,
        host_runs: int = 200,
    ) -> None:
        self.task, self.recipe, self.workdir, self.progress = task, recipe, workdir, progress
        self.host_runs = host_runs
        self._features: dict[Path, ModelFeatures] = {}
        """Static features per model file: computed once, every round re-reads the search."""

    @property
    def agreement_metric(self) -> Literal["argmax", "cosine"]:
        """How a device's probation compares this task's models: same top class for a
        classifier, cosine of the outputs otherwise (embeddings, regression, control)."""
        return "argmax" if self.task.kind == "classification" else "cosine"

    def search(self, thread_counts: Sequence[int]) -> list[Candidate]:
        from edgeloop.compressor.compress import write_golden
        from edgeloop.compressor.search import Search

        by_key: dict[str, dict[str, Any]] = {}
        """pipeline -> the trial and the host profiles (one per thread count) it was built for"""
        for threads in sorted(set(thread_counts)):
            host_profile = this_host(threads)
            result = Search(self.task, self.recipe, host_profile, self.workdir / "search").run(
                progress=self.progress
            )
            for trial in [result.baseline, *result.trials]:
                if not trial.ok or trial.model_path is None:
                    continue
                identity = json.dumps(trial.pipeline, sort_keys=True)
                entry = by_key.setdefault(
                    identity,
                    {"trial": trial, "profiles": [], "baseline": trial is result.baseline},
                )
                entry["profiles"].append(host_profile)
        candidates = []
        for entry in by_key.values():
            trial = entry["trial"]
            model_path = Path(trial.model_path)
            golden_path = model_path.with_name("golden.npz")
            if not golden_path.exists():
                write_golden(self.task, model_path, golden_path)
            host = {
                profile.cpu_threads: self._host(model_path, golden_path, profile)
                for profile in entry["profiles"]
            }
            candidates.append(
                Candidate(
                    key=trial.key,
                    label=variant_name(trial.pipeline),
                    accuracy=float(trial.metric),
                    size_bytes=int(trial.size_bytes or model_path.stat().st_size),
                    model_path=model_path,
                    golden_path=golden_path,
                    features=self._feature(model_path),
                    host=host,
                    baseline=entry["baseline"],
                    quantized=any(s["pass"].startswith("quantize") for s in trial.pipeline),
                    metric_name=self.task.metric,
                    higher_is_better=self.task.higher_is_better,
                )
            )
        return sorted(candidates, key=lambda c: (-c.rank, c.size_bytes))

    def _feature(self, model_path: Path) -> ModelFeatures:
        from edgeloop.loop.costmodel import features

        if model_path not in self._features:
            self._features[model_path] = features(model_path)
        return self._features[model_path]

    def _host(self, model_path: Path, golden_path: Path, profile: DeviceProfile) -> HostMeasurement:
        """The candidate timed back to back on this host, as a device times it.

        Not the search's paired figures: the search interleaves each trial with the fp32
        baseline for a fair speed-up, and the baseline's weights evict the candidate's from
        the caches, which inflated a small model's p95 up to 3x over a device's measurement.
        Cached next to the model file.
        """
        from edgeloop.agent.golden import load_golden
        from edgeloop.loop.costmodel import HostMeasurement, measure_host

        cache = model_path.with_name(f"host-{profile.cpu_threads}t-{self.host_runs}.json")
        if cache.exists():
            return HostMeasurement.from_json(json.loads(cache.read_text()))
        golden = load_golden(golden_path, list(self.task.latency_feed()))
        measured = measure_host(model_path, golden, profile, runs=self.host_runs)
        cache.write_text(json.dumps(measured.to_json()))
        return measured


def variant_name(pipeline: list[dict[str, Any]]) -> str:
    """A reader's name for a pipeline: ``fp32``, ``int8``, ``pruned 25% ffn + int8``, ...
    (the search's label spells out every parameter)."""
    parts = []
    for step in pipeline:
        name, params = step["pass"], step.get("params", {})
        if name.startswith("prune_structured"):
            scope = params.get("scope", "all")
            parts.append(
                f"pruned {params.get('ratio', 0):.0%}" + (f" {scope}" if scope != "all" else "")
            )
        elif name == "prune_unstructured":
            parts.append(f"sparse {params.get('amount', params.get('ratio', 0)):.0%}")
        elif name.startswith("quantize_int4"):
            parts.append("int4")
        elif name.startswith("quantize"):
            parts.append("int8")
        elif name == "fp16":
            parts.append("fp16")
        elif name == "lowrank":
            parts.append("low-rank")
        elif name == "distill":
            parts.append(f"distilled x{params.get('width', '')}")
    return " + ".join(parts) or "fp32"
