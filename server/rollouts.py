"""Staged rollouts: a model version goes to a device group in waves, and stops itself.

A rollout's devices are split into waves when it is created (e.g. ``["10%", "50%", "100%"]``
cumulative shares of the group, or ``"3"``: three more devices). :meth:`RolloutController.tick`
advances every running rollout: it sends the current wave's devices their new desired state,
reads their reports, and when the wave is over either moves on or halts.

Invariants:
- Progress lives in the database (``rollouts``, ``rollout_devices``); the controller keeps no
  state of its own, so a restarted server picks up exactly where it was.
- A device is sent a new desired revision at most once per rollout: the ``sent`` step and the
  new revision are written in one transaction; after a restart the same revision is only
  re-published (:meth:`Fleet.republish_all`), never bumped.
- The newest rollout wins: creating a rollout takes its devices out of every older active
  rollout (their step becomes ``superseded``), so two rollouts never wait on each other.
- A wave succeeds when every device in it ended (committed, failed, or timed out) and the
  share of failures is at most ``max_failure_rate``; a breach halts the rollout at once, even
  before the wave is over. Devices keep what they run; ``rollback`` sends each device of the
  rollout its previous model.
- Only a running or paused rollout can still send its model (:data:`SENDING`); a halted one
  cannot be resumed. Retention pins a rollout's model only while it is sending.
- One rollout that cannot advance (e.g. its model's stored row no longer validates) halts or
  is logged; it never keeps the others from advancing.
"""

from __future__ import annotations

import logging
import math
import threading
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgeloop.agent.protocol import Report

from .fleet import Fleet, StoredVersionError, report_record
from .models import DesiredState, Device, DeviceReport, ModelVersion, Rollout, RolloutDevice
from .schemas import (
    Criteria,
    Page,
    RolloutAction,
    RolloutCreate,
    RolloutDeviceStatus,
    RolloutState,
    RolloutStatus,
    RolloutSummary,
    Step,
    Target,
    WaveStatus,
)
from .times import naive_utc

log = logging.getLogger("edgeloop.server.rollouts")


ACTIVE = (RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.HALTED)
"""Rollouts an operator may still cancel, and that a newer rollout takes devices from."""
SENDING = (RolloutState.RUNNING, RolloutState.PAUSED)
"""Rollouts that may still send their model: a running one does, a paused one will once
resumed. A halted one never does again (:meth:`RolloutController.resume` refuses it), nor does
a completed, cancelled or rolled-back one, so only these hold their model against retirement."""
ENDED = (Step.COMMITTED, Step.FAILED, Step.TIMED_OUT, Step.SUPERSEDED, Step.ROLLED_BACK)


class RolloutError(ValueError):
    """An operator request that cannot be done; the message says why (HTTP 409/422)."""


def matches(target: Target, device: Device) -> bool:
    """Whether ``device`` is one of the devices ``target`` describes."""
    if target.devices is not None and device.id not in target.devices:
        return False
    if target.profile is not None and device.profile.get("name") != target.profile:
        return False
    return set(target.tags) <= set(device.tags or [])


def wave_sizes(waves: list[str], total: int) -> list[int]:
    """Cumulative device counts per wave; the last wave always reaches ``total``.

    >>> wave_sizes(["1%", "10%", "100%"], 50)
    [1, 5, 50]
    >>> wave_sizes(["2", "3"], 10)
    [2, 5, 10]
    """
    cumulative: list[int] = []
    reached = 0
    for wave in waves:
        text = wave.strip()
        if text.endswith("%"):
            reached = max(reached, math.ceil(float(text[:-1]) / 100 * total))
        else:
            reached += int(float(text))
        reached = min(max(reached, 1), total)
        if not cumulative or reached > cumulative[-1]:
            cumulative.append(reached)
    if total and (not cumulative or cumulative[-1] < total):
        cumulative.append(total)
    return cumulative


def refusal(report: Report) -> str:
    """Why a device refused a model, naming the gate once: ``failed at loads: onnxruntime …``.

    The agent words a gate's error with the gate in front (``loads: onnxruntime …``) and also
    sends the gate on its own; other errors (a restart loop, an operator rollback) come without
    it. Either way the gate is said once, after the phase it left the device in.
    """
    message = report.error or ""
    if report.gate is None:
        return f"{report.phase}: {message}" if message else str(report.phase)
    message = message.removeprefix(f"{report.gate}:").strip()
    where = f"{report.phase} at {report.gate}"
    return f"{where}: {message}" if message else where


