"""A small REST client for the control plane, used by the demo and the operator CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import requests

from edgeloop.compressor.report import BuiltModel


class ApiError(RuntimeError):
    """The control plane answered with an error; the message carries its detail and
    ``status`` the HTTP status (None when it could not be reached or nothing was sent)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


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
            raise ApiError(
                f"{method} {path}: HTTP {response.status_code}: {detail}", response.status_code
            )
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

    def models(self, *, include_retired: bool = False) -> list[dict[str, Any]]:
        """Every model version (all pages), oldest first."""
        return self._all(
            "/api/v1/models", {"include_retired": str(include_retired).lower()}, page=1000
        )

    def push_files(
        self,
        model_path: Path,
        golden_path: Path,
        *,
        name: str,
        version: str,
        report: dict[str, Any],
        plan: bool = True,
    ) -> dict[str, Any]:
        """Upload an ONNX file and its golden npz and register them as ``name:version``.

        The I/O contract is read from the file with onnxruntime (no onnx package needed on
        an operator's machine); ``report`` must carry at least ``accuracy``.
        """
        if "accuracy" not in report:
            raise ApiError("the report has no `accuracy`: the planner ranks versions by it")
        inputs, outputs = _io_specs(model_path)
        artifact = self.upload_artifact(model_path)
        golden = self.upload_artifact(golden_path)
        report = {"size_bytes": model_path.stat().st_size, **report}
        return self.register_model(
            {
                "name": name,
                "version": version,
                "artifact_sha256": artifact["sha256"],
                "golden_sha256": golden["sha256"],
                "inputs": inputs,
                "outputs": outputs,
                "golden_atol": report.get("golden_atol", 1e-3),
                "report": report,
            },
            plan=plan,
        )

    def retire_model(self, label: str) -> dict[str, Any]:
        name, version = _split_label(label)
        return self._call("POST", f"/api/v1/models/{name}/{version}/retire")

    def apply_retention(self, keep: int, name: str | None = None) -> dict[str, Any]:
        return self._call("POST", "/api/v1/models/retention", json={"keep": keep, "name": name})

    # ------------------------------------------------------------------ devices

    def devices(
        self, *, profile: str | None = None, tags: list[str] | None = None,
        online: bool | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Every registered device matching the filters (all pages)."""
        params: dict[str, Any] = {"tag": tags or []}
        if profile:
            params["profile"] = profile
        if online is not None:
            params["online"] = str(online).lower()
        return self._all("/api/v1/devices", params, page=1000)

    def device(self, device_id: str) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/devices/{device_id}")

    def telemetry(
        self, device_id: str, *, since: str | None = None, limit: int = 100, offset: int = 0
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if since:
            params["since"] = since
        return self._call("GET", f"/api/v1/devices/{device_id}/telemetry", params=params)

    def device_reports(self, device_id: str, *, limit: int = 50) -> list[dict[str, Any]]:
        """A device's update reports, newest first."""
        return self._call("GET", f"/api/v1/devices/{device_id}/reports", params={"limit": limit})

    # ------------------------------------------------------------------ loop

    def record_decision(self, decision: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/api/v1/loop/decisions", json=decision)

    def decisions(self, *, loop: str | None = None) -> list[dict[str, Any]]:
        """The loop's decisions, oldest first (all pages)."""
        return self._all("/api/v1/loop/decisions", {"loop": loop} if loop else {}, page=1000)

    def put_calibration(
        self, profile: str, calibration: dict[str, Any], observations: int
    ) -> dict[str, Any]:
        return self._call(
            "PUT",
            f"/api/v1/calibrations/{profile}",
            json={"calibration": calibration, "observations": observations},
        )

    def calibrations(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/calibrations")

    def _all(self, path: str, params: dict[str, Any], *, page: int) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            answer = self._call("GET", path, params={**params, "limit": page, "offset": len(items)})
            items.extend(answer["items"])
            if not answer["items"] or len(items) >= answer["total"]:
                return items

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


def _split_label(label: str) -> tuple[str, str]:
    name, _, version = label.partition(":")
    if not name or not version:
        raise ApiError(f"{label!r} is not NAME:VERSION (e.g. digits-cnn:2-int8)")
    return name, version


_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def _io_specs(model_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises bare RuntimeError subclasses
        raise ApiError(f"{model_path} is not a model onnxruntime can load: {exc}") from None

    def spec(arg: Any) -> dict[str, Any]:
        dtype = _ORT_DTYPES.get(arg.type)
        if dtype is None:
            raise ApiError(f"{model_path}: tensor {arg.name!r} has unsupported type {arg.type}")
        shape = [d if isinstance(d, int) else (d or "?") for d in arg.shape]
        return {"name": arg.name, "dtype": dtype, "shape": shape}

    return [spec(a) for a in session.get_inputs()], [spec(a) for a in session.get_outputs()]
