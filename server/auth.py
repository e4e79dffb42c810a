"""Who may call the REST API, and the record of what they changed through it.

A caller presents a bearer token; the token's :class:`Role` says what it may do (operator:
everything; viewer: every read; device: artifact downloads and its own device's records).
``api/deps.py`` turns this into the routes' dependencies; this module owns the tokens and the
audit trail, on the database, so ``edgeloop tokens`` and the server share one implementation.

Invariants:
- A token's secret (``elt_`` and 43 URL-safe characters: 256 random bits) is shown once, when
  it is created, and never stored: the table keeps its SHA-256 (what a presented token is
  looked up by) and its first characters, for people to tell tokens apart.
- A token is valid until it is revoked or its expiry passes; nothing else changes that.
- A device token is bound to one device id, set when it is created.
- Every change made through the API leaves an :class:`~edgeloop.server.models.AuditEntry`,
  written in the change's own transaction where the route holds one.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from edgeloop.agent.protocol import DEVICE_ID_PATTERN

from .models import ApiToken, AuditEntry
from .schemas import AuditEntryPublic, Page, Role, UtcDatetime
from .times import as_utc, utcnow

__all__ = [
    "BOOTSTRAP_TOKEN_NAME",
    "DEVICE_BOUND_ROLES",
    "OPEN_ROUTES",
    "TOKEN_NAME_PATTERN",
    "ApiTokenPublic",
    "Principal",
    "Role",
    "TokenError",
    "authenticate",
    "bootstrap_operator_token",
    "create_token",
    "has_operator_token",
    "list_audit",
    "list_tokens",
    "record_audit",
    "revoke_tokens",
    "routes",
    "verify_token",
    "write_routes",
]

log = logging.getLogger("edgeloop.server.auth")

Sessions = sessionmaker[Session]

SECRET_PREFIX = "elt_"
"""Every secret starts so: a leaked one is recognisable (secret scanners, logs)."""
SECRET_BYTES = 32
PREFIX_CHARS = len(SECRET_PREFIX) + 8
"""What the table keeps of a secret for display: 48 of its 256 bits, too few to help a guess."""
MAX_SECRET_CHARS = 128
"""A presented token longer than any secret is refused before it is hashed."""
LAST_USED_RESOLUTION = timedelta(minutes=1)
"""``last_used_at`` is written at most this often per token: a write on every request would
make every read a write transaction (and SQLite has one writer at a time)."""

TOKEN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$"
"""A token's name: who holds it (``grafana``, ``ci-deploy``, ``alice@example.net``)."""
BOOTSTRAP_TOKEN_NAME = "bootstrap"
OPERATOR_TOKEN_FILE = "operator.token"
"""Where ``edgeloop serve`` writes the first operator token, in its workdir."""

DEVICE_BOUND_ROLES = frozenset({Role.DEVICE, Role.ENROL})
"""Roles whose tokens act for one device, named when the token is created."""

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
OPEN_ROUTES = frozenset({("GET", "/healthz"), ("POST", "/api/v1/enrol")})
"""The operations anyone may call, without a token: each must say nothing a token guards
(``/healthz``: liveness for load balancers), or carry its own credential (``/api/v1/enrol``:
the one-time enrolment token in its body, spent on first use). Every other operation
declares the bearer scheme in the OpenAPI document, and the tests hold the document to this
list."""


class TokenError(ValueError):
    """A token cannot be created as asked, or a presented one is refused (unknown, revoked,
    expired, malformed); the message says which and what to do."""


class Principal(BaseModel):
    """Who is calling: the token a request presented, as the routes see it."""

    model_config = ConfigDict(frozen=True)

    token_id: int
    name: str
    role: Role
    device_id: str | None = Field(default=None, description="a device token: its device")


