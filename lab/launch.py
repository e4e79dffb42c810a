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

from edgeloop.agent.identity import Identity, MqttTls
from edgeloop.agent.protocol import DeviceProfile
from edgeloop.lab.broker import free_port
from edgeloop.lab.emulation import Confinement, DeviceClass
from edgeloop.server.auth import OPERATOR_TOKEN_FILE
from edgeloop.server.client import ApiClient
from edgeloop.server.pki import SERVER_COMMON_NAME, CaDir, CertKind, init_ca, issue
from edgeloop.server.tuf_repo import Expiry, TufRepository

OFFLINE_ROOT_KEY = "offline/tuf-root.key"
"""Where the lab keeps a server's TUF root key: in its workdir, outside the repository (a real
install keeps it on an offline disk)."""


def fleet_ca(root: Path) -> CaDir:
    """The fleet CA under ``root`` (made on first use) with the server's certificate, which the
    broker's TLS listener and the control plane's MQTT client share."""
    ca = CaDir.at(root)
    if not ca.cert.exists():
        init_ca(ca)
        issue(ca, SERVER_COMMON_NAME, CertKind.SERVER)
    return ca


def server_mqtt_tls(ca: CaDir) -> MqttTls:
    return MqttTls(
        ca=ca.cert,
        cert=ca.issued_cert(SERVER_COMMON_NAME),
        key=ca.issued_key(SERVER_COMMON_NAME),
    )


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


_operator_tokens: dict[str, str] = {}
"""The operator token of each control plane this process started, by URL."""


def operator_headers(url: str) -> dict[str, str]:
    """The operator's ``Authorization`` header for the control plane at ``url``, if this
    process started it (a :class:`ServerProcess`, once ready; else none): for helpers that
    are handed only a server's URL."""
    return _authorization(_operator_tokens.get(url.rstrip("/")))


def _authorization(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class ServerProcess(ManagedProcess):
    def __init__(
        self,
        workdir: Path,
        mqtt_port: int,
        port: int | None = None,
        database_url: str | None = None,
        *,
        anonymous_downloads: bool = False,
        ca: CaDir | None = None,
        mqtt_tls: bool = False,
        tuf_expiry: Expiry | None = None,
    ) -> None:
        """``database_url``: e.g. PostgreSQL; by default a SQLite file in ``workdir``.

        As an operator sets one up: a TUF repository in ``workdir/tuf`` (``edgeloop tuf
        init``, the root key kept apart in ``workdir/offline``; ``tuf_expiry`` shortens the
        metadata's lives), and the fleet CA ``ca`` (default: ``workdir/pki``) that signs
        device certificates at enrolment. ``mqtt_tls``: the broker is the secure one, so the
        server speaks TLS to it with the CA's ``edgeloop-server`` certificate.

        Every route but ``/healthz`` needs a token: :meth:`wait_ready` reads the operator token
        the server writes on its first start into :attr:`token`. ``anonymous_downloads``:
        ``edgeloop serve --anonymous-downloads``.
        """
        self.ca = ca or fleet_ca(workdir / "pki")
        if not (workdir / "tuf" / "repository.json").exists():
            TufRepository.init(workdir / "tuf", workdir / OFFLINE_ROOT_KEY, expiry=tuf_expiry)
        tls = server_mqtt_tls(self.ca)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mqtt_port = mqtt_port
        self.workdir = workdir
        self.token: str | None = None
        """The operator token (``<workdir>/operator.token``), once :meth:`wait_ready` read it."""
        self.http = requests.Session()
        """For raw requests as the operator (it carries :attr:`headers` once ready)."""
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
            "--ca-dir",
            str(self.ca.root),
            *(["--anonymous-downloads"] if anonymous_downloads else []),
            *(
                ["--mqtt-ca", str(tls.ca), "--mqtt-cert", str(tls.cert), "--mqtt-key", str(tls.key)]
                if mqtt_tls
                else []
            ),
        ]
        env = {"EDGELOOP_DATABASE_URL": database_url} if database_url else None
        super().__init__("server", argv, workdir / "logs" / "server.log", env)

    @property
    def headers(self) -> dict[str, str]:
        """The operator's ``Authorization`` header, for requests made without :meth:`client`
        (empty before :meth:`wait_ready`)."""
        return _authorization(self.token)

    @property
    def cli_args(self) -> list[str]:
        """``--server URL --token TOKEN``: an ``edgeloop`` command acting as the operator."""
        return ["--server", self.url, *(["--token", self.token] if self.token else [])]

    def client(self) -> ApiClient:
        """A REST client that acts as the operator."""
        return ApiClient(self.url, token=self.token)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"server exited early:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).json().get("mqtt_connected"):
                    self.token = _operator_tokens[self.url] = self._operator_token()
                    self.http.headers.update(self.headers)
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready within {timeout_s:.0f}s:\n{self.log_tail()}")

    def enrol(self, device_id: str, device_workdir: Path) -> Identity:
        """Enrol a device as an installer does: an operator's one-time token, then
        ``edgeloop-agent enrol`` on the device (its own key, a CSR, the pinned root)."""
        token = self.client().enrolment_token(device_id).token
        enrolled = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgeloop.agent.cli",
                "enrol",
                "--device-id",
                device_id,
                "--server",
                self.url,
                "--token",
                token,
                "--workdir",
                str(device_workdir),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if enrolled.returncode != 0:
            raise RuntimeError(f"enrolling {device_id} failed: {enrolled.stderr.strip()}")
        return Identity(device_workdir / "identity")

    def _operator_token(self) -> str:
        """The token the server wrote on its first start (it is written before the server
        listens, so a server that answers has written it)."""
        path = self.workdir / OPERATOR_TOKEN_FILE
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            raise RuntimeError(
                f"the server answers but wrote no {path}: its database held an operator token "
                "already (another workdir's?); give it a fresh database, or create a token "
                "with `edgeloop tokens create`"
            ) from None


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
        server: ServerProcess | None = None,
        mqtt_tls: bool = False,
        application: str | None = None,
    ) -> None:
        """``application``: what the device's config declares it runs.

        ``device_class`` confines the agent to an emulated class (``lab/emulation.py``);
        the profile must announce the class's thread count.

        ``server``: the control plane the device trusts; the device is enrolled with it
        first (once per workdir). Without one the agent trusts nothing and refuses every
        update on the ``signature`` gate. ``mqtt_tls``: to the secure broker, with the
        certificate enrolment gave it."""
        if device_class is not None and profile.cpu_threads != device_class.threads:
            raise ValueError(
                f"profile {profile.name!r} has {profile.cpu_threads} threads but device class "
                f"{device_class.name} has {device_class.threads}: use device_class.profile(...)"
            )
        self.device_id = device_id
        self.workdir = workdir / "devices" / device_id
        if server is not None and not Identity(self.workdir / "identity").exists():
            server.enrol(device_id, self.workdir)
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
            *(["--server", server.url] if server is not None else []),
            *(["--mqtt-tls"] if mqtt_tls else []),
            *(["--application", application] if application else []),
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
