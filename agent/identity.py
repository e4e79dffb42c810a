"""Who this device is to the fleet: its certificate for the broker, its token for the control
plane, and the root metadata it trusts, all made at enrolment.

Enrolment exchanges a one-time token an operator created (``edgeloop devices enrol ID``)
for a certificate. The device makes its own key pair and sends only a certificate signing
request, so no private key and no shared secret ever travels or sits anywhere but here. The
answer carries the fleet CA's certificate, the device's certificate, a device-scoped API token
(downloads and signed metadata) and the update repository's ``root.json``, which the device
pins: from then on it installs only what that root's keys signed.

Layout of ``identity_dir`` (default ``<workdir>/identity``; key and token 0600):
``ca.crt``, ``device.crt``, ``device.key``, ``api.token``; the pinned metadata lives in
``<workdir>/trust/root.json``.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError, TransportError
from .protocol import DEVICE_ID_PATTERN

ENROL_PATH = "/api/v1/enrol"


class EnrolRequest(BaseModel):
    """What a device sends to enrol: its id, the one-time token, and a CSR (PEM)."""

    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    # Any text up to a bound: what is not a live enrolment token is refused as such (401),
    # what is not a CSR once the token holds (422); the schema promises no more.
    token: str = Field(max_length=256, description="the one-time enrolment token (elt_...)")
    csr_pem: str = Field(max_length=16_384, description="PKCS#10 certificate signing request, PEM")


class Enrolment(BaseModel):
    """The control plane's answer: everything the device needs to be one of the fleet."""

    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    ca_cert_pem: str = Field(description="the fleet CA; the broker's certificate chains to it")
    cert_pem: str = Field(description="this device's client certificate, CN = device id")
    api_token: str = Field(description="device-scoped API token: signed metadata, downloads")
    root_json: str = Field(description="the update repository's root metadata to pin")


@dataclass(frozen=True)
class Identity:
    """The files enrolment wrote, by path; ``exists`` says whether they are all there."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def cert(self) -> Path:
        return self.root / "device.crt"

    @property
    def key(self) -> Path:
        return self.root / "device.key"

    @property
    def token_file(self) -> Path:
        return self.root / "api.token"

    def exists(self) -> bool:
        return all(p.is_file() for p in (self.ca_cert, self.cert, self.key, self.token_file))

    def token(self) -> str | None:
        """The device's API token, or None before enrolment."""
        try:
            return self.token_file.read_text().strip() or None
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read {self.token_file}: {exc}") from exc

    def mqtt_tls(self) -> MqttTls:
        """TLS with this device's certificate, for the broker.

        Raises:
            ConfigError: the device is not enrolled (a file is missing).
        """
        missing = [p.name for p in (self.ca_cert, self.cert, self.key) if not p.is_file()]
        if missing:
            raise ConfigError(
                f"MQTT over TLS needs {', '.join(missing)} in {self.root}: enrol the device "
                "first (edgeloop-agent enrol --server URL --token TOKEN)"
            )
        return MqttTls(ca=self.ca_cert, cert=self.cert, key=self.key)


class MqttTls(BaseModel):
    """A TLS client identity for paho-mqtt: the CA to trust, our certificate and key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca: Path = Field(description="CA certificate (PEM) the broker's certificate chains to")
    cert: Path = Field(description="this client's certificate (PEM)")
    key: Path = Field(description="this client's private key (PEM)")

    def apply(self, client: Any) -> None:
        """Configure a paho ``Client``: TLS 1.2 or later, the broker's certificate checked
        against ``ca`` and its host name.

        Raises:
            ConfigError: a file is missing or unreadable, or not PEM of the right kind.
        """
        for path in (self.ca, self.cert, self.key):
            if not os.access(path, os.R_OK):
                raise ConfigError(f"cannot read {path} (MQTT TLS); check the path and its owner")
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(str(self.cert), str(self.key))
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                f"{self.cert} and {self.key} are not a certificate and its key: {exc}"
            ) from exc
        client.tls_set_context(context)


def enrol(
    server: str,
    device_id: str,
    token: str,
    identity: Identity,
    trust_dir: Path,
    *,
    verify: str | bool = True,
    timeout_s: float = 30.0,
) -> Enrolment:
    """Enrol this device with the control plane at ``server`` and write what it answers.

    ``verify``: a CA bundle path to check an HTTPS server with (the fleet CA, say), True for
    the system's, False never (not for production).

    Raises:
        TransportError: the server cannot be reached, or refused (an unknown, used or
            expired token: the message says so).
        ConfigError: the answer cannot be written or its root metadata is not valid.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from .trust import pin_root

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    body = EnrolRequest(
        device_id=device_id,
        token=token,
        csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode(),
    )
    url = server.rstrip("/") + ENROL_PATH
    try:
        response = requests.post(
            url, json=body.model_dump(mode="json"), timeout=timeout_s, verify=verify
        )
    except requests.RequestException as exc:
        raise TransportError(f"cannot reach {url}: {exc}") from exc
    if response.status_code != 200:
        try:
            detail = response.json().get("detail", response.text[:200])
        except ValueError:
            detail = response.text[:200]
        raise TransportError(f"enrolment refused by {server} ({response.status_code}): {detail}")
    try:
        answer = Enrolment.model_validate_json(response.content)
    except ValidationError as exc:
        raise TransportError(f"{url} answered something that is not an enrolment: {exc}") from exc
    if answer.device_id != device_id:
        raise TransportError(f"{url} enrolled {answer.device_id!r}, not {device_id!r}")
    try:
        pin_root(trust_dir, answer.root_json.encode())
    except Exception as exc:
        raise ConfigError(
            f"the repository root metadata from {server} is not valid: {exc}"
        ) from exc
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        identity.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write(identity.key, key_pem, 0o600)
        _write(identity.token_file, answer.api_token.encode(), 0o600)
        _write(identity.cert, answer.cert_pem.encode(), 0o644)
        _write(identity.ca_cert, answer.ca_cert_pem.encode(), 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot write the device identity into {identity.root}: {exc}") from exc
    return answer


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomically, created with ``mode`` (a key is never readable by others, not even briefly)."""
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(temp, mode)
    os.replace(temp, path)
