"""Start the control plane and device agents as separate OS processes.

Used by the demo and the end-to-end tests so both exercise exactly what an operator runs:
``edgeloop serve`` and ``edgeloop-agent run``, each with its own log file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests

from edgeloop.agent.protocol import DeviceProfile
from edgeloop.lab.broker import free_port
from edgeloop.lab.emulation import Confinement, DeviceClass


class ManagedProcess:
    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        *,
        confinement: Confinement | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.confinement = confinement
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env} if env else None,
            preexec_fn=confinement.preexec if confinement else None,
        )
        if confinement is not None:
            try:
                confinement.apply(self.process.pid)
            except BaseException:
                self.kill()
                raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> int:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._closed()
        return self.process.returncode

    def kill(self) -> int:
        """SIGKILL: no handler runs, nothing is flushed (a power cut, as the process sees it)."""
        if self.alive():
            self.process.kill()
            self.process.wait()
        self._closed()
        return self.process.returncode

    def _closed(self) -> None:
        self._log.close()
        if self.confinement is not None:
            self.confinement.release()

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class ServerProcess(ManagedProcess):
    def __init__(
        self,
        workdir: Path,
        mqtt_port: int,
        port: int | None = None,
        database_url: str | None = None,
    ) -> None:
        """``database_url``: e.g. PostgreSQL; by default a SQLite file in ``workdir``."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mqtt_port = mqtt_port
        argv = [
            sys.executable,
            "-m",
            "edgeloop.cli.main",
            "serve",
            "--workdir",
            str(workdir),
            "--port",
            str(self.port),
            "--mqtt",
            f"127.0.0.1:{mqtt_port}",
        ]
        env = {"EDGELOOP_DATABASE_URL": database_url} if database_url else None
        super().__init__("server", argv, workdir / "logs" / "server.log", env)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"server exited early:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).json().get("mqtt_connected"):
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready within {timeout_s:.0f}s:\n{self.log_tail()}")


class AgentProcess(ManagedProcess):
    def __init__(
        self,
        device_id: str,
        profile: DeviceProfile,
        workdir: Path,
        mqtt_port: int,
        *,
        inferences: int = 200,
        telemetry_interval_s: float = 5.0,
        probation_s: float = 1.0,
        endpoint_port: int = 0,
        env: dict[str, str] | None = None,
        tags: list[str] | None = None,
        device_class: DeviceClass | None = None,
    ) -> None:
        """``device_class`` confines the agent to an emulated class (``lab/emulation.py``);
        the profile must announce the class's thread count."""
        if device_class is not None and profile.cpu_threads != device_class.threads:
            raise ValueError(
                f"profile {profile.name!r} has {profile.cpu_threads} threads but device class "
                f"{device_class.name} has {device_class.threads}: use device_class.profile(...)"
            )
        self.device_id = device_id
        self.workdir = workdir / "devices" / device_id
        argv = [
            sys.executable,
            "-m",
            "edgeloop.agent.cli",
            "run",
            "--device-id",
            device_id,
            "--broker",
            f"127.0.0.1:{mqtt_port}",
            "--workdir",
            str(workdir / "devices" / device_id),
            "--profile",
            json.dumps(profile.model_dump(mode="json")),
            "--inferences",
            str(inferences),
            "--telemetry-interval",
            str(telemetry_interval_s),
            "--probation",
            str(probation_s),
            "--endpoint-port",
            str(endpoint_port),
            *[arg for tag in tags or [] for arg in ("--tag", tag)],
        ]
        super().__init__(
            device_id,
            argv,
            workdir / "logs" / f"agent-{device_id}.log",
            env,
            confinement=Confinement(device_class) if device_class else None,
        )


def wait_for_devices(client: Any, count: int, processes: Sequence[ManagedProcess]) -> None:
    """Until ``count`` devices are registered (said hello) with the control plane behind
    ``client`` (an ``ApiClient``); a process that exits meanwhile fails it with its log."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if len(client.devices()) >= count:
            return
        dead = [p for p in processes if not p.alive()]
        if dead:
            raise RuntimeError(f"{dead[0].name} exited:\n{dead[0].log_tail()}")
        time.sleep(0.2)
    raise TimeoutError(f"fewer than {count} devices said hello within 60 s")
