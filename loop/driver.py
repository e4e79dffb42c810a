"""The closed loop: devices' measured figures decide what the compressor ships next.

One round, per device class (a profile name):

1. read what the class's devices reported for the model they were last sent (p95 latency,
   peak RSS, energy; also for a model a budget gate refused);
2. calibrate the class's cost model with every (host measurement, device measurement) pair
   seen so far (:class:`~edgeloop.compressor.costmodel.CostModel`);
3. re-run the search — its trials are cached by content, so this re-ranks rather than
   re-measures — and predict each candidate's figures on the class;
4. decide (:func:`decide`, pure): keep the model, deploy another (it missed its budget, or a
   more accurate candidate is now predicted to fit), or stop with "unreachable";
5. roll the chosen candidate out to the class (a canary wave, then the rest) and wait for it.

The loop ends when every class is kept or unreachable, or after ``max_rounds``. Every
decision is stored by the control plane with its numbers (``edgeloop loop history``).

The loop is a client of the control plane (REST) and runs the compressor locally, like
``edgeloop compress``: the server never imports torch.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edgeloop.agent.protocol import DeviceProfile

from .client import ApiClient, ApiError
from .rollouts import RolloutState

if TYPE_CHECKING:
    from edgeloop.compressor.costmodel import (
        CostModel,
        HostMeasurement,
        ModelFeatures,
        Observation,
        Prediction,
    )
    from edgeloop.compressor.recipe import Recipe
    from edgeloop.compressor.task import Task

log = logging.getLogger("edgeloop.server.loop")

Action = Literal["deploy", "keep", "wait", "unreachable", "stop"]

ACCURACY_EPSILON = 1e-9
"""Two candidates whose accuracy differs by less are equally accurate (ties go to the faster)."""


# --------------------------------------------------------------------------- candidates


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

    def search(self, thread_counts: Sequence[int]) -> list[Candidate]:
        from edgeloop.compressor.compress import _write_golden
        from edgeloop.compressor.search import Search

        by_key: dict[str, dict[str, Any]] = {}
        """pipeline -> the trial and the host profiles (one per thread count) it was built for"""
        for threads in sorted(set(thread_counts)):
            host_profile = DeviceProfile(
                name=f"host-{threads}t",
                cpu_threads=threads,
                memory_budget_mb=1e6,
                latency_budget_ms=1e6,
            )
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
                _write_golden(self.task, model_path, golden_path)
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
                )
            )
        return sorted(candidates, key=lambda c: (-c.accuracy, c.size_bytes))

    def _feature(self, model_path: Path) -> ModelFeatures:
        from edgeloop.compressor.costmodel import features

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
        from edgeloop.agent.validate import load_golden
        from edgeloop.compressor.costmodel import HostMeasurement, measure_host

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


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Measured:
    """What a class's devices reported for one model (median p95 over its devices)."""

    model: str
    ok: bool
    p95_ms: float | None
    peak_rss_mb: float | None
    energy_mj: float | None
    devices: int
    gate: str | None = None
    error: str | None = None
    p50_ms: float | None = None


@dataclass(frozen=True)
class Decision:
    profile: str
    action: Action
    candidate: Candidate | None
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClassState:
    """The loop's memory of one device class."""

    profile: DeviceProfile
    current: Candidate | None = None
    observations: list[Observation] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    """Candidate key -> why the class's devices refused or missed it (never retried)."""
    last: Decision | None = None
    deployed_round: int = 0
    measured: dict[str, Measured] = field(default_factory=dict)
    """What the class's devices reported, per candidate key (each one is also among
    ``observations`` when it carries a latency)."""


def within_budget(profile: DeviceProfile, measured: Measured) -> bool:
    return (
        measured.ok
        and measured.p95_ms is not None
        and measured.p95_ms <= profile.latency_budget_ms
        and (measured.peak_rss_mb is None or measured.peak_rss_mb <= profile.memory_budget_mb)
    )


