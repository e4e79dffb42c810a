"""One round's decision for one device class, from what its devices measured and what the
calibrated cost model predicts: pure, no network and no disk (the driver does the I/O)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from edgeloop.agent.protocol import DeviceProfile, Gate, Report
from edgeloop.loop.candidates import Candidate
from edgeloop.server.schemas import LoopAction

if TYPE_CHECKING:
    from edgeloop.loop.costmodel import HostMeasurement, ModelFeatures, Observation, Prediction

__all__ = [
    "ACCURACY_EPSILON",
    "Action",
    "ClassState",
    "Decision",
    "Measured",
    "decide",
    "within_budget",
]

Action: TypeAlias = LoopAction
"""What a decision does; the control plane records decisions with the same words."""

ACCURACY_EPSILON = 1e-9
"""Two candidates whose accuracy differs by less are equally accurate (ties go to the faster)."""


@dataclass(frozen=True)
class Measured:
    """What a class's devices reported for one model (median p95 over its devices)."""

    model: str
    ok: bool
    p95_ms: float | None
    peak_rss_mb: float | None
    energy_mj: float | None
    devices: int
    gate: Gate | None = None
    error: str | None = None
    p50_ms: float | None = None

    @classmethod
    def from_reports(cls, model: str, reports: Sequence[Report]) -> Measured:
        """The class's figures from its devices' reports on ``model`` (one per device): median
        latencies and energy, the largest peak RSS; not ok if any device refused it, with
        the first refusal's gate and error.

        Raises:
            ValueError: no reports.
        """
        if not reports:
            raise ValueError(f"no reports on {model}: nothing was measured")
        timed = [r.latency for r in reports if r.latency is not None]
        rss = [r.peak_rss_mb for r in reports if r.peak_rss_mb is not None]
        energy = [r.energy.joules_per_inference * 1e3 for r in reports if r.energy is not None]
        failed = next((r for r in reports if not r.ok), None)
        return cls(
            model=model,
            ok=failed is None,
            p95_ms=statistics.median(t.p95_ms for t in timed) if timed else None,
            p50_ms=statistics.median(t.p50_ms for t in timed) if timed else None,
            peak_rss_mb=max(rss) if rss else None,
            energy_mj=statistics.median(energy) if energy else None,
            devices=len(reports),
            gate=failed.gate if failed else None,
            error=failed.error if failed else None,
        )

    def observation(self, features: ModelFeatures, host: HostMeasurement) -> Observation:
        """This measurement beside the host's, for the class's calibration.

        Raises:
            ValueError: the devices sent no latency (the model failed a gate before timing).
        """
        from edgeloop.loop.costmodel import Observation

        if self.p95_ms is None:
            raise ValueError(f"reports on {self.model} have no latency; they cannot calibrate")
        return Observation(
            features, host, self.p95_ms, self.peak_rss_mb, self.energy_mj, self.p50_ms
        )


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
                c.metric_name: c.accuracy,
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
        key=lambda c: (-c.rank, predictions[c.key].latency_p95_ms),
    )
    current = state.current

    def describe(c: Candidate) -> str:
        p = predictions[c.key]
        return (
            f"{c.label} ({c.metric_name} {c.accuracy:.4g}, predicted p95 {p.latency_p95_ms:.2f} ms)"
        )

    if current is not None and measured is not None and within_budget(profile, measured):
        epsilon = ACCURACY_EPSILON * max(1.0, abs(current.accuracy))
        better = [c for c in fitting if c.rank > current.rank + epsilon]
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
