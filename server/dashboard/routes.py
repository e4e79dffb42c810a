"""The dashboard's pages under ``/ui/``: server-rendered HTML for operators and viewers.

Invariants:
- A page answers only a request whose ``edgeloop_session`` cookie holds an operator or viewer
  API token, resolved by :func:`~edgeloop.server.auth.verify_token` as the REST API resolves a
  bearer token; anything else is sent to ``/ui/login``. A device token never opens a page.
- The cookie is HttpOnly and SameSite=Strict (and Secure over TLS): scripts cannot read it and
  other sites' pages cannot send it.
- Every change (a rollout action) is a form POST carrying a CSRF token derived from the
  session's secret (:func:`csrf_token`), calls the controller method the REST route calls and
  records the same audit entry. Only operators see the forms; the routes check the role again.
- Each page issues a fixed number of SQL statements (``queries.py``), whatever the fleet's size.
- These routes are left out of the OpenAPI document: they answer HTML for people, not the API.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Request, status
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from ..auth import Principal, Role, TokenError, record_audit, verify_token
from ..rollouts import RolloutError
from ..schemas import RolloutAction, RolloutState
from . import charts, queries

COOKIE = "edgeloop_session"
LOGIN = "/ui/login"
HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
TEMPLATES = Jinja2Templates(directory=HERE / "templates")
TELEMETRY_SAMPLES = 120
"""Samples a device page charts: two minutes at a one-second telemetry interval."""

ALLOWED: dict[RolloutAction, tuple[str, ...]] = {
    RolloutAction.PAUSE: (RolloutState.RUNNING,),
    RolloutAction.RESUME: (RolloutState.PAUSED,),
    RolloutAction.CANCEL: (RolloutState.RUNNING, RolloutState.PAUSED),
    RolloutAction.ROLLBACK: (
        RolloutState.RUNNING,
        RolloutState.PAUSED,
        RolloutState.HALTED,
        RolloutState.COMPLETED,
    ),
}
"""The actions a rollout's state allows (the controller checks again): the buttons shown."""

router = APIRouter(prefix="/ui", include_in_schema=False)


# --------------------------------------------------------------------------- session


def csrf_token(secret: str) -> str:
    """The CSRF token of a session: an HMAC of a fixed label under the session's own secret.
    A page that knows it was rendered for the cookie's holder; another site can neither read
    the cookie nor compute it, and nothing needs storing on the server."""
    return hmac.new(secret.encode(), b"edgeloop-dashboard-csrf", hashlib.sha256).hexdigest()


def _session(request: Request) -> Principal | None:
    """The cookie's holder if it is an operator or viewer token; None otherwise."""
    secret = request.cookies.get(COOKIE)
    if not secret:
        return None
    try:
        principal = verify_token(request.app.state.fleet.sessions, secret)
    except TokenError:
        return None
    return principal if principal.role in (Role.OPERATOR, Role.VIEWER) else None


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{LOGIN}?next={quote(target)}", status.HTTP_303_SEE_OTHER)


def _page(request: Request, template: str, principal: Principal, **context: Any) -> HTMLResponse:
    secret = request.cookies.get(COOKIE, "")
    return TEMPLATES.TemplateResponse(
        request,
        template,
        {
            "principal": principal,
            "operator": principal.role is Role.OPERATOR,
            "csrf": csrf_token(secret),
            **context,
        },
    )


def _check_operator_post(request: Request, principal: Principal | None, csrf: str) -> Principal:
    if principal is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "log in at /ui/login first")
    if not hmac.compare_digest(csrf, csrf_token(request.cookies.get(COOKIE, ""))):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "the form's CSRF token is missing or stale; reload the page"
        )
    if principal.role is not Role.OPERATOR:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"only operators act on rollouts; you are {principal.role}"
        )
    return principal


def _safe_next(target: str | None) -> str:
    """Only a path of this dashboard: never another site (an open redirect)."""
    if target and target.startswith("/ui/") and not target.startswith("//"):
        return target
    return "/ui/"


@router.get("/login")
def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(
        request, "login.html", {"next": _safe_next(next), "error": None}
    )


