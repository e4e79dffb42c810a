"""Built-in device profiles, by name, for the CLI and the examples.

Budgets are for one model process on the device; the figures are typical of each class, to be
replaced by the fleet's own measured profiles as devices report.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from edgeloop.agent.protocol import DeviceProfile

PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile(
            name="pi4", cpu_threads=4, memory_budget_mb=512, latency_budget_ms=20.0, arch="aarch64"
        ),
        DeviceProfile(
            name="pi-zero-2",
            cpu_threads=1,
            memory_budget_mb=256,
            latency_budget_ms=2.0,
            model_size_budget_kb=128,
            arch="aarch64",
        ),
        DeviceProfile(
            name="jetson-nano",
            cpu_threads=2,
            memory_budget_mb=1024,
            latency_budget_ms=10.0,
            arch="aarch64",
            execution_providers=[
                "TensorrtExecutionProvider",
                "CUDAExecutionProvider",
                "CPUExecutionProvider",
            ],
        ),
        DeviceProfile(
            name="sensor-hub",
            cpu_threads=1,
            memory_budget_mb=128,
            latency_budget_ms=0.5,
            model_size_budget_kb=32,
            arch="armv7l",
        ),
        DeviceProfile(
            name="host-1t", cpu_threads=1, memory_budget_mb=2048, latency_budget_ms=1000.0
        ),
    )
}


def load_profile(spec: str) -> DeviceProfile:
    """A built-in profile by name, or a JSON/TOML file holding one.

    Raises:
        ValueError: neither a known name nor a readable profile file; lists the names.
    """
    if spec in PROFILES:
        return PROFILES[spec]
    path = Path(spec)
    if not path.exists():
        raise ValueError(
            f"profile {spec!r} is neither a file nor a built-in ({', '.join(PROFILES)})"
        )
    data = (
        tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
    )
    return DeviceProfile.model_validate(data.get("profile", data))
