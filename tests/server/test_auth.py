"""Who may call the REST API: every route but ``/healthz`` wants a bearer token; writes an
operator's, reads an operator's or a viewer's, and a device's token downloads artifacts and
reads its own device's records, nothing else. Tokens are stored as hashes, revoked and expired
ones are refused, every change leaves an audit entry naming who made it, and the first
operator token comes from the server's first start.

Most tests run the app in-process (``create_app`` + Starlette's TestClient, on SQLite and
PostgreSQL); the last ones run ``edgeloop serve`` and the ``edgeloop`` command as an operator
would."""

from __future__ import annotations

import hashlib
import json
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from helpers import JETSON, PI, run_command, signing_repository
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from edgeloop.agent.protocol import Hello, TensorSpec
from edgeloop.lab.broker import Broker
from edgeloop.lab.launch import ServerProcess
from edgeloop.server.auth import (
    OPEN_ROUTES,
    Role,
    TokenError,
    authenticate,
    create_token,
    list_tokens,
    revoke_tokens,
    routes,
    write_routes,
)
from edgeloop.server.client import TOKEN_ENV, ApiClient, ApiError
from edgeloop.server.schemas import ModelCreate, ModelFigures

MODEL_FILE = b"a model, as far as the registry cares" * 10
GOLDEN_FILE = b"its golden outputs" * 10


def make_app(workdir: Path, database_url: str, *, anonymous_downloads: bool = False) -> FastAPI:
    from edgeloop.server.app import create_app
    from edgeloop.server.config import Settings

    settings = Settings(
        database_url=database_url,
        artifact_dir=workdir / "artifacts",
        public_url="http://testserver",
        tuf_dir=signing_repository(workdir),
    )
    return create_app(settings, with_mqtt=False, anonymous_downloads=anonymous_downloads)


@dataclass
class Api:
    """An app on a real database with a fleet behind every route, and one token per role."""

    app: FastAPI
    http: TestClient
    secrets: dict[str, str]
    """operator, viewer, device (bound to pi-0) → secret."""
    sha256: str
    rollout_id: int

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.app.state.fleet.sessions

    def headers(self, who: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[who]}"} if who else {}

    def known(self) -> dict[str, str | int]:
        """Path parameter → a value that exists here."""
        return {
            "sha256": self.sha256,
            "name": "m",
            "version": "1",
            "rollout_id": self.rollout_id,
            "action": "pause",
            "profile": "pi",
            "device_id": "pi-0",
            "file": "timestamp.json",
            "application": "default",
            "tag": "spare",
        }

    def path(self, template: str) -> str:
        return template.format(**self.known())

    def audit_total(self) -> int:
        answer = self.http.get("/api/v1/audit", headers=self.headers("viewer"))
        assert answer.status_code == 200, answer.text
        return answer.json()["total"]


@pytest.fixture()
def api(tmp_path: Path, database_url: str) -> Iterator[Api]:
    """Devices pi-0 and pi-1, a model m:1 and its files, a rollout, a calibration and a loop
    decision, all made through the API as the operator; the app's lifespan (rollout engine,
    MQTT) does not run, so nothing moves on its own."""
    app = make_app(tmp_path, database_url)
    sessions = app.state.fleet.sessions
    secrets = {
        "operator": create_token(sessions, Role.OPERATOR, "ops")[0],
        "viewer": create_token(sessions, Role.VIEWER, "grafana")[0],
        "device": create_token(sessions, Role.DEVICE, "pi-0", device_id="pi-0")[0],
    }
    for device_id, profile in (("pi-0", PI), ("pi-1", PI), ("jetson-0", JETSON)):
        app.state.fleet.on_hello(Hello(device_id=device_id, agent_version="t", profile=profile))
    http = TestClient(app)
    operator = {"Authorization": f"Bearer {secrets['operator']}"}
    shas = []
    for data in (MODEL_FILE, GOLDEN_FILE):
        shas.append(hashlib.sha256(data).hexdigest())
        stored = http.put(f"/api/v1/artifacts/{shas[-1]}", content=data, headers=operator)
        assert stored.status_code == 201, stored.text
    card = ModelCreate(
        name="m",
        version="1",
        artifact_sha256=shas[0],
        golden_sha256=shas[1],
        inputs=[TensorSpec(name="x", dtype="float32", shape=["batch", 4])],
        outputs=[TensorSpec(name="y", dtype="float32", shape=["batch", 2])],
        report=ModelFigures(accuracy=0.9, size_bytes=len(MODEL_FILE)),
    )
    writes = [
        http.post("/api/v1/models?plan=false", json=card.model_dump(mode="json"), headers=operator),
        http.put(
            "/api/v1/calibrations/pi",
            json={"calibration": {"class_scale": 2.0}, "observations": 1},
            headers=operator,
        ),
        http.post(
            "/api/v1/loop/decisions",
            json={"loop": "m", "round": 1, "profile": "pi", "action": "keep", "reason": "fits"},
            headers=operator,
        ),
        rollout := http.post(
            "/api/v1/rollouts", json={"model": "m:1", "target": {"profile": "pi"}}, headers=operator
        ),
    ]
    for answer in writes:
        assert answer.status_code in (200, 201), answer.text
    try:
        yield Api(app, http, secrets, shas[0], rollout.json()["id"])
    finally:
        sessions.kw["bind"].dispose()


