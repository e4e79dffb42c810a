"""The control plane's HTTP application: REST API, artifact downloads, and the MQTT bridge."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError

from .api.routes import artifacts, devices, loop, models, rollouts
from .config import Settings
from .db import make_engine, make_sessionmaker
from .fleet import Fleet
from .mqtt_bridge import MqttBridge
from .rollouts import RolloutController
from .schemas import Health, Problem
from .store import ArtifactStore

ERRORS: dict[int | str, dict[str, object]] = {
    422: {"model": Problem, "description": "the request is invalid; `detail` says how"}
}
"""Documented on every route: FastAPI's default 422 body is not the one we answer."""


def create_app(settings: Settings, *, with_mqtt: bool = True) -> FastAPI:
    engine = make_engine(settings.database_url)
    fleet = Fleet(make_sessionmaker(engine), settings.public_url)
    bridge = (
        MqttBridge(fleet, settings.mqtt_host, settings.mqtt_port, session_key=settings.database_url)
        if with_mqtt
        else None
    )
    controller = RolloutController(fleet)
    fleet.after_device_message = controller.wake

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if bridge is not None:
            bridge.start()
            # A crash may have come between a commit and its publish: re-send every desired
            # state with its stored revision (devices ignore a revision they already handled).
            fleet.republish_all()
        controller.start()
        yield
        controller.stop()
        if bridge is not None:
            bridge.stop()
        engine.dispose()

    app = FastAPI(title="edgeloop control plane", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.fleet = fleet
    app.state.store = ArtifactStore(settings.artifact_dir)
    app.state.bridge = bridge
    app.state.rollouts = controller
    for module in (artifacts, models, devices, rollouts, loop):
        app.include_router(module.router, responses=ERRORS)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content=validation_body(exc))

    @app.exception_handler(DataError)
    async def _unstorable_value(_request: Request, exc: DataError) -> JSONResponse:
        # The database refused a value the request carried (PostgreSQL: a NUL character in a
        # text, a number out of its column's range); the request is at fault, not the server.
        problem = Problem(detail=f"a value in the request cannot be stored or searched: {exc.orig}")
        return JSONResponse(status_code=422, content=problem.model_dump(mode="json"))

    @app.get("/healthz", tags=["health"])
    def healthz() -> Health:
        return Health(ok=True, mqtt_connected=bridge.connected.is_set() if bridge else None)

    return app


def validation_body(exc: RequestValidationError) -> dict[str, object]:
    """Every error answers a :class:`Problem`: ``{"detail": str}``; a validation error also
    lists its parts under ``errors`` (FastAPI's default puts a list in ``detail``, which
    clients then special-case)."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    problem = Problem(
        detail="; ".join(parts) or "invalid request", errors=jsonable_encoder(exc.errors())
    )
    return problem.model_dump(mode="json")
