"""Which model version each device should run: a pure function of its profile.

Rule: among the versions of the device's application that fit its profile (file size within
``model_size_budget_kb``, latency measured on the compressor host within
``latency_budget_ms``, accuracy at least ``min_accuracy`` where the metric is an accuracy),
take the best by the version's own metric in its own direction (the highest accuracy or
return, the lowest error); ties go to the smaller file. When nothing fits,
the closest one (the smallest file) is chosen and the reason says so, so a device is never
left without a model and the operator sees why it is over budget.

A stored version whose figures do not validate is no candidate at all (the caller leaves it
out), but the reason names it: an operator looking at why a device got what it got also sees
which versions were never considered.

The host latency is not yet calibrated to the device class; the device's own report says
whether the model really is within budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgeloop.agent.protocol import DeviceProfile


@dataclass(frozen=True)
class Candidate:
    id: int
    label: str
    accuracy: float
    size_bytes: int
    host_latency_p95_ms: float | None
    metric_name: str = "accuracy"
    higher_is_better: bool = True

    @property
    def rank(self) -> float:
        """The metric turned so that larger is better."""
        return self.accuracy if self.higher_is_better else -self.accuracy


@dataclass(frozen=True)
class Choice:
    candidate: Candidate | None
    reason: str


def misfits(profile: DeviceProfile, candidate: Candidate) -> list[str]:
    problems = []
    if profile.model_size_budget_kb is not None:
        size_kb = candidate.size_bytes / 1024
        if size_kb > profile.model_size_budget_kb:
            problems.append(f"size {size_kb:.0f} KB > {profile.model_size_budget_kb:g} KB")
    latency = candidate.host_latency_p95_ms
    if latency is not None and latency > profile.latency_budget_ms:
        problems.append(f"host p95 {latency:.3f} ms > {profile.latency_budget_ms:g} ms")
    if (
        profile.min_accuracy is not None
        and candidate.metric_name == "accuracy"
        and candidate.accuracy < profile.min_accuracy
    ):
        problems.append(f"accuracy {candidate.accuracy:.4f} < {profile.min_accuracy:g}")
    return problems


def choose_model(
    profile: DeviceProfile,
    candidates: list[Candidate],
    unusable: Sequence[str] = (),
    *,
    application: str | None = None,
) -> Choice:
    """The version ``profile`` should run, and why. ``candidates`` are the live versions of
    the device's ``application`` (named in the reason when it is not the default one).

    ``unusable``: labels of live versions left out because their stored figures or I/O
    contract do not validate; the reason lists them so that skipping one is never silent.
    """
    skipped = f"; skipped {', '.join(unusable)}: invalid stored figures or I/O" if unusable else ""
    of_app = f" of application '{application}'" if application not in (None, "default") else ""
    if not candidates:
        return Choice(
            None, ("no usable model" if unusable else "no model registered") + of_app + skipped
        )
    fitting = [c for c in candidates if not misfits(profile, c)]
    if fitting:
        best = max(fitting, key=lambda c: (c.rank, -c.size_bytes))
        goal = "most accurate" if best.metric_name == "accuracy" else "best"
        return Choice(
            best,
            f"{goal}{of_app} of {len(fitting)}/{len(candidates)} fitting '{profile.name}' "
            f"({best.metric_name} {best.accuracy:.4g}, {best.size_bytes / 1024:.0f} KB)" + skipped,
        )
    closest = min(candidates, key=lambda c: c.size_bytes)
    return Choice(
        closest,
        f"no candidate fits '{profile.name}'; closest is {closest.label}: "
        + ", ".join(misfits(profile, closest))
        + skipped,
    )
