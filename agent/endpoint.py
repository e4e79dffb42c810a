"""The local inference endpoint: HTTP on 127.0.0.1 for applications on the device.

Routes (all under ``/v1``):

- ``POST /v1/infer``: body ``application/x-npz`` (``numpy.savez`` of named input arrays,
  batch first) answered with an npz of the outputs; or ``application/json``
  ``{"inputs": {name: nested lists}}`` answered with ``{"model", "outputs"}``.
- ``GET /v1/health``: the serving model and the update state (200 even with no model).
- ``POST /v1/rollback``: ask the agent to go back to its previous committed model.

Errors are JSON ``{"error": ...}``: 400 for inputs that do not fit the model, 503 while no
model is active, 500 when the model itself fails. Loopback only: the endpoint has no
authentication, so it must never listen on a public address.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from .host import BadRequestError, InferenceError, ModelHost, NoModelError

log = logging.getLogger("edgeloop.agent.endpoint")

NPZ = "application/x-npz"
MAX_BODY_BYTES = 64 * 2**20


def pack(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub misreads **kwargs
    return buffer.getvalue()


def unpack(body: bytes) -> dict[str, np.ndarray]:
    """Named arrays from an npz body; pickled objects are refused."""
    with np.load(io.BytesIO(body), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


class InferenceEndpoint:
    """Serves a :class:`ModelHost` on ``host:port`` (port 0 picks a free one) in a thread."""

    def __init__(
        self,
        model_host: ModelHost,
        port: int,
        *,
        host: str = "127.0.0.1",
        health: Callable[[], dict[str, Any]] | None = None,
        rollback: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        endpoint = self

        class Handler(_Handler):
            owner = endpoint

        self.model_host = model_host
        self.health = health or (lambda: {})
        self.rollback = rollback
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="endpoint", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> InferenceEndpoint:
        self._thread.start()
        log.info("local inference endpoint on %s", self.url)
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    owner: InferenceEndpoint
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Small request/response pairs on a kept-alive connection otherwise meet Nagle's
        # algorithm and the peer's delayed ACK: ~40 ms per call instead of ~0.2 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        if self.path == "/v1/health":
            model = self.owner.model_host.model
            self._json(
                HTTPStatus.OK,
                {"model": model.label if model else None, **self.owner.health()},
            )
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no route GET {self.path}"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "body over 64 MiB"})
            return
        body = self.rfile.read(length)
        if self.path == "/v1/infer":
            self._infer(body)
        elif self.path == "/v1/rollback" and self.owner.rollback is not None:
            try:
                self._json(HTTPStatus.OK, self.owner.rollback())
            except Exception as exc:
                self._json(HTTPStatus.CONFLICT, {"error": str(exc)})
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no route POST {self.path}"})

    def _infer(self, body: bytes) -> None:
        as_json = self.headers.get("Content-Type", NPZ).startswith("application/json")
        host = self.owner.model_host
        try:
            feeds = _json_feeds(body, host) if as_json else unpack(body)
        except Exception as exc:
            kind = "JSON" if as_json else "npz"
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"body is not a valid {kind}: {exc}"})
            return
        try:
            outputs = host.infer(feeds)
        except BadRequestError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        except NoModelError as exc:
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
            return
        except InferenceError as exc:
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)})
            return
        model = host.model
        label = model.label if model else ""
        if as_json:
            self._json(
                HTTPStatus.OK,
                {"model": label, "outputs": {k: v.tolist() for k, v in outputs.items()}},
            )
        else:
            self._send(HTTPStatus.OK, pack(outputs), NPZ, {"X-Edgeloop-Model": label})

    def _json(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send(
        self, status: HTTPStatus, body: bytes, content_type: str, extra: dict | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


def _json_feeds(body: bytes, host: ModelHost) -> dict[str, np.ndarray]:
    """JSON inputs as arrays of the dtypes the model's manifest declares."""
    raw = json.loads(body)
    inputs = raw["inputs"] if isinstance(raw, dict) else None
    if not isinstance(inputs, dict):
        raise ValueError('expected {"inputs": {name: nested lists}}')
    model = host.model
    dtypes = {s.name: s.dtype for s in model.manifest.inputs} if model else {}
    return {name: np.asarray(value, dtype=dtypes.get(name)) for name, value in inputs.items()}