@router.post("/login")
def login(
    request: Request, token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = ""
) -> Response:
    """A token that is an operator's or a viewer's sets the session cookie; anything else
    answers the form again with why (401 unknown/revoked/expired, 403 a device token)."""
    try:
        principal = verify_token(request.app.state.fleet.sessions, token.strip())
    except TokenError as exc:
        return TEMPLATES.TemplateResponse(
            request,
            "login.html",
            {"next": _safe_next(next), "error": str(exc)},
            status_code=status.HTTP_401_UNAUTHORIZED,
        )
    if principal.role not in (Role.OPERATOR, Role.VIEWER):
        error = (
            f"the token {principal.name!r} is a {principal.role} token; the dashboard takes an "
            "operator or viewer token"
        )
        return TEMPLATES.TemplateResponse(
            request,
            "login.html",
            {"next": _safe_next(next), "error": error},
            status_code=status.HTTP_403_FORBIDDEN,
        )
    response = RedirectResponse(_safe_next(next), status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        COOKIE,
        token.strip(),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/ui",
    )
    return response


@router.get("/logout")
def logout() -> RedirectResponse:
    """A link, not a form: logging someone out is all another site could make it do, and a
    SameSite=Strict cookie is not sent from there anyway."""
    response = RedirectResponse(LOGIN, status.HTTP_303_SEE_OTHER)
    response.delete_cookie(COOKIE, path="/ui")
    return response


# --------------------------------------------------------------------------- fleet

FLEET_FILTERS = ("state", "phase", "profile", "application", "tag", "model")


@router.get("/")
def fleet_page(request: Request) -> Response:
    principal = _session(request)
    if principal is None:
        return _to_login(request)
    with request.app.state.fleet.sessions() as db:
        fleet = queries.fleet(db)
    filters = {k: request.query_params.get(k, "") for k in FLEET_FILTERS}
    shown = queries.filter_devices(fleet.devices, filters)
    bridge = request.app.state.bridge
    intake = bridge.intake.stats() if bridge is not None else None
    return _page(
        request,
        "fleet.html",
        principal,
        fleet=fleet,
        shown=shown,
        filters=filters,
        intake=intake,
        mqtt_connected=bridge.connected.is_set() if bridge is not None else None,
        choices={
            "state": ["online", "offline"],
            "phase": sorted({d.phase for d in fleet.devices}),
            "profile": sorted({d.profile for d in fleet.devices}),
            "application": sorted({d.application for d in fleet.devices}),
            "tag": sorted({t for d in fleet.devices for t in d.tags}),
            "model": sorted({d.current_model for d in fleet.devices if d.current_model}),
        },
        bar=charts.bar(
            [("ok", fleet.online, "online"), ("off", len(fleet.devices) - fleet.online, "offline")],
            len(fleet.devices),
        ),
    )


@router.get("/intake.json")
def intake_counts(request: Request) -> JSONResponse:
    """What the fleet page polls to keep its intake figures live: telemetry samples stored
    (one count) and the MQTT bridge's intake stats (held in memory, no query)."""
    if _session(request) is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "log in at /ui/login first")
    with request.app.state.fleet.sessions() as db:
        stored = queries.telemetry_rows(db)
    bridge = request.app.state.bridge
    intake = bridge.intake.stats().model_dump(mode="json") if bridge is not None else None
    return JSONResponse({"telemetry_rows": stored, "intake": intake})


# --------------------------------------------------------------------------- one device


def _get(payload: dict[str, Any], *keys: str) -> float | None:
    value: Any = payload
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return float(value) if isinstance(value, int | float) else None


