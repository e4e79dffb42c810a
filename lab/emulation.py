"""Emulated device classes: processes on this machine that are honestly slower or smaller.

A :class:`DeviceClass` says how much of this machine one device of that class may use: which
CPUs (affinity), how many onnxruntime threads, what share of one CPU (``cpu_quota``) and how
much memory. A :class:`Confinement` makes one process live within those limits, with the best
mechanism the machine allows, tried in this order:

``cgroup2``
    a child cgroup with ``cpu.max`` and ``memory.max`` (needs a writable cgroup2 hierarchy
    offering the ``cpu``/``memory`` controllers: root, or a delegated subtree).
``cgroup1``
    child groups in the v1 ``cpu`` and ``memory`` hierarchies (``cpu.cfs_quota_us``,
    ``memory.limit_in_bytes``).
``duty-cycle``
    no writable cgroup: a thread of this process stops and continues the confined one
    (SIGSTOP/SIGCONT) every ``cfs_period_us``, so it runs ``cpu_quota`` of the wall time;
    memory becomes an ``RLIMIT_AS`` of the budget plus :data:`ADDRESS_SPACE_HEADROOM_MB`
    (address space, not RSS: a coarse cap; real memory caps need cgroups).
``none``
    the class asks for no throttle and no memory cap; affinity alone.

Invariants: nothing is faked, every latency measured under a confinement is the time the
process really took; ``release()`` leaves no cgroup behind and never leaves a process stopped.
``docs/emulation.md`` maps each class to the hardware it stands for.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edgeloop.agent.protocol import DeviceProfile

__all__ = [
    "ADDRESS_SPACE_HEADROOM_MB",
    "CLASSES",
    "Confinement",
    "DeviceClass",
    "EmulationError",
    "Mechanism",
    "measure_on_class",
]

log = logging.getLogger(__name__)

Mechanism = Literal["cgroup2", "cgroup1", "duty-cycle", "none"]

# Measured here (python + numpy + onnxruntime, a 8 MB model): peak address space 182 MB with
# 1 intra-op thread, 349 MB with 2, for a 97 MB peak RSS (glibc reserves a 64 MB malloc arena
# per thread, plus 8 MB stacks); the headroom covers the 2-thread case.
ADDRESS_SPACE_HEADROOM_MB = 384

_KERNEL_MIN_QUOTA_US = 1_000
_KERNEL_MAX_PERIOD_US = 1_000_000


class EmulationError(RuntimeError):
    """A confinement could not be set up or measured; the message says what to do."""


@dataclass(frozen=True, kw_only=True)
class DeviceClass:
    """How much of this machine one emulated device may use.

    ``cpu_quota`` is a fraction of ONE CPU (0.4 = 40% of a core); None leaves the CPU
    unthrottled. ``cfs_period_us`` is the throttle's accounting window: 10 ms keeps a 2-10 ms
    inference's p95 steady, a 100 ms window (the kernel default) makes it bimodal (see
    ``docs/emulation.md``).
    """

    name: str
    threads: int = 1
    cpus: tuple[int, ...] | None = None
    cpu_quota: float | None = None
    memory_limit_mb: float | None = None
    cfs_period_us: int = 10_000

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"{self.name}: threads must be >= 1, not {self.threads}")
        if self.cpus is not None and not self.cpus:
            raise ValueError(f"{self.name}: cpus must name at least one CPU, or be None")
        if self.memory_limit_mb is not None and self.memory_limit_mb <= 0:
            raise ValueError(f"{self.name}: memory_limit_mb must be > 0")
        if not _KERNEL_MIN_QUOTA_US <= self.cfs_period_us <= _KERNEL_MAX_PERIOD_US:
            raise ValueError(
                f"{self.name}: cfs_period_us {self.cfs_period_us} is outside the kernel's "
                f"{_KERNEL_MIN_QUOTA_US}..{_KERNEL_MAX_PERIOD_US} µs"
            )
        if self.cpu_quota is not None:
            if self.cpu_quota <= 0:
                raise ValueError(f"{self.name}: cpu_quota must be > 0 (None = unthrottled)")
            if self.cpus is not None and self.cpu_quota > len(self.cpus):
                raise ValueError(
                    f"{self.name}: cpu_quota {self.cpu_quota} exceeds its {len(self.cpus)} CPUs"
                )
            if self.quota_us < _KERNEL_MIN_QUOTA_US:
                raise ValueError(
                    f"{self.name}: cpu_quota {self.cpu_quota} of a {self.cfs_period_us} µs "
                    f"period is {self.quota_us} µs, below the kernel's {_KERNEL_MIN_QUOTA_US} "
                    "µs minimum: raise cfs_period_us"
                )

    @property
    def quota_us(self) -> int:
        """CPU time per period, summed over all CPUs (-1: unthrottled)."""
        if self.cpu_quota is None:
            return -1
        return round(self.cpu_quota * self.cfs_period_us)

    @property
    def confines(self) -> bool:
        """Whether the class needs more than affinity (a throttle or a memory cap)."""
        return self.cpu_quota is not None or self.memory_limit_mb is not None

    def profile(
        self, latency_budget_ms: float, memory_budget_mb: float, **extra: Any
    ) -> DeviceProfile:
        """The profile an agent of this class announces: its name and thread count."""
        return DeviceProfile(
            name=self.name,
            cpu_threads=self.threads,
            latency_budget_ms=latency_budget_ms,
            memory_budget_mb=memory_budget_mb,
            **extra,
        )


CLASSES: dict[str, DeviceClass] = {
    c.name: c
    for c in (
        # Two full cores, two threads: the fastest class here (a Jetson runs 6 cores).
        DeviceClass(name="jetson-like", threads=2),
        # One full core: a Cortex-A76 core is the nearest of these to an x86 core.
        DeviceClass(name="pi5-like", threads=1, cpus=(0,)),
        # Half a core: Cortex-A72, no dot-product instructions.
        DeviceClass(name="pi4-like", threads=1, cpus=(0,), cpu_quota=0.5),
        # A quarter of a core and 256 MB: the Zero 2 W's 512 MB less its OS.
        DeviceClass(name="pi-zero-like", threads=1, cpus=(0,), cpu_quota=0.25, memory_limit_mb=256),
    )
}


# --------------------------------------------------------------------------- cgroup plumbing


@dataclass(frozen=True)
class _Hierarchy:
    version: int
    mountpoint: Path
    root: str  # the hierarchy path that the mount shows at its mountpoint
    controllers: frozenset[str]

    def directory_of(self, pid: int | str) -> Path | None:
        """The directory of ``pid``'s cgroup in this hierarchy, None if it is not visible."""
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            _, names, path = line.split(":", 2)
            if self.version == 2 and names == "":
                break
            if self.version == 1 and self.controllers <= set(names.split(",")):
                break
        else:
            return None
        if path != self.root and not path.startswith(self.root.rstrip("/") + "/"):
            return self.mountpoint
        return self.mountpoint / path[len(self.root) :].lstrip("/")