def _problem(report: Report, criteria: Criteria) -> str | None:
    """Why ``report`` fails the wave's ``criteria``; None when the device passes."""
    if not report.ok:
        return refusal(report)
    if criteria.require_within_budget and report.within_budget is False:
        over = [budget for budget, within in report.budget_detail.items() if not within]
        return f"over budget: {', '.join(over)}" if over else "over budget"
    if criteria.max_power_w is not None and report.energy is not None:
        power = report.energy.avg_power_w
        if power > criteria.max_power_w:
            return f"average power {power:.2f} W > {criteria.max_power_w} W"
    return None


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class RolloutController:
    def __init__(self, fleet: Fleet, tick_s: float = 1.0) -> None:
        self.fleet = fleet
        self.tick_s = tick_s
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rollouts", daemon=True)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def wake(self) -> None:
        """Evaluate now (a report arrived) instead of at the next tick."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a bad row must not stop every other rollout
                log.exception("rollout tick failed")
            self._wake.wait(self.tick_s)
            self._wake.clear()

    # ------------------------------------------------------------------ operator actions

    def create(self, request: RolloutCreate) -> int:
        """Create a rollout and start its first wave at the next tick.

        Raises:
            RolloutError: unknown model, or no device matches the target.
        """
        with self._lock, self.fleet.sessions.begin() as db:
            name, _, version = request.model.partition(":")
            model = db.scalar(
                select(ModelVersion).where(
                    ModelVersion.name == name, ModelVersion.version == version
                )
            )
            if model is None:
                raise RolloutError(f"no model {request.model!r}; push it first")
            if model.retired_at is not None:
                raise RolloutError(f"model {request.model!r} is retired")
            try:
                self.fleet.candidate(db, model)
            except StoredVersionError as exc:
                raise RolloutError(str(exc)) from None
            matching = [
                d
                for d in db.scalars(select(Device).order_by(Device.id))
                if matches(request.target, d) and d.revoked_at is None
            ]
            devices = [d for d in matching if d.application == model.application]
            if not devices:
                others = sorted({d.application for d in matching})
                raise RolloutError(
                    f"no device matches the target {request.target.model_dump(exclude_none=True)}"
                    + (
                        f" among those running application '{model.application}' "
                        f"({len(matching)} matching devices run {', '.join(others)})"
                        if matching
                        else ""
                    )
                )
            sizes = wave_sizes(request.waves, len(devices))
            rollout = Rollout(
                model_version_id=model.id,
                target=request.target.model_dump(),
                waves=sizes,
                criteria=request.criteria.model_dump(),
                state=RolloutState.RUNNING,
            )
            db.add(rollout)
            db.flush()
            self._supersede(db, rollout.id, [d.id for d in devices])
            for index, device in enumerate(devices):
                wave = next(i for i, size in enumerate(sizes) if index < size)
                self._enlist(db, rollout, device, wave)
            log.info(
                "rollout %d: %s to %d devices in waves %s",
                rollout.id,
                model.label,
                len(devices),
                sizes,
            )
            rollout_id = rollout.id
        self.wake()
        return rollout_id

    def act(self, rollout_id: int, action: RolloutAction) -> RolloutStatus:
        """An operator's ``action`` on a rollout (the REST route and the dashboard's buttons);
        the rollout as it stands after.

        Raises:
            LookupError: no such rollout.
            RolloutError: its state does not allow ``action``.
        """
        {
            RolloutAction.PAUSE: self.pause,
            RolloutAction.RESUME: self.resume,
            RolloutAction.CANCEL: self.cancel,
            RolloutAction.ROLLBACK: self.rollback,
        }[action](rollout_id)
        return self.status(rollout_id)

    def pause(self, rollout_id: int) -> None:
        self._set_state(rollout_id, RolloutState.PAUSED, allowed=(RolloutState.RUNNING,))

    def resume(self, rollout_id: int) -> None:
        """Continue a paused rollout. A halted one stays halted: its failures are facts;
        cancel it or roll it back, then start a new rollout."""
        self._set_state(rollout_id, RolloutState.RUNNING, allowed=(RolloutState.PAUSED,))
        self.wake()

    def cancel(self, rollout_id: int) -> None:
        """Stop here: no more desired states are sent; devices keep what they were sent."""
        self._set_state(rollout_id, RolloutState.CANCELLED, allowed=ACTIVE)

    def rollback(self, rollout_id: int) -> int:
        """Send every device this rollout touched its previous model. Returns how many."""
        with self._lock, self.fleet.sessions.begin() as db:
            rollout = self._get(db, rollout_id)
            if rollout.state in (RolloutState.ROLLED_BACK, RolloutState.CANCELLED):
                raise RolloutError(f"rollout {rollout_id} is {rollout.state}")
            count = 0
            for part in self._parts(db, rollout_id):
                if part.step in (Step.PENDING, Step.SUPERSEDED, Step.ROLLED_BACK):
                    continue
                device = db.get(Device, part.device_id)
                previous = (
                    db.get(ModelVersion, part.previous_model_version_id)
                    if part.previous_model_version_id
                    else None
                )
                assert device is not None
                try:
                    self.fleet.set_desired(
                        db,
                        device,
                        previous,
                        source=f"rollout:{rollout_id}",
                        reason=f"rollout {rollout_id} rolled back by operator",
                    )
                except StoredVersionError as exc:
                    raise RolloutError(f"cannot roll {device.id} back: {exc}") from None
                part.step = Step.ROLLED_BACK
                count += 1
            rollout.state = RolloutState.ROLLED_BACK
            rollout.reason = f"rolled back by operator ({count} devices)"
            rollout.updated_at = _now()
            return count

    # ------------------------------------------------------------------ the engine

    def tick(self) -> None:
        with self._lock:
            with self.fleet.sessions() as db:
                ids = list(
                    db.scalars(select(Rollout.id).where(Rollout.state == RolloutState.RUNNING))
                )
            for rollout_id in ids:
                try:
                    with self.fleet.sessions.begin() as db:
                        self._advance(db, self._get(db, rollout_id))
                except Exception:  # one bad row must not stop every other rollout
                    log.exception("rollout %d could not advance", rollout_id)

    def _advance(self, db: Session, rollout: Rollout) -> None:
        criteria = Criteria.model_validate(rollout.criteria)
        self._join_latecomers(db, rollout)
        parts = [p for p in self._parts(db, rollout.id) if p.wave == rollout.current_wave]
        model = db.get(ModelVersion, rollout.model_version_id)
        assert model is not None
        now = _now()
        try:
            self.fleet.candidate(db, model)
        except StoredVersionError as exc:
            self._halt(rollout, f"cannot send its model: {exc}", now)
            return
        for part in parts:
            if part.step == Step.PENDING:
                self._send(db, rollout, part, model)
            elif part.step == Step.SENT:
                self._judge(db, part, criteria, now)
        judged = [p for p in parts if p.step != Step.SUPERSEDED]
        failures = [p for p in judged if p.step in (Step.FAILED, Step.TIMED_OUT)]
        wave_label = f"wave {rollout.current_wave + 1}/{len(rollout.waves)}"
        if judged and len(failures) / len(judged) > criteria.max_failure_rate:
            self._halt(
                rollout,
                f"{wave_label}: {len(failures)} of {len(judged)} devices failed "
                f"(limit {criteria.max_failure_rate:.0%}): "
                + "; ".join(f"{p.device_id}: {p.detail}" for p in failures[:5]),
                now,
            )
            return
        if any(p.step == Step.SENT for p in judged):
            return
        if rollout.current_wave + 1 >= len(rollout.waves):
            rollout.state = RolloutState.COMPLETED
            rollout.reason = f"all {len(rollout.waves)} waves done"
            log.info("rollout %d completed", rollout.id)
        else:
            rollout.current_wave += 1
            rollout.wave_started_at = now
            log.info("rollout %d: %s passed; next wave", rollout.id, wave_label)
            self.wake()
        rollout.updated_at = now

    def _halt(self, rollout: Rollout, reason: str, now: datetime) -> None:
        rollout.state = RolloutState.HALTED
        rollout.reason = reason
        rollout.updated_at = now
        log.warning("rollout %d halted: %s", rollout.id, reason)

    def _send(
        self, db: Session, rollout: Rollout, part: RolloutDevice, model: ModelVersion
    ) -> None:
        device = db.get(Device, part.device_id)
        assert device is not None
        self.fleet.set_desired(
            db,
            device,
            model,
            source=f"rollout:{rollout.id}",
            reason=f"rollout {rollout.id}, wave {part.wave + 1}",
        )
        state = db.get(DesiredState, device.id)
        assert state is not None
        part.step = Step.SENT
        part.sent_revision = state.revision
        part.sent_at = _now()

    def _judge(self, db: Session, part: RolloutDevice, criteria: Criteria, now: datetime) -> None:
        report = db.scalar(
            select(DeviceReport)
            .where(
                DeviceReport.device_id == part.device_id,
                DeviceReport.revision == part.sent_revision,
            )
            .order_by(DeviceReport.id.desc())
            .limit(1)
        )
        if report is not None:
            problem = _problem(report_record(report), criteria)
            part.step = Step.FAILED if problem else Step.COMMITTED
            part.detail = problem or "committed"
            return
        sent_at = naive_utc(part.sent_at) if part.sent_at else now
        if (now - sent_at).total_seconds() > criteria.wave_timeout_s:
            part.step = Step.TIMED_OUT
            part.detail = f"no report within {criteria.wave_timeout_s:g} s"

    def _join_latecomers(self, db: Session, rollout: Rollout) -> None:
        """Devices that registered after the rollout started and match it join this wave."""
        target = Target.model_validate(rollout.target)
        model = db.get(ModelVersion, rollout.model_version_id)
        application = model.application if model is not None else None
        enlisted = {p.device_id for p in self._parts(db, rollout.id)}
        for device in db.scalars(select(Device).order_by(Device.id)):
            if (
                device.id not in enlisted
                and matches(target, device)
                and device.revoked_at is None
                and device.application == application
            ):
                state = db.get(DesiredState, device.id)
                if state is not None and state.source.startswith("rollout:"):
                    continue  # another rollout owns it; the newer one already decided
                self._enlist(db, rollout, device, rollout.current_wave)
                log.info(
                    "rollout %d: %s joins wave %d", rollout.id, device.id, rollout.current_wave + 1
                )

    def _enlist(self, db: Session, rollout: Rollout, device: Device, wave: int) -> None:
        state = db.get(DesiredState, device.id)
        db.add(
            RolloutDevice(
                rollout_id=rollout.id,
                device_id=device.id,
                wave=wave,
                step=Step.PENDING,
                previous_model_version_id=state.model_version_id if state else None,
            )
        )

    def _supersede(self, db: Session, rollout_id: int, device_ids: list[str]) -> None:
        older = db.scalars(
            select(RolloutDevice)
            .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
            .where(
                Rollout.state.in_([s.value for s in ACTIVE]),
                Rollout.id != rollout_id,
                RolloutDevice.device_id.in_(device_ids),
                RolloutDevice.step.in_([Step.PENDING, Step.SENT]),
            )
        )
        for part in older:
            part.step = Step.SUPERSEDED
            part.detail = f"superseded by rollout {rollout_id}"

    # ------------------------------------------------------------------ queries

    def status(self, rollout_id: int) -> RolloutStatus:
        """One rollout with every device's step.

        Raises:
            LookupError: no such rollout.
        """
        with self.fleet.sessions() as db:
            rollout = self._get(db, rollout_id)
            parts = self._parts(db, rollout.id)
            return RolloutStatus(
                **self._summary(db, rollout, parts).model_dump(),
                devices=[
                    RolloutDeviceStatus(
                        device_id=p.device_id,
                        wave=p.wave + 1,
                        step=Step(p.step),
                        revision=p.sent_revision,
                        detail=p.detail,
                    )
                    for p in parts
                ],
            )

    def page(self, *, limit: int = 50, offset: int = 0) -> Page[RolloutSummary]:
        """Newest first."""
        with self.fleet.sessions() as db:
            total = db.scalar(select(func.count()).select_from(Rollout)) or 0
            rows = db.scalars(
                select(Rollout).order_by(Rollout.id.desc()).limit(limit).offset(offset)
            )
            items = [self._summary(db, r, self._parts(db, r.id)) for r in rows]
        return Page[RolloutSummary](total=total, limit=limit, offset=offset, items=items)

    def _summary(self, db: Session, rollout: Rollout, parts: list[RolloutDevice]) -> RolloutSummary:
        model = db.get(ModelVersion, rollout.model_version_id)
        assert model is not None  # a foreign key; versions are retired, never deleted
        waves = []
        for index, size in enumerate(rollout.waves):
            counts: dict[Step, int] = {}
            for part in parts:
                if part.wave == index:
                    counts[Step(part.step)] = counts.get(Step(part.step), 0) + 1
            waves.append(WaveStatus(wave=index + 1, cumulative_size=size, steps=counts))
        return RolloutSummary(
            id=rollout.id,
            model=model.label,
            state=RolloutState(rollout.state),
            current_wave=rollout.current_wave + 1,
            waves=waves,
            target=Target.model_validate(rollout.target),
            criteria=Criteria.model_validate(rollout.criteria),
            reason=rollout.reason,
            created_at=rollout.created_at,
            updated_at=rollout.updated_at,
        )

    def _parts(self, db: Session, rollout_id: int) -> list[RolloutDevice]:
        return list(
            db.scalars(
                select(RolloutDevice)
                .where(RolloutDevice.rollout_id == rollout_id)
                .order_by(RolloutDevice.wave, RolloutDevice.device_id)
            )
        )

    def _get(self, db: Session, rollout_id: int) -> Rollout:
        rollout = db.get(Rollout, rollout_id)
        if rollout is None:
            raise LookupError(f"no rollout {rollout_id}")
        return rollout

    def _set_state(
        self, rollout_id: int, state: RolloutState, *, allowed: tuple[RolloutState, ...]
    ) -> None:
        with self._lock, self.fleet.sessions.begin() as db:
            rollout = self._get(db, rollout_id)
            if rollout.state not in allowed:
                raise RolloutError(
                    f"rollout {rollout_id} is {rollout.state}; {state} needs one of "
                    + ", ".join(allowed)
                )
            rollout.state = state
            rollout.reason = f"{state} by operator"
            rollout.updated_at = _now()
