"""The control plane's REST client SDK: the operator CLI, the closed loop and the demo use it.

Every answer comes back as the type the route declares (:mod:`edgeloop.server.schemas`), so a
caller reads ``report.latency.p95_ms``, never ``report["latency"]["p95_ms"]``.

Invariants:
- Imports nothing heavier than the wire protocol, pydantic and requests: an operator's laptop
  needs neither the server's database stack nor torch. Reading an ONNX file's I/O contract
  (:func:`card_from_onnx`) imports onnxruntime inside the function.
- Every failure is an :class:`ApiError`: the server refused (``status`` is its HTTP status),
  could not be reached, or answered something outside the contract (a server of another
  version); the message says which. A refusal of the token (401, 403) says which token to set.
- Every request carries the client's API token (``Authorization: Bearer``), if it has one:
  the one it was given, else the environment's ``EDGELOOP_TOKEN``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import quote

import requests
from pydantic import BaseModel, TypeAdapter, ValidationError

from .schemas import (
    DEFAULT_APPLICATION,
    ApplicationAssign,
    ApplicationAssignmentPublic,
    ApplicationPublic,
    ArtifactGc,
    ArtifactGcResult,
    ArtifactPublic,
    ArtifactRemoved,
    AuditEntryPublic,
    CalibrationPublic,
    CalibrationPut,
    DeviceDetail,
    DevicePublic,
    EnrolTokenCreated,
    FleetEntry,
    Health,
    LoopDecisionCreate,
    LoopDecisionPublic,
    ModelCard,
    ModelCreate,
    ModelFigures,
    ModelPublic,
    Page,
    ReportRecord,
    Retention,
    Retired,
    Revoked,
    RolloutCreate,
    RolloutStatus,
    RolloutSummary,
    TelemetrySample,
)

__all__ = ["TOKEN_ENV", "ApiClient", "ApiError", "Progress", "card_from_onnx"]

TOKEN_ENV = "EDGELOOP_TOKEN"
"""Where a client without an explicit token finds one (the CLI's ``--token`` defaults to it)."""

UPLOAD_CHUNK = 1 << 16
"""Bytes read from disk at a time while hashing and uploading a file."""

Progress = Callable[[int, int], None]
"""``progress(done_bytes, total_bytes)``: how far a transfer has come."""

T = TypeVar("T")
Item = TypeVar("Item", bound=BaseModel)


class ApiError(RuntimeError):
    """The control plane answered with an error; the message carries its detail and
    ``status`` the HTTP status (None when it could not be reached or nothing was sent)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ApiClient:
    def __init__(self, base_url: str, timeout_s: float = 30.0, token: str | None = None) -> None:
        """``token``: the API token to send; None: the environment's ``EDGELOOP_TOKEN``, if
        set (else requests go without one, and only ``/healthz`` answers them)."""
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.token = token or os.environ.get(TOKEN_ENV) or None
        self.http = requests.Session()
        if self.token:
            self.http.headers["Authorization"] = f"Bearer {self.token}"

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The answer's JSON (None for an empty body).

        Raises:
            ApiError: unreachable, an HTTP error status (``status`` set), or not JSON.
        """
        try:
            response = self.http.request(
                method, self.base_url + path, timeout=self.timeout_s, **kwargs
            )
        except requests.RequestException as exc:
            raise ApiError(
                f"{method} {path}: control plane unreachable at {self.base_url}: {exc}"
            ) from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(
                f"{method} {path}: HTTP {response.status_code}: {detail}"
                + self._token_advice(response.status_code),
                response.status_code,
            )
        try:
            return response.json() if response.content else None
        except ValueError:
            raise ApiError(
                f"{method} {path}: the answer is not JSON: {response.text[:200]!r}"
            ) from None

    def _token_advice(self, status: int) -> str:
        """What to do about a refused token, in the client's terms (the server's detail says
        what was wrong with it)."""
        if status == 401 and self.token is None:
            return f" (no token was sent: set {TOKEN_ENV} or pass --token)"
        if status == 401:
            return f" (set {TOKEN_ENV} or --token to a valid token of this server)"
        if status == 403:
            return f" (set {TOKEN_ENV} or --token to a token of the role this needs)"
        return ""

    def _typed(self, kind: type[T], method: str, path: str, **kwargs: Any) -> T:
        """:meth:`_call`, the answer parsed as ``kind``.

        Raises:
            ApiError: as :meth:`_call`, or the answer is not a ``kind``.
        """
        answer = self._call(method, path, **kwargs)
        try:
            return TypeAdapter(kind).validate_python(answer)
        except ValidationError as exc:
            raise ApiError(
                f"{method} {path}: the answer is not the {_name(kind)} this client expects "
                f"(is the server another edgeloop version?): {exc}"
            ) from None

    def _all(self, item: type[Item], path: str, params: dict[str, Any]) -> list[Item]:
        """Every item of a paged list, following ``offset`` until ``total`` is reached."""
        # A pydantic generic parametrized at run time, which mypy cannot follow.
        page_type: type[Page[Item]] = Page[item]  # type: ignore[valid-type]
        items: list[Item] = []
        while True:
            params = {**params, "limit": 1000, "offset": len(items)}
            page = self._typed(page_type, "GET", path, params=params)
            items.extend(page.items)
            if not page.items or len(items) >= page.total:
                return items

    def health(self) -> Health:
        return self._typed(Health, "GET", "/healthz")

    # ------------------------------------------------------------------ models

    def upload_artifact(self, path: Path, *, progress: Progress | None = None) -> ArtifactPublic:
        """Store a file on the control plane under its SHA-256, streamed from disk.

        ``progress(sent, total)`` is called as the body goes out, ``sent`` growing to the
        file's size ``total`` (once with ``(0, 0)`` for an empty file).

        Raises:
            ApiError: 413 over the server's size limit; or as :meth:`_call`.
        """
        digest = hashlib.sha256()
        with path.open("rb") as source:
            for chunk in iter(lambda: source.read(UPLOAD_CHUNK), b""):
                digest.update(chunk)
        path_ = f"/api/v1/artifacts/{digest.hexdigest()}"
        with path.open("rb") as source:
            body = _CountingReader(source, path.stat().st_size, progress)
            return self._typed(ArtifactPublic, "PUT", path_, data=body)

    def delete_artifact(self, sha256: str) -> ArtifactRemoved:
        """Remove a stored file no live model version needs.

        Raises:
            ApiError: 404 if nothing is stored under ``sha256``, 409 while a live version
                references it (retire that first); or as :meth:`_call`.
        """
        return self._typed(ArtifactRemoved, "DELETE", f"/api/v1/artifacts/{sha256}")

    def collect_artifacts(
        self, *, min_age_s: float = 3600, dry_run: bool = False
    ) -> ArtifactGcResult:
        """Remove every stored file no live model version references (stored ``min_age_s``
        ago or earlier) and abandoned partial uploads; ``dry_run``: only say what would go."""
        body = ArtifactGc(min_age_s=min_age_s, dry_run=dry_run)
        return self._typed(
            ArtifactGcResult, "POST", "/api/v1/artifact-gc", json=body.model_dump(mode="json")
        )

    def push_model(
        self,
        card: ModelCard,
        model_path: Path,
        golden_path: Path,
        *,
        plan: bool = True,
        pareto_path: Path | None = None,
        progress: Callable[[Path], Progress | None] | None = None,
    ) -> ModelPublic:
        """Upload a model file, its golden file and (``pareto_path``) the compressor's Pareto
        plot, then register them as ``card`` says.

        ``plan=False`` registers without re-planning the fleet, so several candidates of one
        round can be registered before :meth:`plan` picks among all of them. ``progress``
        gives, for each file about to be uploaded, the callback that follows its upload (see
        :meth:`upload_artifact`).

        Raises:
            ApiError: 409 if ``name:version`` exists (versions are immutable), 422 for a card
                the server refuses; or as :meth:`_call`.
        """

        def upload(path: Path) -> ArtifactPublic:
            return self.upload_artifact(path, progress=progress(path) if progress else None)

        artifact = upload(model_path)
        golden = upload(golden_path)
        pareto = upload(pareto_path) if pareto_path is not None else None
        body = ModelCreate(
            **card.model_dump(include=set(ModelCard.model_fields)),
            artifact_sha256=artifact.sha256,
            golden_sha256=golden.sha256,
            pareto_sha256=pareto.sha256 if pareto else None,
        )
        return self.register_model(body, plan=plan)

    def register_model(self, body: ModelCreate, *, plan: bool = True) -> ModelPublic:
        """Register a version whose files were uploaded already (:meth:`push_model` does both)."""
        return self._typed(
            ModelPublic,
            "POST",
            "/api/v1/models",
            params={"plan": str(plan).lower()},
            json=body.model_dump(mode="json"),
        )

    def models(self, *, include_retired: bool = False) -> list[ModelPublic]:
        """Every model version (all pages), oldest first."""
        params = {"include_retired": str(include_retired).lower()}
        return self._all(ModelPublic, "/api/v1/models", params)

    def retire_model(self, label: str) -> ModelPublic:
        name, version = _split_label(label)
        return self._typed(ModelPublic, "POST", f"/api/v1/models/{name}/{version}/retire")

    def apply_retention(self, keep: int, name: str | None = None) -> Retired:
        body = Retention(keep=keep, name=name)
        return self._typed(Retired, "POST", "/api/v1/models/retention", json=body.model_dump())

    # ------------------------------------------------------------------ devices

    def devices(
        self, *, profile: str | None = None, tags: list[str] | None = None,
        online: bool | None = None, application: str | None = None,
    ) -> list[DevicePublic]:  # fmt: skip
        """Every registered device matching the filters (all pages)."""
        params: dict[str, Any] = {"tag": tags or []}
        if profile:
            params["profile"] = profile
        if application:
            params["application"] = application
        if online is not None:
            params["online"] = str(online).lower()
        return self._all(DevicePublic, "/api/v1/devices", params)

    def device(self, device_id: str) -> DeviceDetail:
        return self._typed(DeviceDetail, "GET", f"/api/v1/devices/{device_id}")

    def telemetry(
        self, device_id: str, *, since: str | None = None, limit: int = 100, offset: int = 0
    ) -> Page[TelemetrySample]:
        """One page of a device's telemetry, newest first."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if since:
            params["since"] = since
        return self._typed(
            Page[TelemetrySample], "GET", f"/api/v1/devices/{device_id}/telemetry", params=params
        )

    def device_reports(self, device_id: str, *, limit: int = 50) -> list[ReportRecord]:
        """A device's update reports, newest first."""
        return self._typed(
            list[ReportRecord],
            "GET",
            f"/api/v1/devices/{device_id}/reports",
            params={"limit": limit},
        )

    def reports(
        self, *, profile: str | None = None, model: str | None = None, latest: bool = False
    ) -> list[ReportRecord]:
        """The fleet's reports, newest first (all pages): of devices of ``profile``, on
        ``model`` (``name:version``); ``latest``: only each device's newest one of those."""
        params: dict[str, Any] = {"latest": str(latest).lower()}
        if profile is not None:
            params["profile"] = profile
        if model is not None:
            params["model"] = model
        return self._all(ReportRecord, "/api/v1/reports", params)

    def plan(self, application: str | None = None) -> list[FleetEntry]:
        """Re-plan every device now (only those of ``application``, when given); the fleet
        as it stands after."""
        params = {"application": application} if application else {}
        return self._typed(list[FleetEntry], "POST", "/api/v1/fleet/plan", params=params)

    # ------------------------------------------------------------------ applications

    def applications(self) -> list[ApplicationPublic]:
        return self._typed(list[ApplicationPublic], "GET", "/api/v1/applications")

    def application_assignments(self) -> list[ApplicationAssignmentPublic]:
        return self._typed(
            list[ApplicationAssignmentPublic], "GET", "/api/v1/applications/assignments"
        )

    def assign_application(self, application: str, tag: str) -> ApplicationAssignmentPublic:
        """Devices carrying ``tag`` run ``application`` from now on."""
        return self._typed(
            ApplicationAssignmentPublic,
            "POST",
            f"/api/v1/applications/{quote(application, safe='')}/assignments",
            json=ApplicationAssign(tag=tag).model_dump(),
        )

    def unassign_application(self, tag: str) -> ApplicationAssignmentPublic:
        return self._typed(
            ApplicationAssignmentPublic,
            "DELETE",
            f"/api/v1/applications/assignments/{quote(tag, safe='')}",
        )

    def fleet(self) -> list[FleetEntry]:
        return self._typed(list[FleetEntry], "GET", "/api/v1/fleet")

    # ------------------------------------------------------------------ loop

    def record_decision(self, decision: LoopDecisionCreate) -> LoopDecisionPublic:
        return self._typed(
            LoopDecisionPublic,
            "POST",
            "/api/v1/loop/decisions",
            json=decision.model_dump(mode="json"),
        )

    def decisions(self, *, loop: str | None = None) -> list[LoopDecisionPublic]:
        """The loop's decisions, oldest first (all pages)."""
        return self._all(
            LoopDecisionPublic, "/api/v1/loop/decisions", {"loop": loop} if loop else {}
        )

    def put_calibration(
        self, profile: str, calibration: Mapping[str, Any], observations: int
    ) -> CalibrationPublic:
        body = CalibrationPut(calibration=dict(calibration), observations=observations)
        return self._typed(
            CalibrationPublic,
            "PUT",
            f"/api/v1/calibrations/{profile}",
            json=body.model_dump(mode="json"),
        )

    def calibrations(self) -> list[CalibrationPublic]:
        return self._typed(list[CalibrationPublic], "GET", "/api/v1/calibrations")

    # ------------------------------------------------------------------ rollouts

    def create_rollout(self, request: RolloutCreate) -> RolloutStatus:
        return self._typed(
            RolloutStatus, "POST", "/api/v1/rollouts", json=request.model_dump(mode="json")
        )

    def rollout(self, rollout_id: int) -> RolloutStatus:
        return self._typed(RolloutStatus, "GET", f"/api/v1/rollouts/{rollout_id}")

    def rollouts(self, *, limit: int = 50, offset: int = 0) -> Page[RolloutSummary]:
        """One page of rollouts, newest first."""
        return self._typed(
            Page[RolloutSummary],
            "GET",
            "/api/v1/rollouts",
            params={"limit": limit, "offset": offset},
        )

    def rollout_action(self, rollout_id: int, action: str) -> RolloutStatus:
        """``action``: pause, resume, cancel or rollback."""
        return self._typed(RolloutStatus, "POST", f"/api/v1/rollouts/{rollout_id}/{action}")

    # ------------------------------------------------------------------ trust

    def enrolment_token(self, device_id: str) -> EnrolTokenCreated:
        """A one-time token that enrols ``device_id`` (``edgeloop-agent enrol --token``)."""
        return self._typed(
            EnrolTokenCreated, "POST", f"/api/v1/devices/{device_id}/enrolment-token"
        )

    def revoke_device(self, device_id: str) -> Revoked:
        """Cut ``device_id`` off: certificate on the CRL, tokens dead, messages ignored."""
        return self._typed(Revoked, "POST", f"/api/v1/devices/{device_id}/revoke")

    # ------------------------------------------------------------------ audit

    def audit(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        actor: str | None = None,
        action: str | None = None,
    ) -> Page[AuditEntryPublic]:
        """One page of the audit trail, newest first: by ``actor`` (a token's name), of
        ``action`` (e.g. ``rollout.create``)."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if actor is not None:
            params["actor"] = actor
        if action is not None:
            params["action"] = action
        return self._typed(Page[AuditEntryPublic], "GET", "/api/v1/audit", params=params)


def card_from_onnx(
    model_path: Path,
    *,
    name: str,
    version: str,
    figures: ModelFigures,
    application: str = DEFAULT_APPLICATION,
) -> ModelCard:
    """A card for an ONNX file that came without one (``edgeloop models push FILE --report R``,
    the loop's candidates).

    The I/O contract is read from the file with onnxruntime, as a device will load it (no
    ``onnx`` package needed). ``figures`` without ``size_bytes`` get the file's size; the
    golden tolerance is theirs when they carry one.

    Raises:
        ApiError: onnxruntime cannot load the file, or a tensor has a type no device can feed.
    """
    from edgeloop.agent.errors import GateError
    from edgeloop.agent.runtime import host_profile, io_specs, open_session

    try:
        inputs, outputs = io_specs(open_session(model_path, host_profile(1)))
    except GateError as exc:
        raise ApiError(f"{model_path} is not a model onnxruntime can load: {exc}") from None
    except ValueError as exc:
        raise ApiError(f"{model_path}: {exc}") from None
    if figures.size_bytes is None:
        figures = figures.model_copy(update={"size_bytes": model_path.stat().st_size})
    return ModelCard(
        name=name,
        version=version,
        application=application,
        inputs=inputs,
        outputs=outputs,
        golden_atol=1e-3 if figures.golden_atol is None else figures.golden_atol,
        report=figures,
    )


class _CountingReader:
    """A file as a request body that reports each read to ``progress``. Its ``len`` makes
    requests send a Content-Length and stream the body rather than read it into memory."""

    def __init__(self, source: BinaryIO, size: int, progress: Progress | None) -> None:
        self.source, self.size, self.progress, self.sent = source, size, progress, 0
        if progress is not None and size == 0:
            progress(0, 0)

    def __len__(self) -> int:
        return self.size

    def read(self, amount: int = -1) -> bytes:
        chunk = self.source.read(amount)
        if chunk and self.progress is not None:
            self.sent += len(chunk)
            self.progress(self.sent, self.size)
        return chunk


def _split_label(label: str) -> tuple[str, str]:
    name, _, version = label.partition(":")
    if not name or not version:
        raise ApiError(f"{label!r} is not NAME:VERSION (e.g. digits-cnn:2-int8)")
    return name, version


def _name(kind: Any) -> str:
    return getattr(kind, "__name__", None) or str(kind)