def _hierarchies() -> list[_Hierarchy]:
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        head, _, tail = line.partition(" - ")
        fields, fstype_and_more = head.split(), tail.split()
        if len(fields) < 5 or len(fstype_and_more) < 3:
            continue
        fstype, options = fstype_and_more[0], fstype_and_more[2].split(",")
        root, mountpoint = fields[3], Path(fields[4])
        if fstype == "cgroup2":
            try:
                names = frozenset((mountpoint / "cgroup.controllers").read_text().split())
            except OSError:
                continue
            found.append(_Hierarchy(2, mountpoint, root, names))
        elif fstype == "cgroup":
            names = frozenset(options) & {"cpu", "memory"}
            if names:
                found.append(_Hierarchy(1, mountpoint, root, names))
    return found


def _write(path: Path, value: str) -> None:
    with path.open("w") as handle:
        handle.write(value)


def _limits(device_class: DeviceClass, version: int) -> dict[str, list[tuple[str, str]]]:
    """Files to write per controller, in order (v1 refuses memsw below limit_in_bytes)."""
    limits: dict[str, list[tuple[str, str]]] = {}
    if device_class.cpu_quota is not None:
        if version == 2:
            value = f"{device_class.quota_us} {device_class.cfs_period_us}"
            limits["cpu"] = [("cpu.max", value)]
        else:
            limits["cpu"] = [
                ("cpu.cfs_period_us", str(device_class.cfs_period_us)),
                ("cpu.cfs_quota_us", str(device_class.quota_us)),
            ]
    if device_class.memory_limit_mb is not None:
        limit = str(int(device_class.memory_limit_mb * 1024 * 1024))
        if version == 2:
            limits["memory"] = [("memory.max", limit), ("memory.swap.max?", "0")]
        else:
            limits["memory"] = [
                ("memory.limit_in_bytes", limit),
                ("memory.memsw.limit_in_bytes?", limit),
            ]
    return limits


