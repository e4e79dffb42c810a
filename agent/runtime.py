"""Open a model in onnxruntime the way a profile allows, and measure it.

This is the one place a session is opened: the agent, the compressor's evaluation and memory
probe, the cost model's host measurements, the lab's emulated devices and the operator's
``models push`` all call :func:`open_session`, so a model is measured on the build host with
the options it will run with on the device.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .golden import Golden, save_golden
from .protocol import DeviceProfile, LatencyStats, TensorSpec
from .validate import classify_load_error


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
        GateError(Gate.OPSET or Gate.LOADS): onnxruntime refuses the file (unsupported opset or
            IR version; corrupt file or unknown op).
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
        raise classify_load_error(model_path, exc) from exc


def host_profile(threads: int = 1) -> DeviceProfile:
    """This machine's CPU at ``threads`` intra-op threads, without budgets: for measuring a
    model on the build host as a device with that many threads would run it."""
    return DeviceProfile(
        name=f"host-{threads}t",
        cpu_threads=threads,
        memory_budget_mb=float("inf"),
        latency_budget_ms=float("inf"),
    )


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


def io_specs(session: ort.InferenceSession) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The session's inputs and outputs in the wire contract's terms (what a manifest lists).

    A dimension without a size is symbolic: its name, or ``"?"`` when the graph has none.

    Raises:
        ValueError: a tensor type the contract has no dtype for (e.g. strings, sequences).
    """

    def spec(arg: ort.NodeArg) -> TensorSpec:
        dtype = _ORT_DTYPES.get(arg.type)
        if dtype is None:
            raise ValueError(f"tensor {arg.name!r} has type {arg.type}, which no device can feed")
        shape = [d if isinstance(d, int) else (d or "?") for d in arg.shape]
        return TensorSpec(name=arg.name, dtype=dtype, shape=shape)

    return [spec(a) for a in session.get_inputs()], [spec(a) for a in session.get_outputs()]


def record_golden(model_path: Path, inputs: dict[str, np.ndarray], golden_path: Path) -> Golden:
    """Run ``inputs`` through the artifact itself (onnxruntime, this host, one thread) and save
    them with its first output.

    Outputs come from the very file that ships, not from the framework it was exported
    from, so export drift is not excused by the gate.
    """
    session = open_session(model_path, host_profile(1))
    outputs = session.run(None, inputs)[0]
    save_golden(golden_path, inputs, outputs)
    return Golden(dict(inputs), outputs)


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


def measure(session: ort.InferenceSession, golden: Golden, runs: int) -> Measurement:
    """Run ``runs`` batch-1 inferences, cycling through the golden samples (real inputs).

    One warm-up call is excluded: the first run pays for memory-arena growth, which would
    otherwise land in p99.
    """
    samples = [golden.sample(i) for i in range(golden.count)]
    session.run(None, samples[0])
    times_ms = np.empty(runs)
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    for i in range(runs):
        start = time.perf_counter_ns()
        session.run(None, samples[i % len(samples)])
        times_ms[i] = (time.perf_counter_ns() - start) / 1e6
    return Measurement(
        latency=latency_stats(times_ms),
        cpu_seconds=time.process_time() - cpu_start,
        wall_seconds=time.perf_counter() - wall_start,
    )


def proc_status_mb(field: str, pid: int | str = "self") -> float | None:
    """A memory figure of ``/proc/<pid>/status`` in MB (``VmHWM``, ``VmSize``, ``VmPeak``...);
    None off Linux, for a process gone, or a field the kernel does not show (a zombie's)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this program, in MB.

    Linux's ``VmHWM`` is reset by exec, unlike ``ru_maxrss``, which keeps the peak of the
    forked parent's pages: an agent started by a large process would report that process's
    memory as its own. So a fresh process per measurement (the agent's validation child, the
    compressor's memory probe) reports that measurement's peak alone.
    """
    peak = proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Validation, measurement and probation load and drop whole sessions; glibc keeps those
    pages in its per-thread arenas, so an idle agent would carry the peak of its last update
    as resident memory. Trimming after an update settles returns them.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):
        pass
