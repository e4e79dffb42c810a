"""The fleet's private certificate authority: who may connect to the broker, and as whom.

Mosquitto authenticates every client by its certificate and takes the certificate's common
name (CN) as the MQTT username (``use_identity_as_username``); the ACL then lets a device
touch only ``edgeloop/v2/devices/<its CN>/...``. So a device's CN *is* its device id, and
whoever holds the CA key decides every identity on the broker.

A CA directory (:class:`CaDir`) holds::

    ca.crt            the CA certificate; brokers and clients trust it (cafile)
    ca.key            the CA's private key, mode 0600; may live elsewhere (``ca_key=``)
    crl.pem           the revocation list Mosquitto loads (crlfile), signed by the CA
    index.json        every certificate issued here (:class:`CaIndex`)
    certs/<CN>.crt    an issued certificate
    certs/<CN>.key    its private key, mode 0600, to be installed on its owner

Invariants:
- The CA key is never written or read with group or other permissions; a key file that
  others can read is refused, not used, because a copy of it is a forged fleet.
- ``crl.pem`` always exists and lists every revoked serial in the index: Mosquitto refuses
  to start with ``crlfile`` pointing at nothing, and with CRL checking on, a client whose
  CA has no CRL is refused.
- Each new CRL has a later ``thisUpdate`` than the one it replaces, to the second. On a
  reload Mosquitto adds the new CRL next to the old ones it holds, and OpenSSL consults the
  one with the latest ``thisUpdate``; between two of the same second it takes whichever it
  holds first, which may be the old one.
- A CN names one kind of identity forever: a device can never be issued the server's
  name (the ACL grants that name every device topic), nor the server a device's.
- The index and every file are replaced atomically; a lock file serialises writers.

Nothing here talks to the network or to Mosquitto: reloading the broker after a
revocation is the operator's step (``systemctl reload mosquitto``).
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import stat
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeloop.agent.protocol import DEVICE_ID_PATTERN
from edgeloop.agent.states import fsync_dir, write_atomic

__all__ = [
    "CA_VALIDITY",
    "LEAF_VALIDITY",
    "SERVER_COMMON_NAME",
    "SERVER_HOSTS",
    "CaDir",
    "CaIndex",
    "CertKind",
    "IssuedCert",
    "PkiError",
    "init_ca",
    "issue",
    "load_index",
    "revoke",
]

SERVER_COMMON_NAME = "edgeloop-server"
"""The control plane's identity; ``deploy/mosquitto.acl`` grants this user every device topic."""
SERVER_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")
"""Names a server certificate answers to unless others are given (subjectAltName)."""
CA_VALIDITY = timedelta(days=3652)
LEAF_VALIDITY = timedelta(days=1826)
"""Five years: nothing renews device certificates yet, and an expired one takes a device off
the broker until someone reaches it."""
CLOCK_SKEW = timedelta(hours=1)
"""Certificates start this long before they are made: a device whose clock lags (no RTC,
NTP not yet synced) must not refuse the broker's certificate, nor the broker its own."""
MAX_INDEX_BYTES = 64 * 1024 * 1024
"""index.json larger than this is not read: some 200,000 certificates, far past a fleet."""

_COMMON_NAME = re.compile(DEVICE_ID_PATTERN)
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


class PkiError(Exception):
    """The CA directory cannot do what was asked; the message says why and what to do."""


class CertKind(StrEnum):
    SERVER = "server"  # the control plane and the broker: server and client auth, with SANs
    DEVICE = "device"  # one device: client auth only, CN = device id


class IssuedCert(BaseModel):
    """One certificate this CA signed, as the index records it."""

    model_config = ConfigDict(extra="forbid")

    serial: str = Field(pattern=r"^[0-9a-f]{1,40}$", description="hex, lower case")
    common_name: str = Field(pattern=DEVICE_ID_PATTERN)
    kind: CertKind
    not_before: datetime
    not_after: datetime
    revoked_at: datetime | None = None

    def status(self, now: datetime | None = None) -> Literal["active", "revoked", "expired"]:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.not_after <= (now or datetime.now(UTC)) else "active"