@dataclass
class _Group:
    directory: Path
    home: Path  # where the process was, and where release() puts any remaining pids


def _create_groups(
    device_class: DeviceClass, version: int, parent_pid: int, name: str
) -> list[_Group]:
    """Create one group per hierarchy the limits need, write the limits; all or nothing.

    Raises:
        EmulationError: no such hierarchy, a controller it lacks, or a write refused
            (not root, a read-only mount, cgroup2's no-internal-processes rule).
    """
    limits = _limits(device_class, version)
    hierarchies = [h for h in _hierarchies() if h.version == version]
    created: list[_Group] = []
    try:
        for hierarchy, wanted in _group_by_hierarchy(limits, hierarchies, version):
            home = hierarchy.directory_of(parent_pid)
            if home is None:
                raise EmulationError(f"process {parent_pid} has no cgroup{version} entry")
            if version == 2:
                _enable_controllers(home, wanted)
            directory = home / name
            directory.mkdir()
            created.append(_Group(directory, home))
            for controller in sorted(wanted):
                for filename, value in limits[controller]:
                    optional = filename.endswith("?")
                    target = directory / filename.rstrip("?")
                    if optional and not target.exists():
                        continue
                    _write(target, value)
    except (OSError, EmulationError) as exc:
        for group in created:
            with contextlib.suppress(OSError):
                group.directory.rmdir()
        if isinstance(exc, EmulationError):
            raise
        raise EmulationError(f"cgroup{version}: {exc.strerror or exc} ({exc.filename})") from exc
    return created


def _group_by_hierarchy(
    limits: dict[str, list[tuple[str, str]]], hierarchies: list[_Hierarchy], version: int
) -> list[tuple[_Hierarchy, set[str]]]:
    plan: list[tuple[_Hierarchy, set[str]]] = []
    for controller in limits:
        hierarchy = next((h for h in hierarchies if controller in h.controllers), None)
        if hierarchy is None:
            raise EmulationError(f"no cgroup{version} hierarchy offers the {controller} controller")
        for planned, wanted in plan:
            if planned == hierarchy:
                wanted.add(controller)
                break
        else:
            plan.append((hierarchy, {controller}))
    return plan


def _enable_controllers(home: Path, wanted: set[str]) -> None:
    enabled = set((home / "cgroup.subtree_control").read_text().split())
    missing = wanted - enabled
    if missing:
        _write(home / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(missing)))


def _move(pid: int, directory: Path) -> None:
    try:
        _write(directory / "cgroup.procs", str(pid))
    except ProcessLookupError:
        pass  # exited meanwhile
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def _remove(group: _Group) -> bool:
    """Move what is left back home and remove the directory; False if it stays behind."""
    for attempt in range(50):
        try:
            pids = (group.directory / "cgroup.procs").read_text().split()
        except FileNotFoundError:
            return True
        except OSError:
            pids = []
        for pid in pids:
            with contextlib.suppress(OSError):
                _move(int(pid), group.home)
        try:
            group.directory.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY or attempt == 49:
                log.warning(
                    "could not remove %s (%s); rmdir it once its processes have exited",
                    group.directory,
                    exc.strerror,
                )
                return False
            time.sleep(0.02)  # an exiting task leaves its cgroup a moment after SIGKILL
    return False


