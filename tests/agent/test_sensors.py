"""Energy and temperature: real sensors are read from recorded sysfs trees; without one the
estimate says so.

The trees under ``tests/data/sysfs/`` are real files laid out as on each board (Jetson Nano on
L4T 32, Orin Nano on JetPack 6, Raspberry Pi 5, an Intel NUC with RAPL); expected values are
worked out by hand from the numbers in those files.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from edgeloop.agent.sensors import (
    ENERGY_UJ,
    ESTIMATED_WATTS_PER_BUSY_CORE,
    POWER_UW,
    EnergyMeter,
    PowerSensor,
    find_hwmon_power,
    find_ina3221,
    find_rapl,
    find_rpi5_pmic,
    find_sensor,
    parse_pmic_read_adc,
    read_temperature_c,
    vcgencmd_pmic_read_adc,
)

DATA = Path(__file__).parent / "data" / "sysfs"
NANO = DATA / "jetson-nano-l4t32"
ORIN = DATA / "jetson-orin-jp6"
RPI5 = DATA / "rpi5"
X86 = DATA / "x86-rapl"
PMIC_OUTPUT = (RPI5 / "pmic_read_adc.txt").read_text()
RAPL_RANGE_UJ = 262143328850  # intel-rapl:0/max_energy_range_uj in the x86 tree

# The Pi 5 recording, rail by rail: volts x amps for the 12 rails that report both.
RPI5_WATTS = (
    3.70988800 * 0.07420110  # 3V7_WL_SW
    + 3.31465200 * 0.09370020  # 3V3_SYS
    + 1.80805600 * 0.17285240  # 1V8_SYS
    + 1.10768200 * 0.16594500  # DDR_VDD2
    + 0.60146460 * 0.04003560  # DDR_VDDQ
    + 1.10988900 * 0.18737800  # 1V1_SYS
    + 0.80366220 * 0.35624310  # 0V8_SW
    + 0.82043960 * 3.41846000  # VDD_CORE
    + 3.31135700 * 0.00012210  # 3V3_DAC
    + 3.30860900 * 0.00042735  # 3V3_ADC
    + 0.79985260 * 0.00427350  # 0V8_AON
    + 5.08512000 * 0.02075700  # HDMI
)


def write(root: Path, relative: str, value: str | bytes) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(value, bytes):
        path.write_bytes(value)
    else:
        path.write_text(value + "\n")
    return path


def copy_of(tmp_path: Path, *boards: Path) -> Path:
    """A writable tree (several boards merged, to test the probe order)."""
    root = tmp_path / "sys"
    for board in boards:
        shutil.copytree(board, root, dirs_exist_ok=True)
    return root


def recorded_pmic() -> str:
    return PMIC_OUTPUT


def raising(exc: Exception):
    def run() -> str:
        raise exc

    return run


def metered(sensor: PowerSensor | None, change=lambda: None, *, inferences: int = 1):
    meter = EnergyMeter(sensor)
    meter.start()
    change()
    return meter.stop(cpu_seconds=1.0, inferences=inferences)


# --------------------------------------------------------------------------- no sensor


def test_no_sensor_gives_an_estimate_marked_estimated(tmp_path: Path) -> None:
    assert find_sensor(tmp_path) is None
    energy = EnergyMeter(None)
    energy.start()
    result = energy.stop(cpu_seconds=2.0, inferences=100)
    assert result.estimated
    assert result.joules_per_inference == 2.0 * ESTIMATED_WATTS_PER_BUSY_CORE / 100
    assert result.source.startswith("estimate")


def test_a_recorded_tree_never_runs_the_real_vcgencmd(tmp_path: Path, monkeypatch) -> None:
    def must_not_run(*args, **kwargs):
        raise AssertionError("vcgencmd ran for a recorded tree")

    monkeypatch.setattr(subprocess, "run", must_not_run)
    assert find_sensor(RPI5) is None  # the Pi 5 has no power file in sysfs, only the PMIC


# --------------------------------------------------------------------------- Jetson INA3221


def test_jetson_nano_l4t32_reads_the_module_input_rail() -> None:
    sensor = find_sensor(NANO)
    assert sensor is not None
    assert sensor.source == "ina3221:POM_5V_IN"
    assert sensor.kind == POWER_UW
    # in_power0_input is 2531 mW; the GPU (39) and CPU (1035) rails are inside it.
    assert sensor.read() == 2_531_000
    energy = metered(sensor)
    assert not energy.estimated
    assert energy.avg_power_w == pytest.approx(2.531)
    assert energy.source == "ina3221:POM_5V_IN"


def test_jetson_orin_jp6_multiplies_bus_volts_by_amps() -> None:
    sensor = find_sensor(ORIN)
    assert sensor is not None
    assert sensor.source == "ina3221:VDD_IN"
    # in1_input 5072 mV x curr1_input 1248 mA = 6329.856 mW
    assert sensor.read() / 1e6 == pytest.approx(6.329856)
    assert metered(sensor).avg_power_w == pytest.approx(6.329856)


def test_ina3221_without_an_input_rail_sums_the_rails(tmp_path: Path) -> None:
    # AGX Xavier style: two chips, no VDD_IN; NC channels and a broken rail are left out.
    chip = "bus/i2c/drivers/ina3221x/1-0040/iio:device0"
    for k, (name, milliwatts) in enumerate([("GPU", "1520"), ("CPU", "2280"), ("SOC", "1140")]):
        write(tmp_path, f"{chip}/rail_name_{k}", name)
        write(tmp_path, f"{chip}/in_power{k}_input", milliwatts)
    other = "bus/i2c/drivers/ina3221x/1-0041/iio:device1"
    for k, (name, milliwatts) in enumerate([("CV", "0"), ("VDDRQ", "oops"), ("NC", "5")]):
        write(tmp_path, f"{other}/rail_name_{k}", name)
        write(tmp_path, f"{other}/in_power{k}_input", milliwatts)
    sensor = find_ina3221(tmp_path)
    assert sensor is not None
    assert sensor.source == "ina3221:GPU+CPU+SOC+CV"
    assert sensor.read() == (1520 + 2280 + 1140 + 0) * 1000


def test_ina3221_hwmon_channel_without_current_is_skipped(tmp_path: Path) -> None:
    hwmon = "bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    write(tmp_path, f"{hwmon}/in1_label", "VDD_GPU_SOC")
    write(tmp_path, f"{hwmon}/in1_input", "19024")
    write(tmp_path, f"{hwmon}/curr1_input", "250")
    write(tmp_path, f"{hwmon}/in7_label", "sum of shunt voltages")
    write(tmp_path, f"{hwmon}/in7_input", "9320")
    sensor = find_ina3221(tmp_path)
    assert sensor is not None and sensor.source == "ina3221:VDD_GPU_SOC"
    assert sensor.read() == pytest.approx(19024 * 250)  # mV x mA = µW


# --------------------------------------------------------------------------- Raspberry Pi 5 PMIC


def test_rpi5_pmic_sums_volts_times_amps_over_paired_rails() -> None:
    rails = parse_pmic_read_adc(PMIC_OUTPUT)
    assert len(PMIC_OUTPUT.splitlines()) == 26
    assert len(rails) == 12
    assert "EXT5V" not in rails and "BATT" not in rails  # voltage only
    assert rails["VDD_CORE"] == pytest.approx(0.82043960 * 3.41846000)
    sensor = find_sensor(RPI5, pmic=recorded_pmic)
    assert sensor is not None
    assert sensor.source == "rpi5-pmic"
    assert sensor.kind == POWER_UW
    assert sensor.read() / 1e6 == pytest.approx(RPI5_WATTS)
    assert RPI5_WATTS == pytest.approx(4.516, abs=1e-3)
    energy = metered(sensor)
    assert not energy.estimated and energy.source == "rpi5-pmic"
    assert energy.avg_power_w == pytest.approx(RPI5_WATTS)


@pytest.mark.parametrize(
    "runner",
    [
        pytest.param(raising(FileNotFoundError("vcgencmd")), id="missing"),
        pytest.param(raising(subprocess.CalledProcessError(255, "vcgencmd")), id="nonzero-exit"),
        pytest.param(raising(subprocess.TimeoutExpired("vcgencmd", 2.0)), id="timeout"),
        pytest.param(lambda: 'error=1 error_msg="Command not registered"\n', id="pi4"),
        pytest.param(lambda: "", id="empty"),
    ],
)
def test_pmic_that_is_absent_is_no_sensor(runner) -> None:
    assert find_rpi5_pmic(runner) is None
    assert find_sensor(RPI5, pmic=runner) is None


def fake_vcgencmd(tmp_path: Path, monkeypatch, script: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "vcgencmd"
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_real_runner_reads_vcgencmd(tmp_path: Path, monkeypatch) -> None:
    fake_vcgencmd(
        tmp_path, monkeypatch, f'[ "$1" = pmic_read_adc ] && cat "{RPI5}/pmic_read_adc.txt"'
    )
    assert vcgencmd_pmic_read_adc() == PMIC_OUTPUT
    sensor = find_rpi5_pmic()
    assert sensor is not None and sensor.read() / 1e6 == pytest.approx(RPI5_WATTS)


def test_real_runner_failing_is_no_sensor(tmp_path: Path, monkeypatch) -> None:
    fake_vcgencmd(
        tmp_path, monkeypatch, "echo 'error=1 error_msg=\"Command not registered\"'\nexit 255"
    )
    assert find_rpi5_pmic() is None
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert find_rpi5_pmic() is None


def test_pmic_failing_mid_run_falls_back_to_the_estimate() -> None:
    outputs = iter([PMIC_OUTPUT, PMIC_OUTPUT])  # probe, start; stop finds vcgencmd gone

    def runner() -> str:
        try:
            return next(outputs)
        except StopIteration:
            raise FileNotFoundError("vcgencmd") from None

    energy = metered(find_rpi5_pmic(runner))
    assert energy.estimated and energy.source.startswith("estimate")


# --------------------------------------------------------------------------- RAPL


def test_rapl_package_counter_is_differenced(tmp_path: Path) -> None:
    root = copy_of(tmp_path, X86)
    sensor = find_sensor(root)
    assert sensor is not None
    assert sensor.kind == ENERGY_UJ
    assert sensor.source == "rapl:package-0"  # not core/uncore (inside it), psys or mmio (copies)
    counter = root / "class/powercap/intel-rapl:0/energy_uj"
    energy = metered(sensor, lambda: counter.write_text("73847628061\n"), inferences=5)
    assert not energy.estimated
    assert energy.joules_per_inference == pytest.approx(2.5 / 5)  # 2_500_000 µJ over 5
    assert energy.source == "rapl:package-0"


def test_rapl_counter_wraparound_uses_max_energy_range(tmp_path: Path) -> None:
    root = copy_of(tmp_path, X86)
    counter = root / "class/powercap/intel-rapl:0/energy_uj"
    counter.write_text("262143000000\n")
    sensor = find_rapl(root)
    assert sensor is not None
    energy = metered(sensor, lambda: counter.write_text("1500000\n"))
    # 262143328850 - 262143000000 = 328850 µJ before the wrap, 1500000 after it
    assert not energy.estimated
    assert energy.joules_per_inference == pytest.approx(1.82885)


def test_rapl_sums_packages_each_wrapping_on_its_own(tmp_path: Path) -> None:
    for n, energy_uj in enumerate(["65532000000", "1000000"]):
        write(tmp_path, f"class/powercap/intel-rapl:{n}/name", f"package-{n}")
        write(tmp_path, f"class/powercap/intel-rapl:{n}/energy_uj", energy_uj)
        write(tmp_path, f"class/powercap/intel-rapl:{n}/max_energy_range_uj", "65532610987")
    sensor = find_rapl(tmp_path)
    assert sensor is not None and sensor.source == "rapl:package-0+package-1"

    def advance() -> None:
        write(tmp_path, "class/powercap/intel-rapl:0/energy_uj", "389013")  # wrapped
        write(tmp_path, "class/powercap/intel-rapl:1/energy_uj", "3000000")

    energy = metered(sensor, advance)
    assert energy.joules_per_inference == pytest.approx((610987 + 389013 + 2000000) / 1e6)


def test_rapl_subzones_are_never_added_to_their_package(tmp_path: Path) -> None:
    # Without name files only the zone's place tells a package (intel-rapl:N) from its core,
    # uncore and dram subzones (intel-rapl:N:M), whose energy it already includes.
    write(tmp_path, "class/powercap/intel-rapl:0/energy_uj", "9000000")
    write(tmp_path, "class/powercap/intel-rapl:0:0/energy_uj", "6000000")
    write(tmp_path, "class/powercap/intel-rapl:0:1/energy_uj", "1000000")
    sensor = find_rapl(tmp_path)
    assert sensor is not None and sensor.source == "rapl:intel-rapl:0"
    assert sensor.read() == 9_000_000


def test_unreadable_rapl_is_skipped_for_hwmon(tmp_path: Path) -> None:
    # Since Linux 5.10 energy_uj is root-only; what a non-root agent gets is an error.
    (tmp_path / "class/powercap/intel-rapl:0/energy_uj").mkdir(parents=True)
    write(tmp_path, "class/powercap/intel-rapl:0/name", "package-0")
    write(tmp_path, "class/hwmon/hwmon4/name", "power_meter")
    write(tmp_path, "class/hwmon/hwmon4/power1_average", "41000000")
    sensor = find_sensor(tmp_path)
    assert sensor is not None and sensor.source == "hwmon:power_meter/power1"
    assert sensor.read() == 41_000_000


# --------------------------------------------------------------------------- hwmon


def test_hwmon_power_gauge_is_averaged_over_the_run(tmp_path: Path) -> None:
    write(tmp_path, "class/hwmon/hwmon1/name", "ina3221")
    write(tmp_path, "class/hwmon/hwmon1/power1_input", "not a number")
    write(tmp_path, "class/hwmon/hwmon10/power1_input", "3000000")
    write(tmp_path, "class/hwmon/hwmon2/name", "ina219")
    write(tmp_path, "class/hwmon/hwmon2/power1_input", "2000000")
    sensor = find_sensor(tmp_path)
    assert sensor is not None and sensor.kind == POWER_UW
    assert sensor.source == "hwmon:ina219/power1"  # hwmon2 comes before hwmon10
    energy = metered(sensor)
    assert not energy.estimated
    assert energy.avg_power_w == 2.0
    after = metered(sensor, lambda: write(tmp_path, "class/hwmon/hwmon2/power1_input", "4000000"))
    assert after.avg_power_w == pytest.approx(3.0)  # (2 W + 4 W) / 2


def test_hwmon_energy_counter_beats_a_gauge_and_never_runs_backwards(tmp_path: Path) -> None:
    write(tmp_path, "class/hwmon/hwmon0/name", "ina219")
    write(tmp_path, "class/hwmon/hwmon0/power1_input", "2000000")
    counter = write(tmp_path, "class/hwmon/hwmon1/energy1_input", "5000000")
    write(tmp_path, "class/hwmon/hwmon1/name", "board")
    sensor = find_hwmon_power(tmp_path)
    assert sensor is not None and sensor.kind == ENERGY_UJ
    assert sensor.source == "hwmon:board/energy1"
    assert metered(sensor, lambda: counter.write_text("6000000\n")).joules_per_inference == 1.0
    # No range is known for hwmon counters: going backwards means the estimate, not a guess.
    backwards = metered(sensor, lambda: counter.write_text("100\n"))
    assert backwards.estimated


# --------------------------------------------------------------------------- probe order


def test_probe_order_ina3221_then_pmic_then_rapl_then_hwmon(tmp_path: Path) -> None:
    root = copy_of(tmp_path, ORIN, X86)
    write(root, "class/hwmon/hwmon9/power1_input", "7000000")
    assert find_sensor(root, pmic=recorded_pmic).source == "ina3221:VDD_IN"
    shutil.rmtree(root / "bus")
    assert find_sensor(root, pmic=recorded_pmic).source == "rpi5-pmic"
    assert find_sensor(root).source == "rapl:package-0"
    shutil.rmtree(root / "class/powercap")
    assert find_sensor(root).source == "hwmon:hwmon9/power1"


# --------------------------------------------------------------------------- garbage


def test_garbage_everywhere_is_skipped_without_raising(tmp_path: Path) -> None:
    iio = "bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    write(tmp_path, f"{iio}/rail_name_0", "POM_5V_IN")
    write(tmp_path, f"{iio}/in_power0_input", b"\xff\xfe\x00")
    write(tmp_path, f"{iio}/rail_name_1", b"\xff")  # unreadable name, no power file
    hw = "bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1"
    write(tmp_path, f"{hw}/in1_label", "VDD_IN")
    write(tmp_path, f"{hw}/in1_input", "5072")
    write(tmp_path, f"{hw}/curr1_input", "")
    write(tmp_path, "class/powercap/intel-rapl:0/energy_uj", "nan")
    write(tmp_path, "class/powercap/intel-rapl:1/energy_uj", "12 34")
    write(tmp_path, "class/hwmon/hwmon0/power1_input", "inf")
    (tmp_path / "class/hwmon/hwmon1/energy1_input").mkdir(parents=True)
    write(tmp_path, "class/thermal/thermal_zone0/temp", "hot")
    write(tmp_path, "class/thermal/thermal_zone1/temp", "")
    write(tmp_path, "class/thermal/thermal_zone2/temp", "-256000")
    write(tmp_path, "class/hwmon/hwmon2/temp1_input", b"\x80")
    garbage_pmic = "   VDD_CORE_A current(7)=lots\n   VDD_CORE_V volt(15)=0.8V\n"
    assert find_sensor(tmp_path, pmic=lambda: garbage_pmic) is None
    assert read_temperature_c(tmp_path) is None
    energy = metered(find_sensor(tmp_path))
    assert energy.estimated

    # One good file among the garbage is found.
    write(tmp_path, "class/powercap/intel-rapl:2/energy_uj", "1000")
    assert find_sensor(tmp_path).source == "rapl:intel-rapl:2"


def test_a_crashing_probe_does_not_escape_find_sensor(tmp_path: Path) -> None:
    write(tmp_path, "class/hwmon/hwmon0/power1_input", "1500000")
    pmic = raising(RuntimeError("firmware mailbox confused"))
    assert find_sensor(tmp_path, pmic=pmic).source == "hwmon:hwmon0/power1"


def test_sensor_file_vanishing_mid_run_falls_back_to_the_estimate(tmp_path: Path) -> None:
    counter = write(tmp_path, "class/powercap/intel-rapl:0/energy_uj", "1000")
    sensor = find_sensor(tmp_path)
    energy = metered(sensor, counter.unlink)
    assert energy.estimated and energy.source.startswith("estimate")


# --------------------------------------------------------------------------- temperature


@pytest.mark.parametrize(
    ("board", "celsius"),
    [
        (NANO, 34.0),  # CPU-therm; PMIC-Die's fixed 100 °C and the warmer AO-therm are ignored
        (ORIN, 47.531),  # cpu-thermal; cv*-thermal read -256 °C (disabled)
        (RPI5, 52.7),  # cpu-thermal; the RP1 I/O chip at 57.46 °C is not the CPU
        (X86, 49.0),  # x86_pkg_temp / coretemp package; the NVMe at 52.85 °C is not the CPU
    ],
    ids=["jetson-nano", "jetson-orin", "rpi5", "x86"],
)
def test_temperature_is_the_hottest_cpu_zone(board: Path, celsius: float) -> None:
    assert read_temperature_c(board) == pytest.approx(celsius)


def test_temperature_without_a_cpu_zone_is_the_hottest_zone(tmp_path: Path) -> None:
    write(tmp_path, "class/thermal/thermal_zone0/type", "acpitz")
    write(tmp_path, "class/thermal/thermal_zone0/temp", "27800")
    write(tmp_path, "class/hwmon/hwmon0/name", "nvme")
    write(tmp_path, "class/hwmon/hwmon0/temp1_input", "38850")
    write(tmp_path, "class/thermal/thermal_zone1/temp", "not a temperature")
    assert read_temperature_c(tmp_path) == pytest.approx(38.85)


def test_no_temperature_is_none(tmp_path: Path) -> None:
    assert read_temperature_c(tmp_path) is None


def test_fixture_trees_are_real_files() -> None:
    # The trees are committed data; a symlink would point into the machine running the tests.
    for board in (NANO, ORIN, RPI5, X86):
        assert board.is_dir()
        for path in board.rglob("*"):
            assert not path.is_symlink(), path
            assert os.access(path, os.R_OK)
