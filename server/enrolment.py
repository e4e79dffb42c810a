"""Joining the fleet and leaving it: one-time enrolment tokens, device certificates, revocation.

An operator creates an enrolment token for a device id (``edgeloop devices enrol ID``); the
installer gives it to the device once; the device sends it with a certificate signing request
for a key it made itself (``edgeloop-agent enrol``). The token dies on first use (or after a
day), so a copied install script enrols nothing twice, and no secret shared by the fleet ever
sits on a device. The answer: the device's certificate (CN = its id, so the broker's ACL
confines it to its own topics), the fleet CA, a device-scoped API token, and the TUF root the
device pins.

Revocation (``edgeloop devices revoke ID``) is the way back out: the certificate goes on the
CRL Mosquitto loads, every API token of the device dies (no metadata, no download), the server
ignores whatever still arrives from it, and its retained desired state is cleared.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgeloop.agent.identity import Enrolment, EnrolRequest

from .auth import Principal, Sessions, TokenError, create_token, revoke_tokens, verify_token
from .pki import CaDir, CertKind, PkiError, issue, load_index, revoke
from .schemas import EnrolTokenCreated, Revoked, Role
from .tuf_repo import TufRepository

log = logging.getLogger("edgeloop.server.enrolment")

ENROL_TOKEN_LIFE = timedelta(hours=24)
"""How long an unused enrolment token stays valid."""


class EnrolmentError(ValueError):
    """The enrolment is refused; the message says why and what the installer should do.

    ``status``: the HTTP status to answer (401 for a token problem, 422 for a bad request,
    409 when the server cannot enrol at all)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def create_enrol_token(
    sessions: Sessions,
    device_id: str,
    *,
    by: Principal | None = None,
    life: timedelta = ENROL_TOKEN_LIFE,
) -> EnrolTokenCreated:
    """A one-time token that enrols ``device_id``.

    Raises:
        TokenError: ``device_id`` is not a device id.
    """
    secret, _ = create_token(
        sessions, Role.ENROL, f"enrol-{device_id}", device_id=device_id, expires_in=life, by=by
    )
    return EnrolTokenCreated(
        device_id=device_id, token=secret, expires_in_s=int(life.total_seconds())
    )


def enrol(
    sessions: Sessions, ca: CaDir | None, repo: TufRepository, request: EnrolRequest
) -> Enrolment:
    """Exchange a one-time token and a CSR for the device's identity.

    Raises:
        EnrolmentError: the CSR is not one P-256 key's, self-signed, with CN = the device id
            (422, checked first, so the token is not spent); the token is unknown, used,
            expired or for another device (401); this
            server has no CA to sign with (409).
    """
    public_key = _checked_csr(request)  # before the token: a typo must not spend it
    try:
        principal = verify_token(sessions, request.token)
    except TokenError as exc:
        raise EnrolmentError(f"enrolment token refused: {exc}", 401) from None
    if principal.role is not Role.ENROL or principal.device_id != request.device_id:
        raise EnrolmentError(
            f"that token does not enrol {request.device_id!r}; ask an operator for one "
            f"(edgeloop devices enrol {request.device_id})",
            401,
        )
    # One use: dead before anything is issued, so two racing requests cannot both enrol.
    revoke_tokens(sessions, token_id=principal.token_id, by=principal)
    if ca is None:
        raise EnrolmentError(
            "this server has no CA to sign device certificates (edgeloop serve --ca-dir)", 409
        )
    try:
        for earlier in load_index(ca).matching(request.device_id):
            if earlier.common_name == request.device_id and earlier.status() == "active":
                revoke(ca, earlier.serial)  # re-enrolment replaces the identity
        issued = issue(ca, request.device_id, CertKind.DEVICE, public_key=public_key)
    except PkiError as exc:
        raise EnrolmentError(
            f"cannot issue a certificate for {request.device_id}: {exc}", 409
        ) from None
    revoke_tokens(sessions, device_id=request.device_id, by=principal)  # the old identity's
    secret, _ = create_token(
        sessions,
        Role.DEVICE,
        f"device-{request.device_id}",
        device_id=request.device_id,
        by=principal,
    )
    log.info("enrolled %s: certificate serial %s", request.device_id, issued.serial)
    return Enrolment(
        device_id=request.device_id,
        ca_cert_pem=ca.cert.read_text(),
        cert_pem=ca.issued_cert(request.device_id).read_text(),
        api_token=secret,
        root_json=repo.metadata_bytes("root.json").decode(),
    )


def revoke_device(
    sessions: Sessions, ca: CaDir | None, device_id: str, *, by: Principal | None = None
) -> Revoked:
    """Cut ``device_id`` off: its API tokens, its certificates (CRL), in that order.

    The broker reads the CRL at start and on SIGHUP: reload it (the shipped systemd path unit
    does when ``crl.pem`` changes).
    """
    tokens = revoke_tokens(sessions, device_id=device_id, by=by)
    serials: list[str] = []
    if ca is not None:
        try:
            serials = [cert.serial for cert in revoke(ca, device_id)]
        except PkiError as exc:
            log.warning("no certificate of %s revoked: %s", device_id, exc)
    return Revoked(
        device_id=device_id,
        tokens_revoked=tokens,
        certificates_revoked=serials,
        crl=str(ca.crl) if ca is not None else None,
    )


def _checked_csr(request: EnrolRequest) -> ec.EllipticCurvePublicKey:
    try:
        csr = x509.load_pem_x509_csr(request.csr_pem.encode())
    except ValueError as exc:
        raise EnrolmentError(
            f"csr_pem is not a PEM CSR (certificate signing request): {exc}"
        ) from None
    try:
        valid = csr.is_signature_valid
    except (InvalidSignature, ValueError):
        valid = False
    if not valid:
        raise EnrolmentError("the CSR's signature does not verify with its own key")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [name.value for name in names] != [request.device_id]:
        raise EnrolmentError(
            f"the CSR's common name must be the device id {request.device_id!r}, "
            f"not {[n.value for n in names]}"
        )
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise EnrolmentError("the CSR's key must be an EC P-256 key (edgeloop-agent makes one)")
    return key