# --------------------------------------------------------------------------- duty cycling


class _DutyCycle(threading.Thread):
    """Lets a process run ``duty`` of every ``period_s``, stopping it the rest of the time.

    Deadlines are absolute, so a late wake-up shortens the next phase instead of drifting.
    A pidfd, where the kernel has them, makes sure a recycled pid is never signalled.
    """

    def __init__(self, pid: int, duty: float, period_s: float) -> None:
        super().__init__(name=f"duty-cycle-{pid}", daemon=True)
        self.pid, self.duty, self.period_s = pid, duty, period_s
        self._stopping = threading.Event()
        self._pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            self._pidfd = os.pidfd_open(pid)

    def _signal(self, signum: signal.Signals) -> bool:
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signum)
            else:
                os.kill(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def run(self) -> None:
        start = time.monotonic()
        try:
            for period in range(sys.maxsize):
                if not self._signal(signal.SIGCONT):
                    return
                run_until = start + (period + self.duty) * self.period_s
                if self._stopping.wait(max(0.0, run_until - time.monotonic())):
                    return
                if not self._signal(signal.SIGSTOP):
                    return
                next_period = start + (period + 1) * self.period_s
                if self._stopping.wait(max(0.0, next_period - time.monotonic())):
                    return
        finally:
            self._signal(signal.SIGCONT)

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


# --------------------------------------------------------------------------- confinement


class Confinement:
    """Confines one process to a :class:`DeviceClass`.

    Use ``preexec`` as ``subprocess.Popen(preexec_fn=...)`` (affinity, and the address-space
    limit in duty-cycle mode), then ``apply(pid)`` right after Popen, and ``release()`` once
    the process is done (also as a context manager). ``mechanism`` says what is in use;
    ``notes`` says why a better one was not.

    Args:
        mechanism: force one mechanism instead of the best available one (tests, benches).

    Raises:
        ValueError: the class names CPUs this process may not use.
        EmulationError: a forced mechanism is not available here (the message says why).
    """

    def __init__(self, device_class: DeviceClass, *, mechanism: Mechanism | None = None) -> None:
        self.device_class = device_class
        self.notes: list[str] = []
        self.pid: int | None = None
        self._groups: list[_Group] = []
        self._duty_cycle: _DutyCycle | None = None
        allowed = os.sched_getaffinity(0)
        if device_class.cpus is not None and not set(device_class.cpus) <= allowed:
            raise ValueError(
                f"{device_class.name} pins to CPUs {sorted(device_class.cpus)}, but this "
                f"process may only use {sorted(allowed)}: choose cpus among those"
            )
        self.mechanism = self._choose(mechanism)

    def _choose(self, forced: Mechanism | None) -> Mechanism:
        if not self.device_class.confines:
            return "none"
        if forced == "none":
            raise ValueError(
                f"{self.device_class.name} has limits; mechanism 'none' would drop them"
            )
        if forced == "duty-cycle":
            return forced
        candidates: tuple[Literal["cgroup2", "cgroup1"], ...] = (
            ("cgroup2", "cgroup1") if forced is None else (forced,)
        )
        for candidate in candidates:
            problem = self._probe(candidate)
            if problem is None:
                return candidate
            self.notes.append(f"{candidate}: {problem}")
        if forced:
            raise EmulationError(
                f"cannot confine {self.device_class.name} with {forced}: {self.notes[-1]}"
            )
        limits = [
            *(["throttle CPU"] if self.device_class.cpu_quota is not None else []),
            *(["cap memory"] if self.device_class.memory_limit_mb is not None else []),
        ]
        fallbacks = [
            *(["duty-cycling (SIGSTOP/SIGCONT)"] if self.device_class.cpu_quota else []),
            *(["RLIMIT_AS"] if self.device_class.memory_limit_mb else []),
        ]
        message = (
            f"cannot {' or '.join(limits)} with cgroups ({'; '.join(self.notes)}); using "
            f"{' and '.join(fallbacks)}. Run as root or delegate a cgroup for exact limits."
        )
        self.notes.append(message)
        log.warning("%s: %s", self.device_class.name, message)
        return "duty-cycle"

    def _probe(self, mechanism: Literal["cgroup2", "cgroup1"]) -> str | None:
        """Create and remove a group with the class's limits; the problem, or None."""
        version = 2 if mechanism == "cgroup2" else 1
        name = f"edgeloop-probe-{os.getpid()}-{threading.get_ident()}"
        try:
            groups = _create_groups(self.device_class, version, os.getpid(), name)
        except EmulationError as exc:
            return str(exc).removeprefix(f"{mechanism}: ")
        for group in groups:
            _remove(group)
        return None

    @property
    def cpus(self) -> set[int] | None:
        return set(self.device_class.cpus) if self.device_class.cpus is not None else None

    @property
    def address_space_limit_bytes(self) -> int | None:
        """RLIMIT_AS in duty-cycle mode (memory budget + headroom), else None."""
        if self.mechanism != "duty-cycle" or self.device_class.memory_limit_mb is None:
            return None
        return int((self.device_class.memory_limit_mb + ADDRESS_SPACE_HEADROOM_MB) * 1024**2)

    def preexec(self) -> None:
        """Runs in the child between fork and exec: affinity, and RLIMIT_AS if duty-cycling."""
        if self.cpus is not None:
            os.sched_setaffinity(0, self.cpus)
        limit = self.address_space_limit_bytes
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def apply(self, pid: int) -> None:
        """Confine ``pid`` (every thread it already has, and all it will start).

        Raises:
            EmulationError: this confinement already holds another process, or the cgroup
                could not be created (nothing is left behind then).
        """
        if self.pid is not None and self.pid != pid:
            raise EmulationError(
                f"this confinement already holds process {self.pid}: use one per process"
            )
        if self.pid == pid:
            return
        self.pid = pid
        if self.cpus is not None:
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(int(task), self.cpus)
        if self.mechanism in ("cgroup2", "cgroup1"):
            version = 2 if self.mechanism == "cgroup2" else 1
            label = re.sub(r"[^A-Za-z0-9_.-]", "-", self.device_class.name)
            name = f"edgeloop-{label}-{pid}"
            self._groups = _create_groups(self.device_class, version, pid, name)
            try:
                for group in self._groups:
                    _move(pid, group.directory)
            except OSError as exc:
                self.release()
                raise EmulationError(f"cannot move process {pid} into its cgroup: {exc}") from exc
        elif self.mechanism == "duty-cycle":
            limit = self.address_space_limit_bytes
            if limit is not None:
                with contextlib.suppress(ProcessLookupError):
                    resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))
            duty = self._duty()
            if duty < 1.0:
                self._duty_cycle = _DutyCycle(pid, duty, self.device_class.cfs_period_us / 1e6)
                self._duty_cycle.start()

    def _duty(self) -> float:
        """Share of wall time the whole process may run: ``cpu_quota`` CPUs over its
        parallelism (exact for one busy thread; throttles harder when threads idle)."""
        quota = self.device_class.cpu_quota
        if quota is None:
            return 1.0
        usable = len(self.cpus or os.sched_getaffinity(0))
        return min(1.0, quota / min(self.device_class.threads, usable))

    @property
    def directories(self) -> list[Path]:
        """The cgroup directories this confinement holds now (empty once released)."""
        return [group.directory for group in self._groups]

    def oom_kills(self) -> int:
        """How many of the group's processes the kernel killed for its memory limit."""
        for group in self._groups:
            for filename in ("memory.events", "memory.oom_control"):
                with contextlib.suppress(OSError):
                    for line in (group.directory / filename).read_text().splitlines():
                        key, _, value = line.partition(" ")
                        if key == "oom_kill":
                            return int(value)
        return 0

    def release(self) -> None:
        """Move remaining processes back, remove the groups, continue a stopped process.

        Idempotent; never raises for a process or group that is already gone.
        """
        if self._duty_cycle is not None:
            self._duty_cycle.stop()
            self._duty_cycle = None
        self._groups = [group for group in self._groups if not _remove(group)]

    def __enter__(self) -> Confinement:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


