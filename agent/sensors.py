"""Power, energy and temperature: read a real sensor when the device has one, else estimate.

Power sensors probed, in this order; the first one that reads wins:

1. NVIDIA Jetson INA3221 rail monitor, in either driver generation:

   - L4T 32 / JetPack 4 (``ina3221x`` IIO driver):
     ``/sys/bus/i2c/drivers/ina3221x/<addr>/iio:device<N>/in_power<K>_input`` in milliwatts,
     rail named by ``rail_name_<K>``;
   - L4T 35-36 / JetPack 5-6 (mainline hwmon driver):
     ``/sys/bus/i2c/drivers/ina3221/<addr>/hwmon/hwmon<N>/in<K>_label`` with ``in<K>_input``
     (millivolts) and ``curr<K>_input`` (milliamps).

   The module's input rail (``VDD_IN``; ``POM_5V_IN`` on the Nano) is read when there is one,
   because it is the only rail that covers the whole module; boards without one (AGX Xavier,
   AGX Orin) get the sum of their rails.
2. Raspberry Pi 5 PMIC, ``vcgencmd pmic_read_adc``: the sum of V×I over the rails that report
   both. It leaves out the PMIC's own conversion losses and whatever hangs off the 5 V input
   (USB devices, fan), so it reads below a wall meter; it still tracks the SoC and DRAM load.
3. Intel/AMD RAPL: ``/sys/class/powercap/intel-rapl:<N>/energy_uj`` summed over packages, each
   counter unwrapped with its ``max_energy_range_uj``. It covers the CPU package only (not the
   board, disks or fans) and is root-only since Linux 5.10, so an unprivileged agent skips it.
4. Linux hwmon: ``/sys/class/hwmon/hwmon*/energy*_input`` (cumulative microjoules), else
   ``power*_input`` / ``power*_average`` (microwatts). What a generic hwmon channel measures is
   board-specific, which is why it comes last.

On real hardware these are mutually exclusive; the order only settles odd hybrids, in favour of
whole-module rails over CPU-package counters over channels of unknown scope.

Without any of them, energy is estimated from the CPU time the inferences consumed times
:data:`ESTIMATED_WATTS_PER_BUSY_CORE` and marked ``estimated=True``: a Raspberry Pi 4 draws
about 2.7 W idle and 6.4 W with four cores busy, i.e. ~0.9 W per busy core.

Temperature (:func:`read_temperature_c`) comes from ``/sys/class/thermal/thermal_zone*/temp``
and hwmon ``temp*_input`` (both millidegrees C), preferring CPU zones.

A sensor that cannot be read (missing, permission denied, garbage, a command that fails) is
skipped: telemetry must never take the agent down, and a wrong number is worse than the
documented estimate.
"""

from __future__ import annotations

import logging
import math
import re
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .protocol import Energy

log = logging.getLogger("edgeloop.agent.sensors")

ESTIMATED_WATTS_PER_BUSY_CORE = 0.9
SYSFS = Path("/sys")

POWER_UW = "power_uw"
"""Gauge kind: instantaneous microwatts, averaged over a run."""
ENERGY_UJ = "energy_uj"
"""Counter kind: cumulative microjoules, differenced over a run."""

PMIC_TIMEOUT_S = 2.0

Runner = Callable[[], str]
"""Returns the stdout of ``vcgencmd pmic_read_adc``; raises when the command is unavailable."""

# What a failing read raises: sysfs errors are OSError, garbage is ValueError (UnicodeDecodeError
# included), a failing or hanging vcgencmd is a SubprocessError.
_READ_ERRORS = (OSError, ValueError, subprocess.SubprocessError)

# Rails that feed the whole Jetson module (Nano: POM_5V_IN; TX2, Xavier NX, Orin NX/Nano: VDD_IN).
_INPUT_RAILS = frozenset({"VDD_IN", "POM_5V_IN", "5V_IN"})
_UNCONNECTED_RAILS = frozenset({"", "NC"})

# Plausible die temperatures; disabled zones report sentinels such as -256 °C (Orin CV zones).
_MIN_PLAUSIBLE_C = -40.0
_MAX_PLAUSIBLE_C = 150.0
_CPU_ZONE = re.compile(
    r"cpu|x86_pkg_temp|coretemp|k10temp|zenpower|package id|tctl|tdie|tccd", re.I
)