def _fits(
    profile: DeviceProfile, candidate: Candidate, prediction: Prediction, margin: float
) -> list[str]:
    """Why ``candidate`` is predicted not to fit ``profile`` (empty: it fits)."""
    misses = []
    if prediction.latency_p95_ms > profile.latency_budget_ms * margin:
        misses.append(
            f"predicted p95 {prediction.latency_p95_ms:.2f} ms > "
            f"{profile.latency_budget_ms * margin:.2f} ms"
        )
    if prediction.peak_rss_mb > profile.memory_budget_mb:
        misses.append(
            f"predicted peak {prediction.peak_rss_mb:.0f} MB > {profile.memory_budget_mb:g} MB"
        )
    if (
        profile.model_size_budget_kb is not None
        and candidate.size_bytes / 1024 > profile.model_size_budget_kb
    ):
        misses.append(
            f"size {candidate.size_bytes / 1024:.0f} KB > {profile.model_size_budget_kb:g} KB"
        )
    return misses


def decide(
    state: ClassState,
    candidates: Sequence[Candidate],
    predictions: dict[str, Prediction],
    measured: Measured | None,
    *,
    margin: float = 1.0,
) -> Decision:
    """The next step for one class, from its measured figures and the calibrated predictions.

    - The current model is within budget: deploy a more accurate candidate only if one is
      predicted to fit (headroom), else keep.
    - It missed (a gate refused it, or its figures exceed the budget): it is never retried;
      deploy the most accurate candidate predicted to fit, else stop as unreachable, naming
      the closest candidate and why it does not fit.
    - No report for it yet (devices offline or still updating): wait.

    ``margin`` < 1 asks predictions to fit with room to spare (a noisy host or device).
    Ties in accuracy go to the lower predicted latency.
    """
    profile = state.profile
    figures: dict[str, Any] = {
        "budget": {
            "latency_p95_ms": profile.latency_budget_ms,
            "memory_mb": profile.memory_budget_mb,
            "size_kb": profile.model_size_budget_kb,
        },
        "measured": measured.__dict__ if measured else None,
        "predicted": {
            c.label: {
                "accuracy": c.accuracy,
                "latency_p95_ms": round(predictions[c.key].latency_p95_ms, 4),
                "peak_rss_mb": round(predictions[c.key].peak_rss_mb, 1),
                "energy_mj": round(predictions[c.key].energy_mj, 4),
            }
            for c in candidates
        },
    }
    misses = {c.key: _fits(profile, c, predictions[c.key], margin) for c in candidates}
    open_ = [c for c in candidates if c.key not in state.refused]
    fitting = sorted(
        (c for c in open_ if not misses[c.key]),
        key=lambda c: (-c.accuracy, predictions[c.key].latency_p95_ms),
    )
    current = state.current

    def describe(c: Candidate) -> str:
        p = predictions[c.key]
        return f"{c.label} (accuracy {c.accuracy:.4f}, predicted p95 {p.latency_p95_ms:.2f} ms)"

    if current is not None and measured is not None and within_budget(profile, measured):
        better = [c for c in fitting if c.accuracy > current.accuracy + ACCURACY_EPSILON]
        head = (
            f"within budget: p95 {measured.p95_ms:.2f} of {profile.latency_budget_ms:g} ms, "
            f"peak {measured.peak_rss_mb or 0:.0f} of {profile.memory_budget_mb:g} MB"
        )
        if better:
            return Decision(
                profile.name,
                "deploy",
                better[0],
                f"{head}; headroom: {describe(better[0])} is more accurate and predicted to fit",
                figures,
            )
        return Decision(
            profile.name,
            "keep",
            current,
            f"{head}; no more accurate candidate is predicted to fit",
            figures,
        )

    if current is not None and measured is None:
        return Decision(
            profile.name,
            "wait",
            current,
            f"no report yet for {current.label} from the class's devices (offline, or still "
            "updating); nothing is decided without a measurement",
            figures,
        )
    if current is not None and measured is not None:
        if not measured.ok and measured.gate:
            why = f"refused by the device gate `{measured.gate}`: {measured.error or ''}".strip()
        else:
            why = (
                f"missed the budget: p95 {measured.p95_ms or 0:.2f} ms "
                f"(budget {profile.latency_budget_ms:g}), peak {measured.peak_rss_mb or 0:.0f} MB "
                f"(budget {profile.memory_budget_mb:g})"
            )
        state.refused[current.key] = why
        head = f"{current.label} {why}"
    else:
        head = "no model measured on this class yet"
    choices = [c for c in fitting if c.key not in state.refused]
    if choices:
        return Decision(
            profile.name, "deploy", choices[0], f"{head}; next: {describe(choices[0])}", figures
        )
    remaining = [c for c in candidates if c.key not in state.refused] or list(candidates)
    closest = min(remaining, key=lambda c: predictions[c.key].latency_p95_ms)
    detail = "; ".join(misses[closest.key]) or state.refused.get(closest.key, "refused before")
    return Decision(
        profile.name,
        "unreachable",
        None,
        f"{head}; no candidate is predicted to fit '{profile.name}': closest is "
        f"{closest.label}: {detail}. Relax the budget or add smaller candidates to the recipe",
        figures,
    )