class CaIndex(BaseModel):
    """``index.json``: what the CA issued and revoked; ``crl.pem`` is derived from it."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    crl_number: int = Field(default=0, ge=0, description="of the latest crl.pem")
    certs: list[IssuedCert] = Field(default_factory=list, description="oldest first")

    def matching(self, name_or_serial: str) -> list[IssuedCert]:
        """Certificates whose CN is ``name_or_serial``, or whose serial it is (hex, ``0x``
        optional). A CN wins: a device id that happens to look like a serial names the device."""
        by_name = [cert for cert in self.certs if cert.common_name == name_or_serial]
        if by_name:
            return by_name
        serial = name_or_serial.lower().removeprefix("0x").lstrip("0")
        return [cert for cert in self.certs if cert.serial.lstrip("0") == serial]


@dataclass(frozen=True)
class CaDir:
    """Where a CA's files live. ``key`` defaults to ``root/ca.key``; point it elsewhere (an
    offline disk) to keep the CA key off the machine that runs the broker."""

    root: Path
    key: Path

    @classmethod
    def at(cls, root: Path, ca_key: Path | None = None) -> CaDir:
        return cls(root, ca_key or root / "ca.key")

    @property
    def cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def crl(self) -> Path:
        return self.root / "crl.pem"

    @property
    def index(self) -> Path:
        return self.root / "index.json"

    def issued_cert(self, common_name: str) -> Path:
        return self.root / "certs" / f"{common_name}.crt"

    def issued_key(self, common_name: str) -> Path:
        return self.root / "certs" / f"{common_name}.key"


def init_ca(ca: CaDir, common_name: str = "edgeloop fleet CA") -> x509.Certificate:
    """Create a CA in ``ca.root``: a P-256 key, a self-signed certificate valid for
    :data:`CA_VALIDITY`, an empty CRL and an empty index.

    Raises:
        PkiError: ``ca.root`` already holds a CA certificate or ``ca.key`` exists (a second
            CA would silently orphan every certificate the first one issued).
    """
    ca.root.mkdir(parents=True, exist_ok=True, mode=0o750)
    ca.key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _locked(ca):
        for existing in (ca.cert, ca.key):
            if existing.exists():
                raise PkiError(
                    f"{existing} already exists: this is a CA already. Use it, or choose an "
                    "empty directory for a new one (devices trust one CA at a time)."
                )
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.now(UTC)
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(ca.key, _key_pem(key))
        write_atomic(ca.cert, cert.public_bytes(serialization.Encoding.PEM))
        index = CaIndex()
        _write_crl(ca, key, cert, index)
        _write_index(ca, index)
    return cert


def issue(
    ca: CaDir,
    common_name: str,
    kind: CertKind,
    *,
    hosts: Sequence[str] = SERVER_HOSTS,
    validity: timedelta = LEAF_VALIDITY,
    public_key: ec.EllipticCurvePublicKey | None = None,
) -> IssuedCert:
    """Issue a P-256 key and certificate for ``common_name`` into ``certs/``.

    With ``public_key`` (from a device's signing request at enrolment) only the certificate is
    made: the private key was born on the device and never leaves it.

    A device certificate is for TLS client auth only; its CN is the device id, which the
    broker's ACL turns into the only topics it may use. A server certificate serves both
    ends of the control plane's TLS (the broker's listener and the server's MQTT client),
    answering to ``hosts`` (IP addresses or DNS names).

    Raises:
        PkiError: ``common_name`` is not a valid device id (:data:`DEVICE_ID_PATTERN`), it
            already names an identity of the other kind, it has an active certificate
            (revoke that first), ``hosts`` is empty for a server, the validity would outlive
            the CA or is not positive, a host is neither an IP address nor a DNS name, or
            the CA key is missing or readable by others.
    """
    if not _COMMON_NAME.match(common_name):
        raise PkiError(
            f"{common_name!r} cannot be a certificate name: use 1-64 letters, digits, '_', "
            "'.', '-', starting with a letter or digit (a device id)"
        )
    if kind is CertKind.DEVICE and common_name == SERVER_COMMON_NAME:
        raise PkiError(
            f"{SERVER_COMMON_NAME!r} is the control plane's name and may read and write "
            "every device's topics; choose another device id"
        )
    if kind is CertKind.SERVER and not hosts:
        raise PkiError("a server certificate needs at least one host name or IP address")
    if validity <= timedelta(0):
        raise PkiError(f"a validity of {validity.days} days is none; ask for at least one day")
    with _locked(ca):
        key, ca_cert = _load_ca(ca)
        index = load_index(ca)
        for earlier in index.certs:
            if earlier.common_name != common_name:
                continue
            if earlier.kind is not kind:
                raise PkiError(
                    f"{common_name!r} already names a {earlier.kind} identity (serial "
                    f"{earlier.serial}); a name never changes kind, so choose another"
                )
            if earlier.status() == "active":
                raise PkiError(
                    f"{common_name!r} has an active certificate (serial {earlier.serial}, "
                    f"until {earlier.not_after:%Y-%m-%d}); revoke it first: edgeloop ca "
                    f"revoke {common_name}"
                )
        now = datetime.now(UTC)
        not_after = now + validity
        if not_after > ca_cert.not_valid_after_utc:
            raise PkiError(
                f"a certificate until {not_after:%Y-%m-%d} would outlive the CA (until "
                f"{ca_cert.not_valid_after_utc:%Y-%m-%d}); ask for a shorter validity"
            )
        leaf_key = ec.generate_private_key(ec.SECP256R1()) if public_key is None else None
        leaf_public = public_key or leaf_key.public_key()  # type: ignore[union-attr]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(leaf_public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                critical=False,
            )
        )
        if kind is CertKind.SERVER:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            ).add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        cert = builder.sign(key, hashes.SHA256())
        ca.issued_cert(common_name).parent.mkdir(exist_ok=True, mode=0o750)
        if leaf_key is not None:
            _write_private(ca.issued_key(common_name), _key_pem(leaf_key))
        write_atomic(ca.issued_cert(common_name), cert.public_bytes(serialization.Encoding.PEM))
        issued = IssuedCert(
            serial=f"{cert.serial_number:x}",
            common_name=common_name,
            kind=kind,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )
        index.certs.append(issued)
        _write_index(ca, index)
    return issued


def revoke(ca: CaDir, name_or_serial: str) -> list[IssuedCert]:
    """Revoke the certificates ``name_or_serial`` names (a CN, or one serial) and rewrite
    ``crl.pem``. Returns those newly revoked; empty when all were revoked already.

    Mosquitto reads ``crl.pem`` at start and on SIGHUP only, and a reload refuses new
    connections of a revoked certificate without closing the ones already open.

    Raises:
        PkiError: nothing in the index matches, or the CA key is missing or readable by
            others.
    """
    with _locked(ca):
        key, ca_cert = _load_ca(ca)
        index = load_index(ca)
        matches = index.matching(name_or_serial)
        if not matches:
            raise PkiError(
                f"no certificate named {name_or_serial!r} (CN or serial) in {ca.index}; "
                "see edgeloop ca ls"
            )
        fresh = [cert for cert in matches if cert.revoked_at is None]
        if not fresh:
            return []
        now = datetime.now(UTC)
        for cert in fresh:
            cert.revoked_at = now
        _write_crl(ca, key, ca_cert, index)
        _write_index(ca, index)
    return fresh


def load_index(ca: CaDir) -> CaIndex:
    """Read ``index.json``.

    Raises:
        PkiError: it is missing (no CA here), too large, or not a valid index.
    """
    try:
        with ca.index.open("rb") as handle:
            data = handle.read(MAX_INDEX_BYTES + 1)
    except FileNotFoundError:
        raise PkiError(
            f"no CA in {ca.root} ({ca.index} missing); create one: edgeloop ca init"
        ) from None
    if len(data) > MAX_INDEX_BYTES:
        raise PkiError(f"{ca.index} is over {MAX_INDEX_BYTES} bytes; it is not an index")
    try:
        return CaIndex.model_validate_json(data)
    except ValidationError as exc:
        raise PkiError(
            f"{ca.index} is not a valid CA index ({exc.error_count()} errors, first: "
            f"{exc.errors()[0]['msg']}); restore it from a backup"
        ) from None


# ---------------------------------------------------------------------------- internals


def _load_ca(ca: CaDir) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        mode = ca.key.stat().st_mode
    except FileNotFoundError:
        raise PkiError(
            f"the CA key {ca.key} is not there; mount the disk that holds it, or pass its "
            "path (--ca-key / EDGELOOP_CA_KEY)"
        ) from None
    if stat.S_IMODE(mode) & 0o077:
        raise PkiError(
            f"the CA key {ca.key} is readable by others (mode {stat.S_IMODE(mode):04o}); "
            f"anyone who copied it can forge any device. Run chmod 600 {ca.key} and consider "
            "whether to start a new CA"
        )
    try:
        key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise PkiError(f"cannot read the CA in {ca.root}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise PkiError(f"{ca.key} is not the key of {ca.cert}; pass the matching --ca-key")
    return key, cert


def _write_crl(
    ca: CaDir, key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, index: CaIndex
) -> None:
    """Sign a CRL of every revoked certificate in ``index``, valid until the CA expires: the
    broker refuses every client once its CRL is past ``nextUpdate``, and nothing here
    refreshes it on a schedule."""
    this_update = _after_previous_crl(ca)
    index.crl_number += 1
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(this_update)
        .next_update(ca_cert.not_valid_after_utc)
        .add_extension(x509.CRLNumber(index.crl_number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
    )
    for cert in index.certs:
        if cert.revoked_at is not None:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(cert.serial, 16))
                .revocation_date(cert.revoked_at)
                .build()
            )
    crl = builder.sign(key, hashes.SHA256())
    write_atomic(ca.crl, crl.public_bytes(serialization.Encoding.PEM))


def _after_previous_crl(ca: CaDir) -> datetime:
    """Now, to the second, and later than the current CRL's thisUpdate (see the module's
    invariants); waits out the rest of the second when the last CRL was signed in this one."""
    now = datetime.now(UTC).replace(microsecond=0)
    try:
        previous = x509.load_pem_x509_crl(ca.crl.read_bytes()).last_update_utc
    except (OSError, ValueError):
        return now
    while now <= previous:
        next_second = previous + timedelta(seconds=1)
        time.sleep(max(0.05, (next_second - datetime.now(UTC)).total_seconds()))
        now = datetime.now(UTC).replace(microsecond=0)
    return now


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs and nothing else; a leaf signs its TLS handshakes."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not _HOST_NAME.match(host):
                raise PkiError(
                    f"{host!r} is neither an IP address nor a DNS name; give the name or "
                    "address clients use to reach the broker"
                ) from None
            names.append(x509.DNSName(host.lower()))
    return names


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted: a device or broker must read its key unattended at boot.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    """Like :func:`write_atomic`, but the file is 0600 from its first byte: a key must never
    exist, even as a temp file, under the process's umask."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _write_index(ca: CaDir, index: CaIndex) -> None:
    write_atomic(ca.index, index.model_dump_json(indent=1).encode())


@contextmanager
def _locked(ca: CaDir) -> Iterator[None]:
    """One writer at a time: two ``issue`` calls racing would each drop the other's entry."""
    with (ca.root / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
