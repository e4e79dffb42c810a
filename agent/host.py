"""The model applications call: one current onnxruntime session, swapped atomically.

:meth:`ModelHost.infer` reads the current model reference once per request, so a swap (an
activation or a rollback) lands between requests: a request started on the old model finishes
on it, the next one runs the new. The host records each request's latency and outcome (the
live figures telemetry and probation use) and, while a shadow is set, re-runs a sample of live
inputs on the previous model in a background thread to measure how often the two agree.

The same :class:`Shadow`, :func:`agreement` and :func:`failure` serve the in-process runtime
of applications (:mod:`edgeloop.agent.local`), so a call counts and compares alike whichever
way it reached the model.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnxruntime as ort

from .errors import AgentError
from .protocol import LatencyStats, ModelManifest
from .runtime import latency_stats

log = logging.getLogger("edgeloop.agent.host")

LATENCY_WINDOW = 2048
"""Requests kept for rolling percentiles: enough for a stable p99, bounded memory."""


class NoModelError(AgentError):
    """No model is active on this device yet; the application should retry later."""


class BadRequestError(AgentError):
    """The request's inputs do not match the model's (names, dtypes); the message says how."""


class InferenceError(AgentError):
    """onnxruntime failed on well-formed inputs: counts against the model in probation."""


def failure(label: str, exc: Exception) -> BadRequestError | InferenceError:
    """What onnxruntime raising ``exc`` while running ``label`` means for the caller: inputs
    the model refuses (names, dtypes, shapes) or a failure of the model itself."""
    message = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    refused = ("INVALID_ARGUMENT", "missing from input feed", "Invalid Feed Input Name")
    if any(word in message for word in refused) or "data type" in message.lower():
        return BadRequestError(f"{label} refused the inputs: {message}")
    return InferenceError(f"{label} failed: {message}")


@dataclass(frozen=True)
class LoadedModel:
    label: str
    session: ort.InferenceSession
    manifest: ModelManifest
    input_names: tuple[str, ...] = field(default=())
    output_names: tuple[str, ...] = field(default=())

    @classmethod
    def of(cls, label: str, session: ort.InferenceSession, manifest: ModelManifest) -> LoadedModel:
        return cls(
            label,
            session,
            manifest,
            tuple(i.name for i in session.get_inputs()),
            tuple(o.name for o in session.get_outputs()),
        )


@dataclass(frozen=True)
class WindowStats:
    """Live figures since a point in time."""

    requests: int
    errors: int
    seconds: float
    latency: LatencyStats | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def agreement(metric: Literal["argmax", "cosine"], new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Per-sample agreement in [0, 1] between two models' first outputs (batch on axis 0).

    ``argmax``: 1 where the top class is the same. ``cosine``: cosine similarity of each
    sample's output; a sample with one value (a controller's action) uses 1 - relative
    difference instead, as cosine of two scalars is only their sign.
    """
    new2 = new.reshape(new.shape[0], -1).astype(np.float64)
    old2 = old.reshape(old.shape[0], -1).astype(np.float64)
    if metric == "argmax":
        return (new2.argmax(axis=1) == old2.argmax(axis=1)).astype(np.float64)
    if new2.shape[1] == 1:
        scale = np.maximum(np.maximum(np.abs(new2), np.abs(old2)), 1e-6)
        return np.clip(1 - np.abs(new2 - old2) / scale, 0, 1)[:, 0]
    dot = (new2 * old2).sum(axis=1)
    norms = np.linalg.norm(new2, axis=1) * np.linalg.norm(old2, axis=1)
    return np.clip(dot / np.maximum(norms, 1e-12), 0, 1)


