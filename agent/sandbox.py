"""Validate a candidate model in a child process, inside the device's memory budget.

Validation runs a model nobody has run on this device yet. A small file can ask for gigabytes
at run time (an ``Expand`` or ``Tile`` to a huge intermediate): run in the serving process,
such a model gets the whole agent killed by the kernel, the local endpoint goes dark, and the
restart guard, not the memory gate, ends the update. So the gates that need onnxruntime run in
a child (``python -m edgeloop.agent.sandbox``), and the serving process opens the file only
once it passed.

Invariants:
- The child's address space is capped (``RLIMIT_AS``) at its own baseline after imports plus
  the memory budget plus :func:`address_margin_mb`: an allocation beyond fails inside the child
  and comes back as the ``memory`` gate with the figures. The cap is on address space, not
  RSS, so it only stops a model far over budget from taking the device's memory; the budget
  itself is judged on the child's peak RSS afterwards.
- The child volunteers for the OOM killer (``oom_score_adj`` 1000): when the device runs out
  of memory first (a cgroup limit tighter than the cap), the kernel kills the child, not the
  agent, and a child killed that way is reported as ``memory``.
- Any other death of the child is a gate named for what it was doing: ``loads`` while opening
  the model, ``golden`` while running the golden inputs; running past :func:`timeout_s` is
  ``latency``. Nothing the model does reaches the serving process.
- The peak RSS reported is the child's own (``VmHWM``, which exec resets): the interpreter,
  onnxruntime and this model, not the agent and the model it serves.
- The child dies with the agent (``PR_SET_PDEATHSIG``): an agent killed mid-validation leaves
  no orphan to compete with the validation its restart runs.

Wire: the parent writes a :class:`ValidationRequest` (JSON) to the child's stdin; the child
writes JSON lines to its stdout, :class:`Progress` as it goes and one :class:`Verdict` at the
end. The child moves its stdout aside first, so whatever a native library prints goes to its
stderr, which the parent keeps the end of for the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal, TextIO

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .errors import GateError
from .golden import load_golden
from .protocol import DeviceProfile, Gate, ModelManifest
from .runtime import measure, open_session, peak_rss_mb, proc_status_mb
from .sensors import EnergyMeter, find_sensor
from .states import Measured
from .validate import check_golden, check_io

log = logging.getLogger("edgeloop.agent.sandbox")

MODULE = "edgeloop.agent.sandbox"

BASE_ADDRESS_MARGIN_MB = 64.0
"""Address space beyond the budget for golden arrays, numpy temporaries and the parsed model."""
THREAD_ADDRESS_MB = 72.0
"""Address space one onnxruntime intra-op thread reserves before the model allocates anything:
glibc's 64 MB malloc arena plus an 8 MB stack. Measured here (onnxruntime 1.32, a tiny model):
+11 MB with one thread, +130 MB with two, +220 MB (+283 MB while running) with four."""

POLL_S = 0.05
STDERR_TAIL_BYTES = 4096
BASE_TIMEOUT_S = 120.0


class Stage(StrEnum):
    """What the child is doing; a child that dies is judged by the last stage it announced."""

    LOADING = "loading"
    RUNNING = "running"  # the golden inputs, checked against the golden outputs
    MEASURING = "measuring"  # the timed batch-1 runs


_DOING = {
    Stage.LOADING: "opening the model",
    Stage.RUNNING: "running the golden inputs",
    Stage.MEASURING: "timing batch-1 runs",
}


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ValidationRequest(_Wire):
    model_path: Path
    golden_path: Path
    manifest: ModelManifest
    profile: DeviceProfile = Field(description="the effective profile: budgets and threads")
    inferences: int = Field(ge=1)
    address_limit: bool = Field(
        default=True, description="cap the child's address space at baseline + budget + margin"
    )


class Progress(_Wire):
    type: Literal["progress"] = "progress"
    stage: Stage


class Verdict(_Wire):
    """The outcome: a gate that refused the model (with its reason), or none; and what was
    measured until then. Budgets are judged by the caller, on ``measured``."""

    type: Literal["verdict"] = "verdict"
    gate: Gate | None = None
    reason: str | None = None
    measured: Measured | None = None


_LINE: TypeAdapter[Progress | Verdict] = TypeAdapter(
    Annotated[Progress | Verdict, Field(discriminator="type")]
)


def address_margin_mb(profile: DeviceProfile) -> float:
    """Address space the child may take beyond its baseline and the memory budget."""
    return BASE_ADDRESS_MARGIN_MB + THREAD_ADDRESS_MB * profile.cpu_threads


def timeout_s(profile: DeviceProfile, inferences: int) -> float:
    """How long validation may take: model loading, plus the timed runs at three times the
    latency budget each (a budget of seconds is capped at one second a run)."""
    return BASE_TIMEOUT_S + 3 * inferences * min(profile.latency_budget_ms, 1000.0) / 1000


# --------------------------------------------------------------------------- parent side


def validate_in_child(
    request: ValidationRequest, stopping: threading.Event | None = None
) -> Verdict | None:
    """Run the gates on ``request``'s model in a child process and return their verdict.

    Returns None when ``stopping`` was set meanwhile (the child is killed; the caller resumes
    validation later). Never raises for anything the model does: a child that crashes, is
    killed or hangs becomes a verdict with the gate named for what happened.
    """
    deadline = time.monotonic() + timeout_s(request.profile, request.inferences)
    child = subprocess.Popen(
        [sys.executable, "-m", MODULE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    watch = _Watch(child.pid)
    try:
        with contextlib.suppress(BrokenPipeError):  # a child that died at once says why below
            child.stdin.write(request.model_dump_json().encode())
            child.stdin.close()
        lines, stderr_tail, ended = _collect(child, watch, deadline, stopping)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        for stream in (child.stdout, child.stderr):
            stream.close()
    stage, verdict = _parse(lines)
    if ended == "stopping":
        return None
    if verdict is not None:
        return verdict
    if stderr_tail:
        log.warning("validation process of %s said: %s", request.model_path, stderr_tail)
    return _death_verdict(request, child.returncode, stage, watch, ended, stderr_tail)


class _Watch:
    """The child's memory as seen from outside, polled: the figures left when it dies."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss_mb = 0.0

    def poll(self) -> None:
        peak = proc_status_mb("VmHWM", self.pid)
        if peak is not None:
            self.peak_rss_mb = max(self.peak_rss_mb, peak)


