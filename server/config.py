"""Control-plane settings: one typed object, built once from flags or ``EDGELOOP_*`` env vars."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ByteSize, Field

from edgeloop.agent.identity import MqttTls


class Settings(BaseModel):
    database_url: str = Field(description="SQLAlchemy URL; SQLite file by default")
    artifact_dir: Path = Field(description="where artifact files are stored, by SHA-256")
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_tls: MqttTls | None = Field(
        default=None, description="the server's certificate for a TLS broker (None: plain)"
    )
    tuf_dir: Path | None = Field(
        default=None,
        description="the signed-update repository (`edgeloop tuf init`); None: the server "
        "signs nothing and can send devices no model (registry-only tests)",
    )
    ca_dir: Path | None = Field(
        default=None,
        description="the fleet CA that signs device certificates at enrolment (None: no "
        "enrolment; devices get certificates by hand)",
    )
    ca_key: Path | None = Field(default=None, description="the CA key, if not in ca_dir")
    public_url: str = Field(description="base URL devices use to download artifacts")
    max_json_body: ByteSize = Field(
        default=ByteSize(1024**2),
        gt=0,
        description="largest request body of any route but an artifact upload (413 above it)",
    )
    max_artifact_size: ByteSize = Field(
        default=ByteSize(2 * 1024**3),
        gt=0,
        description="largest artifact file an upload may store (413 above it)",
    )
    metrics_per_device: int = Field(
        default=0,
        ge=0,
        description="how many devices get their own series on /metrics (by device id); 0: "
        "none, only aggregates by profile, application and model",
    )

    @classmethod
    def for_workdir(
        cls,
        workdir: Path,
        *,
        http_port: int,
        mqtt_port: int = 1883,
        mqtt_host: str = "127.0.0.1",
        public_host: str = "127.0.0.1",
    ) -> Settings:
        """Defaults for a single-host install: SQLite and artifacts under ``workdir``."""
        return cls(
            database_url=os.environ.get(
                "EDGELOOP_DATABASE_URL", f"sqlite:///{(workdir / 'edgeloop.db').resolve()}"
            ),
            artifact_dir=workdir / "artifacts",
            tuf_dir=workdir / "tuf",
            mqtt_host=mqtt_host,
            mqtt_port=mqtt_port,
            public_url=f"http://{public_host}:{http_port}",
        )