@router.get("/devices/{device_id}")
def device_page(request: Request, device_id: str) -> Response:
    principal = _session(request)
    if principal is None:
        return _to_login(request)
    with request.app.state.fleet.sessions() as db:
        try:
            record = queries.device(db, device_id, samples=TELEMETRY_SAMPLES)
        except LookupError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    samples = record.telemetry
    labels = [str(s.get("sent_at", ""))[11:19] for s in samples]
    profile = record.device.profile or {}

    def series(*keys: str) -> list[float | None]:
        return [_get(s, *keys) for s in samples]

    budget = profile.get("latency_budget_ms")
    memory = profile.get("memory_budget_mb")
    figures = [
        charts.line_chart(
            {"p50": series("latency", "p50_ms"), "p95": series("latency", "p95_ms"),
             "p99": series("latency", "p99_ms")},
            title="Latency", unit="ms", labels=labels,
            reference=("budget", float(budget)) if isinstance(budget, int | float) else None,
        ),
        charts.line_chart(
            {"RSS": series("rss_mb")}, title="Memory (RSS)", unit="MB", labels=labels,
            reference=("budget", float(memory)) if isinstance(memory, int | float) else None,
        ),
        charts.line_chart(
            {"energy": [None if v is None else v * 1000 for v in
                        series("energy", "joules_per_inference")]},
            title="Energy per inference", unit="mJ", labels=labels,
        ),
        charts.line_chart(
            {"power": series("energy", "avg_power_w")}, title="Power", unit="W", labels=labels
        ),
        charts.line_chart(
            {"temperature": series("temperature_c")}, title="Temperature", unit="°C",
            labels=labels,
        ),
        charts.line_chart(
            {"CPU": series("cpu_percent")}, title="CPU", unit="%", labels=labels
        ),
    ]  # fmt: skip
    control = [s["control"] for s in samples if isinstance(s.get("control"), dict)]
    if control:
        figures.append(
            charts.line_chart(
                {"p95": [_get(c, "latency", "p95_ms") for c in control]},
                title="Control loop latency",
                unit="ms",
            )
        )
    return _page(
        request,
        "device.html",
        principal,
        device=record.device,
        profile=profile,
        sample_count=len(samples),
        control=control[-1] if control else None,
        figures=figures,
        reports=[(r, r.payload or {}) for r in record.reports],
    )


# --------------------------------------------------------------------------- rollouts


@router.get("/rollouts")
def rollouts_page(request: Request) -> Response:
    principal = _session(request)
    if principal is None:
        return _to_login(request)
    with request.app.state.fleet.sessions() as db:
        views = queries.rollouts(db)
    return _page(request, "rollouts.html", principal, rollouts=views, bar=_progress_bar)


def _progress_bar(view: queries.RolloutView | queries.WaveProgress) -> Any:
    steps: dict[str, int] = defaultdict(int)
    waves = view.waves if isinstance(view, queries.RolloutView) else [view]
    for wave in waves:
        for step, n in wave.steps.items():
            steps[step] += n
    total = sum(steps.values())
    return charts.bar(
        [
            ("ok", steps["committed"], "committed"),
            ("bad", steps["failed"] + steps["timed_out"], "failed or timed out"),
            ("sent", steps["sent"], "sent"),
            ("other", steps["superseded"] + steps["rolled_back"], "superseded or rolled back"),
        ],
        total,
    )


def _one_rollout(request: Request, rollout_id: int) -> queries.RolloutView:
    with request.app.state.fleet.sessions() as db:
        views = queries.rollouts(db, rollout_id=rollout_id)
    if not views:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no rollout {rollout_id}")
    return views[0]


@router.get("/rollouts/{rollout_id}")
def rollout_page(request: Request, rollout_id: int, error: str | None = None) -> Response:
    principal = _session(request)
    if principal is None:
        return _to_login(request)
    view = _one_rollout(request, rollout_id)
    with request.app.state.fleet.sessions() as db:
        parts = queries.rollout_devices(db, rollout_id)
    actions = [a for a, states in ALLOWED.items() if view.state in states]
    return _page(
        request,
        "rollout.html",
        principal,
        rollout=view,
        parts=parts,
        actions=actions,
        error=error,
        bar=_progress_bar,
    )


@router.get("/rollouts/{rollout_id}/progress.json")
def rollout_progress(request: Request, rollout_id: int) -> JSONResponse:
    """What the rollout page polls to update itself without a reload."""
    if _session(request) is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "log in at /ui/login first")
    return JSONResponse(_one_rollout(request, rollout_id).as_json())


