"""In-process inference of the device's current model, for applications on the device.

A controller that calls its model every tick of a 1 kHz loop cannot afford the local HTTP
endpoint (:mod:`edgeloop.agent.endpoint`, about 1.5 ms a call). This library runs the model the
agent serves inside the application's own process, swaps it between calls when the agent
activates, commits or rolls back a model, and reports the calls back to the agent, so they
count as live traffic in probation and reach telemetry::

    from edgeloop.agent.local import LocalModel

    with LocalModel("/var/lib/edgeloop-agent", deadline_ms=1.0) as model:
        model.wait()                                  # until the agent serves a model
        while running:
            action = model.run_first({"obs": obs})    # the first output; model(feeds) too
            outputs = model.run({"obs": obs})         # every output, by name
            ...

``run`` raises what the agent's endpoint answers with: :class:`~edgeloop.agent.host.NoModelError`
while no model is served, :class:`~edgeloop.agent.host.BadRequestError` for inputs the model
refuses, :class:`~edgeloop.agent.host.InferenceError` when the model fails; both of the last
two count as errors of that model (in-process, the application cannot adapt to a model whose
inputs changed, so probation must see it). It never fails because of a swap.

Two files carry everything between the agent and the applications; both are replaced
atomically (a temp file in the same directory, then ``rename``), so a reader sees a whole old or
a whole new file:

``<workdir>/serving.json`` (agent → applications, :class:`Serving`): written by the agent
    (:func:`announce`) whenever what it serves changes: at start, on activation, on a rollback,
    when nothing is to run, and at the start and end of probation. It names the model (label,
    slot ``A``/``B``, SHA-256 of ``model.onnx``), the effective device profile (the session's
    threads and execution providers, as :func:`~edgeloop.agent.runtime.open_session` opens it
    for the agent, and ``deadline_ms``) and, during probation, a :class:`ProbationNotice`: its
    id, the previous model, the agreement metric and ``shadow_every``. Mode 0644 in the agent's
    workdir: only the agent writes it; applications only read it and the slots.

``<workdir>/local/<pid>-<n>.json`` (application → agent, :class:`ProcessReport`): one per
    :class:`LocalModel` (``n`` counts them within the process), rewritten every ``report_s``
    (0.5 s): cumulative counts since the process started (calls, errors, deadline misses, the
    sum of latencies and a latency histogram of :data:`HISTOGRAM_BINS` log-spaced bins), the
    same counts since it began serving its current model, and during probation the shadow
    comparisons of its own inputs on the previous model. The agent creates ``local/`` with mode
    1733 (anyone may add a file, nobody but its owner may replace or remove it, nobody else may
    list it); tighten it to a group (``chgrp``, mode 1730) where the applications' users are
    known.

What happens where:

- Detection and loading are off the call path. One background thread per :class:`LocalModel`
  polls ``serving.json`` with one ``stat`` every ``poll_s`` (20 ms); when it changed, the thread
  reads it, opens the named slot's model with the profile's options, checks that the file it
  opened has the SHA-256 the agent named (a slot is rewritten only when it is not serving, but
  an application that reads late could otherwise open the next model installed there), warms
  the session up on the slot's golden inputs, and only then replaces the reference the calls
  read. A call reads that reference once, so a call started on the old session finishes on
  it.
- The call path does no I/O and takes no lock: it times the session call
  (``perf_counter_ns``) and appends the figure to a deque of the model it ran on. The same
  thread drains those figures every ``report_s`` into the counts and writes the report; deadline
  misses are counted there, against the ``deadline_ms`` given to :class:`LocalModel`, else the
  profile's.
- During probation the application shadow-runs a sample (every ``shadow_every``-th call) of its
  own inputs on the previous model in a thread of its own (:class:`~edgeloop.agent.host.Shadow`,
  the endpoint's), copying the sampled inputs first, and reports the comparisons.

The agent reads the reports (:func:`read_reports`) and trusts them only as far as they go:
- A report counts while its process lives and wrote it in the last :data:`STALE_S` seconds,
  or for :data:`FINAL_S` seconds once a process closed its model (its final counts). A file
  must be a regular file (no link, no FIFO) of at most :data:`MAX_REPORT_BYTES`, named for a
  live process of the user that owns the file, and pass :class:`ProcessReport`'s validation
  (bounds, and counts that add up). Anything else is skipped with a logged warning (once per
  version of the file); files of processes gone for :data:`FINAL_S` are removed. Nothing in
  that directory can make the agent raise.
- Probation (:mod:`edgeloop.agent.updater`) adds the calls of every report serving the
  candidate (errors, latencies) to the endpoint's, and the shadow comparisons of every report
  for this probation to its own, weighting by samples; at the end of the window it waits up to
  :data:`GRACE_S` for those processes' reports to cover the whole window.
- Telemetry (:class:`ControlAccount`) turns the cumulative counts into the interval's
  :class:`~edgeloop.agent.protocol.ControlStats`. A process already running when the agent
  started is a baseline the first time the agent sees it; a report that went backwards counts
  nothing.

An application process reports only its own calls: the worst a hostile or broken one can do
is misreport its own traffic, which, like any live traffic, can roll a candidate back.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import stat
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import AgentError, ArtifactError
from .golden import load_golden
from .host import LoadedModel, NoModelError, Shadow, WindowStats, failure
from .protocol import SHA256_PATTERN, ControlStats, DeviceProfile, LatencyStats
from .runtime import latency_stats, open_session
from .slots import Slots
from .states import Slot

__all__ = [
    "FINAL_S",
    "GRACE_S",
    "HISTOGRAM_BINS",
    "LOCAL_DIR",
    "MAX_REPORT_BYTES",
    "SERVING_FILE",
    "STALE_S",
    "ControlAccount",
    "Counts",
    "LocalModel",
    "LocalTraffic",
    "ModelCounts",
    "ProbationNotice",
    "ProcessReport",
    "Reported",
    "ServedModel",
    "Serving",
    "ShadowCounts",
    "announce",
    "await_reports",
    "merged_window",
    "probation_traffic",
    "read_reports",
    "read_serving",
]

log = logging.getLogger("edgeloop.agent.local")

SERVING_FILE = "serving.json"
LOCAL_DIR = "local"
LOCAL_DIR_MODE = 0o1733
"""Sticky and writable by all, listable by the agent alone: see the module docstring."""
POLL_S = 0.02
REPORT_S = 0.5
STALE_S = 5.0
"""A live process's report older than this no longer counts (the process hangs or stopped)."""
FINAL_S = 60.0
"""How long a closed model's final report counts, and when a dead process's file is removed."""
GRACE_S = 1.0
"""How long probation waits, after its window, for in-process reports that cover it."""
MAX_REPORT_BYTES = 64 * 1024
MAX_REPORT_FILES = 64
"""Reports read per look; a directory flooded with more is read only this far."""
_MAX_ENTRIES = 4096
WARMUP_CALLS = 8
SHADOW_CLOSE_S = 0.5
"""How long an ended probation's shadow may finish its queue (the agent has judged by then)."""
RETRY_S = 1.0
"""How soon a model that could not be loaded is tried again (the same ``serving.json``)."""

