"""A small REST client for the control plane, used by the demo and the operator CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import requests

from edgeloop.agent.protocol import TensorSpec


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

    def push_model(
        self,
        *,
        name: str,
        version: str,
        model_path: Path,
        golden_path: Path,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        golden_atol: float,
        report: dict[str, Any],
        plan: bool = True,
    ) -> dict[str, Any]:
        """Upload the model and its golden file, then register the version."""
        artifact = self.upload_artifact(model_path)
        golden = self.upload_artifact(golden_path)
        return self._call(
            "POST",
            "/api/v1/models",
            params={"plan": str(plan).lower()},
            json={
                "name": name,
                "version": version,
                "artifact_sha256": artifact["sha256"],
                "golden_sha256": golden["sha256"],
                "inputs": [s.model_dump() for s in inputs],
                "outputs": [s.model_dump() for s in outputs],
                "golden_atol": golden_atol,
                "report": report,
            },
        )

    def models(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/models")

    def plan(self) -> list[dict[str, Any]]:
        return self._call("POST", "/api/v1/fleet/plan")

    def fleet(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/fleet")
