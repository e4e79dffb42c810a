"""The fleet's state and the rules that change it.

Both the MQTT bridge (device messages) and the REST API (operator requests) go through
:class:`Fleet`; it owns the database writes and decides when a device's desired state
changes. Publishing is a callback so this module does no network I/O itself.

Invariant: one bad row never stops the fleet. A model version whose stored figures or I/O
contract do not validate (written by an older server, or by hand) is
:class:`StoredVersionError` wherever it is read; planning skips it with a warning and names
it in the plan's reason, hellos are still stored, and listings answer without its figures.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import ValidationError
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from edgeloop.agent.protocol import (
    Desired,
    DeviceProfile,
    FileRef,
    Hello,
    ModelManifest,
    Phase,
    ProtocolError,
    Refusal,
    Report,
    Status,
    TargetRef,
    Telemetry,
)

from .models import (
    ApplicationAssignment,
    Artifact,
    DesiredState,
    Device,
    DeviceReport,
    ModelVersion,
    TelemetrySample,
)
from .planner import Candidate, choose_model
from .releases import ReleaseSigner
from .schemas import (
    DEFAULT_APPLICATION,
    STORED,
    FleetEntry,
    ModelCreate,
    ModelFigures,
    ReportRecord,
)

log = logging.getLogger("edgeloop.server.fleet")

Publisher = Callable[[Desired], None]


class UnknownArtifactError(LookupError):
    pass


class StoredVersionError(ValueError):
    """A stored model version cannot be offered: its figures or I/O contract do not validate,
    or a file it names is missing. The message names the version, what is wrong and what to
    do; the row itself is left as it is."""

    def __init__(self, model: ModelVersion, problem: str) -> None:
        super().__init__(
            f"model {model.label} as stored is unusable ({problem}); retire it "
            f"(`edgeloop models retire {model.label}`) and register a corrected version"
        )
        self.label = model.label

    @classmethod
    def invalid(cls, model: ModelVersion, exc: ValidationError, where: str) -> StoredVersionError:
        """The error for a stored ``where`` (``report``, ``manifest``) that failed ``exc``."""
        return cls(model, _explain(exc, where))


def figures(model: ModelVersion) -> ModelFigures:
    """``model``'s stored figures, read as the API reads them.

    Raises:
        StoredVersionError: they do not validate (e.g. ``accuracy`` missing, not a number,
            or NaN).
    """
    try:
        return ModelFigures.model_validate(model.report, context=STORED)
    except ValidationError as exc:
        raise StoredVersionError.invalid(model, exc, "report") from None


def _explain(exc: ValidationError, where: str) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in (where, *error['loc']))}: {error['msg']}"
        + ("" if isinstance(error.get("input"), dict | list) else f" (got {error.get('input')!r})")
        for error in exc.errors()
    )


@dataclass
class _Offers:
    """The live versions the planner may choose from, validated once per planning pass."""

    candidates: list[Candidate] = field(default_factory=list)
    models: dict[int, ModelVersion] = field(default_factory=dict)
    unusable: list[str] = field(default_factory=list)
    """Labels of live versions skipped because :class:`StoredVersionError` said so."""


class Fleet:
    def __init__(
        self, sessions: sessionmaker, public_url: str, releases: ReleaseSigner | None = None
    ) -> None:
        """``releases`` signs every model a desired state names; without it (tests of the
        registry alone) no desired state can name a model."""
        self.sessions = sessions
        self.public_url = public_url.rstrip("/")
        self.releases = releases
        self.publish: Publisher = lambda desired: None
        self.clear_desired: Callable[[str], None] = lambda device_id: None
        """Removes a device's retained desired state from the broker (the MQTT bridge)."""
        self.after_device_message: Callable[[], None] = lambda: None
        """Called after a hello or report is stored (the rollout controller wakes on it)."""

    # ------------------------------------------------------------------ device messages

    def on_hello(self, hello: Hello) -> None:
        with self.sessions.begin() as db:
            device = _unless_revoked(db.get(Device, hello.device_id))
            profile = hello.profile.model_dump(mode="json")
            if device is None:
                device = Device(id=hello.device_id, profile=profile)
                db.add(device)
                log.info("new device %s (profile %s)", hello.device_id, hello.profile.name)
            device.profile = profile
            device.platform = dict(hello.platform)
            device.agent_version = hello.agent_version
            device.protocol = hello.protocol
            device.tags = sorted(set(hello.tags))
            device.declared_application = hello.application
            self._settle_application(db, device)
            device.online = True
            device.current_model = hello.current_model
            device.last_seen = datetime.now(UTC)
            db.flush()
            self._plan(db, device, force_publish=True)
        self.after_device_message()

    def on_status(self, status: Status) -> None:
        with self.sessions.begin() as db:
            device = _unless_revoked(db.get(Device, status.device_id))
            if device is None:
                log.info("status from unregistered device %s ignored", status.device_id)
                return
            device.online = status.online
            device.phase = status.phase.value
            device.last_seen = datetime.now(UTC)

    def on_report(self, report: Report) -> None:
        with self.sessions.begin() as db:
            device = _unless_revoked(db.get(Device, report.device_id))
            if device is None:
                log.warning("report from unregistered device %s dropped", report.device_id)
                return
            db.add(
                DeviceReport(
                    device_id=report.device_id,
                    revision=report.revision,
                    model=report.model,
                    artifact_sha256=report.artifact_sha256,
                    ok=report.ok,
                    phase=report.phase.value,
                    payload=report.model_dump(mode="json"),
                )
            )
            device.phase = report.phase.value
            if report.running != device.current_model:
                device.previous_model = device.current_model
                device.current_model = report.running
            device.last_seen = datetime.now(UTC)
        log.info("report from %s: %s ok=%s", report.device_id, report.model, report.ok)
        self.after_device_message()

    def on_telemetry(self, telemetry: Telemetry) -> None:
        with self.sessions.begin() as db:
            if _unless_revoked(db.get(Device, telemetry.device_id)) is None:
                return
            db.add(
                TelemetrySample(
                    device_id=telemetry.device_id,
                    sent_at=telemetry.sent_at,
                    payload=telemetry.model_dump(mode="json"),
                )
            )

    # ------------------------------------------------------------------ applications

    def _settle_application(self, db: Session, device: Device) -> bool:
        """Set which application ``device`` runs: an operator's assignment of one of its tags
        wins, then what the device's config declared in its last hello, then ``default``.
        Returns whether it changed."""
        tags = sorted(device.tags or [])
        assigned = (
            db.scalar(
                select(ApplicationAssignment)
                .where(ApplicationAssignment.tag.in_(tags))
                .order_by(ApplicationAssignment.created_at, ApplicationAssignment.tag)
                .limit(1)
            )
            if tags
            else None
        )
        declared = device.declared_application
        if assigned is not None:
            application, source = assigned.application, "operator"
        elif declared is not None:
            application, source = declared, "device"
        else:
            application, source = DEFAULT_APPLICATION, "default"
        changed = (device.application, device.application_source) != (application, source)
        if changed and device.application != application:
            log.info(
                "device %s runs application %s (%s; was %s)",
                device.id,
                application,
                source,
                device.application,
            )
        device.application, device.application_source = application, source
        return changed

    def assign_application(self, tag: str, application: str) -> int:
        """Devices carrying ``tag`` run ``application`` from now on (and those that register
        with it later); they are re-planned at once. Returns how many carry it now."""
        with self.sessions.begin() as db:
            rule = db.get(ApplicationAssignment, tag)
            if rule is None:
                db.add(ApplicationAssignment(tag=tag, application=application))
            else:
                rule.application = application
            db.flush()
            return self._resettle(db, lambda d: tag in (d.tags or []))

    def unassign_application(self, tag: str) -> tuple[str, int]:
        """Drop the assignment of ``tag``; its devices fall back to their own config. Returns
        the application it named and how many devices carry the tag.

        Raises:
            LookupError: no assignment for ``tag``.
        """
        with self.sessions.begin() as db:
            rule = db.get(ApplicationAssignment, tag)
            if rule is None:
                raise LookupError(f"no application is assigned to tag {tag!r}")
            application = rule.application
            db.delete(rule)
            db.flush()
            return application, self._resettle(db, lambda d: tag in (d.tags or []))

    def _resettle(self, db: Session, which: Callable[[Device], bool]) -> int:
        devices = [d for d in db.scalars(select(Device).order_by(Device.id)) if which(d)]
        offers: dict[str, _Offers] = {}
        for device in devices:
            if self._settle_application(db, device):
                self._plan(db, device, offers)
        return len(devices)

    def revoke(self, device_id: str) -> None:
        """Stop believing and feeding ``device_id`` (``edgeloop devices revoke``): its
        messages are dropped from now on and its retained desired state is removed."""
        with self.sessions.begin() as db:
            device = db.get(Device, device_id)
            if device is not None:
                device.revoked_at = datetime.now(UTC)
                device.online = False
        self.clear_desired(device_id)
        log.warning("device %s revoked: its messages are ignored from now on", device_id)

    def readmit(self, device_id: str) -> None:
        """``device_id`` enrolled again: its messages count again."""
        with self.sessions.begin() as db:
            device = db.get(Device, device_id)
            if device is not None and device.revoked_at is not None:
                device.revoked_at = None
                log.info("device %s enrolled again after its revocation", device_id)

    # ------------------------------------------------------------------ models

    def register_model(self, card: ModelCreate, *, plan: bool = True) -> ModelVersion:
        """Register a model version whose files are already uploaded, then re-plan the devices
        of its application (unless ``plan`` is false, e.g. while registering several
        candidates of one round). Devices of other applications are never touched.

        Raises:
            UnknownArtifactError: a referenced file was not uploaded first.
            ValueError: ``name:version`` exists already (versions are immutable).
        """
        with self.sessions.begin() as db:
            for sha in (card.artifact_sha256, card.golden_sha256, card.pareto_sha256):
                if sha is not None and db.get(Artifact, sha) is None:
                    raise UnknownArtifactError(f"artifact {sha} is not uploaded; PUT it first")
            exists = db.scalar(
                select(ModelVersion).where(
                    ModelVersion.name == card.name, ModelVersion.version == card.version
                )
            )
            if exists is not None:
                raise ValueError(f"model {card.name}:{card.version} exists; versions are immutable")
            model = ModelVersion(
                name=card.name,
                version=card.version,
                application=card.application,
                artifact_sha256=card.artifact_sha256,
                golden_sha256=card.golden_sha256,
                pareto_sha256=card.pareto_sha256,
                inputs=[s.model_dump() for s in card.inputs],
                outputs=[s.model_dump() for s in card.outputs],
                golden_atol=card.golden_atol,
                golden_rtol=card.golden_rtol,
                report=card.report.model_dump(mode="json"),
            )
            db.add(model)
        if plan:
            self.plan_all(card.application)
        return model

    def record_artifact(self, sha256: str, size: int) -> None:
        with self.sessions.begin() as db:
            if db.get(Artifact, sha256) is None:
                db.add(Artifact(sha256=sha256, size=size))

    # ------------------------------------------------------------------ planning

    def plan_all(self, application: str | None = None) -> None:
        """Re-plan every device (of ``application`` only, when given)."""
        with self.sessions.begin() as db:
            offers: dict[str, _Offers] = {}
            query = select(Device)
            if application is not None:
                query = query.where(Device.application == application)
            for device in db.scalars(query):
                self._plan(db, device, offers)

    def _offers(self, db: Session, application: str) -> _Offers:
        """Every live version of ``application`` as a planner candidate; one that does not
        validate is skipped with a warning naming it and why, so a bad row costs one version,
        not the fleet."""
        offers = _Offers()
        live = select(ModelVersion).where(
            ModelVersion.retired_at.is_(None), ModelVersion.application == application
        )
        for model in db.scalars(live):
            try:
                candidate = self.candidate(db, model)
            except StoredVersionError as exc:
                log.warning("planner skips a version: %s", exc)
                offers.unusable.append(model.label)
                continue
            offers.candidates.append(candidate)
            offers.models[model.id] = model
        return offers

    def candidate(self, db: Session, model: ModelVersion) -> Candidate:
        """``model`` as the planner ranks it, once everything a device would be sent of it
        (figures, I/O contract, files) is known to validate.

        Raises:
            StoredVersionError: something stored for it does not validate.
        """
        report = figures(model)
        self._manifest(db, model)
        return Candidate(
            id=model.id,
            label=model.label,
            accuracy=report.accuracy,
            size_bytes=report.size_bytes or 0,
            host_latency_p95_ms=report.host_latency_p95_ms,
            metric_name=report.metric_name,
            higher_is_better=report.higher_is_better,
        )

    def _plan(
        self,
        db: Session,
        device: Device,
        offers: dict[str, _Offers] | None = None,
        force_publish: bool = False,
    ) -> None:
        """Give ``device`` a new desired revision if its best model changed.

        ``force_publish`` re-sends an unchanged desired state (e.g. on hello, in case the
        retained message was lost with a broker restart); the revision stays the same. When
        every live version was skipped as unusable, a device keeps what it was told: a bad
        row must not tell the fleet to stop running models. Likewise a device moved to an
        application with no version yet keeps its model until one is registered.
        """
        known = offers if offers is not None else {}
        if device.application not in known:
            known[device.application] = self._offers(db, device.application)
        app_offers = known[device.application]
        profile = DeviceProfile.model_validate(device.profile)
        choice = choose_model(
            profile, app_offers.candidates, app_offers.unusable, application=device.application
        )
        chosen = app_offers.models[choice.candidate.id] if choice.candidate else None
        state = db.get(DesiredState, device.id)
        if state is not None and state.source != "planner":
            # A rollout owns this device's desired state; the planner leaves it alone.
            if force_publish:
                self.republish(db, device)
            return
        if (
            state is not None
            and chosen is None
            and (app_offers.unusable or self._runs_other_application(db, state, device.application))
        ):
            state.reason = choice.reason + (
                "" if app_offers.unusable else "; keeps its model until one is registered"
            )
            if force_publish:
                self.republish(db, device)
            return
        self.set_desired(
            db, device, chosen, source="planner", reason=choice.reason, force=force_publish
        )

    @staticmethod
    def _runs_other_application(db: Session, state: DesiredState, application: str) -> bool:
        model = db.get(ModelVersion, state.model_version_id) if state.model_version_id else None
        return model is not None and model.application != application

    def set_desired(
        self,
        db: Session,
        device: Device,
        model: ModelVersion | None,
        *,
        source: str,
        reason: str,
        force: bool = False,
    ) -> bool:
        """Give ``device`` a new desired revision when its model or owner changes.

        The row is written in the caller's transaction and published after it commits, so a
        crash in between leaves the database ahead of the broker, never behind: the next
        start re-publishes (:meth:`republish_all`), with the same revision. Returns whether a
        new revision was made. ``force`` re-sends an unchanged state (same revision).

        Raises:
            StoredVersionError: ``model`` cannot be sent (its stored row does not validate).
        """
        if device.revoked_at is not None:
            return False
        chosen_id = model.id if model else None
        state = db.get(DesiredState, device.id)
        if state is None:
            state = DesiredState(device_id=device.id, revision=0, model_version_id=None)
            db.add(state)
        changed = state.revision == 0 or state.model_version_id != chosen_id
        state.reason = reason
        state.source = source
        floor = self._running_sequence(db, device, state) if changed and model else None
        if changed:
            state.revision += 1
            state.model_version_id = chosen_id
            state.published_at = datetime.now(UTC)
            log.info("device %s -> revision %d: %s", device.id, state.revision, reason)
        if changed or force:
            self._after_commit(db, self._desired(db, device, state, floor=floor))
        return changed

    def _running_sequence(self, db: Session, device: Device, state: DesiredState) -> int | None:
        """The highest signed sequence ``device`` may run now: of its last desired model and
        of the model it reported running. Anything sent to it must be signed above that."""
        if self.releases is None:
            return None
        labels: list[tuple[str, str]] = []
        if state.model_version_id is not None:
            previous = db.get(ModelVersion, state.model_version_id)
            if previous is not None:
                labels.append((previous.name, previous.version))
        if device.current_model and ":" in device.current_model:
            name, _, version = device.current_model.partition(":")
            labels.append((name, version))
        sequences = [self.releases.sequence_of(name, version) for name, version in labels]
        known = [sequence for sequence in sequences if sequence is not None]
        return max(known) if known else None

    def republish(self, db: Session, device: Device) -> None:
        """Re-send ``device``'s desired state. One whose model no longer validates is not
        sent (the device keeps the retained one it has) and the error is logged: a re-send is
        never worth failing the hello or the restart that asked for it."""
        state = db.get(DesiredState, device.id)
        if state is None or device.revoked_at is not None:
            return
        try:
            desired = self._desired(db, device, state)
        except StoredVersionError as exc:
            log.error("desired state of %s not re-sent: %s", device.id, exc)
            return
        self._after_commit(db, desired)

    def republish_all(self) -> None:
        """Re-send every device's current desired state (same revisions): after a restart the
        broker may have missed the last publish before the crash."""
        with self.sessions.begin() as db:
            for device in db.scalars(select(Device)):
                self.republish(db, device)

    def _desired(
        self, db: Session, device: Device, state: DesiredState, *, floor: int | None = None
    ) -> Desired:
        """``floor``: the sequence the device runs; a lower release is re-signed above it."""
        model = db.get(ModelVersion, state.model_version_id) if state.model_version_id else None
        return Desired(
            device_id=device.id,
            revision=state.revision,
            target=self.signed_target(db, model, floor=floor) if model else None,
            profile=DeviceProfile.model_validate(device.profile),
        )

    def signed_target(
        self, db: Session, model: ModelVersion, *, floor: int | None = None
    ) -> TargetRef:
        """``model``'s signed target, signing it first if needed (and above ``floor``).

        Raises:
            StoredVersionError: the row cannot make a manifest, or this fleet signs nothing.
        """
        manifest = self._manifest(db, model)
        if self.releases is None:
            raise StoredVersionError(model, "this server has no release signer (TUF repository)")
        if (
            floor is not None
            and (self.releases.sequence_of(model.name, model.version) or 0) <= floor
        ):
            return self.releases.resign_above(manifest, floor)
        return self.releases.ensure(manifest)

    def _after_commit(self, db: Session, desired: Desired) -> None:
        pending = db.info.setdefault("edgeloop_publish", [])
        if not pending:
            event.listen(db, "after_commit", self._flush_publishes, once=True)
        pending.append(desired)

    def _flush_publishes(self, db: Session) -> None:
        for desired in db.info.pop("edgeloop_publish", []):
            self.publish(desired)

    def _manifest(self, db: Session, model: ModelVersion) -> ModelManifest:
        """What a device is sent of ``model``.

        Raises:
            StoredVersionError: its figures or I/O contract do not validate, or one of its
                files was never recorded.
        """
        report = figures(model)

        def ref(sha: str) -> FileRef:
            artifact = db.get(Artifact, sha)
            if artifact is None:
                raise StoredVersionError(model, f"file {sha} is not recorded")
            return FileRef(url=f"{self.public_url}/artifacts/{sha}", sha256=sha, size=artifact.size)

        try:
            return ModelManifest.model_validate(
                {
                    "name": model.name,
                    "version": model.version,
                    "artifact": ref(model.artifact_sha256),
                    "golden": ref(model.golden_sha256),
                    "inputs": model.inputs,
                    "outputs": model.outputs,
                    "golden_atol": model.golden_atol,
                    "golden_rtol": model.golden_rtol,
                    "accuracy": report.accuracy,
                    "size_bytes": report.size_bytes,
                    "agreement_metric": report.agreement_metric,
                }
            )
        except ValidationError as exc:
            raise StoredVersionError.invalid(model, exc, "manifest") from None

    # ------------------------------------------------------------------ queries

    def fleet_summary(self) -> list[FleetEntry]:
        """One row per device: profile, desired model, latest report. Feeds tables and JSON.

        A desired model whose stored figures do not validate is still named; its figures are
        left out (null) and the problem is logged once per listing."""
        rows = []
        known: dict[int, ModelFigures | None] = {}
        with self.sessions() as db:
            for device in db.scalars(select(Device).order_by(Device.id)):
                state = db.get(DesiredState, device.id)
                desired = (
                    db.get(ModelVersion, state.model_version_id)
                    if state and state.model_version_id
                    else None
                )
                if desired is not None and desired.id not in known:
                    try:
                        known[desired.id] = figures(desired)
                    except StoredVersionError as exc:
                        log.warning("fleet listing leaves out figures: %s", exc)
                        known[desired.id] = None
                report = db.scalar(
                    select(DeviceReport)
                    .where(DeviceReport.device_id == device.id)
                    .order_by(DeviceReport.id.desc())
                    .limit(1)
                )
                rows.append(
                    FleetEntry(
                        device_id=device.id,
                        profile=DeviceProfile.model_validate(device.profile),
                        online=device.online,
                        phase=Phase(device.phase),
                        desired_revision=state.revision if state else None,
                        desired_model=desired.label if desired else None,
                        desired_reason=state.reason if state else None,
                        model_report=known[desired.id] if desired else None,
                        report=report_record(report) if report else None,
                    )
                )
        return rows


def _unless_revoked(device: Device | None) -> Device | None:
    """``device``, unless an operator revoked it.

    Raises:
        ProtocolError: it is revoked (the bridge counts the message as dropped, ``revoked``).
    """
    if device is not None and device.revoked_at is not None:
        raise ProtocolError(
            f"device {device.id} was revoked at {device.revoked_at:%Y-%m-%d %H:%M}; its "
            "messages are ignored until it enrols again",
            Refusal.REVOKED,
        )
    return device


def report_record(row: DeviceReport) -> ReportRecord:
    """A stored report as the API answers it: the device's message, and when it arrived."""
    return ReportRecord.model_validate(row.payload | {"received_at": row.received_at})