# --------------------------------------------------------------------------- measurement


def measure_on_class(
    device_class: DeviceClass,
    model_path: Path,
    golden_path: Path,
    runs: int = 200,
    *,
    mechanism: Mechanism | None = None,
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    """Measure a model in a fresh process confined to ``device_class``: the ground truth.

    Returns ``p50_ms``, ``p95_ms``, ``p99_ms``, ``mean_ms``, ``peak_rss_mb``,
    ``peak_address_space_mb``, ``cpu_seconds``,
    ``wall_seconds``, ``threads``, ``runs``, ``device_class`` and ``mechanism``.

    Raises:
        EmulationError: the measuring process failed, was killed for the class's memory
            limit, or did not finish within ``timeout_s``.
    """
    argv = [
        sys.executable,
        "-m",
        "edgeloop.lab.emulation",
        "measure",
        str(model_path),
        str(golden_path),
        "--threads",
        str(device_class.threads),
        "--runs",
        str(runs),
    ]
    with Confinement(device_class, mechanism=mechanism) as confinement:
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=confinement.preexec,
        )
        try:
            confinement.apply(process.pid)
            stdout, stderr = process.communicate(timeout=timeout_s)
        except BaseException:
            process.kill()
            process.wait()
            raise
        oom_kills = confinement.oom_kills()
    if process.returncode != 0:
        cause = (
            f"killed by the kernel for the {device_class.memory_limit_mb} MB memory limit"
            if oom_kills
            else f"exit status {process.returncode}"
        )
        raise EmulationError(
            f"measuring {model_path.name} on {device_class.name} failed ({cause}): "
            f"{stderr.strip()[-1000:]}"
        )
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result | {"device_class": device_class.name, "mechanism": confinement.mechanism}