@dataclass(frozen=True)
class PowerSensor:
    """A power source the meter samples at both ends of a run.

    ``kind`` decides how two samples become energy: a :data:`POWER_UW` gauge is averaged, an
    :data:`ENERGY_UJ` counter is differenced. ``sample`` returns one value per channel (RAPL
    package, rail) because counters wrap independently, each at its own ``wrap_uj`` entry;
    without ``sample`` the sensor is the single sysfs file at ``path``. ``source`` names the
    sensor in :class:`~edgeloop.agent.protocol.Energy` so a fleet can tell readings apart.
    """

    path: Path | None
    kind: str
    source: str = ""
    sample: Callable[[], tuple[float, ...]] | None = field(default=None, repr=False, compare=False)
    wrap_uj: tuple[float | None, ...] = ()

    def __post_init__(self) -> None:
        if not self.source:
            object.__setattr__(self, "source", str(self.path))

    def read_channels(self) -> tuple[float, ...]:
        if self.sample is not None:
            return self.sample()
        if self.path is None:
            raise ValueError("a sensor needs a path or a sample function")
        return (_read_number(self.path),)

    def read(self) -> float:
        """Microwatts for a gauge, microjoules for a counter (all channels together)."""
        return math.fsum(self.read_channels())

    def energy_uj_between(
        self, before: tuple[float, ...], after: tuple[float, ...]
    ) -> float | None:
        """How far a counter advanced; None when a channel went backwards with no known range.

        A counter that wrapped more than once between the samples cannot be told apart from one
        that wrapped once; RAPL's range is ~262 kJ, over 40 minutes at 100 W, far beyond a run.
        """
        if len(before) != len(after):
            return None
        total = 0.0
        for index, (first, last) in enumerate(zip(before, after, strict=True)):
            if last >= first:
                total += last - first
                continue
            wrap = self.wrap_uj[index] if index < len(self.wrap_uj) else None
            if not wrap:
                return None
            total += last + wrap - first
        return total


# --------------------------------------------------------------------------- probing


def find_sensor(root: Path = SYSFS, *, pmic: Runner | None = None) -> PowerSensor | None:
    """The best readable power sensor under ``root`` (a recorded sysfs tree in tests), or None.

    The Pi 5 PMIC is not a sysfs file, so it is asked through ``pmic``; left out, the real
    ``vcgencmd`` runs only when ``root`` is the live ``/sys``, so a recorded tree never picks up
    the PMIC of the machine the tests run on.
    """
    if pmic is None and root == SYSFS:
        pmic = vcgencmd_pmic_read_adc
    probes: list[tuple[str, Callable[[], PowerSensor | None]]] = [
        ("ina3221", lambda: find_ina3221(root)),
        ("rpi5-pmic", lambda: find_rpi5_pmic(pmic) if pmic is not None else None),
        ("rapl", lambda: find_rapl(root)),
        ("hwmon", lambda: find_hwmon_power(root)),
    ]
    for name, probe in probes:
        try:
            sensor = probe()
        except Exception:  # a sensor bug must cost the reading, never the agent
            log.warning("probing the %s power sensor failed", name, exc_info=True)
            continue
        if sensor is not None:
            log.info("power sensor: %s", sensor.source)
            return sensor
    log.info("no power sensor; energy will be estimated from CPU time")
    return None


@dataclass(frozen=True)
class _Rail:
    name: str
    files: tuple[Path, ...]  # (power mW,) on L4T 32; (bus voltage mV, current mA) on hwmon

    def milliwatts(self) -> float:
        if len(self.files) == 1:
            return _read_number(self.files[0])
        millivolts, milliamps = (_read_number(path) for path in self.files)
        return millivolts * milliamps / 1000


def find_ina3221(root: Path = SYSFS) -> PowerSensor | None:
    """A Jetson's INA3221 rails: the input rail when there is one, else all rails summed."""
    rails: list[_Rail] = []
    legacy = root.glob("bus/i2c/drivers/ina3221x/*/iio:device*/rail_name_*")
    for name_file in _natural(legacy):
        channel = name_file.name.removeprefix("rail_name_")
        rails.append(_Rail(_read_text(name_file), (name_file.parent / f"in_power{channel}_input",)))
    hwmon = root.glob("bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in*_label")
    for label in _natural(hwmon):
        channel = label.name.removeprefix("in").removesuffix("_label")
        folder = label.parent
        # in7 ("sum of shunt voltages") has no curr7, so it fails the read check below.
        files = (folder / f"in{channel}_input", folder / f"curr{channel}_input")
        rails.append(_Rail(_read_text(label), files))
    readable = [r for r in rails if r.name.upper() not in _UNCONNECTED_RAILS and _rail_ok(r)]
    if not readable:
        return None
    chosen = [r for r in readable if r.name.upper() in _INPUT_RAILS] or readable

    def sample() -> tuple[float, ...]:
        return tuple(rail.milliwatts() * 1000 for rail in chosen)

    source = "ina3221:" + "+".join(rail.name for rail in chosen)
    return PowerSensor(chosen[0].files[0], POWER_UW, source, sample)


