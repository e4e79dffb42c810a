"""``GET /metrics``: the fleet in the Prometheus text format, read at scrape time.

Invariants:
- Every family is named ``edgeloop_…``, in base units (seconds, bytes, joules, celsius);
  counters end in ``_total``.
- Labels are bounded by the fleet's shape, never by its size: profile, application, model
  version, channel, drop reason, rollout state; ``rollout_id`` only on running or paused
  rollouts (few at a time). A ``device_id`` label appears only in the per-device mode
  (``edgeloop serve --metrics-per-device N``), on at most N devices, and
  ``edgeloop_metrics_devices_omitted`` says how many more there are.
- A scrape costs a fixed handful of aggregate queries (:data:`FleetCollector.QUERIES`),
  whatever the number of devices: the newest telemetry and report of each device are found by
  a correlated subquery on their ``(device_id, time)`` index, not by a query per device.
- The MQTT figures are the bridge's in-memory intake counters: they restart at zero with the
  server, as Prometheus counters may.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from statistics import fmean
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from edgeloop.agent.protocol import Refusal, Telemetry

from .api.deps import Reader
from .models import Device, DeviceReport, ModelVersion, Rollout, RolloutDevice, TelemetrySample
from .mqtt_bridge import INBOUND, MqttBridge
from .schemas import RolloutState, Step
from .times import as_utc

__all__ = ["FleetCollector", "metrics_registry", "router"]

log = logging.getLogger("edgeloop.server.metrics")

NONE = "none"
"""The label value for a device that runs no model, or whose profile names none."""
LIVE_ROLLOUTS = (RolloutState.RUNNING.value, RolloutState.PAUSED.value)
"""Rollouts whose progress is exported by id: few at a time, unlike finished ones."""
STORE_FAILED = "store_failed"
"""The bridge's own drop reason (a handler raised), besides the protocol's refusals."""

_profile_name = Device.profile["name"].as_string()
_live = Device.revoked_at.is_(None)


@dataclass
class _Figures:
    """The newest telemetry of the online devices of one (profile, model), in base units."""

    p50_s: list[float] = field(default_factory=list)
    p95_s: list[float] = field(default_factory=list)
    p99_s: list[float] = field(default_factory=list)
    energy_j: list[float] = field(default_factory=list)
    temperature_c: list[float] = field(default_factory=list)
    rss_bytes: list[float] = field(default_factory=list)
    devices: int = 0

    def add(self, sample: Telemetry) -> None:
        self.devices += 1
        if sample.latency is not None:
            self.p50_s.append(sample.latency.p50_ms / 1000)
            self.p95_s.append(sample.latency.p95_ms / 1000)
            self.p99_s.append(sample.latency.p99_ms / 1000)
        if sample.energy is not None:
            self.energy_j.append(sample.energy.joules_per_inference)
        if sample.temperature_c is not None:
            self.temperature_c.append(sample.temperature_c)
        self.rss_bytes.append(sample.rss_mb * 1024 * 1024)


class FleetCollector(Collector):
    """Reads the database (and the bridge's counters) each time Prometheus scrapes."""

    QUERIES = 6
    """Queries per scrape in the default mode, whatever the number of devices."""
    PER_DEVICE_QUERIES = 2
    """What the per-device mode adds: a count, and the listed devices."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        bridge: MqttBridge | None,
        *,
        per_device: int = 0,
    ) -> None:
        """``per_device``: how many devices get their own series (0: none)."""
        self.sessions = sessions
        self.bridge = bridge
        self.per_device = per_device

    def describe(self) -> Iterable[Metric]:
        # Describing by collecting would query the database at registration.
        return ()

    def collect(self) -> Iterator[Metric]:
        yield from self._intake()
        with self.sessions() as db:
            profiles: set[str] = set()
            yield from self._devices(db, profiles)
            yield from self._budgets(db, profiles)
            yield from self._rollouts(db)
            latest = self._latest_telemetry(db)
            yield from self._telemetry(latest)
            yield from self._per_device(db, latest)

    # ------------------------------------------------------------------ MQTT intake

    def _intake(self) -> Iterator[Metric]:
        if self.bridge is None:
            return
        stats = self.bridge.intake.stats()
        handled = CounterMetricFamily(
            "edgeloop_mqtt_messages_handled",
            "Device messages decoded and acted on, by channel (a handled telemetry message is "
            "a telemetry row stored).",
            labels=["channel"],
        )
        by_channel = self.bridge.handled_by_channel()
        for channel in INBOUND:
            handled.add_metric([channel.value], by_channel.get(channel.value, 0))
        yield handled
        dropped = CounterMetricFamily(
            "edgeloop_mqtt_messages_dropped",
            "Device messages dropped, by reason: a protocol refusal, or store_failed.",
            labels=["reason"],
        )
        reasons = {*(reason.value for reason in Refusal), STORE_FAILED, *stats.dropped}
        for reason in sorted(reasons):
            dropped.add_metric([reason], stats.dropped.get(reason, 0))
        yield dropped
        yield GaugeMetricFamily(
            "edgeloop_mqtt_connected",
            "1 while the server's MQTT bridge is connected to the broker.",
            value=1 if self.bridge.connected.is_set() else 0,
        )
        if stats.last_message_at is not None:
            yield GaugeMetricFamily(
                "edgeloop_mqtt_last_message_timestamp_seconds",
                "When the bridge last acted on a device message (Unix time).",
                value=stats.last_message_at.timestamp(),
            )

    # ------------------------------------------------------------------ the fleet

    def _devices(self, db: Session, profiles: set[str]) -> Iterator[Metric]:
        """Also adds every profile name seen to ``profiles``."""
        devices = GaugeMetricFamily(
            "edgeloop_devices",
            "Registered devices (revoked ones excluded), by profile, application and status.",
            labels=["profile", "application", "status"],
        )
        counts: dict[tuple[str, str], dict[str, int]] = defaultdict(
            lambda: {"online": 0, "offline": 0}
        )
        rows = db.execute(
            select(_profile_name, Device.application, Device.online, func.count())
            .where(_live)
            .group_by(_profile_name, Device.application, Device.online)
        )
        for profile, application, online, count in rows:
            group = counts[(profile or NONE, application)]
            group["online" if online else "offline"] += count
        for (profile, application), by_status in sorted(counts.items()):
            profiles.add(profile)
            for status, count in by_status.items():
                devices.add_metric([profile, application, status], count)
        yield devices

        by_model = GaugeMetricFamily(
            "edgeloop_devices_by_model",
            "Registered devices by the model version they run (`name:version`, or none).",
            labels=["application", "model"],
        )
        rows = db.execute(
            select(Device.application, Device.current_model, func.count())
            .where(_live)
            .group_by(Device.application, Device.current_model)
        )
        for application, model, count in rows:
            by_model.add_metric([application, model or NONE], count)
        yield by_model

    def _budgets(self, db: Session, profiles: set[str]) -> Iterator[Metric]:
        newest = (
            select(DeviceReport.id)
            .where(DeviceReport.device_id == Device.id)
            .order_by(DeviceReport.received_at.desc(), DeviceReport.id.desc())
            .limit(1)
            .correlate(Device)
            .scalar_subquery()
        )
        within = DeviceReport.payload["within_budget"].as_boolean()
        rows = db.execute(
            select(_profile_name, within, func.count())
            .select_from(Device)
            .join(DeviceReport, DeviceReport.id == newest)
            .where(_live)
            .group_by(_profile_name, within)
        )
        over = dict.fromkeys(profiles, 0)
        for profile, within_budget, count in rows:
            if within_budget is not None and not within_budget:
                over[profile or NONE] = over.get(profile or NONE, 0) + count
        family = GaugeMetricFamily(
            "edgeloop_devices_over_budget",
            "Devices whose latest report says the model is not within its budget, by profile.",
            labels=["profile"],
        )
        for profile, count in sorted(over.items()):
            family.add_metric([profile], count)
        yield family

    def _rollouts(self, db: Session) -> Iterator[Metric]:
        states = dict.fromkeys((state.value for state in RolloutState), 0)
        for state, count in db.execute(select(Rollout.state, func.count()).group_by(Rollout.state)):
            states[state] = count
        family = GaugeMetricFamily("edgeloop_rollouts", "Rollouts, by state.", labels=["state"])
        for state, count in states.items():
            family.add_metric([state], count)
        yield family

        progress: dict[tuple[str, str, str], dict[str, int]] = defaultdict(
            lambda: dict.fromkeys((step.value for step in Step), 0)
        )
        rows = db.execute(
            select(
                Rollout.id,
                ModelVersion.name,
                ModelVersion.version,
                Rollout.state,
                RolloutDevice.step,
                func.count(),
            )
            .join(ModelVersion, ModelVersion.id == Rollout.model_version_id)
            .join(RolloutDevice, RolloutDevice.rollout_id == Rollout.id)
            .where(Rollout.state.in_(LIVE_ROLLOUTS))
            .group_by(
                Rollout.id,
                ModelVersion.name,
                ModelVersion.version,
                Rollout.state,
                RolloutDevice.step,
            )
        )
        for rollout_id, name, version, state, step, count in rows:
            progress[(str(rollout_id), f"{name}:{version}", state)][step] = count
        devices = GaugeMetricFamily(
            "edgeloop_rollout_devices",
            "Devices of each running or paused rollout, by their step (pending, sent, "
            "committed, failed, timed_out, superseded, rolled_back).",
            labels=["rollout_id", "model", "state", "step"],
        )
        for labels, steps in sorted(progress.items()):
            for step, count in steps.items():
                devices.add_metric([*labels, step], count)
        yield devices

    # ------------------------------------------------------------------ telemetry

    def _latest_telemetry(self, db: Session) -> dict[str, tuple[str, Telemetry]]:
        """Each online device's newest telemetry, with its profile name, by device id."""
        newest = (
            select(TelemetrySample.id)
            .where(TelemetrySample.device_id == Device.id)
            .order_by(TelemetrySample.sent_at.desc(), TelemetrySample.id.desc())
            .limit(1)
            .correlate(Device)
            .scalar_subquery()
        )
        rows = db.execute(
            select(Device.id, _profile_name, TelemetrySample.payload)
            .select_from(Device)
            .join(TelemetrySample, TelemetrySample.id == newest)
            .where(_live, Device.online)
        )
        latest: dict[str, tuple[str, Telemetry]] = {}
        for device_id, profile, payload in rows:
            try:
                latest[device_id] = (profile or NONE, Telemetry.model_validate(payload))
            except ValidationError:
                log.debug("telemetry of %s no longer parses; left out of /metrics", device_id)
        return latest

    def _telemetry(self, latest: dict[str, tuple[str, Telemetry]]) -> Iterator[Metric]:
        groups: dict[tuple[str, str], _Figures] = defaultdict(_Figures)
        for profile, sample in latest.values():
            groups[(profile, sample.model or NONE)].add(sample)
        reporting = GaugeMetricFamily(
            "edgeloop_devices_reporting_telemetry",
            "Online devices with telemetry, by profile and the model their latest sample ran.",
            labels=["profile", "model"],
        )
        for (profile, model), figures in sorted(groups.items()):
            reporting.add_metric([profile, model], figures.devices)
        yield reporting
        for name, help_text, attribute in (
            ("edgeloop_device_latency_p50_seconds", "p50 inference latency", "p50_s"),
            ("edgeloop_device_latency_p95_seconds", "p95 inference latency", "p95_s"),
            ("edgeloop_device_latency_p99_seconds", "p99 inference latency", "p99_s"),
            ("edgeloop_device_inference_energy_joules", "energy per inference", "energy_j"),
            ("edgeloop_device_temperature_celsius", "temperature", "temperature_c"),
            ("edgeloop_device_resident_memory_bytes", "resident memory (RSS)", "rss_bytes"),
        ):
            family = GaugeMetricFamily(
                name,
                f"The {help_text} online devices report in their latest telemetry, "
                "aggregated (max, mean) by profile and model.",
                labels=["profile", "model", "aggregate"],
            )
            for (profile, model), figures in sorted(groups.items()):
                values: list[float] = getattr(figures, attribute)
                if values:
                    family.add_metric([profile, model, "max"], max(values))
                    family.add_metric([profile, model, "mean"], fmean(values))
            yield family

    # ------------------------------------------------------------------ per device

    def _per_device(
        self, db: Session, latest: dict[str, tuple[str, Telemetry]]
    ) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "edgeloop_metrics_per_device_limit",
            "How many devices may get their own series (--metrics-per-device; 0: off).",
            value=self.per_device,
        )
        if self.per_device <= 0:
            return
        total = db.scalar(select(func.count()).select_from(Device).where(_live)) or 0
        listed = db.execute(
            select(
                Device.id,
                _profile_name,
                Device.application,
                Device.current_model,
                Device.online,
                Device.last_seen,
            )
            .where(_live)
            .order_by(Device.id)
            .limit(self.per_device)
        ).all()
        yield GaugeMetricFamily(
            "edgeloop_metrics_devices_omitted",
            "Devices left without their own series because of --metrics-per-device.",
            value=max(0, total - len(listed)),
        )
        info = GaugeMetricFamily(
            "edgeloop_device_info",
            "1 per device with its own series (per-device mode): join on device_id.",
            labels=["device_id", "profile", "application", "model"],
        )
        online = GaugeMetricFamily(
            "edgeloop_device_online", "1 while the device is online.", labels=["device_id"]
        )
        last_seen = GaugeMetricFamily(
            "edgeloop_device_last_seen_timestamp_seconds",
            "When the device was last heard from (Unix time).",
            labels=["device_id"],
        )
        p95 = GaugeMetricFamily(
            "edgeloop_device_own_latency_p95_seconds",
            "The p95 latency in the device's latest telemetry (online devices).",
            labels=["device_id"],
        )
        for device_id, profile, application, model, is_online, seen in listed:
            info.add_metric([device_id, profile or NONE, application, model or NONE], 1)
            online.add_metric([device_id], 1 if is_online else 0)
            last_seen.add_metric([device_id], as_utc(seen).timestamp())
            sample = latest.get(device_id)
            if sample is not None and sample[1].latency is not None:
                p95.add_metric([device_id], sample[1].latency.p95_ms / 1000)
        yield from (info, online, last_seen, p95)


def metrics_registry(
    sessions: sessionmaker[Session], bridge: MqttBridge | None, *, per_device: int = 0
) -> CollectorRegistry:
    """A registry of its own (not the process-wide default), so two apps in one process
    (tests) never export each other's figures."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(sessions, bridge, per_device=per_device))
    return registry


def _registry(request: Request) -> CollectorRegistry:
    return request.app.state.metrics


router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
def metrics(
    request: Request,
    _reader: Reader,
    registry: Annotated[CollectorRegistry, Depends(_registry)],
) -> Response:
    """The Prometheus exposition (text, or OpenMetrics when the scraper asks for it); needs
    an operator or viewer token, as every read does (Prometheus: ``authorization`` with a
    ``credentials_file``). Left out of the OpenAPI document: its body is not JSON."""
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(registry), media_type=content_type)