def _measure_here(model_path: Path, golden_path: Path, threads: int, runs: int) -> dict[str, Any]:
    from edgeloop.agent.golden import load_golden
    from edgeloop.agent.runtime import host_profile, measure, open_session, peak_rss_mb

    # open_session reads only the thread count and providers; budgets do not apply here.
    session = open_session(model_path, host_profile(threads))
    golden = load_golden(golden_path, [node.name for node in session.get_inputs()])
    result = measure(session, golden, runs)
    return {
        "p50_ms": result.latency.p50_ms,
        "p95_ms": result.latency.p95_ms,
        "p99_ms": result.latency.p99_ms,
        "mean_ms": result.latency.mean_ms,
        "peak_rss_mb": peak_rss_mb(),
        "peak_address_space_mb": _peak_address_space_mb(),
        "cpu_seconds": result.cpu_seconds,
        "wall_seconds": result.wall_seconds,
        "threads": threads,
        "runs": runs,
    }


def _peak_address_space_mb() -> float | None:
    """``VmPeak``: what an RLIMIT_AS must leave room for (see ADDRESS_SPACE_HEADROOM_MB)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmPeak:"):
                return int(line.split()[1]) / 1024
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeloop.lab.emulation")
    commands = parser.add_subparsers(dest="command", required=True)
    measure_cmd = commands.add_parser(
        "measure", help="measure a model in this process (run it confined); prints one JSON line"
    )
    measure_cmd.add_argument("model", type=Path)
    measure_cmd.add_argument("golden", type=Path)
    measure_cmd.add_argument("--threads", type=int, default=1)
    measure_cmd.add_argument("--runs", type=int, default=200)
    commands.add_parser("classes", help="list the built-in classes and the mechanism each gets")
    args = parser.parse_args(argv)
    if args.command == "measure":
        print(json.dumps(_measure_here(args.model, args.golden, args.threads, args.runs)))
    else:
        for device_class in CLASSES.values():
            confinement = Confinement(device_class)
            print(json.dumps({"class": device_class.name, "mechanism": confinement.mechanism}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
