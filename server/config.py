"""Control-plane settings: one typed object, built once from flags or ``EDGELOOP_*`` env vars."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ByteSize, Field


class Settings(BaseModel):
    database_url: str = Field(description="SQLAlchemy URL; SQLite file by default")
    artifact_dir: Path = Field(description="where artifact files are stored, by SHA-256")
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
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
            mqtt_host=mqtt_host,
            mqtt_port=mqtt_port,
            public_url=f"http://{public_host}:{http_port}",
        )
