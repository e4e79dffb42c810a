from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..fleet import Fleet
from ..rollouts import RolloutController
from ..store import ArtifactStore


def get_fleet(request: Request) -> Fleet:
    return request.app.state.fleet


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


FleetDep = Annotated[Fleet, Depends(get_fleet)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]


def get_rollouts(request: Request) -> RolloutController:
    return request.app.state.rollouts


RolloutsDep = Annotated[RolloutController, Depends(get_rollouts)]
