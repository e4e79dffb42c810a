"""A throwaway PostgreSQL cluster for the test suite: initdb in a temp dir, a free port,
trust auth on 127.0.0.1 only, stopped (immediate) at the end.

PostgreSQL refuses to run as root, so as root the cluster belongs to ``nobody``. Nothing here
touches a PostgreSQL the machine may already run.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from edgeloop.lab.broker import free_port


def find_bin(name: str) -> str | None:
    """``initdb``/``pg_ctl`` on PATH, else Debian's versioned directory (newest first)."""
    found = shutil.which(name)
    if found:
        return found
    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        candidate = Path(directory) / name
        if candidate.exists():
            return str(candidate)
    return None


def unavailable_reason() -> str | None:
    missing = [name for name in ("initdb", "pg_ctl") if find_bin(name) is None]
    if missing:
        return (
            f"PostgreSQL tests skipped: {', '.join(missing)} not found "
            "(apt-get install postgresql; .ci/run does)"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "PostgreSQL tests skipped: psycopg is not installed (pip install 'psycopg[binary]')"
    return None


class PostgresCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.sockets = root / "sockets"
        self.port = free_port()
        self.user = "edgeloop"
        self._run_as = "nobody" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/postgres"

    def _run(self, argv: list[str]) -> None:
        result = subprocess.run(
            argv, capture_output=True, text=True, user=self._run_as, cwd=self.root, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed:\n{result.stdout}{result.stderr}")

    def start(self) -> PostgresCluster:
        self.sockets.mkdir(parents=True)
        if self._run_as:
            shutil.chown(self.root, self._run_as)
            shutil.chown(self.sockets, self._run_as)
        self._run(
            [find_bin("initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust",
             "--encoding=UTF8", "--no-sync"]
        )  # fmt: skip
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.sockets} -c fsync=off -c timezone=UTC"
        )
        self._run(
            [find_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-t", "60",
             "-l", str(self.root / "postgres.log"), "start"]
        )  # fmt: skip
        return self

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run(
                [find_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                capture_output=True,
                user=self._run_as,
                cwd=self.root,
                timeout=60,
            )

    def create_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres", autocommit=True
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{name}"
