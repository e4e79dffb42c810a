"""An MQTT broker for the demo and the tests: Mosquitto when installed, else amqtt in-process.

Mosquitto is started on a free port with a config written next to its log; its defaults
drop QoS 1 messages when a subscriber falls behind (``max_queued_messages 1000``), so the
config lifts that cap. amqtt, the fallback, runs in a background thread's event loop.

Given a :class:`TlsListener`, Mosquitto runs as ``deploy/mosquitto-secure.conf`` sets it up:
TLS only, a client certificate from the fleet CA required, its CN as the username and the
client id, the CA's revocation list, and an ACL file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgeloop.server.pki import SERVER_COMMON_NAME, CaDir

log = logging.getLogger("edgeloop.lab.broker")

MOSQUITTO_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 0
max_inflight_messages 1000
log_dest file {log}
log_type error
log_type warning
log_type notice
"""

MOSQUITTO_TLS_CONF = """\
listener {port} 127.0.0.1
persistence false
max_queued_messages 0
max_inflight_messages 1000
log_dest file {log}
log_type error
log_type warning
log_type notice
log_type information
user {user}
cafile {tls.cafile}
certfile {tls.certfile}
keyfile {tls.keyfile}
crlfile {tls.crlfile}
tls_version tlsv1.2
require_certificate true
use_identity_as_username true
use_username_as_clientid true
allow_anonymous false
acl_file {tls.acl_file}
"""
"""The security lines match ``deploy/mosquitto-secure.conf`` (a test holds them together).
``user`` is whoever runs the lab: Mosquitto started as root otherwise drops to the
``mosquitto`` user before it reads a single key, and the lab's keys are its own, mode 0600."""


@dataclass(frozen=True)
class TlsListener:
    """The files a certificate-only listener reads (see ``edgeloop.server.pki.CaDir``)."""

    cafile: Path
    certfile: Path
    keyfile: Path
    crlfile: Path
    acl_file: Path


SHIPPED_ACL = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto.acl"
"""The ACL the product ships (a source checkout's ``deploy/``)."""


def listener_for(ca: CaDir) -> TlsListener:
    """The secure listener of ``deploy/mosquitto-secure.conf`` with ``ca``'s files."""
    return TlsListener(
        cafile=ca.cert,
        certfile=ca.issued_cert(SERVER_COMMON_NAME),
        keyfile=ca.issued_key(SERVER_COMMON_NAME),
        crlfile=ca.crl,
        acl_file=SHIPPED_ACL,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout_s: float, host: str = "127.0.0.1") -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


class Broker:
    """A running broker on ``127.0.0.1:port``; ``kind`` is "mosquitto" or "amqtt"."""

    kind: str
    port: int

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MosquittoBroker(Broker):
    kind = "mosquitto"

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        executable: str | None = None,
        tls: TlsListener | None = None,
    ) -> None:
        """``tls``: listen with TLS only, and admit only clients with a certificate from
        ``tls.cafile`` that is not on ``tls.crlfile``, each held to ``tls.acl_file``."""
        executable = executable or find_mosquitto()
        if executable is None:
            raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
        self.port = port or free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "mosquitto.log"
        self.conf_path = workdir / "mosquitto.conf"
        if tls is None:
            conf = MOSQUITTO_CONF.format(port=self.port, log=self.log_path)
        else:
            user = pwd.getpwuid(os.geteuid()).pw_name
            conf = MOSQUITTO_TLS_CONF.format(port=self.port, log=self.log_path, user=user, tls=tls)
        self.conf_path.write_text(conf)
        self.process = subprocess.Popen(
            [executable, "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if not wait_for_port(self.port, 10):
            self.stop()
            raise RuntimeError(f"mosquitto did not listen on {self.port}; see {self.log_path}")

    def reload(self) -> None:
        """SIGHUP: Mosquitto rereads its config, ACL, certificates and CRL at the top of its
        next loop, a moment later; connections already open stay open."""
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class EmbeddedBroker(Broker):
    kind = "amqtt"

    def __init__(self, port: int | None = None) -> None:
        from amqtt.broker import Broker as AmqttBroker

        self.port = port or free_port()
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        self.loop = asyncio.new_event_loop()
        self._broker = AmqttBroker(config, loop=self.loop)
        self._thread = threading.Thread(target=self.loop.run_forever, name="amqtt", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._broker.start(), self.loop).result(10)
        if not wait_for_port(self.port, 10):
            raise RuntimeError(f"embedded amqtt broker did not listen on {self.port}")

    def stop(self) -> None:
        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)


def start_broker(workdir: Path, prefer: str = "auto", secure: CaDir | None = None) -> Broker:
    """Mosquitto if it is on PATH (or ``prefer="mosquitto"``), else the embedded amqtt broker.

    ``secure``: Mosquitto in the shipped secure configuration with this CA's files (TLS,
    client certificates, the ACL, the CRL). The embedded broker cannot enforce any of it; it
    runs open and says so loudly.
    """
    if prefer == "amqtt" or (prefer == "auto" and find_mosquitto() is None):
        if secure is not None:
            log.warning(
                "the embedded MQTT broker (amqtt) cannot enforce TLS client certificates or "
                "the per-device ACL: any client can speak for any device here. Updates stay "
                "signed, but install Mosquitto (apt-get install mosquitto) for a secure fleet"
            )
        return EmbeddedBroker()
    return MosquittoBroker(workdir, tls=listener_for(secure) if secure is not None else None)