def _collect(
    child: subprocess.Popen[bytes],
    watch: _Watch,
    deadline: float,
    stopping: threading.Event | None,
) -> tuple[list[bytes], str, str]:
    """Read both pipes until the child exits; returns (stdout lines, stderr tail, how it
    ended: ``exited``, ``timeout`` or ``stopping``)."""
    assert child.stdout is not None and child.stderr is not None
    out, err = child.stdout.fileno(), child.stderr.fileno()
    buffers: dict[int, bytearray] = {out: bytearray(), err: bytearray()}
    open_fds = {out, err}
    ended = "exited"
    while open_fds:
        watch.poll()
        if stopping is not None and stopping.is_set():
            ended = "stopping"
            break
        if time.monotonic() > deadline:
            ended = "timeout"
            break
        ready, _, _ = select.select(list(open_fds), [], [], POLL_S)
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.discard(fd)
                continue
            buffers[fd] += chunk
            if fd == err and len(buffers[err]) > STDERR_TAIL_BYTES:
                del buffers[err][:-STDERR_TAIL_BYTES]
    if ended != "exited":
        child.kill()
    tail = buffers[err].decode(errors="replace").strip()
    return bytes(buffers[out]).splitlines(), tail[-STDERR_TAIL_BYTES:], ended


def _parse(lines: list[bytes]) -> tuple[Stage | None, Verdict | None]:
    stage: Stage | None = None
    for line in lines:
        try:
            message = _LINE.validate_json(line)
        except ValidationError:
            log.warning("validation process wrote an unreadable line: %r", line[:200])
            continue
        if isinstance(message, Verdict):
            return stage, message
        stage = message.stage
    return stage, None


def _death_verdict(
    request: ValidationRequest,
    returncode: int,
    stage: Stage | None,
    watch: _Watch,
    ended: str,
    stderr_tail: str,
) -> Verdict:
    budget = request.profile.memory_budget_mb
    measured = Measured(peak_rss_mb=watch.peak_rss_mb) if watch.peak_rss_mb else None
    if ended == "timeout":
        return Verdict(
            gate=Gate.LATENCY,
            reason=f"latency: validation did not finish within "
            f"{timeout_s(request.profile, request.inferences):.0f} s (stopped while "
            f"{_DOING[stage] if stage else 'starting'}); the model is far too slow for this device",
            measured=measured,
        )
    how = _how_it_died(returncode)
    if returncode == -signal.SIGKILL:
        return Verdict(
            gate=Gate.MEMORY,
            reason=f"memory: the validation process {how} while "
            f"{_DOING[stage] if stage else 'starting'}, at a peak RSS of "
            f"{watch.peak_rss_mb:.0f} MB: most likely the kernel's out-of-memory killer; the "
            f"model needs more memory than this device has (budget {budget:g} MB)",
            measured=measured,
        )
    last_words = stderr_tail.splitlines()[-1][:300] if stderr_tail else "no output"
    if stage in (Stage.RUNNING, Stage.MEASURING):
        return Verdict(
            gate=Gate.GOLDEN,
            reason=f"golden: the validation process {how} while {_DOING[stage]} ({last_words})",
            measured=measured,
        )
    return Verdict(
        gate=Gate.LOADS,
        reason=f"loads: the validation process {how} while "
        f"{_DOING[stage] if stage else 'starting'} ({last_words})",
        measured=measured,
    )