# --------------------------------------------------------------------------- who may call what


def test_every_write_route_refuses_no_token_a_viewer_and_a_device_and_records_nothing(
    api: Api,
) -> None:
    document = api.app.openapi()
    writes = write_routes(document)
    assert ("POST", "/api/v1/rollouts") in writes and (
        "PUT",
        "/api/v1/artifacts/{sha256}",
    ) in writes
    assert len(writes) >= 11 and all(method != "GET" for method, _ in writes)
    before = api.audit_total()
    for method, template in writes:
        path = api.path(template)
        anonymous = api.http.request(method, path)
        assert anonymous.status_code == 401, (method, path, anonymous.text)
        assert anonymous.headers["WWW-Authenticate"] == "Bearer"
        assert "Authorization: Bearer" in anonymous.json()["detail"]
        viewer = api.http.request(method, path, headers=api.headers("viewer"))
        assert viewer.status_code == 403, (method, path, viewer.text)
        assert viewer.json()["detail"] == (
            "this route needs an operator token; yours is a viewer token named 'grafana'"
        )
        device = api.http.request(method, path, headers=api.headers("device"))
        assert device.status_code == 403, (method, path, device.text)
        assert "yours is a device token named 'pi-0'" in device.json()["detail"]
    assert api.audit_total() == before, "a refused request changes nothing"
    rollout = api.http.get(f"/api/v1/rollouts/{api.rollout_id}", headers=api.headers("viewer"))
    assert rollout.json()["state"] == "running", "nobody but an operator paused it"


def test_every_read_route_refuses_no_token_and_answers_a_viewer(api: Api) -> None:
    reads = [
        (method, template)
        for method, template in routes(api.app.openapi())
        if method == "GET" and (method, template) not in OPEN_ROUTES
    ]
    assert len(reads) >= 15
    for method, template in reads:
        path = api.path(template)
        anonymous = api.http.request(method, path)
        assert anonymous.status_code == 401, (path, anonymous.text)
        viewer = api.http.request(method, path, headers=api.headers("viewer"))
        assert viewer.status_code == 200, (path, viewer.text)
    assert api.http.get("/healthz").status_code == 200, "liveness stays open"


def test_a_device_token_downloads_artifacts_and_reads_only_its_own_records(api: Api) -> None:
    device = api.headers("device")
    whole = api.http.get(f"/artifacts/{api.sha256}", headers=device)
    assert whole.status_code == 200 and whole.content == MODEL_FILE
    tail = api.http.get(f"/artifacts/{api.sha256}", headers={**device, "Range": "bytes=10-"})
    assert tail.status_code == 206 and tail.content == MODEL_FILE[10:]
    assert api.http.head(f"/artifacts/{api.sha256}", headers=device).status_code == 200
    for own in ("/api/v1/devices/pi-0", "/api/v1/devices/pi-0/telemetry",
                "/api/v1/devices/pi-0/reports"):  # fmt: skip
        assert api.http.get(own, headers=device).status_code == 200, own

    other = api.http.get("/api/v1/devices/pi-1", headers=device)
    assert other.status_code == 403
    assert other.json()["detail"] == (
        "a device token reads its own device's records only: yours, named 'pi-0', is bound "
        "to device 'pi-0', not 'pi-1'"
    )
    assert api.http.get("/api/v1/devices/pi-1/telemetry", headers=device).status_code == 403
    for fleet_wide in ("/api/v1/devices", "/api/v1/fleet", "/api/v1/models", "/api/v1/reports",
                       "/api/v1/rollouts", "/api/v1/audit"):  # fmt: skip
        refused = api.http.get(fleet_wide, headers=device)
        assert refused.status_code == 403, fleet_wide
        assert "needs an operator or viewer token" in refused.json()["detail"]