HISTOGRAM_BASE_MS = 1e-3
BINS_PER_OCTAVE = 16
HISTOGRAM_BINS = 400
"""Latency bins: bin ``i`` holds ``[1 µs × 2^(i/16), 1 µs × 2^((i+1)/16))``, about 4.4 % wide,
from 1 µs to 33 s (the last bin holds everything slower); a percentile read from them is
within 2.2 % of the exact one."""
MAX_COUNT = 2**53
"""Counts beyond this are not believed (they would not even add up exactly as floats)."""

_REPORT_NAME = re.compile(r"([1-9][0-9]{0,9})-([1-9][0-9]{0,5})\.json")
_MAX_PID = 2**22
_instances = itertools.count(1)


# --------------------------------------------------------------------------- the two files


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ServedModel(_File):
    """A model in one of the agent's slots."""

    label: str = Field(min_length=1, max_length=200, description="`name:version`")
    slot: Slot
    sha256: str = Field(pattern=SHA256_PATTERN, description="of the slot's model.onnx")


class ProbationNotice(_File):
    """The agent judges a candidate: in-process calls shadow-run on ``previous`` too."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="this probation, and no other")
    previous: ServedModel | None = Field(description="the committed model; none: no shadow")
    metric: Literal["argmax", "cosine"]
    shadow_every: int = Field(ge=1, le=1_000_000)


class Serving(_File):
    """``serving.json``: what the agent serves, and how applications must run it."""

    # A host profile has no budgets (infinity), which plain JSON cannot write.
    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, ser_json_inf_nan="constants"
    )

    schema_version: Literal[1] = 1
    model: ServedModel | None = Field(description="none: the agent serves nothing")
    profile: DeviceProfile = Field(description="the effective profile the agent opens it with")
    probation: ProbationNotice | None = None


_Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
_Bin = Annotated[int, Field(ge=0, lt=HISTOGRAM_BINS)]
_BinCount = Annotated[int, Field(ge=1, le=MAX_COUNT)]


class Counts(_File):
    """Calls counted since some point; the histogram holds the calls that did not fail."""

    calls: _Count = 0
    errors: _Count = 0
    deadline_misses: _Count = 0
    latency_sum_ms: float = Field(default=0.0, ge=0, le=1e15)
    histogram: dict[_Bin, _BinCount] = Field(default_factory=dict, max_length=HISTOGRAM_BINS)

    @model_validator(mode="after")
    def _adds_up(self) -> Counts:
        timed = self.calls - self.errors
        if timed < 0 or self.deadline_misses > timed or sum(self.histogram.values()) != timed:
            raise ValueError(
                "counts do not add up: errors and deadline misses must not exceed the calls, "
                "and the histogram must hold every call that did not fail"
            )
        return self

    def minus(self, earlier: Counts) -> Counts | None:
        """What was counted since ``earlier``; None when a count went backwards."""
        try:
            return Counts(
                calls=self.calls - earlier.calls,
                errors=self.errors - earlier.errors,
                deadline_misses=self.deadline_misses - earlier.deadline_misses,
                latency_sum_ms=max(0.0, self.latency_sum_ms - earlier.latency_sum_ms),
                histogram={
                    index: count - earlier.histogram.get(index, 0)
                    for index, count in self.histogram.items()
                    if count != earlier.histogram.get(index, 0)
                },
            )
        except ValidationError:
            return None

    @staticmethod
    def total(parts: Iterable[Counts]) -> Counts:
        calls = errors = misses = 0
        latency_sum = 0.0
        histogram: Counter[int] = Counter()
        for part in parts:
            calls += part.calls
            errors += part.errors
            misses += part.deadline_misses
            latency_sum += part.latency_sum_ms
            histogram.update(part.histogram)
        return Counts.model_construct(
            calls=calls,
            errors=errors,
            deadline_misses=misses,
            latency_sum_ms=latency_sum,
            histogram=dict(histogram),
        )


class ModelCounts(Counts):
    """Counts since the process began serving this model."""

    label: str = Field(min_length=1, max_length=200)
    sha256: str = Field(pattern=SHA256_PATTERN)
    since: float = Field(ge=0, description="when it began serving it (Unix time)")


class ShadowCounts(_File):
    """In-process inputs compared on the previous model during one probation."""

    probation: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    compared: _Count = 0
    agreement: float | None = Field(default=None, ge=0, le=1, description="mean agreement")
    skipped: _Count = Field(default=0, description="samples dropped: the shadow fell behind")


class ProcessReport(_File):
    """``local/<pid>-<n>.json``: one :class:`LocalModel`'s calls, as its process timed them."""

    schema_version: Literal[1] = 1
    pid: int = Field(ge=1, le=_MAX_PID)
    instance: int = Field(ge=1, le=999_999)
    started_at: float = Field(ge=0, description="when this LocalModel was made (Unix time)")
    closed: bool = Field(default=False, description="the final report: the model was closed")
    deadline_ms: float | None = Field(default=None, gt=0, le=1e9)
    total: Counts
    model: ModelCounts | None = None
    shadow: ShadowCounts | None = None


