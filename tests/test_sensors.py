"""Energy: real sensors are read from sysfs; without one the estimate says so."""

from __future__ import annotations

from pathlib import Path

from edgeloop.agent.sensors import ESTIMATED_WATTS_PER_BUSY_CORE, EnergyMeter, find_sensor


def write(root: Path, relative: str, value: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    return path


def test_no_sensor_gives_an_estimate_marked_estimated(tmp_path: Path) -> None:
    assert find_sensor(tmp_path) is None
    meter = EnergyMeter(None)
    meter.start()
    energy = meter.stop(cpu_seconds=2.0, inferences=100)
    assert energy.estimated
    assert energy.joules_per_inference == 2.0 * ESTIMATED_WATTS_PER_BUSY_CORE / 100
    assert energy.source.startswith("estimate")


def test_rapl_energy_counter_is_differenced(tmp_path: Path) -> None:
    counter = write(tmp_path, "class/powercap/intel-rapl:0/energy_uj", "1000000")
    sensor = find_sensor(tmp_path)
    assert sensor is not None and sensor.kind == "energy_uj"
    meter = EnergyMeter(sensor)
    meter.start()
    counter.write_text("3000000\n")
    energy = meter.stop(cpu_seconds=0.5, inferences=4)
    assert not energy.estimated
    assert energy.joules_per_inference == 0.5
    assert energy.source == str(counter)


def test_hwmon_power_gauge_is_averaged_over_the_run(tmp_path: Path) -> None:
    write(tmp_path, "class/hwmon/hwmon1/name", "ina3221")
    write(tmp_path, "class/hwmon/hwmon1/power1_input", "not a number")
    gauge = write(tmp_path, "class/hwmon/hwmon2/power1_input", "2000000")
    sensor = find_sensor(tmp_path)
    assert sensor is not None and sensor.path == gauge and sensor.kind == "power_uw"
    meter = EnergyMeter(sensor)
    meter.start()
    energy = meter.stop(cpu_seconds=0.1, inferences=10)
    assert not energy.estimated
    assert energy.avg_power_w == 2.0