# --------------------------------------------------------------------------- the loop


@dataclass
class RoundRecord:
    round: int
    decisions: list[Decision]
    calibration: dict[str, dict[str, Any]]
    seconds: float


@dataclass
class LoopResult:
    name: str
    rounds: list[RoundRecord]
    classes: dict[str, ClassState]
    converged: bool
    reason: str

    @property
    def rounds_to_converge(self) -> int | None:
        """Rollout rounds after the fp32 start until nothing changed (None: not converged)."""
        if not self.converged:
            return None
        return sum(1 for r in self.rounds[1:] if any(d.action == "deploy" for d in r.decisions))


class Loop:
    """Drives rounds over the control plane's REST API for one model family.

    ``classes``: the device profiles to serve (each device announces its profile on hello).
    ``on_round`` is called after each round (the demo prints a table there).
    """

    def __init__(
        self,
        client: ApiClient,
        name: str,
        classes: Sequence[DeviceProfile],
        pool: CandidatePool,
        *,
        margin: float = 1.0,
        max_rounds: int = 4,
        rollout_timeout_s: float = 300.0,
        wait_s: float = 10.0,
        on_round: Callable[[RoundRecord, LoopResult], None] | None = None,
    ) -> None:
        from edgeloop.compressor.costmodel import CostModel

        self.client, self.name, self.pool = client, name, pool
        self.classes = {p.name: ClassState(p) for p in classes}
        self.margin, self.max_rounds = margin, max_rounds
        self.rollout_timeout_s = rollout_timeout_s
        self.wait_s = wait_s
        self.on_round = on_round
        self.cost: CostModel = CostModel()
        self.candidates: list[Candidate] = []
        self.registered: set[str] = set()
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ driving

    def run(self) -> LoopResult:
        result = LoopResult(self.name, [], self.classes, False, "")
        self.load_calibrations()
        self.candidates = self.pool.search([s.profile.cpu_threads for s in self.classes.values()])
        baseline = next(c for c in self.candidates if c.baseline)
        started = time.monotonic()
        start = [
            Decision(name, "deploy", baseline, "round 0: start every class on the fp32 baseline")
            for name in self.classes
        ]
        self._record_all(0, start)
        self._deploy(0, start)
        record = RoundRecord(0, start, {}, time.monotonic() - started)
        result.rounds.append(record)
        self._notify(record, result)
        for round_ in range(1, self.max_rounds + 1):
            started = time.monotonic()
            # Re-run the search: cached trials, re-ranked with the new calibration.
            self.candidates = self.pool.search(
                [s.profile.cpu_threads for s in self.classes.values()]
            )
            decisions = []
            for state in self.classes.values():
                if state.last is not None and state.last.action == "unreachable":
                    continue
                measured = self._measure(state)
                predictions = self._predictions(state)
                decision = decide(state, self.candidates, predictions, measured, margin=self.margin)
                decision.figures["calibration"] = self._calibration_json(state)
                decisions.append(decision)
                state.last = decision
            self._record_all(round_, decisions)
            self._deploy(round_, decisions)
            record = RoundRecord(
                round_,
                decisions,
                {n: self._calibration_json(s) for n, s in self.classes.items()},
                time.monotonic() - started,
            )
            result.rounds.append(record)
            self._notify(record, result)
            if any(d.action == "wait" for d in decisions):
                time.sleep(self.wait_s)  # give silent devices a chance to report
            if all(d.action in ("keep", "unreachable") for d in decisions):
                result.converged = True
                unreachable = [d.profile for d in decisions if d.action == "unreachable"]
                result.reason = f"converged after {round_ - 1} rollout rounds" + (
                    f"; unreachable: {', '.join(unreachable)}" if unreachable else ""
                )
                self._record(round_, "*", "stop", None, result.reason, {})
                return result
        result.reason = f"not converged after {self.max_rounds} rounds; see the history"
        self._record(self.max_rounds, "*", "stop", None, result.reason, {})
        return result

    def load_calibrations(self) -> None:
        """Start from what earlier loops learned about each class (the server keeps it):
        a class's scales describe its devices, not one model family. This loop's own reports
        replace it at the first calibration."""
        from edgeloop.compressor.costmodel import Calibration

        for row in self.client.calibrations():
            if row["profile"] not in self.classes:
                continue
            try:
                calibration = Calibration.from_json(row["calibration"])
            except (TypeError, KeyError, ValueError) as exc:
                log.warning("stored calibration for %s ignored: %s", row["profile"], exc)
                continue
            if calibration.threads == self.classes[row["profile"]].profile.cpu_threads:
                self.cost.calibrations[row["profile"]] = calibration

    def _notify(self, record: RoundRecord, result: LoopResult) -> None:
        if self.on_round is not None:
            self.on_round(record, result)

    # ------------------------------------------------------------------ measuring

    def _measure(self, state: ClassState) -> Measured | None:
        """The class's devices' reports for the model they were last sent; also adds the
        observation (host vs device) the calibration learns from."""
        from edgeloop.compressor.costmodel import Observation

        current = state.current
        if current is None:
            return None
        label = f"{self.name}:{current.version}"
        reports = []
        for device in self.client.devices(profile=state.profile.name):
            for report in self.client.device_reports(device["device_id"]):
                if report["model"] == label:
                    reports.append(report)
                    break
        if not reports:
            return None
        latencies = [r["latency"]["p95_ms"] for r in reports if r.get("latency")]
        medians = [r["latency"]["p50_ms"] for r in reports if r.get("latency")]
        rss = [r["peak_rss_mb"] for r in reports if r.get("peak_rss_mb") is not None]
        energy = [r["energy"]["joules_per_inference"] * 1e3 for r in reports if r.get("energy")]
        failed = next((r for r in reports if not r["ok"]), None)
        measured = Measured(
            model=label,
            ok=failed is None,
            p95_ms=statistics.median(latencies) if latencies else None,
            p50_ms=statistics.median(medians) if medians else None,
            peak_rss_mb=max(rss) if rss else None,
            energy_mj=statistics.median(energy) if energy else None,
            devices=len(reports),
            gate=failed["gate"] if failed else None,
            error=failed.get("error") if failed else None,
        )
        first_report = current.key not in state.measured
        state.measured[current.key] = measured
        threads = state.profile.cpu_threads
        if first_report and measured.p95_ms is not None and threads in current.host:
            state.observations.append(
                Observation(
                    current.features,
                    current.host[threads],
                    measured.p95_ms,
                    measured.peak_rss_mb,
                    measured.energy_mj,
                    measured.p50_ms,
                )
            )
            self.cost.calibrate(state.profile.name, state.observations)
            self._put_calibration(state)
        return measured

    def _predictions(self, state: ClassState) -> dict[str, Prediction]:
        threads = state.profile.cpu_threads
        return {
            c.key: self.cost.predict(state.profile.name, c.features, c.host[threads])
            for c in self.candidates
            if threads in c.host
        }

    def _calibration_json(self, state: ClassState) -> dict[str, Any]:
        calibration = self.cost.calibrations.get(state.profile.name)
        return calibration.to_json() if calibration else {}

    def _put_calibration(self, state: ClassState) -> None:
        calibration = self.cost.calibrations[state.profile.name]
        self.client.put_calibration(
            state.profile.name, calibration.to_json(), calibration.observations
        )

    # ------------------------------------------------------------------ acting

    def _record_all(self, round_: int, decisions: list[Decision]) -> None:
        for decision in decisions:
            self._record(
                round_,
                decision.profile,
                decision.action,
                f"{self.name}:{decision.candidate.version}" if decision.candidate else None,
                decision.reason,
                decision.figures,
            )

    def _deploy(self, round_: int, decisions: list[Decision]) -> None:
        """Roll each ``deploy`` decision out to its class and wait for the rollout to end.

        One class at a time: on a shared host, concurrent validation would measure the
        contention between emulated devices, not the device classes."""
        for decision in decisions:
            if decision.action != "deploy":
                continue
            assert decision.candidate is not None
            state = self.classes[decision.profile]
            label = self._register(decision.candidate)
            rollout = self.client.create_rollout(
                label,
                target={"profile": decision.profile},
                waves=["1", "100%"],
                criteria={"wave_timeout_s": self.rollout_timeout_s},
            )
            self._wait(rollout["id"])
            state.current = decision.candidate
            state.deployed_round = round_

    def _register(self, candidate: Candidate) -> str:
        from edgeloop.compressor.report import golden_atol

        label = f"{self.name}:{candidate.version}"
        if label in self.registered:
            return label
        report = {
            "accuracy": candidate.accuracy,
            "variant": candidate.label,
            "size_bytes": candidate.size_bytes,
            "host_latency_p95_ms": min(h.p95_ms for h in candidate.host.values()),
            "peak_rss_mb": min(h.peak_rss_mb for h in candidate.host.values()),
            "golden_atol": golden_atol(candidate.golden_path, quantized=candidate.quantized),
        }
        try:
            self.client.push_files(
                candidate.model_path,
                candidate.golden_path,
                name=self.name,
                version=candidate.version,
                report=report,
                plan=False,
            )
        except ApiError as exc:
            if exc.status != 409:  # 409: registered by an earlier run; versions are immutable
                raise
        self.registered.add(label)
        return label

    def _wait(self, rollout_id: int) -> dict[str, Any]:
        deadline = time.monotonic() + self.rollout_timeout_s + 30
        while time.monotonic() < deadline:
            status = self.client.rollout(rollout_id)
            if status["state"] not in (RolloutState.RUNNING, RolloutState.PAUSED):
                return status  # completed, halted (a canary refused), cancelled, rolled back
            time.sleep(0.25)
        raise TimeoutError(f"rollout {rollout_id} did not finish within the loop's timeout")

    def _record(
        self,
        round_: int,
        profile: str,
        action: Action,
        model: str | None,
        reason: str,
        figures: dict[str, Any],
    ) -> None:
        entry = {
            "loop": self.name,
            "round": round_,
            "profile": profile,
            "action": action,
            "model": model,
            "reason": reason,
            "figures": json.loads(json.dumps(figures, default=str)),
        }
        self.history.append(entry)
        log.info("round %d %s: %s %s — %s", round_, profile, action, model or "", reason)
        self.client.record_decision(entry)