@router.post("/rollouts/{rollout_id}/{action}")
def act_on_rollout(
    request: Request, rollout_id: int, action: RolloutAction, csrf: Annotated[str, Form()] = ""
) -> RedirectResponse:
    """As ``POST /api/v1/rollouts/{id}/{action}``: the same controller call and audit entry;
    a refusal comes back to the page as a message."""
    operator = _check_operator_post(request, _session(request), csrf)
    page = f"/ui/rollouts/{rollout_id}"
    try:
        now = request.app.state.rollouts.act(rollout_id, action)
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except RolloutError as exc:
        return RedirectResponse(f"{page}?error={quote(str(exc))}", status.HTTP_303_SEE_OTHER)
    detail = {"state": now.state, "wave": now.current_wave}
    record_audit(
        request.app.state.fleet.sessions, operator, f"rollout.{action}", f"rollout:{rollout_id}",
        detail,
    )  # fmt: skip
    return RedirectResponse(page, status.HTTP_303_SEE_OTHER)


# --------------------------------------------------------------------------- models, loop


@router.get("/models")
def models_page(request: Request) -> Response:
    principal = _session(request)
    if principal is None:
        return _to_login(request)
    with request.app.state.fleet.sessions() as db:
        versions = queries.models(db)
    cards = [(m, m.report or {}, getattr(m, "pareto_sha256", None)) for m in versions]
    return _page(request, "models.html", principal, cards=cards)


@router.get("/models/{model_id}/pareto")
def pareto_image(request: Request, model_id: int) -> Response:
    """A version's Pareto plot, streamed from the artifact store for a logged-in reader (the
    artifact route wants a bearer token, which a browser's ``<img>`` cannot send)."""
    if _session(request) is None:
        return _to_login(request)
    with request.app.state.fleet.sessions() as db:
        version = queries.model(db, model_id)
    sha = getattr(version, "pareto_sha256", None) if version is not None else None
    store = request.app.state.store
    if not sha or not store.has(sha):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"model {model_id} has no Pareto plot")
    return FileResponse(store.path(sha), media_type=_image_type(store.path(sha)))


def _image_type(path: Path) -> str:
    with path.open("rb") as file:
        head = file.read(16)
    if head.startswith(b"\x89PNG"):
        return "image/png"
    if head.lstrip().startswith((b"<svg", b"<?xml")):
        return "image/svg+xml"
    return "application/octet-stream"


@router.get("/loop")
def loop_page(request: Request) -> Response:
    principal = _session(request)
    if principal is None:
        return _to_login(request)
    with request.app.state.fleet.sessions() as db:
        rows = queries.decisions(db)
    by_class: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        figures = row.figures or {}
        measured = figures.get("measured") if isinstance(figures.get("measured"), dict) else {}
        predicted_all = figures.get("predicted") or {}
        measured_model = measured.get("model") if measured else None
        predicted_for = measured_model or row.model
        predicted = (
            predicted_all.get(predicted_for) if isinstance(predicted_all, dict) else None
        ) or {}
        by_class[row.profile].append(
            {
                "row": row,
                "measured_model": measured_model,
                "measured_p95": _get(measured or {}, "p95_ms"),
                "predicted_p95": _get(predicted, "latency_p95_ms"),
                "budget_p95": _get(figures, "budget", "latency_p95_ms"),
            }
        )
    classes = []
    for profile, rounds in sorted(by_class.items()):
        budget = next((r["budget_p95"] for r in rounds if r["budget_p95"] is not None), None)
        chart = charts.line_chart(
            {
                "predicted p95": [r["predicted_p95"] for r in rounds],
                "measured p95": [r["measured_p95"] for r in rounds],
            },
            title=f"{profile}: predicted vs measured",
            unit="ms",
            labels=[f"round {r['row'].round}" for r in rounds],
            reference=("budget", budget) if budget is not None else None,
        )
        classes.append((profile, rounds, chart))
    return _page(request, "loop.html", principal, classes=classes)
