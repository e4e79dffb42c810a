"""A small REST client for the control plane, used by the demo and the operator CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import requests

from edgeloop.compressor.report import BuiltModel


class ApiError(RuntimeError):
    """The control plane answered with an error; the message carries its detail."""


class ApiClient:
    def __init__(self, base_url: str, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.http = requests.Session()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
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
            raise ApiError(f"{method} {path}: HTTP {response.status_code}: {detail}")
        return response.json() if response.content else None

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/healthz")

    def upload_artifact(self, path: Path) -> dict[str, Any]:
        sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        with path.open("rb") as body:
            return self._call("PUT", f"/api/v1/artifacts/{sha256}", data=body)

    def push_model(self, model: BuiltModel, *, plan: bool = True) -> dict[str, Any]:
        """Upload a compressor output (model and golden file), then register the version.

        ``plan=False`` registers without re-planning the fleet, so several candidates of one
        round can be registered before :meth:`plan` picks among all of them.
        """
        artifact = self.upload_artifact(model.model_path)
        golden = self.upload_artifact(model.golden_path)
        return self._call(
            "POST",
            "/api/v1/models",
            params={"plan": str(plan).lower()},
            json={
                "name": model.name,
                "version": model.version,
                "artifact_sha256": artifact["sha256"],
                "golden_sha256": golden["sha256"],
                "inputs": [s.model_dump() for s in model.inputs],
                "outputs": [s.model_dump() for s in model.outputs],
                "golden_atol": model.report.golden_atol,
                "report": model.report.model_dump(mode="json"),
            },
        )

    def models(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/models")

    def plan(self) -> list[dict[str, Any]]:
        return self._call("POST", "/api/v1/fleet/plan")

    def fleet(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/fleet")

    def register_model(self, body: dict[str, Any], *, plan: bool = True) -> dict[str, Any]:
        """Register a version whose files were uploaded already (``ModelCreate`` fields)."""
        return self._call("POST", "/api/v1/models", params={"plan": str(plan).lower()}, json=body)

    # ------------------------------------------------------------------ rollouts

    def create_rollout(
        self,
        model: str,
        *,
        target: dict[str, Any] | None = None,
        waves: list[str] | None = None,
        criteria: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "target": target or {}}
        if waves is not None:
            body["waves"] = waves
        if criteria is not None:
            body["criteria"] = criteria
        return self._call("POST", "/api/v1/rollouts", json=body)

    def rollout(self, rollout_id: int) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/rollouts/{rollout_id}")

    def rollouts(self, *, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        return self._call("GET", "/api/v1/rollouts", params={"limit": limit, "offset": offset})

    def rollout_action(self, rollout_id: int, action: str) -> dict[str, Any]:
        """``action``: pause, resume, cancel or rollback."""
        return self._call("POST", f"/api/v1/rollouts/{rollout_id}/{action}")