def test_downloads_need_a_token_unless_the_server_allows_anonymous_ones(
    api: Api, tmp_path: Path, database_url: str
) -> None:
    assert api.http.get(f"/artifacts/{api.sha256}").status_code == 401
    assert (
        api.http.get(f"/artifacts/{api.sha256}", headers=api.headers("viewer")).status_code == 200
    )

    open_app = make_app(tmp_path, database_url, anonymous_downloads=True)
    try:
        http = TestClient(open_app)
        assert http.get(f"/artifacts/{api.sha256}").content == MODEL_FILE
        made_up = {"Authorization": "Bearer elt_made-up"}
        assert http.get(f"/artifacts/{api.sha256}", headers=made_up).status_code == 401, (
            "a token that is sent is checked"
        )
        assert http.get("/api/v1/models").status_code == 401, "only downloads are open"
        download = open_app.openapi()["paths"]["/artifacts/{sha256}"]["get"]
        assert download["security"] == [{"bearerAuth": []}, {}], "the document says so"
    finally:
        open_app.state.fleet.sessions.kw["bind"].dispose()


def test_the_document_declares_the_bearer_scheme_on_every_route_but_the_open_ones(
    api: Api,
) -> None:
    """``OPEN_ROUTES`` is the reviewed list of what anyone may call: ``/healthz``, and a route
    that carries its own credential; every other operation declares the bearer scheme."""
    document = api.app.openapi()
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert ("GET", "/healthz") in OPEN_ROUTES
    for method, path in routes(document):
        operation = document["paths"][path][method.lower()]
        if (method, path) in OPEN_ROUTES:
            assert "security" not in operation, path
            continue
        assert operation.get("security") == [{"bearerAuth": []}], (method, path)
        assert {"401", "403"} <= set(operation["responses"]), (method, path)
        assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]


# --------------------------------------------------------------------------- tokens


def test_revoked_and_expired_tokens_are_refused_with_what_happened(api: Api) -> None:
    sessions = api.sessions
    secret, token = create_token(sessions, Role.VIEWER, "dashboard")
    assert api.http.get("/api/v1/models", headers=bearer(secret)).status_code == 200
    assert revoke_tokens(sessions, token_id=token.id) == 1
    assert revoke_tokens(sessions, token_id=token.id) == 0, "revoked already"
    revoked = api.http.get("/api/v1/models", headers=bearer(secret))
    assert revoked.status_code == 401
    assert revoked.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert "the token 'dashboard' (elt_" in revoked.json()["detail"]
    assert "was revoked at" in revoked.json()["detail"]
    assert authenticate(sessions, secret) is None

    brief, _ = create_token(sessions, Role.VIEWER, "brief", expires_in=timedelta(milliseconds=50))
    time.sleep(0.1)
    expired = api.http.get("/api/v1/models", headers=bearer(brief))
    assert expired.status_code == 401 and "'brief'" in expired.json()["detail"]
    assert "expired at" in expired.json()["detail"]

    unknown = api.http.get("/api/v1/models", headers=bearer("elt_" + "x" * 43))
    assert unknown.status_code == 401 and "not known to this server" in unknown.json()["detail"]
    basic = api.http.get("/api/v1/models", headers={"Authorization": "Basic b3BzOnB3"})
    assert basic.status_code == 401 and "is not `Bearer <token>`" in basic.json()["detail"]

    assert revoke_tokens(sessions, device_id="pi-0") == 1, "every token of a device"
    assert api.http.get("/api/v1/devices/pi-0", headers=api.headers("device")).status_code == 401


def test_the_token_table_keeps_hashes_and_prefixes_never_a_secret(api: Api) -> None:
    with api.sessions() as db:
        rows = [dict(row._mapping) for row in db.execute(text("SELECT * FROM api_tokens"))]
    assert len(rows) == len(api.secrets)
    stored = json.dumps(rows, default=str)
    for secret in api.secrets.values():
        assert secret.startswith("elt_") and len(secret) == 47
        assert secret not in stored and secret[12:] not in stored
        assert hashlib.sha256(secret.encode()).hexdigest() in {r["token_sha256"] for r in rows}
    assert all(len(row["prefix"]) == 12 for row in rows)
    listed = list_tokens(api.sessions)
    assert [t.name for t in listed] == ["ops", "grafana", "pi-0"]
    assert "token_sha256" not in listed[0].model_dump()
    assert listed[0].last_used_at is not None, "the operator's token was used to set up"