def _rail_ok(rail: _Rail) -> bool:
    try:
        rail.milliwatts()
        return True
    except _READ_ERRORS:
        return False


_PMIC_LINE = re.compile(
    r"^\s*(?P<rail>\S+)_(?P<unit>[AV])\s+(?:current|volt)\(\d+\)="
    r"(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)[AV]\s*$"
)


def parse_pmic_read_adc(text: str) -> dict[str, float]:
    """Watts per rail from ``vcgencmd pmic_read_adc`` output.

    Currents and voltages come on separate lines with unrelated ADC channel numbers, so they are
    paired by rail name (``VDD_CORE_A`` with ``VDD_CORE_V``); voltage-only rails (``EXT5V_V``,
    ``BATT_V``) carry no power figure and drop out.
    """
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.splitlines():
        match = _PMIC_LINE.match(line)
        if match is None:
            continue
        value = float(match["value"])
        if math.isfinite(value):
            (amps if match["unit"] == "A" else volts)[match["rail"]] = value
    return {rail: volts[rail] * current for rail, current in amps.items() if rail in volts}


def vcgencmd_pmic_read_adc(timeout_s: float = PMIC_TIMEOUT_S) -> str:
    """Run ``vcgencmd pmic_read_adc``; raises when it is missing, fails or hangs.

    A non-zero exit is what an older Pi (no such command) or a user outside the ``video`` group
    (no access to ``/dev/vcio``) gets; the timeout keeps a wedged firmware mailbox from stalling
    the update worker.
    """
    result = subprocess.run(
        ["vcgencmd", "pmic_read_adc"],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=True,
    )
    return result.stdout


def find_rpi5_pmic(run: Runner | None = None) -> PowerSensor | None:
    """The Pi 5 PMIC through ``run`` (default: the real ``vcgencmd``), or None when it is absent."""
    run = run or vcgencmd_pmic_read_adc
    try:
        rails = parse_pmic_read_adc(run())
    except _READ_ERRORS:
        return None
    if not rails:
        return None

    def sample() -> tuple[float, ...]:
        watts = parse_pmic_read_adc(run())
        if not watts:
            raise ValueError("vcgencmd pmic_read_adc printed no rails")
        return (math.fsum(watts.values()) * 1e6,)

    return PowerSensor(None, POWER_UW, "rpi5-pmic", sample)


_RAPL_ZONE = re.compile(r"intel-rapl:\d+")


def find_rapl(root: Path = SYSFS) -> PowerSensor | None:
    """RAPL package counters, summed over sockets.

    Only top-level zones count: ``intel-rapl:N:M`` subzones (core, uncore, dram) are inside their
    package, and ``intel-rapl-mmio`` repeats package-0 through another interface, so adding
    either would count energy twice. ``psys`` (whole SoC platform, laptops) is used only when no
    package zone reads, since it overlaps the packages.
    """
    zones: list[tuple[str, Path, float | None]] = []
    for zone in _natural(root.glob("class/powercap/intel-rapl:*")):
        counter = zone / "energy_uj"
        if not _RAPL_ZONE.fullmatch(zone.name) or not _readable(counter):
            continue
        wrap = _number_or_none(zone / "max_energy_range_uj")
        zones.append((_read_text(zone / "name") or zone.name, counter, wrap if wrap else None))
    chosen = [z for z in zones if z[0].startswith("package")] or zones
    if not chosen:
        return None
    counters = [counter for _, counter, _ in chosen]

    def sample() -> tuple[float, ...]:
        return tuple(_read_number(counter) for counter in counters)

    source = "rapl:" + "+".join(name for name, _, _ in chosen)
    return PowerSensor(counters[0], ENERGY_UJ, source, sample, tuple(w for _, _, w in chosen))


def find_hwmon_power(root: Path = SYSFS) -> PowerSensor | None:
    """The first readable hwmon energy counter, else the first power gauge.

    A counter integrates the whole run, while a gauge is only sampled at its two ends, so any
    counter beats any gauge. Within a device ``power*_input`` beats ``power*_average``, which
    some drivers (ACPI power meters) offer alone.
    """
    devices = _natural(root.glob("class/hwmon/hwmon*"))
    patterns = (
        ("energy*_input", ENERGY_UJ),
        ("power*_input", POWER_UW),
        ("power*_average", POWER_UW),
    )
    for pattern, kind in patterns:
        for device in devices:
            for path in _natural(device.glob(pattern)):
                if _readable(path):
                    name = _read_text(device / "name") or device.name
                    return PowerSensor(path, kind, f"hwmon:{name}/{path.name.split('_')[0]}")
    return None


