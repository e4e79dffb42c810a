"""The agent's configuration: one typed object, from a TOML file and/or command-line flags.

Example ``agent.toml``::

    device_id = "pi-kitchen-01"
    broker = "mqtt.example.net:8883"
    mqtt_tls = true               # with the certificate enrolment wrote (identity_dir)
    server = "https://edgeloop.example.net"   # signed metadata and downloads
    workdir = "/var/lib/edgeloop-agent"
    tags = ["site:kitchen", "camera"]
    application = "pick-and-place"  # what the device runs; the server offers only its models
    inferences = 200              # measured inferences per applied model
    telemetry_interval_s = 10.0
    endpoint_port = 8470          # local inference endpoint on 127.0.0.1 (0: any free port)
    probation_s = 30.0            # watch a new model this long before committing it
    shadow_every = 4              # re-run every 4th live request on the previous model

    profile = "pi4"               # a catalogued profile (agent/profiles/), or a table:

    # [profile]
    # name = "pi4-camera"
    # cpu_threads = 4
    # memory_budget_mb = 512
    # latency_budget_ms = 5.0
    # execution_providers = ["CPUExecutionProvider"]
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError
from .identity import Identity
from .protocol import DEVICE_ID_PATTERN, NAME_PATTERN, DeviceProfile


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    broker: str = Field(default="127.0.0.1:1883", description="MQTT broker as host:port")
    mqtt_tls: bool = Field(
        default=False,
        description="speak TLS to the broker with the enrolled certificate (identity_dir)",
    )
    server: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="control plane URL: the signed metadata every update is checked against",
    )
    workdir: Path = Path("/var/lib/edgeloop-agent")
    identity_dir: Path | None = Field(
        default=None, description="certificate, key and API token (default: <workdir>/identity)"
    )
    profile: DeviceProfile
    tags: list[str] = Field(default_factory=list, description="labels rollouts can target")
    application: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="the application this device runs, announced in hello; the server offers "
        "it only that application's models (unset: `default`, or an operator's assignment)",
    )
    inferences: int = Field(default=200, ge=1, description="measured inferences per model")
    telemetry_interval_s: float = Field(default=10.0, gt=0)
    keepalive_s: int = Field(default=15, ge=5)
    endpoint_port: int = Field(
        default=8470, ge=0, le=65535, description="local inference endpoint, 127.0.0.1 only"
    )
    probation_s: float = Field(default=30.0, ge=0, description="watch window before commit")
    shadow_every: int = Field(
        default=4, ge=1, description="shadow-run every Nth live request on the previous model"
    )
    max_error_rate: float = Field(default=0.01, ge=0, le=1, description="probation breach above")
    probation_latency_factor: float = Field(
        default=1.5, ge=1, description="live p95 may reach the budget times this in probation"
    )
    probation_min_samples: int = Field(
        default=100, ge=1, description="live requests needed before probation judges latency"
    )
    download_attempts: int = Field(default=5, ge=1)
    outbox_max_messages: int = Field(
        default=10_000, ge=10, description="offline buffer bound; the oldest are dropped first"
    )

    @field_validator("profile", mode="before")
    @classmethod
    def _catalogued(cls, value: Any) -> Any:
        """``profile = "pi4"`` names a profile of the catalogue."""
        if isinstance(value, str):
            from .profiles import PROFILES

            if value not in PROFILES:
                raise ValueError(
                    f"{value!r} is not a catalogued profile ({', '.join(PROFILES)}); "
                    "give its name or a [profile] table"
                )
            return PROFILES[value]
        return value

    @property
    def identity(self) -> Identity:
        return Identity(self.identity_dir or self.workdir / "identity")

    @property
    def trust_dir(self) -> Path:
        """Where the pinned ``root.json`` and the newest verified metadata live."""
        return self.workdir / "trust"

    @property
    def broker_host(self) -> str:
        return self.broker.rsplit(":", 1)[0]

    @property
    def broker_port(self) -> int:
        host, _, port = self.broker.rpartition(":")
        return int(port) if host and port.isdigit() else 1883


def load_toml(path: Path) -> dict[str, Any]:
    """The agent config file as a table.

    Raises:
        ConfigError: the file cannot be read or is not TOML.
    """
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read agent config {path}: {exc}") from exc


def load_config(path: Path | None, overrides: dict[str, Any]) -> AgentConfig:
    """Merge a TOML file with non-None ``overrides`` (flags win) and validate.

    Raises:
        ConfigError: unreadable TOML or invalid values; the message names the field.
    """
    data: dict[str, Any] = load_toml(path) if path is not None else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid agent config: {problems}") from None
