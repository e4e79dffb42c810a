"""Open a model in onnxruntime the way a profile allows, and measure it."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import GateError
from .protocol import DeviceProfile, LatencyStats


def providers_for(profile: DeviceProfile) -> list[str]:
    """The profile's execution providers that this onnxruntime build has, in profile order.

    CPU is always last resort: a Jetson profile asking for TensorRT still runs (slower) on a
    build without it, and the report names the providers actually used.
    """
    available = set(ort.get_available_providers())
    chosen = [p for p in profile.execution_providers if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def open_session(model_path: Path, profile: DeviceProfile) -> ort.InferenceSession:
    """Load ``model_path`` with the profile's thread count.

    Raises:
        GateError("loads"): onnxruntime refuses the file (corrupt, unsupported opset or op).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = profile.cpu_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(
            str(model_path), sess_options=options, providers=providers_for(profile)
        )
    except Exception as exc:  # onnxruntime raises bare RuntimeError/Fail subclasses
        raise GateError("loads", f"onnxruntime cannot load {model_path.name}: {exc}") from exc


@dataclass(frozen=True)
class Measurement:
    latency: LatencyStats
    cpu_seconds: float
    wall_seconds: float


def latency_stats(samples_ms: np.ndarray) -> LatencyStats:
    p50, p95, p99 = np.percentile(samples_ms, [50, 95, 99])
    return LatencyStats(
        n=int(samples_ms.size),
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        mean_ms=float(samples_ms.mean()),
    )


def measure(session: ort.InferenceSession, inputs: np.ndarray, runs: int) -> Measurement:
    """Run ``runs`` batch-1 inferences, cycling through ``inputs`` (real samples).

    One warm-up call is excluded: the first run pays for memory-arena growth, which would
    otherwise land in p99.
    """
    input_name = session.get_inputs()[0].name
    samples = [inputs[i : i + 1] for i in range(len(inputs))]
    session.run(None, {input_name: samples[0]})
    times_ms = np.empty(runs)
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    for i in range(runs):
        start = time.perf_counter_ns()
        session.run(None, {input_name: samples[i % len(samples)]})
        times_ms[i] = (time.perf_counter_ns() - start) / 1e6
    return Measurement(
        latency=latency_stats(times_ms),
        cpu_seconds=time.process_time() - cpu_start,
        wall_seconds=time.perf_counter() - wall_start,
    )


def peak_rss_mb() -> float:
    """Peak resident set size of this program, in MB.

    Linux's ``VmHWM`` is reset by exec, unlike ``ru_maxrss``, which keeps the peak of the
    forked parent's pages: an agent started by a large process would report that process's
    memory as its own.
    """
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