# --------------------------------------------------------------------------- metering


class EnergyMeter:
    """Attribute energy to a stretch of work: ``start()``, do the work, ``stop(...)``.

    A power gauge is sampled at both ends and averaged; an energy counter is differenced. A sensor
    that fails to read at either end, or a counter that went backwards with no known range, falls
    back to the estimate rather than reporting a made-up number.
    """

    def __init__(self, sensor: PowerSensor | None) -> None:
        self.sensor = sensor
        self._before: tuple[float, ...] | None = None
        self._wall_start = 0.0

    def start(self) -> None:
        self._before = self._sample()
        self._wall_start = time.perf_counter()

    def stop(self, *, cpu_seconds: float, inferences: int) -> Energy:
        wall = max(time.perf_counter() - self._wall_start, 1e-9)
        sensor, before = self.sensor, self._before
        after = self._sample() if before is not None else None
        if sensor is not None and before is not None and after is not None:
            joules = _measured_joules(sensor, before, after, wall)
            if joules is not None:
                return _energy(joules, wall, inferences, sensor.source, estimated=False)
        joules = cpu_seconds * ESTIMATED_WATTS_PER_BUSY_CORE
        source = f"estimate: process CPU time x {ESTIMATED_WATTS_PER_BUSY_CORE} W per busy core"
        return _energy(joules, wall, inferences, source, estimated=True)

    def _sample(self) -> tuple[float, ...] | None:
        if self.sensor is None:
            return None
        try:
            return self.sensor.read_channels()
        except _READ_ERRORS as exc:
            log.warning("power sensor %s unreadable (%s); estimating", self.sensor.source, exc)
            return None


def _measured_joules(
    sensor: PowerSensor, before: tuple[float, ...], after: tuple[float, ...], wall: float
) -> float | None:
    if sensor.kind == ENERGY_UJ:
        microjoules = sensor.energy_uj_between(before, after)
        return None if microjoules is None else microjoules / 1e6
    if sensor.kind == POWER_UW:
        watts = (math.fsum(before) + math.fsum(after)) / 2 / 1e6
        return watts * wall
    return None


def _energy(joules: float, wall: float, inferences: int, source: str, *, estimated: bool) -> Energy:
    return Energy(
        joules_per_inference=joules / max(inferences, 1),
        avg_power_w=joules / wall,
        source=source,
        estimated=estimated,
    )


# --------------------------------------------------------------------------- temperature


def read_temperature_c(root: Path = SYSFS) -> float | None:
    """The hottest CPU zone in °C, else the hottest zone of any kind; None when none reads.

    CPU zones come first because other zones can be hotter without meaning anything about the
    workload: the Jetson Nano's ``PMIC-Die`` zone reads a fixed 100 °C, NVMe drives and the Pi 5's
    RP1 I/O chip run warmer than an idle CPU. Readings outside -40..150 °C are sentinels of
    disabled zones (Orin's CV zones read -256 °C) and are dropped.
    """
    cpu: list[float] = []
    other: list[float] = []
    for zone in root.glob("class/thermal/thermal_zone*"):
        celsius = _celsius(zone / "temp")
        if celsius is not None:
            (cpu if _CPU_ZONE.search(_read_text(zone / "type")) else other).append(celsius)
    for device in root.glob("class/hwmon/hwmon*"):
        name = _read_text(device / "name")
        for path in device.glob("temp*_input"):
            celsius = _celsius(path)
            if celsius is not None:
                label = _read_text(path.with_name(path.name.replace("_input", "_label")))
                (cpu if _CPU_ZONE.search(f"{name} {label}") else other).append(celsius)
    readings = cpu or other
    return max(readings) if readings else None


def _celsius(path: Path) -> float | None:
    millidegrees = _number_or_none(path)
    if millidegrees is None:
        return None
    celsius = millidegrees / 1000
    return celsius if _MIN_PLAUSIBLE_C <= celsius <= _MAX_PLAUSIBLE_C else None


# --------------------------------------------------------------------------- sysfs helpers


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return ""


def _read_number(path: Path) -> float:
    value = float(path.read_text().strip())
    if not math.isfinite(value):
        raise ValueError(f"{path}: {value}")
    return value


def _number_or_none(path: Path) -> float | None:
    try:
        return _read_number(path)
    except (OSError, ValueError):
        return None


def _readable(path: Path) -> bool:
    return _number_or_none(path) is not None


def _natural(paths: Iterable[Path]) -> list[Path]:
    """Sorted so that hwmon10 follows hwmon9 (sysfs numbering, not string order)."""

    def key(path: Path) -> list[int | str]:
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]

    return sorted(paths, key=key)
