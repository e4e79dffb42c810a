"""The device profile catalogue: one TOML file per device class, in this folder.

Every side reads profiles from here (the compressor's ``--profile``, the demo, the emulated
device classes and an agent's ``profile = "pi4"``), so one class has one set of budgets.
Budgets are for one model process on the device; the figures are typical of each class, to be
replaced by the fleet's own measured profiles as devices report.
"""

from __future__ import annotations

import json
import tomllib
from importlib import resources
from pathlib import Path

from edgeloop.agent.protocol import DeviceProfile

__all__ = ["PROFILES", "load_profile"]


def _catalogue() -> dict[str, DeviceProfile]:
    profiles = {}
    for entry in sorted(resources.files(__name__).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            profile = DeviceProfile.model_validate(tomllib.loads(entry.read_text()))
            if f"{profile.name}.toml" != entry.name:
                raise ValueError(f"profile file {entry.name} names {profile.name!r}")
            profiles[profile.name] = profile
    return profiles


PROFILES: dict[str, DeviceProfile] = _catalogue()


def load_profile(spec: str) -> DeviceProfile:
    """A catalogued profile by name, or a JSON/TOML file holding one (at the top level or
    under ``[profile]``).

    Raises:
        ValueError: neither a known name nor a readable profile file; lists the names.
    """
    if spec in PROFILES:
        return PROFILES[spec]
    path = Path(spec)
    if not path.exists():
        raise ValueError(
            f"profile {spec!r} is neither a file nor a catalogued profile ({', '.join(PROFILES)})"
        )
    text = path.read_text()
    data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    return DeviceProfile.model_validate(data.get("profile", data))