class Shadow:
    """Runs the previous model on a sample of live inputs, off the request path.

    A sampled input is copied before it is queued: a caller (a control loop) may refill its
    input buffers as soon as its call returns.
    """

    def __init__(self, previous: LoadedModel, metric: Literal["argmax", "cosine"], every: int):
        self.previous = previous
        self.metric = metric
        self.every = max(1, every)
        self._seen = 0
        self._scores: list[float] = []
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[dict[str, np.ndarray], np.ndarray] | None] = queue.Queue(
            maxsize=64
        )
        self.skipped = 0
        self._thread = threading.Thread(target=self._work, name="shadow", daemon=True)
        self._thread.start()

    def offer(self, feeds: dict[str, np.ndarray], first_output: np.ndarray) -> None:
        self._seen += 1
        if self._seen % self.every:
            return
        if self._queue.full():
            self.skipped += 1
            return
        copied = {name: np.array(value, copy=True) for name, value in feeds.items()}
        try:
            self._queue.put_nowait((copied, np.array(first_output, copy=True)))
        except queue.Full:
            self.skipped += 1

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            feeds, new_output = item
            try:
                old_output = self.previous.session.run(None, feeds)[0]
                scores = agreement(self.metric, np.asarray(new_output), np.asarray(old_output))
            except Exception as exc:  # the previous model failing says nothing about the new
                log.warning("shadow run of %s failed: %s", self.previous.label, exc)
                continue
            with self._lock:
                self._scores.extend(float(s) for s in scores)

    def summary(self) -> tuple[int, float | None]:
        """(samples compared so far, their mean agreement or None), while it goes on."""
        with self._lock:
            scores = list(self._scores)
        return len(scores), (float(np.mean(scores)) if scores else None)

    def close(self, timeout: float = 10.0) -> tuple[int, float | None]:
        """Finish queued comparisons; returns (samples compared, mean agreement or None)."""
        self._queue.put(None)
        self._thread.join(timeout)
        return self.summary()


class ModelHost:
    def __init__(self) -> None:
        self._model: LoadedModel | None = None
        self._shadow: Shadow | None = None
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, float]] = deque(maxlen=LATENCY_WINDOW)
        self._errors: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.total_requests = 0

    @property
    def model(self) -> LoadedModel | None:
        return self._model

    def swap(self, model: LoadedModel | None) -> LoadedModel | None:
        """Serve ``model`` from the next request on; returns the one it replaces."""
        previous, self._model = self._model, model
        log.info(
            "serving %s (was %s)",
            model.label if model else "nothing",
            previous.label if previous else "nothing",
        )
        return previous

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the current model on ``feeds`` (input name → array, batch first).

        Raises:
            NoModelError: nothing is active yet.
            BadRequestError: missing/unknown inputs; not counted against the model.
            InferenceError: onnxruntime failed on well-formed inputs.
        """
        model = self._model
        if model is None:
            raise NoModelError("no model is active on this device yet")
        if set(feeds) != set(model.input_names):
            raise BadRequestError(
                f"inputs {sorted(feeds)} do not match {model.label}'s {list(model.input_names)}"
            )
        start = time.perf_counter()
        try:
            outputs = model.session.run(None, feeds)
        except Exception as exc:
            with self._lock:
                self._errors.append(time.monotonic())
                self.total_requests += 1
            raise failure(model.label, exc) from None
        elapsed_ms = (time.perf_counter() - start) * 1e3
        with self._lock:
            self._samples.append((time.monotonic(), elapsed_ms))
            self.total_requests += 1
        shadow = self._shadow
        if shadow is not None:
            shadow.offer(feeds, outputs[0])
        return dict(zip(model.output_names, outputs, strict=True))

    def window(self, since: float) -> WindowStats:
        """Live figures for requests since ``since`` (a ``time.monotonic()`` value)."""
        now = time.monotonic()
        latencies, errors = self.samples(since)
        return WindowStats(
            requests=int(latencies.size) + errors,
            errors=errors,
            seconds=now - since,
            latency=latency_stats(latencies) if latencies.size else None,
        )

    def samples(self, since: float) -> tuple[np.ndarray, int]:
        """Latencies (ms) of the requests served since ``since`` (a ``time.monotonic()``
        value) and the number that failed; the window keeps the last ``LATENCY_WINDOW``."""
        with self._lock:
            latencies = np.array([ms for t, ms in self._samples if t >= since], dtype=np.float64)
            errors = sum(1 for t in self._errors if t >= since)
        return latencies, errors

    def start_shadow(
        self, previous: LoadedModel, metric: Literal["argmax", "cosine"], every: int
    ) -> None:
        self.stop_shadow()
        self._shadow = Shadow(previous, metric, every)

    def stop_shadow(self) -> tuple[int, float | None]:
        shadow, self._shadow = self._shadow, None
        return shadow.close() if shadow is not None else (0, None)