class ApiTokenPublic(BaseModel):
    """A token as ``edgeloop tokens ls`` shows it: everything but the secret."""

    id: int
    name: str
    role: Role
    device_id: str | None
    prefix: str = Field(description="the secret's first characters")
    created_at: UtcDatetime
    expires_at: UtcDatetime | None
    revoked_at: UtcDatetime | None
    last_used_at: UtcDatetime | None

    def status(self, now: datetime | None = None) -> str:
        """``active``, ``revoked`` or ``expired``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or utcnow()):
            return "expired"
        return "active"


def _public(row: ApiToken) -> ApiTokenPublic:
    return ApiTokenPublic.model_validate(row, from_attributes=True)


def _digest(secret: str) -> str:
    """SHA-256, hex. A fast hash is right for these secrets, unlike passwords: each is 256
    random bits, so no dictionary or brute force reaches one from its hash, and a slow hash
    (bcrypt, Argon2) would only cost every request its time. A fast, unsalted hash also lets
    a presented token be found by an index lookup, which leaks nothing by its timing."""
    return hashlib.sha256(secret.encode()).hexdigest()


# --------------------------------------------------------------------------- tokens


def create_token(
    sessions: Sessions,
    role: Role,
    name: str,
    *,
    device_id: str | None = None,
    expires_in: timedelta | None = None,
    by: Principal | None = None,
) -> tuple[str, ApiTokenPublic]:
    """Create a token; return its secret (shown this once) and what the table keeps.

    ``by``: who created it, for the audit trail (None: on the database, not through the API).

    Raises:
        TokenError: ``name`` is not a token name, a device token (a role of
            :data:`DEVICE_BOUND_ROLES`) without a valid ``device_id`` or another role with
            one, or an ``expires_in`` not in the future.
    """
    role = Role(role)
    if not re.match(TOKEN_NAME_PATTERN, name):
        raise TokenError(
            f"{name!r} is not a token name: 1 to 64 letters, digits and _.@+- "
            "(e.g. grafana, ci-deploy), starting with a letter or digit"
        )
    if role in DEVICE_BOUND_ROLES:
        if device_id is None or not re.match(DEVICE_ID_PATTERN, device_id):
            raise TokenError(
                f"a {role} token is bound to one device: give its id (--device ID), "
                f"{'got ' + repr(device_id) if device_id else 'none given'}"
            )
    elif device_id is not None:
        raise TokenError(
            f"only a device token is bound to a device; a {role} token acts for no device "
            "(leave out --device, or use --role device)"
        )
    if expires_in is not None and expires_in <= timedelta(0):
        raise TokenError(f"a token must expire in the future, not in {expires_in}")
    secret = SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
    now = utcnow()
    with sessions.begin() as db:
        row = ApiToken(
            name=name,
            role=role.value,
            device_id=device_id,
            prefix=secret[:PREFIX_CHARS],
            token_sha256=_digest(secret),
            created_at=now,
            expires_at=now + expires_in if expires_in is not None else None,
        )
        db.add(row)
        db.flush()
        public = _public(row)
        record_audit(
            db,
            by,
            "token.create",
            f"token:{row.id}",
            {
                "name": name,
                "role": role.value,
                "device_id": device_id,
                "prefix": public.prefix,
                "expires_at": public.expires_at.isoformat() if public.expires_at else None,
            },
        )
    return secret, public


def revoke_tokens(
    sessions: Sessions,
    *,
    token_id: int | None = None,
    device_id: str | None = None,
    by: Principal | None = None,
) -> int:
    """Revoke one token (``token_id``) or every token of a device (``device_id``, e.g. a
    device taken out of the fleet); return how many were live and are revoked now.

    Raises:
        TokenError: neither or both of ``token_id`` and ``device_id`` given.
        LookupError: no token has id ``token_id``.
    """
    if (token_id is None) == (device_id is None):
        raise TokenError("revoke one token (its id) or every token of a device (its id)")
    now = utcnow()
    with sessions.begin() as db:
        if token_id is not None:
            row = db.get(ApiToken, token_id)
            if row is None:
                raise LookupError(f"no token {token_id}; `edgeloop tokens ls` lists them")
            rows = [row]
            target = f"token:{token_id}"
        else:
            rows = list(db.scalars(select(ApiToken).where(ApiToken.device_id == device_id)))
            target = f"device:{device_id}"
        revoked = [row for row in rows if row.revoked_at is None]
        for row in revoked:
            row.revoked_at = now
        if revoked:
            detail = {"revoked": [row.id for row in revoked], "names": [r.name for r in revoked]}
            record_audit(db, by, "token.revoke", target, detail)
    return len(revoked)


def list_tokens(sessions: Sessions) -> list[ApiTokenPublic]:
    """Every token, revoked and expired ones included, oldest first."""
    with sessions() as db:
        return [_public(row) for row in db.scalars(select(ApiToken).order_by(ApiToken.id))]


def verify_token(sessions: Sessions, secret: str) -> Principal:
    """Who ``secret`` belongs to; notes its use (at most once a minute per token).

    Raises:
        TokenError: not a token's secret, unknown to this server, revoked or expired; the
            message names the token where it is known and says what to do.
    """
    if len(secret) > MAX_SECRET_CHARS or not secret.startswith(SECRET_PREFIX):
        raise TokenError(
            f"that is not an edgeloop API token (they begin with {SECRET_PREFIX!r}); "
            "ask an operator for one (`edgeloop tokens create`)"
        )
    now = utcnow()
    with sessions.begin() as db:
        row = db.scalar(select(ApiToken).where(ApiToken.token_sha256 == _digest(secret)))
        if row is None:
            raise TokenError(
                "this token is not known to this server (mistyped, or another server's); "
                "ask an operator for one (`edgeloop tokens create`)"
            )
        token = f"the token {row.name!r} ({row.prefix}…)"
        if row.revoked_at is not None:
            raise TokenError(
                f"{token} was revoked at {as_utc(row.revoked_at):%Y-%m-%d %H:%M} UTC; "
                "ask an operator for a new one"
            )
        if row.expires_at is not None and as_utc(row.expires_at) <= now:
            raise TokenError(
                f"{token} expired at {as_utc(row.expires_at):%Y-%m-%d %H:%M} UTC; "
                "ask an operator for a new one"
            )
        if row.last_used_at is None or now - as_utc(row.last_used_at) >= LAST_USED_RESOLUTION:
            row.last_used_at = now
        return Principal(
            token_id=row.id, name=row.name, role=Role(row.role), device_id=row.device_id
        )


def authenticate(sessions: Sessions, secret: str) -> Principal | None:
    """Who ``secret`` belongs to; None for anything :func:`verify_token` refuses."""
    try:
        return verify_token(sessions, secret)
    except TokenError:
        return None


def has_operator_token(sessions: Sessions) -> bool:
    """Whether some operator token is neither revoked nor expired."""
    now = utcnow()
    with sessions() as db:
        live = db.scalars(
            select(ApiToken.expires_at).where(
                ApiToken.role == Role.OPERATOR.value, ApiToken.revoked_at.is_(None)
            )
        )
        return any(expires is None or as_utc(expires) > now for expires in live)


def bootstrap_operator_token(sessions: Sessions, workdir: Path) -> Path | None:
    """With no live operator token, create one named ``bootstrap`` and write its secret to
    ``workdir/operator.token`` (mode 0600); return that path, or None if there was one.

    The first operator token cannot come from the API (every write needs one), so the server
    makes it on its first start, as Grafana makes its first admin; whoever can read the
    server's workdir can use it. An operator who revoked every operator token gets a new one
    the same way, by restarting the server.
    """
    if has_operator_token(sessions):
        return None
    secret, token = create_token(sessions, Role.OPERATOR, BOOTSTRAP_TOKEN_NAME)
    path = workdir / OPERATOR_TOKEN_FILE
    _write_private(path, secret + "\n")
    log.warning(
        "no operator token: created %r (%s…); its secret is in %s (mode 0600). Use it to "
        "create named tokens (`edgeloop tokens create`), then revoke this one",
        token.name,
        token.prefix,
        path,
    )
    return path


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by this user only, atomically: a temporary file made with
    mode 0600 (never readable by others, not even for a moment), fsynced, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- audit trail


def _local_actor() -> str:
    """Who changed something on the database itself, not through the API: the OS user."""
    try:
        return f"local:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        return f"local:uid-{os.getuid()}"


def record_audit(
    db_or_sessions: Session | Sessions,
    principal: Principal | None,
    action: str,
    target: str,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Record that ``principal`` did ``action`` to ``target``.

    Given a session, the entry joins its transaction (it commits with the change, or not at
    all); given a sessionmaker, it is written in a transaction of its own. ``principal``
    None: done on the database directly (``edgeloop tokens``, the server's first start).
    """
    entry = AuditEntry(
        at=utcnow(),
        actor=principal.name if principal else _local_actor(),
        role=principal.role.value if principal else None,
        action=action,
        target=target,
        detail=dict(detail or {}),
    )
    if isinstance(db_or_sessions, Session):
        db_or_sessions.add(entry)
        return
    with db_or_sessions.begin() as db:
        db.add(entry)


