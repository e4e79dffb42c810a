"""Measure an ONNX artifact the way a device will run it: onnxruntime on CPU, no torch.

Every figure here comes from the exported file itself, not from the PyTorch model it came
from, so what the report says is what ships.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

__all__ = ["accuracy", "latency", "make_golden", "session"]


def session(model_path: Path, threads: int = 1) -> ort.InferenceSession:
    """A session as a device with ``threads`` intra-op threads opens it (the agent's own
    :func:`~edgeloop.agent.runtime.open_session`).

    Thread counts are pinned because onnxruntime's default (all cores) makes latencies depend
    on whatever else the host is doing.
    """
    from edgeloop.agent.runtime import host_profile, open_session

    return open_session(model_path, host_profile(threads))


def _io_names(sess: ort.InferenceSession) -> tuple[str, str]:
    return sess.get_inputs()[0].name, sess.get_outputs()[0].name


def accuracy(
    model_path: Path, x: np.ndarray, y: np.ndarray, threads: int = 1, batch_size: int = 256
) -> float:
    """Top-1 accuracy of a single-input classifier whose first output is per-class scores."""
    sess = session(model_path, threads)
    input_name, output_name = _io_names(sess)
    predictions = np.concatenate(
        [
            sess.run([output_name], {input_name: x[start : start + batch_size]})[0].argmax(axis=1)
            for start in range(0, len(x), batch_size)
        ]
    )
    return float((predictions == y).mean())


def latency(
    model_path: Path, sample: np.ndarray, threads: int = 1, runs: int = 300, warmup: int = 20
) -> tuple[float, float]:
    """``(p50_ms, p95_ms)`` of single batch-1 calls, as a device serving one request sees them.

    ``sample`` is one input with its batch axis of 1.
    """
    sess = session(model_path, threads)
    times = latency_feed(sess, {sess.get_inputs()[0].name: sample}, runs=runs, warmup=warmup)
    p50, p95 = np.percentile(times, [50, 95])
    return float(p50), float(p95)


def make_golden(model_path: Path, inputs: np.ndarray, golden_path: Path) -> float:
    """Write the device gate's reference: ``inputs`` and this artifact's own ``outputs``.

    Returns the largest absolute output value, so callers can size a tolerance against the
    output scale. Outputs come from onnxruntime on this very file, so a device that computes
    them differently is detected, not excused by export drift.
    """
    from edgeloop.agent.runtime import record_golden

    input_name = session(model_path, threads=1).get_inputs()[0].name
    golden = record_golden(model_path, {input_name: inputs}, golden_path)
    return float(np.abs(golden.outputs).max())


def peak_memory_mb(model_path: Path, feed: dict[str, np.ndarray], threads: int = 1) -> float:
    """Peak RSS of a fresh onnxruntime-only process serving ``model_path`` (see memprobe)."""
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgeloop-mem-") as scratch:
        feeds = Path(scratch) / "feed.npz"
        np.savez(feeds, **feed)  # type: ignore[arg-type]  # numpy's stub misreads **kwargs
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgeloop.compressor.memprobe",
                str(model_path),
                str(feeds),
                str(threads),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
    return float(json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mb"])


def latency_feed(
    sess: ort.InferenceSession,
    feed: dict[str, np.ndarray],
    runs: int = 200,
    warmup: int = 10,
    min_seconds: float = 0.0,
) -> np.ndarray:
    """Single-call latencies (ms) of ``feed`` on an open session, after a warm-up.

    Runs at least ``runs`` calls and at least ``min_seconds`` of them, so slow models still
    get a stable median without fast ones taking minutes.
    """
    for _ in range(warmup):
        sess.run(None, feed)
    timings: list[float] = []
    started = time.perf_counter()
    while len(timings) < runs or time.perf_counter() - started < min_seconds:
        start = time.perf_counter()
        sess.run(None, feed)
        timings.append((time.perf_counter() - start) * 1e3)
    return np.asarray(timings)


def outputs(model_path: Path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """First output of the model for each feed (for output-error comparisons)."""
    sess = session(model_path, threads=1)
    return [sess.run(None, feed)[0] for feed in feeds]


def interleaved(
    sessions: dict[str, ort.InferenceSession],
    feed: dict[str, np.ndarray],
    *,
    calls: int = 200,
    min_seconds: float = 0.0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Single-call latencies (ms) per session, calls to all sessions interleaved at random.

    On a shared host, load drifts over seconds; interleaving puts that drift on every model
    alike, so ratios taken from one call of this are fair where separate runs are not.
    """
    for sess in sessions.values():
        for _ in range(10):
            sess.run(None, feed)
    timings: dict[str, list[float]] = {name: [] for name in sessions}
    order = list(sessions)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    rounds = 0
    while rounds < calls or time.perf_counter() - started < min_seconds:
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            sessions[name].run(None, feed)
            timings[name].append((time.perf_counter() - start) * 1e3)
        rounds += 1
    return {name: np.asarray(values) for name, values in timings.items()}


def compare_latency(
    models: dict[str, Path],
    feed: dict[str, np.ndarray],
    threads: int = 1,
    calls: int = 400,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """``name → (p50_ms, p95_ms)`` of CPU sessions, measured with :func:`interleaved`."""
    sessions = {name: session(path, threads) for name, path in models.items()}
    timings = interleaved(sessions, feed, calls=calls, seed=seed)
    return {
        name: (float(np.percentile(v, 50)), float(np.percentile(v, 95)))
        for name, v in timings.items()
    }