def read_serving(workdir: Path) -> Serving | None:
    """The agent's ``serving.json``; None before the agent wrote one.

    Raises:
        ValueError: the file is not a valid :class:`Serving` (``ValidationError``).
        OSError: it cannot be read (permissions: the application must be able to read the
            agent's workdir).
    """
    try:
        data = (workdir / SERVING_FILE).read_bytes()
    except FileNotFoundError:
        return None
    return Serving.model_validate_json(data)


def announce(workdir: Path, serving: Serving) -> None:
    """Write ``serving.json`` (the agent's side) and make sure ``local/`` exists for reports.

    Raises:
        OSError: the workdir refused the write (a full disk).
    """
    local = workdir / LOCAL_DIR
    if not local.is_dir():
        local.mkdir(exist_ok=True)
        os.chmod(local, LOCAL_DIR_MODE)  # mkdir's mode is cut by the umask
    _replace(workdir / SERVING_FILE, serving.model_dump_json(indent=1).encode())


def _replace(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename, readable by all, writable by its owner.

    Not :func:`~edgeloop.agent.states.write_atomic`: these files describe running processes
    and are rewritten from scratch by them (the agent at start), so they need no fsync, which
    an application writing twice a second would pay for; and the mode is set here whatever
    the umask.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        os.fchmod(fd, 0o644)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- latency histogram


def _histogram(latencies_ms: np.ndarray) -> Counter[int]:
    if not latencies_ms.size:
        return Counter()
    scaled = np.log2(np.maximum(latencies_ms, HISTOGRAM_BASE_MS) / HISTOGRAM_BASE_MS)
    bins = np.clip(np.floor(scaled * BINS_PER_OCTAVE), 0, HISTOGRAM_BINS - 1).astype(np.int64)
    values, counts = np.unique(bins, return_counts=True)
    return Counter(dict(zip(values.tolist(), counts.tolist(), strict=True)))


def _bin_ms(index: int) -> float:
    return HISTOGRAM_BASE_MS * 2 ** ((index + 0.5) / BINS_PER_OCTAVE)


def latency_of(histogram: Mapping[int, int], latency_sum_ms: float) -> LatencyStats | None:
    """Percentiles (each the geometric middle of its bin) and the exact mean of the calls a
    histogram holds; None when it holds none."""
    indices = sorted(index for index, count in histogram.items() if count > 0)
    cumulative = np.cumsum([histogram[index] for index in indices])
    n = int(cumulative[-1]) if indices else 0
    if n == 0:
        return None

    def percentile(share: float) -> float:
        rank = max(1, math.ceil(share * n))
        return _bin_ms(indices[int(np.searchsorted(cumulative, rank))])

    return LatencyStats(
        n=n,
        p50_ms=percentile(0.50),
        p95_ms=percentile(0.95),
        p99_ms=percentile(0.99),
        mean_ms=max(latency_sum_ms / n, 0.0),
    )


# --------------------------------------------------------------------------- the agent's side


@dataclass(frozen=True)
class Reported:
    """One application's report as the agent read it."""

    name: str
    report: ProcessReport
    written: float  # the file's mtime (Unix time)
    alive: bool


_warned: dict[str, tuple[int, int]] = {}
_warned_lock = threading.Lock()


def read_reports(workdir: Path, *, now: float | None = None) -> list[Reported]:
    """The in-process reports that count now (see the module docstring); never raises for
    what the directory holds, and removes the files of processes gone for :data:`FINAL_S`."""
    now = time.time() if now is None else now
    directory = workdir / LOCAL_DIR
    reports: list[Reported] = []
    try:
        entries = os.scandir(directory)
    except OSError:
        return reports
    with entries:
        for entry in itertools.islice(entries, _MAX_ENTRIES):
            match = _REPORT_NAME.fullmatch(entry.name)
            if match is None:
                continue
            try:
                reported = _read_report(directory, entry.name, int(match[1]), now)
            except Exception as exc:  # a report must never take the agent down
                _warn(directory / entry.name, None, f"unreadable ({type(exc).__name__}: {exc})")
                continue
            if reported is not None:
                reports.append(reported)
                if len(reports) >= MAX_REPORT_FILES:
                    break
    return reports


def _read_report(directory: Path, name: str, pid: int, now: float) -> Reported | None:
    path = directory / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        _warn(path, None, f"cannot be opened as a plain file ({exc.strerror or exc})")
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            _warn(path, info, "is not a regular file")
            return None
        age = now - info.st_mtime
        alive = _alive(pid)
        if not alive and age > FINAL_S:
            path.unlink(missing_ok=True)
            return None
        if age > FINAL_S:
            return None
        owner = _owner(pid) if alive else None
        if owner is not None and owner != info.st_uid:
            _warn(path, info, f"names process {pid}, which another user runs")
            return None
        data = b""
        while len(data) <= MAX_REPORT_BYTES:
            block = os.read(fd, MAX_REPORT_BYTES + 1 - len(data))
            if not block:
                break
            data += block
    finally:
        os.close(fd)
    if len(data) > MAX_REPORT_BYTES:
        _warn(path, info, f"is over {MAX_REPORT_BYTES} bytes")
        return None
    try:
        report = ProcessReport.model_validate_json(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or '<root>'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)[:3]
        )
        _warn(path, info, f"is not a valid report: {problems[:300]}")
        return None
    if report.pid != pid or name != f"{report.pid}-{report.instance}.json":
        _warn(path, info, f"holds the report of process {report.pid}-{report.instance}")
        return None
    if report.closed or (alive and age <= STALE_S):
        return Reported(name, report, info.st_mtime, alive)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, OSError):
        return False
    return True