@pytest.mark.parametrize(
    ("role", "name", "changes", "words"),
    [
        (Role.DEVICE, "pi-9", {}, "give its id (--device ID)"),
        (Role.VIEWER, "grafana", {"device_id": "pi-0"}, "leave out --device"),
        (Role.VIEWER, "has space", {}, "is not a token name"),
        (Role.OPERATOR, "ops", {"expires_in": timedelta(0)}, "must expire in the future"),
    ],
)
def test_a_token_asked_for_wrongly_is_refused_with_what_to_do(
    tmp_path: Path, role: Role, name: str, changes: dict[str, Any], words: str
) -> None:
    app = make_app(tmp_path, f"sqlite:///{tmp_path / 'edgeloop.db'}")
    with pytest.raises(TokenError, match=re.escape(words)):
        create_token(app.state.fleet.sessions, role, name, **changes)
    assert list_tokens(app.state.fleet.sessions) == []


# --------------------------------------------------------------------------- audit trail


def test_the_audit_trail_names_who_created_paused_and_rolled_back_a_rollout(api: Api) -> None:
    alice, _ = create_token(api.sessions, Role.OPERATOR, "alice")
    bob, _ = create_token(api.sessions, Role.OPERATOR, "bob")
    created = api.http.post(
        "/api/v1/rollouts", json={"model": "m:1", "target": {"devices": ["pi-1"]}},
        headers=bearer(alice),
    )  # fmt: skip
    assert created.status_code == 201, created.text
    rollout = created.json()["id"]
    assert api.http.post(f"/api/v1/rollouts/{rollout}/pause", headers=bearer(bob)).is_success
    assert api.http.post(f"/api/v1/rollouts/{rollout}/rollback", headers=bearer(alice)).is_success

    trail = api.http.get(
        "/api/v1/audit", params={"limit": 3}, headers=api.headers("viewer")
    ).json()["items"]  # fmt: skip
    assert [(e["actor"], e["role"], e["action"], e["target"]) for e in trail] == [
        ("alice", "operator", "rollout.rollback", f"rollout:{rollout}"),
        ("bob", "operator", "rollout.pause", f"rollout:{rollout}"),
        ("alice", "operator", "rollout.create", f"rollout:{rollout}"),
    ]
    assert trail[2]["detail"]["model"] == "m:1"
    assert trail[2]["detail"]["target"]["devices"] == ["pi-1"]
    assert trail[1]["detail"]["state"] == "paused"

    by_bob = api.http.get(
        "/api/v1/audit", params={"actor": "bob"}, headers=api.headers("operator")
    ).json()  # fmt: skip
    assert by_bob["total"] == 1 and by_bob["items"][0]["action"] == "rollout.pause"
    setup = api.http.get(
        "/api/v1/audit", params={"actor": "ops", "limit": 10}, headers=api.headers("viewer")
    ).json()  # fmt: skip
    assert [e["action"] for e in reversed(setup["items"])] == [
        "artifact.upload",
        "artifact.upload",
        "model.register",
        "calibration.put",
        "loop.decision",
        "rollout.create",
    ]
    tokens = api.http.get(
        "/api/v1/audit", params={"action": "token.create"}, headers=api.headers("viewer")
    ).json()  # fmt: skip
    assert tokens["total"] == 5 and all(e["actor"].startswith("local:") for e in tokens["items"])
    assert all(e["role"] is None for e in tokens["items"]), "made on the database, not the API"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


# --------------------------------------------------------------------------- as operators run it


def edgeloop(*args: str) -> subprocess.CompletedProcess[str]:
    return run_command("edgeloop.cli.main", *args)


