"""What routes share: dependencies, who may call them, the parameters many of them take, and
their documented error answers.

Every parameter states its constraints, so the OpenAPI document tells a client what is refused
(a 422) before it asks; a value no row could have (an id past the integer columns' range, a
model name with a ``/``) is refused there, never handed to the database.

Every route but ``/healthz`` takes one of the callers below (:data:`Operator`,
:data:`Reader`, :data:`DeviceReader`, :data:`Downloader`): a request without a valid bearer
token is answered 401, one whose token's role may not call the route 403, before its
parameters are validated (only a body over the size limit, or one that is not JSON at all, is
refused first); both answers say what to do.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from edgeloop.agent.protocol import DEVICE_ID_PATTERN, NAME_PATTERN, VERSION_PATTERN

from ..auth import Principal, Role, TokenError, verify_token
from ..config import Settings
from ..fleet import Fleet
from ..rollouts import RolloutController
from ..schemas import INT_MAX, LABEL_PATTERN, Problem
from ..store import ArtifactStore


def get_fleet(request: Request) -> Fleet:
    return request.app.state.fleet


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_rollouts(request: Request) -> RolloutController:
    return request.app.state.rollouts


FleetDep = Annotated[Fleet, Depends(get_fleet)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RolloutsDep = Annotated[RolloutController, Depends(get_rollouts)]

OffsetQuery = Annotated[
    int, Query(ge=0, le=INT_MAX, description="items to skip (a page starts after them)")
]
IdPath = Annotated[int, Path(ge=1, le=INT_MAX, description="a row id, as listings show it")]
DeviceIdPath = Annotated[
    str, Path(pattern=DEVICE_ID_PATTERN, description="as the device's hello gave it")
]
ApplicationQuery = Annotated[
    str | None, Query(pattern=NAME_PATTERN, description="only devices running this application")
]
ModelNamePath = Annotated[str, Path(pattern=NAME_PATTERN, description="a model name")]
ModelVersionPath = Annotated[str, Path(pattern=VERSION_PATTERN, description="its version")]
ModelNameQuery = Annotated[
    str | None, Query(pattern=NAME_PATTERN, description="only versions of this model name")
]
LabelQuery = Annotated[
    str | None, Query(pattern=LABEL_PATTERN, description="only those on `name:version`")
]
ProfileQuery = Annotated[
    str | None,
    Query(min_length=1, max_length=64, description="only devices of this profile name"),
]
ProfilePath = Annotated[
    str, Path(min_length=1, max_length=64, description="a device class (profile name)")
]

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    description="an API token (`elt_…`): `edgeloop tokens create NAME --role operator|viewer|"
    "device`; the server's first start writes an operator token to `<workdir>/operator.token`",
)
TOKEN_HINT = "an operator creates tokens with `edgeloop tokens create`"


def _unauthenticated(detail: str, *, invalid: bool) -> HTTPException:
    challenge = 'Bearer error="invalid_token"' if invalid else "Bearer"
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": challenge}
    )


def _caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal | None:
    """The token's holder; None when the request carries no ``Authorization`` header.

    Raises:
        HTTPException: 401 for a header that is not a bearer token, or a token refused
            (unknown, revoked, expired).
    """
    if credentials is None:
        if "authorization" in request.headers:
            raise _unauthenticated(
                "the Authorization header is not `Bearer <token>`: send an API token that way; "
                + TOKEN_HINT,
                invalid=True,
            )
        return None
    try:
        return verify_token(request.app.state.fleet.sessions, credentials.credentials)
    except TokenError as exc:
        raise _unauthenticated(str(exc), invalid=True) from None


def _authenticated(caller: Annotated[Principal | None, Depends(_caller)]) -> Principal:
    if caller is None:
        raise _unauthenticated(
            "this route needs an API token: send `Authorization: Bearer <token>`; " + TOKEN_HINT,
            invalid=False,
        )
    return caller


def _token_kinds(roles: tuple[Role, ...]) -> str:
    """``an operator token``, ``an operator or viewer token``."""
    words = [role.value for role in roles]
    listed = words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
    return f"{'an' if listed[0] in 'aeiou' else 'a'} {listed} token"


def _forbidden(principal: Principal, needed: str) -> HTTPException:
    yours = f"yours is {_token_kinds((principal.role,))} named {principal.name!r}"
    if principal.role is Role.DEVICE:
        yours += " (a device token downloads artifacts and reads its own device's records only)"
    return HTTPException(status.HTTP_403_FORBIDDEN, f"this route needs {needed}; {yours}")


def require(*roles: Role) -> Callable[[Principal], Principal]:
    """A dependency: the caller, if their token has one of ``roles``; else 401 or 403."""

    def check(principal: Annotated[Principal, Depends(_authenticated)]) -> Principal:
        if principal.role not in roles:
            raise _forbidden(principal, _token_kinds(roles))
        return principal

    return check


def _device_reader(
    device_id: DeviceIdPath,
    principal: Annotated[Principal, Depends(_authenticated)],
) -> Principal:
    if principal.role is Role.DEVICE:
        if principal.device_id != device_id:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"a device token reads its own device's records only: yours, named "
                f"{principal.name!r}, is bound to device {principal.device_id!r}, not "
                f"{device_id!r}",
            )
        return principal
    if principal.role not in (Role.OPERATOR, Role.VIEWER):
        raise _forbidden(principal, _token_kinds((Role.OPERATOR, Role.VIEWER)))
    return principal


def _downloader(
    request: Request, caller: Annotated[Principal | None, Depends(_caller)]
) -> Principal | None:
    if caller is None and request.app.state.anonymous_downloads:
        return None
    return require(Role.OPERATOR, Role.VIEWER, Role.DEVICE)(_authenticated(caller))


Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
"""Writes: register, roll out, retire, delete, record."""
Reader = Annotated[Principal, Depends(require(Role.OPERATOR, Role.VIEWER))]
"""Reads of the fleet as a whole."""
DeviceReader = Annotated[Principal, Depends(_device_reader)]
"""Reads of one device's records (``/devices/{device_id}...``): an operator or viewer, or
that device's own token."""
Downloader = Annotated[Principal | None, Depends(_downloader)]
"""Artifact downloads: any token, devices' included; None for a request without one where the
server lets anyone download (``edgeloop serve --anonymous-downloads``)."""

PROBLEMS = {
    401: "no API token, or one that is unknown, revoked or expired (`detail` says which); "
    "send `Authorization: Bearer <token>`",
    403: "the token's role may not do this (`detail` names the role needed and yours)",
    404: "no such resource; `detail` names it",
    409: "the request conflicts with the server's state (`detail` says what to do first)",
    413: "the request body is over the server's limit for this route; `detail` names it",
    422: "the request is invalid (`detail` says how), or its body is not JSON",
}


CHALLENGE = {
    "WWW-Authenticate": {
        "description": '`Bearer`, with `error="invalid_token"` when a token was sent',
        "schema": {"type": "string"},
    }
}


def problems(*codes: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI entries for the error statuses a route answers besides 413 and 422 (which
    every route documents): each a :class:`~edgeloop.server.schemas.Problem`. A route that
    takes a caller lists 401 and 403 (:data:`AUTH`)."""
    entries: dict[int | str, dict[str, object]] = {}
    for code in codes:
        entries[code] = {
            "model": Problem,
            "description": PROBLEMS.get(code, HTTPStatus(code).phrase),
        }
        if code == 401:
            entries[code]["headers"] = CHALLENGE
    return entries


AUTH = (401, 403)
"""The statuses every route with a caller answers: ``problems(*AUTH, 404)``."""
