"""The control plane's HTTP application: REST API, artifact downloads, and the MQTT bridge."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException
from starlette.routing import compile_path

from .api.deps import PROBLEMS
from .api.limits import BodyLimit, BodyLimitMiddleware
from .api.routes import applications, artifacts, audit, devices, loop, models, rollouts, trust
from .config import Settings
from .dashboard import STATIC_DIR as DASHBOARD_STATIC
from .dashboard import router as dashboard_router
from .db import make_engine, make_sessionmaker
from .fleet import Fleet
from .metrics import metrics_registry
from .metrics import router as metrics_router
from .mqtt_bridge import MqttBridge
from .pki import CaDir
from .releases import ReleaseSigner
from .rollouts import RolloutController
from .schemas import Health, Problem, ProblemPart
from .store import ArtifactStore

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": Problem, "description": PROBLEMS[code]} for code in (413, 422)
}
"""Documented on every route: any request may carry a body over the limit, and FastAPI's
default 422 body is not the one we answer."""


def create_app(
    settings: Settings, *, with_mqtt: bool = True, anonymous_downloads: bool = False
) -> FastAPI:
    """The control plane. Every route but ``/healthz`` needs an API token
    (``server/auth.py``); ``anonymous_downloads`` lets requests without one download
    artifact files too, for agents that do not send a token yet: files are named by their
    SHA-256 and devices check them against their manifest, but anyone who can reach the
    server and knows a hash then gets the model."""
    # Raises TufRepoError naming `edgeloop tuf init` when the repository is missing: a server
    # that cannot sign would send devices nothing they may install.
    releases = ReleaseSigner.open(settings.tuf_dir) if settings.tuf_dir is not None else None
    engine = make_engine(settings.database_url)
    fleet = Fleet(make_sessionmaker(engine), settings.public_url, releases)
    bridge = (
        MqttBridge(
            fleet,
            settings.mqtt_host,
            settings.mqtt_port,
            session_key=settings.database_url,
            tls=settings.mqtt_tls,
        )
        if with_mqtt
        else None
    )
    controller = RolloutController(fleet)
    fleet.after_device_message = controller.wake

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if releases is not None:
            releases.start()  # re-signs the timestamp before it expires
        if bridge is not None:
            bridge.start()  # re-sends every desired state on each (re)connect
        controller.start()
        yield
        controller.stop()
        if bridge is not None:
            bridge.stop()
        if releases is not None:
            releases.stop()
        engine.dispose()

    app = FastAPI(title="edgeloop control plane", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.fleet = fleet
    app.state.store = ArtifactStore(settings.artifact_dir)
    app.state.bridge = bridge
    app.state.rollouts = controller
    app.state.anonymous_downloads = anonymous_downloads
    app.state.releases = releases
    app.state.ca = CaDir.at(settings.ca_dir, settings.ca_key) if settings.ca_dir else None
    routers = (artifacts, models, applications, devices, rollouts, loop, audit)
    for module in (*routers, trust) if releases is not None else routers:
        app.include_router(module.router, responses=ERRORS)
    app.state.metrics = metrics_registry(
        fleet.sessions, bridge, per_device=settings.metrics_per_device
    )
    app.include_router(metrics_router)
    if anonymous_downloads:
        _document_optional_auth(app, artifacts.DOWNLOAD)
    app.include_router(dashboard_router)  # /ui/: pages for people, left out of the document
    app.mount("/ui/static", StaticFiles(directory=DASHBOARD_STATIC), name="ui-static")
    app.add_middleware(
        BodyLimitMiddleware,
        default=BodyLimit(settings.max_json_body, "request bodies (--max-json-body)"),
        uploads={
            ("PUT", artifacts.UPLOAD): BodyLimit(
                settings.max_artifact_size, "artifact files (--max-artifact-size)"
            )
        },
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content=validation_body(exc))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # FastAPI answers 400 for a body it cannot decode (not UTF-8, nested past Python's
        # recursion limit), where every other unparsable body is a 422; so is this one.
        if exc.status_code == 400 and exc.__cause__ is not None:
            cause = exc.__cause__
            problem = Problem(
                detail=f"the body is not JSON this server can read ({type(cause).__name__}: "
                f"{str(cause)[:200]}); send UTF-8 JSON"
            )
            return JSONResponse(status_code=422, content=problem.model_dump(mode="json"))
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette's `Allow` names the methods of one route on the path, and a path has
            # one route per method here: name every method the document lists for it.
            headers["Allow"] = ", ".join(allowed_methods(request))
            problem = Problem(
                detail=f"{request.method} is not allowed here; use {headers['Allow']}"
            )
        else:
            problem = Problem(detail=str(exc.detail))
        return JSONResponse(
            status_code=exc.status_code, content=problem.model_dump(mode="json"), headers=headers
        )

    @app.exception_handler(DataError)
    async def _unstorable_value(_request: Request, exc: DataError) -> JSONResponse:
        # The database refused a value the request carried (PostgreSQL: a NUL character in a
        # text, a number out of its column's range); the request is at fault, not the server.
        problem = Problem(detail=f"a value in the request cannot be stored or searched: {exc.orig}")
        return JSONResponse(status_code=422, content=problem.model_dump(mode="json"))

    @app.get("/healthz", tags=["health"])
    def healthz() -> Health:
        """Liveness, for load balancers: open to anyone, and says nothing a token guards."""
        if bridge is None:
            return Health(ok=True, mqtt_connected=None)
        intake = bridge.intake.stats()
        return Health(
            ok=True,
            mqtt_connected=bridge.connected.is_set(),
            last_message_at=intake.last_message_at,
            messages_handled=intake.messages_handled,
            dropped=intake.dropped,
        )

    return app


def _document_optional_auth(app: FastAPI, path: str) -> None:
    """Say in the OpenAPI document that ``path``'s operations take a token but need none
    (an empty security requirement), as a server with anonymous downloads answers."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        for operation in document["paths"][path].values():
            operation["security"] = [*operation.get("security", []), {}]
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def validation_body(exc: RequestValidationError) -> dict[str, object]:
    """Every error answers a :class:`Problem`: ``{"detail": str}``; a validation error also
    lists its parts under ``errors`` (FastAPI's default puts a list in ``detail``, which
    clients then special-case)."""
    parts = [
        ProblemPart(
            loc=[part if isinstance(part, int) else str(part) for part in error.get("loc", ())],
            msg=str(error.get("msg", "invalid")),
            type=str(error.get("type", "invalid")),
        )
        for error in exc.errors()
    ]
    detail = "; ".join(f"{'.'.join(str(p) for p in part.loc)}: {part.msg}" for part in parts)
    # The refused values are not echoed back: they may be large, binary, or not JSON at all.
    problem = Problem(detail=detail or "invalid request", errors=parts)
    return problem.model_dump(mode="json")


def allowed_methods(request: Request) -> list[str]:
    """Every method the OpenAPI document lists for the request's path."""
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        pattern, _, _ = compile_path(template)
        if pattern.match(request.url.path):
            methods |= {method.upper() for method in operations}
    return sorted(methods)
