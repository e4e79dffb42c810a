"""The closed loop: devices' measured figures decide what the compressor ships next.

One round, per device class (a profile name):

1. read what the class's devices reported for the model they were last sent (p95 latency,
   peak RSS, energy; also for a model a budget gate refused);
2. calibrate the class's cost model with every (host measurement, device measurement) pair
   seen so far (:class:`~edgeloop.loop.costmodel.CostModel`);
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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgeloop.agent.protocol import DeviceProfile
from edgeloop.loop.candidates import Candidate, CandidatePool
from edgeloop.loop.decide import Action, ClassState, Decision, Measured, decide
from edgeloop.server.client import ApiClient, ApiError, card_from_onnx
from edgeloop.server.schemas import (
    DEFAULT_APPLICATION,
    Criteria,
    LoopDecisionCreate,
    ModelFigures,
    RolloutCreate,
    RolloutState,
    RolloutStatus,
    Target,
)

if TYPE_CHECKING:
    from edgeloop.loop.costmodel import CostModel, Prediction
log = logging.getLogger("edgeloop.loop")


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
    ``application``: the application whose devices the loop serves; its candidates are
    registered as versions of it, so rollouts reach only those devices.
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
        application: str = DEFAULT_APPLICATION,
    ) -> None:
        from edgeloop.loop.costmodel import CostModel

        self.client, self.name, self.pool = client, name, pool
        self.application = application
        self.classes = {p.name: ClassState(p) for p in classes}
        self.margin, self.max_rounds = margin, max_rounds
        self.rollout_timeout_s = rollout_timeout_s
        self.wait_s = wait_s
        self.on_round = on_round
        self.cost: CostModel = CostModel()
        self.candidates: list[Candidate] = []
        self.registered: set[str] = set()
        self.history: list[LoopDecisionCreate] = []

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
                measured = self.measure(state)
                if measured is not None:
                    self._learn(state, measured)
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
        from edgeloop.loop.costmodel import Calibration

        for row in self.client.calibrations():
            if row.profile not in self.classes:
                continue
            try:
                calibration = Calibration.from_json(row.calibration)
            except (TypeError, KeyError, ValueError) as exc:
                log.warning("stored calibration for %s ignored: %s", row.profile, exc)
                continue
            if calibration.threads == self.classes[row.profile].profile.cpu_threads:
                self.cost.calibrations[row.profile] = calibration

    def _notify(self, record: RoundRecord, result: LoopResult) -> None:
        if self.on_round is not None:
            self.on_round(record, result)

    # ------------------------------------------------------------------ measuring

    def measure(self, state: ClassState) -> Measured | None:
        """What the class's devices reported for the model they were last sent (each device's
        newest report on it): one request, whatever the class's size. None: no report yet."""
        current = state.current
        if current is None:
            return None
        label = f"{self.name}:{current.version}"
        reports = self.client.reports(profile=state.profile.name, model=label, latest=True)
        return Measured.from_reports(label, reports) if reports else None

    def _learn(self, state: ClassState, measured: Measured) -> None:
        """Keep the class's figures for its current model; the first time they carry a
        latency, they are one more (host, device) observation: recalibrate and store it."""

        current = state.current
        assert current is not None
        first_report = current.key not in state.measured
        state.measured[current.key] = measured
        threads = state.profile.cpu_threads
        if first_report and measured.p95_ms is not None and threads in current.host:
            state.observations.append(measured.observation(current.features, current.host[threads]))
            self.cost.calibrate(state.profile.name, state.observations)
            self._put_calibration(state)

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
                RolloutCreate(
                    model=label,
                    target=Target(profile=decision.profile),
                    waves=["1", "100%"],
                    criteria=Criteria(wave_timeout_s=self.rollout_timeout_s),
                )
            )
            self._wait(rollout.id)
            state.current = decision.candidate
            state.deployed_round = round_

    def _register(self, candidate: Candidate) -> str:
        from edgeloop.compressor.report import golden_atol

        label = f"{self.name}:{candidate.version}"
        if label in self.registered:
            return label
        figures = ModelFigures(
            accuracy=candidate.accuracy,
            metric_name=candidate.metric_name,
            higher_is_better=candidate.higher_is_better,
            agreement_metric=self.pool.agreement_metric,
            variant=candidate.label,
            size_bytes=candidate.size_bytes,
            host_latency_p95_ms=min(h.p95_ms for h in candidate.host.values()),
            peak_rss_mb=min(h.peak_rss_mb for h in candidate.host.values()),
            golden_atol=golden_atol(candidate.golden_path, quantized=candidate.quantized),
        )
        card = card_from_onnx(
            candidate.model_path,
            name=self.name,
            version=candidate.version,
            figures=figures,
            application=self.application,
        )
        try:
            self.client.push_model(card, candidate.model_path, candidate.golden_path, plan=False)
        except ApiError as exc:
            # 409 is also "a file is not stored": only an earlier run's registration is fine
            # (versions are immutable, so that one is the same model).
            known = exc.status == 409 and any(
                model.label == label for model in self.client.models(include_retired=True)
            )
            if not known:
                raise
        self.registered.add(label)
        return label

    def _wait(self, rollout_id: int) -> RolloutStatus:
        deadline = time.monotonic() + self.rollout_timeout_s + 30
        while time.monotonic() < deadline:
            status = self.client.rollout(rollout_id)
            if status.state not in (RolloutState.RUNNING, RolloutState.PAUSED):
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
        entry = LoopDecisionCreate(
            loop=self.name,
            round=round_,
            profile=profile,
            action=action,
            model=model,
            reason=reason,
            figures=json.loads(json.dumps(figures, default=str)),
        )
        self.history.append(entry)
        log.info("round %d %s: %s %s — %s", round_, profile, action, model or "", reason)
        self.client.record_decision(entry)