def _owner(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None  # no /proc here (not Linux), or the process just ended


def _warn(path: Path, info: os.stat_result | None, problem: str) -> None:
    """Log a skipped report once per version of its file (a broken application rewrites it
    twice a second; the log must not grow with that)."""
    version = (info.st_ino, info.st_mtime_ns) if info is not None else (0, 0)
    with _warned_lock:
        if _warned.get(path.name) == version:
            return
        if len(_warned) > 4096:
            _warned.clear()
        _warned[path.name] = version
    log.warning("ignored in-process report %s: %s", path, problem)


@dataclass(frozen=True)
class LocalTraffic:
    """In-process calls on a candidate, summed over the processes that serve it."""

    processes: int = 0
    counts: Counts = field(default_factory=Counts)
    compared: int = 0
    agreement: float | None = None

    def agreement_with(self, compared: int, agreement: float | None) -> tuple[int, float | None]:
        """The agent's own shadow figures joined with these, each weighted by samples."""
        parts = [
            (n, a)
            for n, a in ((compared, agreement), (self.compared, self.agreement))
            if n > 0 and a is not None
        ]
        total = sum(n for n, _ in parts)
        if not total:
            return compared, agreement
        return total, sum(n * a for n, a in parts) / total


def probation_traffic(
    reports: Iterable[Reported], sha256: str, probation_id: str | None
) -> LocalTraffic:
    """The calls of every report serving ``sha256``, and the shadow comparisons reported for
    ``probation_id``."""
    counts: list[Counts] = []
    processes: set[int] = set()
    compared, weighted = 0, 0.0
    for reported in reports:
        report = reported.report
        if report.model is not None and report.model.sha256 == sha256:
            counts.append(report.model)
            processes.add(report.pid)
        shadow = report.shadow
        if (
            probation_id is not None
            and shadow is not None
            and shadow.probation == probation_id
            and shadow.agreement is not None
            and shadow.compared
        ):
            compared += shadow.compared
            weighted += shadow.compared * shadow.agreement
            processes.add(report.pid)
    return LocalTraffic(
        processes=len(processes),
        counts=Counts.total(counts),
        compared=compared,
        agreement=weighted / compared if compared else None,
    )


def await_reports(
    workdir: Path,
    sha256: str,
    probation_id: str | None,
    after: float,
    wait: Callable[[float], bool],
    grace_s: float = GRACE_S,
) -> list[Reported]:
    """The reports, once every live process involved in this probation (serving ``sha256`` or
    shadowing for ``probation_id``) wrote one after ``after`` (Unix time), or ``grace_s``
    passed, or ``wait`` (e.g. ``stopping.wait``) returned True."""
    limit = time.monotonic() + grace_s
    while True:
        reports = read_reports(workdir)
        behind = [
            r
            for r in reports
            if r.alive
            and not r.report.closed
            and r.written < after
            and (
                (r.report.model is not None and r.report.model.sha256 == sha256)
                or (r.report.shadow is not None and r.report.shadow.probation == probation_id)
            )
        ]
        if not behind or time.monotonic() >= limit or wait(0.02):
            return reports


def merged_window(
    latencies_ms: np.ndarray, errors: int, seconds: float, traffic: LocalTraffic
) -> WindowStats:
    """Probation's live figures: the agent's own requests (exact latencies) and the
    in-process calls (binned); exact percentiles while no application reports."""
    counts = traffic.counts
    requests = int(latencies_ms.size) + errors + counts.calls
    if not counts.calls:
        latency = latency_stats(latencies_ms) if latencies_ms.size else None
    else:
        histogram = _histogram(latencies_ms)
        histogram.update(counts.histogram)
        latency = latency_of(histogram, float(latencies_ms.sum()) + counts.latency_sum_ms)
    return WindowStats(
        requests=requests, errors=errors + counts.errors, seconds=seconds, latency=latency
    )


class ControlAccount:
    """Turns the applications' cumulative reports into each telemetry interval's figures."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._started = time.time()
        self._seen: dict[str, tuple[float, Counts, float]] = {}
        self._lock = threading.Lock()

    def interval(self, deadline_ms: float | None = None) -> ControlStats | None:
        """In-process calls since the last call of this (or since it was made); None when no
        application reports. ``deadline_ms``: the profile's, reported as the deadline; without
        one, the strictest an application reported."""
        with self._lock:
            return self._interval(deadline_ms)

    def _interval(self, deadline_ms: float | None) -> ControlStats | None:
        now = time.time()
        reports = read_reports(self.workdir, now=now)
        parts: list[Counts] = []
        processes: set[int] = set()
        for reported in reports:
            report = reported.report
            seen = self._seen.get(reported.name)
            if seen is not None and seen[0] == report.started_at:
                part = report.total.minus(seen[1])
            elif report.started_at >= self._started:
                part = report.total
            else:
                part = None  # running before the agent started: only a baseline
            self._seen[reported.name] = (report.started_at, report.total, now)
            if part is not None and part.calls:
                parts.append(part)
                processes.add(report.pid)
            elif not report.closed:
                processes.add(report.pid)
        self._seen = {k: v for k, v in self._seen.items() if now - v[2] < 10 * FINAL_S}
        if not reports:
            return None
        counts = Counts.total(parts)
        reported_deadlines = [r.report.deadline_ms for r in reports if r.report.deadline_ms]
        return ControlStats(
            calls=counts.calls,
            errors=counts.errors,
            latency=latency_of(counts.histogram, counts.latency_sum_ms),
            deadline_ms=deadline_ms or min(reported_deadlines, default=None),
            deadline_misses=counts.deadline_misses,
            processes=len(processes),
        )


# --------------------------------------------------------------------------- the application


class _Tally:
    """Counts the reporting thread keeps; the call path never touches them."""

    def __init__(self) -> None:
        self.calls = self.errors = self.misses = 0
        self.latency_sum_ms = 0.0
        self.histogram: Counter[int] = Counter()

    def add(self, latencies_ms: np.ndarray, errors: int, deadline_ms: float | None) -> None:
        self.calls += int(latencies_ms.size) + errors
        self.errors += errors
        self.latency_sum_ms += float(latencies_ms.sum())
        self.histogram.update(_histogram(latencies_ms))
        if deadline_ms is not None:
            self.misses += int(np.count_nonzero(latencies_ms > deadline_ms))

    def fields(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "errors": self.errors,
            "deadline_misses": self.misses,
            "latency_sum_ms": self.latency_sum_ms,
            "histogram": dict(self.histogram),
        }


class _Served:
    """One loaded model as calls see it. Calls append their latency (ns) to ``samples`` and
    count failures; the reporting thread drains both into ``tally``."""

    __slots__ = (
        "errors",
        "errors_drained",
        "first_output",
        "label",
        "loaded",
        "lock",
        "output_names",
        "retired_at",
        "run",
        "samples",
        "sha256",
        "shadow",
        "since",
        "tally",
    )

    def __init__(self, loaded: LoadedModel, sha256: str) -> None:
        self.loaded = loaded
        self.label = loaded.label
        self.sha256 = sha256
        self.run = loaded.session.run
        self.output_names = list(loaded.output_names)
        self.first_output = self.output_names[:1]
        self.samples: deque[int] = deque(maxlen=1 << 20)
        self.errors = 0
        self.errors_drained = 0
        self.lock = threading.Lock()
        self.shadow: Shadow | None = None
        self.since = time.time()
        self.tally = _Tally()
        self.retired_at: float | None = None

    def failed(self, exc: Exception) -> AgentError:
        with self.lock:
            self.errors += 1
        return failure(self.label, exc)


class LocalModel:
    """The agent's current model, run in this process and swapped between calls.

    Args:
        workdir: the agent's workdir (its ``workdir`` setting).
        deadline_ms: a call slower than this is a deadline miss; None: the profile's
            ``deadline_ms``, if any.
        poll_s: how often ``serving.json`` is checked for a swap.
        report_s: how often this process's report is written for the agent.

    Raises:
        FileNotFoundError: ``workdir`` is not a directory.
    """

    def __init__(
        self,
        workdir: Path | str,
        deadline_ms: float | None = None,
        *,
        poll_s: float = POLL_S,
        report_s: float = REPORT_S,
    ) -> None:
        self.workdir = Path(workdir)
        if not self.workdir.is_dir():
            raise FileNotFoundError(f"{self.workdir} is not an agent's workdir (no such directory)")
        if deadline_ms is not None and not deadline_ms > 0:
            raise ValueError(f"deadline_ms must be above 0, not {deadline_ms}")
        self.deadline_ms = deadline_ms
        self._poll_s = poll_s
        self._report_s = report_s
        self._served: _Served | None = None
        self._retired: list[_Served] = []
        self._total = _Tally()
        self._serving: Serving | None = None
        self._handled: tuple[int, int, int] | None = (-1, -1, -1)
        self._retry_at = 0.0
        self._shadow_id: str | None = None
        self._last_shadow: ShadowCounts | None = None
        self._pid = os.getpid()
        self._instance = next(_instances)
        self._started_at = time.time()
        self._report_path = self.workdir / LOCAL_DIR / f"{self._pid}-{self._instance}.json"
        self._report_failed = False
        self._last_problem: str | None = None
        self._closing = threading.Event()
        self._closed = False
        self._check_serving()
        self._thread = threading.Thread(
            target=self._watch, name=f"edgeloop-local-{self._instance}", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------------ the call path

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the current model on ``feeds`` (input name → array, batch first); every output
        by name.

        Raises:
            NoModelError: the agent serves no model (yet).
            BadRequestError: the model refuses these inputs (names, dtypes, shapes).
            InferenceError: onnxruntime failed on them.
        """
        served = self._served
        if served is None:
            raise NoModelError(f"the agent at {self.workdir} serves no model (yet)")
        start = time.perf_counter_ns()
        try:
            outputs = served.run(None, feeds)
        except Exception as exc:
            raise served.failed(exc) from None
        served.samples.append(time.perf_counter_ns() - start)
        shadow = served.shadow  # read once: the watcher may end it meanwhile
        if shadow is not None:
            shadow.offer(feeds, outputs[0])
        return dict(zip(served.output_names, outputs, strict=True))

    def run_first(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """:meth:`run`, returning only the first output (a controller's action), which
        onnxruntime then copies alone. Raises as :meth:`run`."""
        served = self._served
        if served is None:
            raise NoModelError(f"the agent at {self.workdir} serves no model (yet)")
        start = time.perf_counter_ns()
        try:
            output = served.run(served.first_output, feeds)[0]
        except Exception as exc:
            raise served.failed(exc) from None
        served.samples.append(time.perf_counter_ns() - start)
        shadow = served.shadow
        if shadow is not None:
            shadow.offer(feeds, output)
        return output

    __call__ = run_first

    @property
    def label(self) -> str | None:
        """``name:version`` of the model calls run now; None while there is none."""
        served = self._served
        return served.label if served is not None else None

    def wait(self, label: str | None = None, timeout_s: float = 10.0) -> str:
        """Block until a model (``label``, if given) serves here; returns its label.

        Raises:
            NoModelError: none did within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            current = self.label
            if current is not None and label in (None, current):
                return current
            if time.monotonic() >= deadline:
                raise NoModelError(
                    f"{label or 'no model'} served from {self.workdir} within {timeout_s} s "
                    f"(serving: {current})"
                )
            time.sleep(0.005)

    def close(self) -> None:
        """Stop following the agent, write the final report and drop the sessions."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._thread.join(timeout=10)
        self._stop_shadow()
        self._report(final=True)
        self._served = None

    def __enter__(self) -> LocalModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the background thread

    def _watch(self) -> None:
        next_report = time.monotonic() + self._report_s
        while not self._closing.wait(self._poll_s):
            try:
                self._check_serving()
            except Exception:  # a bug here must not stop the reports or the process
                log.exception("following %s failed", self.workdir / SERVING_FILE)
            if time.monotonic() >= next_report:
                self._report()
                next_report = time.monotonic() + self._report_s

    def _check_serving(self) -> None:
        """Act on ``serving.json`` if it changed since it was last acted on."""
        try:
            info = os.stat(self.workdir / SERVING_FILE)
            version: tuple[int, int, int] | None = (info.st_ino, info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            version = None
        except OSError as exc:
            self._problem(f"cannot read {self.workdir / SERVING_FILE}: {exc}")
            return
        if version == self._handled or time.monotonic() < self._retry_at:
            return
        try:
            serving = read_serving(self.workdir)
            self._follow(serving)
        except (OSError, ValueError, AgentError) as exc:
            self._problem(str(exc).splitlines()[0][:400])
            self._retry_at = time.monotonic() + RETRY_S
            return
        self._handled = version
        self._retry_at = 0.0
        self._last_problem = None

    def _follow(self, serving: Serving | None) -> None:
        wanted = serving.model if serving is not None else None
        served = self._served
        if wanted is None:
            if served is not None:
                self._swap(None)
        elif served is None or served.sha256 != wanted.sha256:
            assert serving is not None
            self._swap(_Served(self._open(wanted, serving.profile), wanted.sha256))
        self._serving = serving
        self._follow_probation(serving)

    def _follow_probation(self, serving: Serving | None) -> None:
        notice = serving.probation if serving is not None else None
        served = self._served
        if (
            notice is None
            or notice.previous is None
            or served is None
            or serving is None
            or serving.model is None
            or served.sha256 != serving.model.sha256
        ):
            self._stop_shadow()
            return
        if self._shadow_id == notice.id:
            return
        self._stop_shadow()
        previous = self._open(notice.previous, serving.profile)
        served.shadow = Shadow(previous, notice.metric, notice.shadow_every)
        self._shadow_id = notice.id
        log.info("probation %s: comparing with %s on a sample of calls", notice.id, previous.label)

    def _stop_shadow(self) -> None:
        holders = [s for s in (self._served, *self._retired) if s is not None and s.shadow]
        for holder in holders:
            shadow, holder.shadow = holder.shadow, None
            assert shadow is not None and self._shadow_id is not None
            compared, agreement = shadow.close(SHADOW_CLOSE_S)
            self._last_shadow = ShadowCounts(
                probation=self._shadow_id,
                compared=compared,
                agreement=agreement,
                skipped=shadow.skipped,
            )
        self._shadow_id = None

    def _swap(self, served: _Served | None) -> None:
        previous, self._served = self._served, served
        if previous is not None:
            previous.retired_at = time.time()
            self._retired.append(previous)
        self._stop_shadow()  # after the swap: calls must not wait for the shadow to drain
        log.info(
            "serving %s in-process (was %s)",
            served.label if served else "nothing",
            previous.label if previous else "nothing",
        )

    def _open(self, model: ServedModel, profile: DeviceProfile) -> LoadedModel:
        """Open ``model`` from its slot, check it is the file the agent named, warm it up.

        Raises:
            ArtifactError: the slot holds another model (the agent moved on meanwhile) or is
                damaged.
            GateError: onnxruntime cannot open it.
        """
        slots = Slots(self.workdir, create=False)
        path = slots.directory(model.slot) / "model.onnx"
        before = os.stat(path)
        contents = slots.contents(model.slot, verify=True)
        if contents.manifest.artifact.sha256 != model.sha256:
            raise ArtifactError(
                f"slot {model.slot} holds {contents.label}, not {model.label}: the agent "
                "changed models meanwhile; trying again"
            )
        session = open_session(contents.model_path, profile)
        after = os.stat(path)
        if (before.st_dev, before.st_ino) != (after.st_dev, after.st_ino):
            raise ArtifactError(f"slot {model.slot} was rewritten while {model.label} loaded")
        loaded = LoadedModel.of(contents.label, session, contents.manifest)
        try:
            golden = load_golden(contents.golden_path, list(loaded.input_names))
            for index in range(min(golden.count, WARMUP_CALLS)):
                session.run(None, golden.sample(index))
        except Exception as exc:  # the agent validated it; a cold first call is the cost
            log.warning("%s not warmed up: %s", model.label, exc)
        return loaded

    def _problem(self, message: str) -> None:
        """Log a problem once, not at every retry."""
        if message != self._last_problem:
            log.warning("in-process model from %s: %s", self.workdir, message)
        self._last_problem = message

    def _report(self, *, final: bool = False) -> None:
        """Drain the calls' figures into the counts and write this process's report."""
        now = time.time()
        deadline = self.deadline_ms
        if deadline is None and self._serving is not None:
            deadline = self._serving.profile.deadline_ms
        for served in (self._served, *self._retired):
            if served is None:
                continue
            count = len(served.samples)
            latencies = np.fromiter(
                (served.samples.popleft() for _ in range(count)), np.float64, count
            )
            latencies /= 1e6
            with served.lock:
                errors, served.errors_drained = served.errors - served.errors_drained, served.errors
            served.tally.add(latencies, errors, deadline)
            self._total.add(latencies, errors, deadline)
        self._retired = [
            s for s in self._retired if s.retired_at is not None and now - s.retired_at < 2.0
        ]
        served = self._served
        shadow = self._last_shadow
        if served is not None and served.shadow is not None and self._shadow_id is not None:
            compared, agreement = served.shadow.summary()
            shadow = ShadowCounts(
                probation=self._shadow_id,
                compared=compared,
                agreement=agreement,
                skipped=served.shadow.skipped,
            )
        report = ProcessReport(
            pid=self._pid,
            instance=self._instance,
            started_at=self._started_at,
            closed=final,
            deadline_ms=deadline,
            total=Counts(**self._total.fields()),
            model=(
                ModelCounts(
                    label=served.label,
                    sha256=served.sha256,
                    since=served.since,
                    **served.tally.fields(),
                )
                if served is not None
                else None
            ),
            shadow=shadow,
        )
        try:
            _replace(self._report_path, report.model_dump_json().encode())
        except OSError as exc:
            if not self._report_failed:
                log.warning(
                    "cannot write %s (%s): the agent will not count this process's calls",
                    self._report_path,
                    exc.strerror or exc,
                )
            self._report_failed = True
        else:
            self._report_failed = False
