"""Database tables. Columns use the protocol's words (phase, revision, sha256).

A change here needs a migration: ``alembic -c server/migrations/alembic.ini revision
--autogenerate -m "what changed"`` (see docs/operations.md); tests check they agree."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .schemas import DEFAULT_APPLICATION
from .times import utcnow


class Base(DeclarativeBase):
    # Times are stored as UTC with their zone where the database keeps one (PostgreSQL
    # timestamptz); SQLite hands them back naive, which readers treat as UTC.
    type_annotation_map: ClassVar = {
        dict[str, Any]: JSON,
        list[Any]: JSON,
        datetime: DateTime(timezone=True),
    }


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    profile: Mapped[dict[str, Any]]
    platform: Mapped[dict[str, Any]] = mapped_column(default=dict)
    agent_version: Mapped[str | None]
    protocol: Mapped[int] = mapped_column(default=1, server_default="1")
    """The wire protocol major version the device announced in its last hello: the server
    speaks it to the device (docs/protocol.md, evolution)."""
    online: Mapped[bool] = mapped_column(default=False)
    phase: Mapped[str] = mapped_column(String(16), default="idle")
    current_model: Mapped[str | None]
    previous_model: Mapped[str | None] = mapped_column(default=None)
    tags: Mapped[list[Any]] = mapped_column(default=list)
    application: Mapped[str] = mapped_column(
        String(128), default=DEFAULT_APPLICATION, server_default=DEFAULT_APPLICATION
    )
    """The application the device runs: the planner, rollouts and the loop offer it only that
    application's model versions."""
    application_source: Mapped[str] = mapped_column(
        String(16), default="default", server_default="default"
    )
    """Who said so: ``operator`` (an assignment by tag), ``device`` (its config, in its
    hello) or ``default``. An operator's assignment wins over the device's config."""
    declared_application: Mapped[str | None] = mapped_column(String(128), default=None)
    """What the device's own config declared in its last hello (kept for when an operator's
    assignment is dropped)."""
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    """Set by ``edgeloop devices revoke``: its messages are ignored, nothing is sent to it;
    cleared when it enrols again."""


class Artifact(Base):
    __tablename__ = "artifacts"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    application: Mapped[str] = mapped_column(
        String(128), default=DEFAULT_APPLICATION, server_default=DEFAULT_APPLICATION, index=True
    )
    artifact_sha256: Mapped[str] = mapped_column(ForeignKey("artifacts.sha256"))
    golden_sha256: Mapped[str] = mapped_column(ForeignKey("artifacts.sha256"))
    pareto_sha256: Mapped[str | None] = mapped_column(
        String(64), default=None, doc="the compressor's Pareto plot (PNG), if it was pushed"
    )
    inputs: Mapped[list[Any]]
    outputs: Mapped[list[Any]]
    golden_atol: Mapped[float]
    golden_rtol: Mapped[float]
    report: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(
        default=None, doc="set by retention: no longer offered to the planner or rollouts"
    )

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"


class ApplicationAssignment(Base):
    """An operator's rule: devices carrying ``tag`` run ``application`` (now and when they
    register later), whatever their own config says."""

    __tablename__ = "application_assignments"

    tag: Mapped[str] = mapped_column(String(128), primary_key=True)
    application: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DesiredState(Base):
    """The latest desired state published to each device (one row per device)."""

    __tablename__ = "desired_states"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    revision: Mapped[int]
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    reason: Mapped[str] = mapped_column(default="")
    source: Mapped[str] = mapped_column(
        String(64), default="planner", doc="`planner`, or `rollout:<id>` while a rollout owns it"
    )
    published_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeviceReport(Base):
    __tablename__ = "reports"
    __table_args__ = (Index("ix_reports_device_received", "device_id", "received_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    revision: Mapped[int]
    model: Mapped[str]
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    ok: Mapped[bool]
    phase: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class TelemetrySample(Base):
    __tablename__ = "telemetry"
    __table_args__ = (Index("ix_telemetry_device_ts", "device_id", "sent_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    sent_at: Mapped[datetime]
    payload: Mapped[dict[str, Any]]


class Rollout(Base):
    """A model version sent to a device group in waves; its progress survives restarts."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    target: Mapped[dict[str, Any]]
    waves: Mapped[list[Any]] = mapped_column(doc="cumulative device counts, one per wave")
    criteria: Mapped[dict[str, Any]]
    state: Mapped[str] = mapped_column(String(16), default="running")
    current_wave: Mapped[int] = mapped_column(default=0)
    reason: Mapped[str] = mapped_column(default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    wave_started_at: Mapped[datetime] = mapped_column(default=utcnow)


class RolloutDevice(Base):
    """One device's part in a rollout: its wave, what it was sent, how it ended."""

    __tablename__ = "rollout_devices"
    __table_args__ = (UniqueConstraint("rollout_id", "device_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), index=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    wave: Mapped[int]
    step: Mapped[str] = mapped_column(String(16), default="pending")
    previous_model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    sent_revision: Mapped[int | None] = mapped_column(default=None)
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
    detail: Mapped[str] = mapped_column(default="")


class LoopDecision(Base):
    """One decision of the compression loop for one device class, with the numbers behind it
    (measured figures, predictions, budget, calibration fit), for ``edgeloop loop history``."""

    __tablename__ = "loop_decisions"
    __table_args__ = (Index("ix_loop_decisions_loop_round", "loop", "round"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    loop: Mapped[str] = mapped_column(String(128), doc="the model family the loop tunes")
    round: Mapped[int]
    profile: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16), doc="deploy, keep, unreachable, stop")
    model: Mapped[str | None] = mapped_column(default=None)
    reason: Mapped[str]
    figures: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Calibration(Base):
    """The server's picture of a device class: the cost model's calibration fitted from the
    devices' own reports (``edgeloop.loop.costmodel.Calibration`` as JSON)."""

    __tablename__ = "calibrations"

    profile: Mapped[str] = mapped_column(String(64), primary_key=True)
    calibration: Mapped[dict[str, Any]]
    observations: Mapped[int] = mapped_column(default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """A credential for the REST API. Its secret is never stored: only its SHA-256 (what a
    request's bearer token is looked up by) and a short prefix people recognise it by."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), doc="who holds it; the audit trail's actor")
    role: Mapped[str] = mapped_column(String(16), doc="operator, viewer or device")
    device_id: Mapped[str | None] = mapped_column(
        String(64), default=None, index=True, doc="a device token: the one device it acts for"
    )
    prefix: Mapped[str] = mapped_column(String(16), doc="the secret's first characters")
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)


class AuditEntry(Base):
    """One change made through the API (or to the token table): who, what, on what."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_actor_action", "actor", "action"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(128), doc="the token's name, or `local:USER`")
    role: Mapped[str | None] = mapped_column(String(16), default=None)
    action: Mapped[str] = mapped_column(String(64), doc="e.g. rollout.create, model.retire")
    target: Mapped[str] = mapped_column(default="")
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
