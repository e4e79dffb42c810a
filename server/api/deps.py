"""What routes share: dependencies, the parameters many of them take, and their documented
error answers.

Every parameter states its constraints, so the OpenAPI document tells a client what is refused
(a 422) before it asks; a value no row could have (an id past the integer columns' range, a
model name with a ``/``) is refused there, never handed to the database.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated

from fastapi import Depends, Path, Query, Request

from edgeloop.agent.protocol import DEVICE_ID_PATTERN, NAME_PATTERN, VERSION_PATTERN

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

PROBLEMS = {
    404: "no such resource; `detail` names it",
    409: "the request conflicts with the server's state (`detail` says what to do first)",
    413: "the request body is over the server's limit for this route; `detail` names it",
    422: "the request is invalid (`detail` says how), or its body is not JSON",
}


def problems(*codes: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI entries for the error statuses a route answers besides 413 and 422 (which
    every route documents): each a :class:`~edgeloop.server.schemas.Problem`."""
    return {
        code: {"model": Problem, "description": PROBLEMS.get(code, HTTPStatus(code).phrase)}
        for code in codes
    }