def test_tokens_are_created_listed_and_revoked_with_the_command(
    tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgeloop.cli.main import main

    def tokens(*args: str) -> tuple[int, str, str]:
        """``edgeloop tokens ARGS`` on the test's database, in this process (it is quicker)."""
        status = main(["tokens", *args, "--database-url", database_url])
        out, err = capsys.readouterr()
        return status, out, err

    status, out, err = tokens("create", "ci-deploy", "--role", "viewer", "--expires-days", "30")
    assert status == 0, err
    secret = out.strip()
    assert secret.startswith("elt_") and "\n" not in secret, "the secret alone on stdout"
    assert "created viewer token 1 'ci-deploy'" in err and "shown this once" in err

    status, out, err = tokens("ls", "--json")
    assert status == 0, err
    (token,) = json.loads(out)
    assert (token["id"], token["name"], token["role"]) == (1, "ci-deploy", "viewer")
    assert secret.startswith(token["prefix"]) and token["expires_at"] is not None
    assert secret not in out
    status, out, _ = tokens("ls")
    assert "ci-deploy" in out and token["prefix"] in out

    status, _, err = tokens("create", "pi-7", "--role", "device")
    assert status == 2 and "give its id (--device ID)" in err

    status, out, _ = tokens("revoke", "1")
    assert status == 0 and "revoked token 1" in out
    (token,) = json.loads(tokens("ls", "--json")[1])
    assert token["revoked_at"] is not None
    status, _, err = tokens("revoke", "99")
    assert status == 2 and "no token 99" in err

    app = make_app(tmp_path, database_url)
    try:
        assert authenticate(app.state.fleet.sessions, secret) is None
    finally:
        app.state.fleet.sessions.kw["bind"].dispose()


def test_a_first_start_writes_an_operator_token_that_the_client_and_the_command_use(
    tmp_path: Path, mosquitto: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    workdir = tmp_path / "server"
    server = ServerProcess(workdir, mosquitto.port, anonymous_downloads=False)
    again: ServerProcess | None = None
    try:
        server.wait_ready()
        path = workdir / "operator.token"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert server.token == path.read_text().strip()
        assert "no operator token: created 'bootstrap'" in server.log_tail(50)
        client = server.client()
        uploaded = client.upload_artifact(_file(tmp_path, MODEL_FILE))

        with pytest.raises(ApiError) as anonymous:
            ApiClient(server.url).devices()
        assert anonymous.value.status == 401
        assert f"no token was sent: set {TOKEN_ENV} or pass --token" in str(anonymous.value)
        monkeypatch.setenv(TOKEN_ENV, server.token or "")
        assert ApiClient(server.url).devices() == [], f"{TOKEN_ENV} is the default token"
        monkeypatch.delenv(TOKEN_ENV)

        viewer = edgeloop("tokens", "create", "grafana", "--role", "viewer",
                          "--workdir", str(workdir))  # fmt: skip
        assert viewer.returncode == 0, viewer.stderr
        with pytest.raises(ApiError) as forbidden:
            ApiClient(server.url, token=viewer.stdout.strip()).collect_artifacts(dry_run=True)
        assert forbidden.value.status == 403
        assert "needs an operator token; yours is a viewer token named 'grafana'" in str(
            forbidden.value
        )
        assert f"set {TOKEN_ENV} or --token to a token of the role this needs" in str(
            forbidden.value
        )
        assert server.http.get(uploaded.url, timeout=5).status_code == 200
        assert ApiClient(server.url).http.get(uploaded.url, timeout=5).status_code == 401

        trail = edgeloop("audit", "--json", "--actor", "bootstrap", "--server", server.url,
                         "--token", viewer.stdout.strip())  # fmt: skip
        assert trail.returncode == 0, trail.stderr
        (entry,) = json.loads(trail.stdout)["items"]
        assert (entry["actor"], entry["action"]) == ("bootstrap", "artifact.upload")
        refused = edgeloop("audit", "--server", server.url)
        assert refused.returncode == 2 and f"set {TOKEN_ENV} or pass --token" in refused.stderr
        server.stop()

        again = ServerProcess(workdir, mosquitto.port, anonymous_downloads=False)
        again.wait_ready()
        assert again.token == server.token, "a second start keeps the operator's token"
        names = [t["name"] for t in json.loads(
            edgeloop("tokens", "ls", "--json", "--workdir", str(workdir)).stdout)]  # fmt: skip
        assert names == ["bootstrap", "grafana"]
    finally:
        server.stop()
        if again is not None:
            again.stop()


def _file(directory: Path, data: bytes) -> Path:
    path = directory / f"{hashlib.sha256(data).hexdigest()[:8]}.bin"
    path.write_bytes(data)
    return path
