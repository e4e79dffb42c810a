"""A small client for the local inference endpoint, for applications on the device.

    from edgeloop.agent.endpoint_client import InferenceClient
    client = InferenceClient()                     # http://127.0.0.1:8470
    outputs = client.infer({"pixels": batch})      # {"logits": array}

It keeps one HTTP connection open (``requests.Session``), so a call costs one round trip on
loopback; ``client.model`` names the model that answered the last call.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import requests

from .endpoint import NPZ, pack, unpack
from .errors import AgentError

DEFAULT_URL = "http://127.0.0.1:8470"


class EndpointError(AgentError):
    """The endpoint answered with an error; ``status`` is the HTTP status code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class InferenceClient:
    def __init__(self, url: str = DEFAULT_URL, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.model: str | None = None
        self._http = requests.Session()

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the device's current model on named inputs (batch first)."""
        response = self._http.post(
            f"{self.url}/v1/infer",
            data=pack(inputs),
            headers={"Content-Type": NPZ},
            timeout=self.timeout_s,
        )
        if response.status_code != 200:
            raise EndpointError(response.status_code, _error_text(response))
        self.model = response.headers.get("X-Edgeloop-Model")
        return unpack(response.content)

    def health(self) -> dict[str, Any]:
        response = self._http.get(f"{self.url}/v1/health", timeout=self.timeout_s)
        response.raise_for_status()
        return response.json()

    def rollback(self) -> dict[str, Any]:
        """Ask the agent to go back to its previous committed model."""
        response = self._http.post(f"{self.url}/v1/rollback", timeout=self.timeout_s)
        if response.status_code != 200:
            raise EndpointError(response.status_code, _error_text(response))
        return response.json()

    def close(self) -> None:
        self._http.close()


def _error_text(response: requests.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text[:300]