def _how_it_died(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


# --------------------------------------------------------------------------- child side


_PR_SET_PDEATHSIG = 1
_ALLOCATION_HINTS = ("failed to allocate", "bad_alloc", "bad allocation", "out of memory")
_REQUESTED = re.compile(r"requested buffer of size (\d+)")


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to end this process with its parent (Linux ``PR_SET_PDEATHSIG``): an
    agent killed mid-validation restarts and validates again, and an orphan would compete
    with that run for the very memory and CPU being measured."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    with contextlib.suppress(OSError, AttributeError):
        if name:
            ctypes.CDLL(name, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request above took effect
        os._exit(1)


def _confine(request: ValidationRequest) -> float | None:
    """Cap this process's address space; returns the cap in MB (None: not capped)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text("1000")
    if not request.address_limit:
        return None
    baseline = proc_status_mb("VmSize")
    if baseline is None:
        return None
    limit_mb = baseline + request.profile.memory_budget_mb + address_margin_mb(request.profile)
    if limit_mb == float("inf"):
        return None
    limit = int(limit_mb * 2**20)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError) as exc:
        print(f"cannot cap the address space at {limit_mb:.0f} MB: {exc}", file=sys.stderr)
        return None
    return limit_mb


def _is_allocation_failure(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return any(hint in text for hint in _ALLOCATION_HINTS)


def _memory_verdict(
    exc: BaseException, request: ValidationRequest, stage: Stage, limit_mb: float | None
) -> Verdict:
    peak = peak_rss_mb()
    asked = _REQUESTED.search(str(exc))
    wanted = f"a {int(asked.group(1)) / 2**20:.0f} MB buffer" if asked else "more memory"
    cap = f", address space capped at {limit_mb:.0f} MB" if limit_mb is not None else ""
    return Verdict(
        gate=Gate.MEMORY,
        reason=f"memory: the model asked for {wanted} while {_DOING[stage]} and was refused: "
        f"over the {request.profile.memory_budget_mb:g} MB memory budget (peak RSS "
        f"{peak:.0f} MB when refused{cap})",
        measured=Measured(peak_rss_mb=peak),
    )


def _validate(request: ValidationRequest, announce: _Announce) -> Verdict:
    """The gates that need onnxruntime, in their order; the first to refuse gives the verdict."""
    limit_mb = _confine(request)
    stage = Stage.LOADING
    golden_err: float | None = None
    try:
        announce(stage)
        session = open_session(request.model_path, request.profile)
        check_io(session, request.manifest)
        golden = load_golden(request.golden_path, [i.name for i in session.get_inputs()])
        stage = Stage.RUNNING
        announce(stage)
        golden_err = check_golden(session, golden, request.manifest)
        stage = Stage.MEASURING
        announce(stage)
        meter = EnergyMeter(find_sensor())
        meter.start()
        measurement = measure(session, golden, request.inferences)
        energy = meter.stop(cpu_seconds=measurement.cpu_seconds, inferences=measurement.latency.n)
    except GateError as exc:
        cause = exc.__cause__ or exc
        if _is_allocation_failure(cause):
            return _memory_verdict(cause, request, stage, limit_mb)
        return Verdict(
            gate=exc.gate,
            reason=str(exc),
            measured=Measured(peak_rss_mb=peak_rss_mb(), golden_max_abs_err=golden_err),
        )
    except Exception as exc:  # onnxruntime raises bare RuntimeError/Fail subclasses
        if _is_allocation_failure(exc):
            return _memory_verdict(exc, request, stage, limit_mb)
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        return Verdict(
            gate=Gate.GOLDEN,
            reason=f"golden: onnxruntime failed while {_DOING[stage]}: {first_line}",
            measured=Measured(peak_rss_mb=peak_rss_mb()),
        )
    return Verdict(
        measured=Measured(
            golden_max_abs_err=golden_err,
            latency=measurement.latency,
            peak_rss_mb=peak_rss_mb(),
            energy=energy,
            providers=session.get_providers(),
        )
    )


class _Announce:
    """Writes the child's JSON lines to the stdout the parent reads."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, stage: Stage) -> None:
        self.send(Progress(stage=stage))

    def send(self, message: Progress | Verdict) -> None:
        self.stream.write(message.model_dump_json() + "\n")
        self.stream.flush()


def main() -> int:
    _die_with_parent(os.getppid())
    results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # what libraries print goes to stderr; stdout is ours alone
    request = ValidationRequest.model_validate_json(sys.stdin.buffer.read())
    announce = _Announce(results)
    announce.send(_validate(request, announce))
    return 0


if __name__ == "__main__":
    sys.exit(main())