def list_audit(
    db: Session,
    *,
    actor: str | None = None,
    action: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> Page[AuditEntryPublic]:
    """The audit trail, newest first, of one actor and/or one action."""
    where = []
    if actor is not None:
        where.append(AuditEntry.actor == actor)
    if action is not None:
        where.append(AuditEntry.action == action)
    total = db.scalar(select(func.count()).select_from(AuditEntry).where(*where)) or 0
    rows = db.scalars(
        select(AuditEntry).where(*where).order_by(AuditEntry.id.desc()).limit(limit).offset(offset)
    )
    items = [AuditEntryPublic.model_validate(row, from_attributes=True) for row in rows]
    return Page[AuditEntryPublic](total=total, limit=limit, offset=offset, items=items)


# --------------------------------------------------------------------------- the document


def routes(document: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every operation of an OpenAPI document, as (METHOD, path), sorted."""
    return sorted(
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in _methods(operations)
    )


def write_routes(document: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every operation of an OpenAPI document that changes something and is not open to
    anyone (:data:`OPEN_ROUTES`), as (METHOD, path), sorted: what needs an operator token.
    Tests and benchmarks enumerate them from the server's own document, so a route added
    later cannot be left out."""
    return [
        (method, path)
        for method, path in routes(document)
        if method in WRITE_METHODS and (method, path) not in OPEN_ROUTES
    ]


def _methods(operations: Mapping[str, Any]) -> Iterable[str]:
    # A path item may also hold `parameters`, `summary`...: only HTTP methods are operations.
    methods = {*WRITE_METHODS, "GET", "HEAD", "OPTIONS", "TRACE"}
    return (key for key in operations if key.upper() in methods)
