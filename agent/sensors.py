"""Power and energy: read a real sensor when the device has one, otherwise estimate honestly.

Sensors probed, in order (all plain sysfs reads, no extra packages):
- Intel/AMD RAPL package energy counter: ``/sys/class/powercap/*/energy_uj``;
- Linux hwmon power inputs (Jetson INA3221 rails, many boards): ``/sys/class/hwmon/*/power*_input``
  in microwatts.

Without one, energy is estimated from the CPU time the inferences consumed times
:data:`ESTIMATED_WATTS_PER_BUSY_CORE` and marked ``estimated=True``: a Raspberry Pi 4 draws
about 2.7 W idle and 6.4 W with four cores busy, i.e. ~0.9 W per busy core.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .protocol import Energy

ESTIMATED_WATTS_PER_BUSY_CORE = 0.9
SYSFS = Path("/sys")


@dataclass(frozen=True)
class PowerSensor:
    """A readable sensor: either a cumulative energy counter or an instantaneous power gauge."""

    path: Path
    kind: str  # "energy_uj" (cumulative microjoules) or "power_uw" (microwatts)

    def read(self) -> float:
        return float(self.path.read_text().strip())


def find_sensor(root: Path = SYSFS) -> PowerSensor | None:
    """The first readable power sensor under ``root`` (a recorded sysfs tree in tests)."""
    for path in sorted(root.glob("class/powercap/*/energy_uj")):
        if _readable(path):
            return PowerSensor(path, "energy_uj")
    for path in sorted(root.glob("class/hwmon/hwmon*/power*_input")):
        if _readable(path):
            return PowerSensor(path, "power_uw")
    return None


def _readable(path: Path) -> bool:
    try:
        float(path.read_text().strip())
        return True
    except (OSError, ValueError):
        return False


class EnergyMeter:
    """Attribute energy to a stretch of work: ``start()``, do the work, ``stop(...)``.

    A power gauge is sampled at both ends and averaged; an energy counter is differenced (a
    counter that wrapped during the run falls back to the estimate).
    """

    def __init__(self, sensor: PowerSensor | None) -> None:
        self.sensor = sensor
        self._before = 0.0
        self._wall_start = 0.0

    def start(self) -> None:
        self._before = self.sensor.read() if self.sensor else 0.0
        self._wall_start = time.perf_counter()

    def stop(self, *, cpu_seconds: float, inferences: int) -> Energy:
        wall = max(time.perf_counter() - self._wall_start, 1e-9)
        sensor = self.sensor
        if sensor is not None:
            after = sensor.read()
            if sensor.kind == "energy_uj" and after >= self._before:
                joules = (after - self._before) / 1e6
                return _energy(joules, wall, inferences, str(sensor.path), estimated=False)
            if sensor.kind == "power_uw":
                watts = (self._before + after) / 2 / 1e6
                return _energy(watts * wall, wall, inferences, str(sensor.path), estimated=False)
        joules = cpu_seconds * ESTIMATED_WATTS_PER_BUSY_CORE
        source = f"estimate: process CPU time x {ESTIMATED_WATTS_PER_BUSY_CORE} W per busy core"
        return _energy(joules, wall, inferences, source, estimated=True)


def _energy(joules: float, wall: float, inferences: int, source: str, *, estimated: bool) -> Energy:
    return Energy(
        joules_per_inference=joules / max(inferences, 1),
        avg_power_w=joules / wall,
        source=source,
        estimated=estimated,
    )
