from __future__ import annotations

from http import HTTPStatus
from typing import Annotated

from fastapi import Depends, Query, Request

from ..fleet import Fleet
from ..rollouts import RolloutController
from ..schemas import INT_MAX, Problem
from ..store import ArtifactStore


def get_fleet(request: Request) -> Fleet:
    return request.app.state.fleet


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


OffsetQuery = Annotated[
    int, Query(ge=0, le=INT_MAX, description="items to skip (a page starts after them)")
]

FleetDep = Annotated[Fleet, Depends(get_fleet)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]


def get_rollouts(request: Request) -> RolloutController:
    return request.app.state.rollouts


RolloutsDep = Annotated[RolloutController, Depends(get_rollouts)]


def problems(*codes: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI entries for the error statuses a route answers besides 422 (documented on
    every route): each a :class:`~edgeloop.server.schemas.Problem`."""
    return {code: {"model": Problem, "description": HTTPStatus(code).phrase} for code in codes}
