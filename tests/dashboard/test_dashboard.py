"""The dashboard (``/ui/``): its session and CSRF rules and its SQL cost on an in-process app,
then every page in a real headless Chromium against a real server process fed by real agents.

The browser tests fail, never skip, where Chromium or its driver is missing: a dashboard
nobody loaded in a browser is not tested."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import publish, wait_until
from helpers import register as register_version
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy.orm import Session, sessionmaker

from edgeloop.agent.protocol import Channel, DeviceProfile, Hello, topic
from edgeloop.lab.bench.dashboard import PAGES, StatementCounter, filled_app
from edgeloop.lab.broker import Broker, MosquittoBroker
from edgeloop.lab.faults import upload_version
from edgeloop.lab.launch import AgentProcess, ServerProcess
from edgeloop.server.auth import Role, create_token, list_audit
from edgeloop.server.dashboard.routes import COOKIE, csrf_token
from edgeloop.server.db import make_engine, make_sessionmaker
from edgeloop.server.models import ModelVersion
from edgeloop.server.schemas import Criteria, LoopDecisionCreate, RolloutCreate, RolloutState

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
MAX_STATEMENTS_PER_PAGE = 6


# --------------------------------------------------------------------------- in-process app


@dataclass
class App:
    http: TestClient
    sessions: sessionmaker[Session]
    counter: StatementCounter
    secrets: dict[str, str]

    def as_(self, role: str) -> TestClient:
        self.http.cookies.clear()
        self.http.cookies.set(COOKIE, self.secrets[role])
        return self.http


def make_app(root: Path, devices: int) -> App:
    app = filled_app(root, devices)
    sessions = app.state.fleet.sessions
    secrets = {
        "operator": create_token(sessions, Role.OPERATOR, "ops")[0],
        "viewer": create_token(sessions, Role.VIEWER, "grafana")[0],
        "device": create_token(sessions, Role.DEVICE, "dev-0001", device_id="dev-0001")[0],
    }
    http = TestClient(app, follow_redirects=False)
    return App(http, sessions, StatementCounter(sessions.kw["bind"]), secrets)


@pytest.fixture()
def app(tmp_path: Path) -> App:
    return make_app(tmp_path, 30)


def test_dashboard_login_refuses_a_bad_token_and_a_device_token(app: App) -> None:
    http = app.http
    unknown = http.post("/ui/login", data={"token": "elt_" + "x" * 43})
    assert unknown.status_code == 401 and "not known to this server" in unknown.text
    garbage = http.post("/ui/login", data={"token": "hunter2"})
    assert garbage.status_code == 401
    device = http.post("/ui/login", data={"token": app.secrets["device"]})
    assert device.status_code == 403 and "device token" in device.text
    for answer in (unknown, garbage, device):
        assert COOKIE not in answer.cookies
    assert app.as_("device").get("/ui/").headers["location"].startswith("/ui/login")


def test_dashboard_login_sets_a_strict_httponly_cookie_and_pages_need_it(app: App) -> None:
    http = app.http
    for page in PAGES:
        answer = http.get(page)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/login")
    answer = http.post("/ui/login", data={"token": app.secrets["viewer"], "next": "/ui/rollouts"})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/rollouts"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    elsewhere = http.post(
        "/ui/login", data={"token": app.secrets["viewer"], "next": "https://evil.example/"}
    )
    assert elsewhere.headers["location"] == "/ui/", "never an open redirect"
    for page in PAGES:
        assert app.as_("viewer").get(page).status_code == 200, page
    intake = app.http.get("/ui/intake.json").json()
    assert intake == {"telemetry_rows": 30 * 5, "intake": None}, "no MQTT bridge in this app"
    logout = http.get("/ui/logout")
    assert logout.status_code == 303 and f'{COOKIE}=""' in logout.headers["set-cookie"]


def test_dashboard_rollout_actions_need_the_csrf_token_and_an_operator(app: App) -> None:
    operator = app.as_("operator")
    page = operator.get("/ui/rollouts/1")
    assert 'id="action-pause"' in page.text
    for form in ({}, {"csrf": "0" * 64}, {"csrf": csrf_token(app.secrets["viewer"])}):
        refused = operator.post("/ui/rollouts/1/pause", data=form)
        assert refused.status_code == 403, refused.text
    assert "running" in operator.get("/ui/rollouts/1/progress.json").json()["state"]

    viewer = app.as_("viewer")
    assert 'class="op' not in viewer.get("/ui/rollouts/1").text
    refused = viewer.post("/ui/rollouts/1/pause", data={"csrf": csrf_token(app.secrets["viewer"])})
    assert refused.status_code == 403 and "only operators" in refused.text

    operator = app.as_("operator")
    done = operator.post("/ui/rollouts/1/pause", data={"csrf": csrf_token(app.secrets["operator"])})
    assert done.status_code == 303
    assert operator.get("/ui/rollouts/1/progress.json").json()["state"] == RolloutState.PAUSED
    with app.sessions() as db:
        entries = list_audit(db, action="rollout.pause").items
    assert [(e.actor, e.role, e.target) for e in entries] == [("ops", "operator", "rollout:1")]
    again = operator.post(
        "/ui/rollouts/1/pause", data={"csrf": csrf_token(app.secrets["operator"])}
    )
    assert "error=" in again.headers["location"], "a refusal comes back to the page"


def test_dashboard_pages_cost_the_same_sql_statements_at_any_fleet_size(tmp_path: Path) -> None:
    costs: dict[int, dict[str, int]] = {}
    for devices in (20, 300):
        app = make_app(tmp_path / str(devices), devices)
        http = app.as_("viewer")
        costs[devices] = {}
        for page in PAGES:
            with app.counter.counting() as counted:
                assert http.get(page).status_code == 200, page
            costs[devices][page] = counted.count
    assert costs[20] == costs[300], costs
    assert max(costs[300].values()) <= MAX_STATEMENTS_PER_PAGE, costs


def test_dashboard_fleet_page_filters_and_names_failing_devices(app: App) -> None:
    http = app.as_("viewer")
    page = http.get("/ui/", params={"profile": "jetson", "state": "offline"}).text
    # fill_fleet: profile jetson is index % 3 == 1, offline is index % 5 == 0 → 10, 25
    assert "2 of 30 devices" in page
    assert "dev-0010" in page and "dev-0025" in page
    assert 'id="failing"' in page and "over budget" in page  # every seventh device


def test_dashboard_models_page_shows_a_pareto_plot_to_a_logged_in_reader(app: App) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    sha = hashlib.sha256(png).hexdigest()
    app.http.app.state.store.path(sha).write_bytes(png)  # type: ignore[attr-defined]
    with app.sessions.begin() as db:
        version = db.get(ModelVersion, 2)
        assert version is not None
        version.pareto_sha256 = sha
    assert app.http.get("/ui/models/2/pareto").status_code == 303, "no cookie: log in first"
    http = app.as_("viewer")
    page = http.get("/ui/models").text
    assert page.count('class="pareto"') == 1 and 'src="/ui/models/2/pareto"' in page
    image = http.get("/ui/models/2/pareto")
    assert image.status_code == 200 and image.content == png
    assert image.headers["content-type"] == "image/png"
    assert http.get("/ui/models/1/pareto").status_code == 404


def test_dashboard_routes_stay_out_of_the_api_document(app: App) -> None:
    paths = app.http.app.openapi()["paths"]  # type: ignore[attr-defined]
    assert not [path for path in paths if path.startswith("/ui")]


# --------------------------------------------------------------------------- a real browser

ROOMY = DeviceProfile(name="roomy", cpu_threads=2, memory_budget_mb=512, latency_budget_ms=50)
GHOST = "aa-ghost"
"""A device that said hello and never reports: sorted first, it is a rollout's whole first
wave, which then waits for its timeout; the page is watched meanwhile."""


@dataclass
class Field:
    server: ServerProcess
    agents: list[AgentProcess]
    viewer: str
    base: str
    good: str
    artifacts: Path


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker of this module's own: what its agents and server leave retained (desired
    states, statuses) must not reach other tests' devices of the same names."""
    with MosquittoBroker(tmp_path_factory.mktemp("dashboard-broker")) as broker:
        yield broker


@pytest.fixture(scope="module")
def field(tmp_path_factory: pytest.TempPathFactory, own_broker: Broker) -> Iterator[Field]:
    """A server, three agents running a base model (telemetry each second), a ghost device,
    a loop decision, and a viewer token."""
    mosquitto = own_broker
    root = tmp_path_factory.mktemp("dashboard")
    server = ServerProcess(root / "server", mosquitto.port)
    agents: list[AgentProcess] = []
    try:
        server.wait_ready()
        client = server.client()
        weights = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)
        base = register_version(client, upload_version(server.url, "base", weights, 0), 0.9)
        good = register_version(client, upload_version(server.url, "good", weights * 1.01, 0), 0.5)
        client.plan()
        for index in range(3):
            agents.append(
                AgentProcess(
                    f"dev-{index:02d}",
                    ROOMY,
                    root,
                    mosquitto.port,
                    inferences=20,
                    telemetry_interval_s=1,
                    probation_s=0.3,
                    server=server,
                )
            )
        ghost = Hello(device_id=GHOST, agent_version="ghost", profile=ROOMY)
        publish(mosquitto.port, [(topic(GHOST, Channel.HELLO), ghost.model_dump_json().encode())])
        wait_until(
            lambda: (
                sum(1 for row in client.fleet() if row.report and row.report.running == base.label)
                == 3
            ),
            90,
            "every agent to run the base model",
        )
        client.record_decision(
            LoopDecisionCreate(
                loop="linear",
                round=1,
                profile="roomy",
                action="deploy",
                model=good.label,
                reason="the most accurate candidate predicted to fit",
                figures={
                    "budget": {"latency_p95_ms": 50},
                    "measured": {"model": base.label, "p95_ms": 0.2},
                    "predicted": {base.label: {"latency_p95_ms": 0.25}},
                },
            )
        )
        engine = make_engine(f"sqlite:///{server.workdir / 'edgeloop.db'}", migrate_schema=False)
        viewer, _ = create_token(make_sessionmaker(engine), Role.VIEWER, "viewer")
        engine.dispose()
        yield Field(server, agents, viewer, base.label, good.label, root / "screenshots")
    finally:
        for agent in agents:
            agent.stop()
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    for path in (CHROMIUM, CHROMEDRIVER):
        assert Path(path).exists(), f"{path} is missing: apt-get install chromium chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def log_in(driver: WebDriver, field: Field, secret: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{field.server.url}/ui/login")
    driver.find_element(By.ID, "token").send_keys(secret)
    driver.find_element(By.ID, "login").click()
    WebDriverWait(driver, 10).until(lambda d: "/ui/login" not in d.current_url)


def severe(driver: WebDriver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def screenshot(driver: WebDriver, field: Field, name: str) -> None:
    field.artifacts.mkdir(parents=True, exist_ok=True)
    path = field.artifacts / f"{name}.png"
    driver.save_screenshot(str(path))
    if target := os.environ.get("EDGELOOP_ARTIFACTS"):
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / f"dashboard-{name}.png")


def test_browser_every_page_loads_without_console_errors(browser: WebDriver, field: Field) -> None:
    log_in(browser, field, field.server.token or "")
    severe(browser)  # drop what login left
    rollout = field.server.client().rollouts().items
    pages = {
        "fleet": "/ui/",
        "device": "/ui/devices/dev-00",
        "rollouts": "/ui/rollouts",
        "models": "/ui/models",
        "loop": "/ui/loop",
        **({"rollout": f"/ui/rollouts/{rollout[0].id}"} if rollout else {}),
    }
    for name, path in pages.items():
        browser.get(field.server.url + path)
        assert browser.find_element(By.TAG_NAME, "h1").text, path
        assert "/ui/login" not in browser.current_url
        screenshot(browser, field, name)
        assert severe(browser) == [], path
    browser.get(field.server.url + "/ui/")
    assert browser.find_element(By.ID, "online-count").text == "4"
    assert "dev-02" in browser.find_element(By.ID, "devices").text
    # The intake figures follow the bridge without a reload: samples keep arriving, and a
    # message the bridge cannot decode shows up under its reason.
    browser.execute_script("window.notReloaded = true")
    stored = int(browser.find_element(By.ID, "telemetry-rows").text)
    publish(field.server.mqtt_port, [(topic("dev-00", Channel.HELLO), b"{not json")], "vandal")
    WebDriverWait(browser, 15, poll_frequency=0.3).until(
        lambda d: (
            int(d.find_element(By.ID, "telemetry-rows").text) > stored
            and "dropped, by reason" in d.find_element(By.ID, "dropped").text
        )
    )
    assert browser.execute_script("return window.notReloaded") is True
    screenshot(browser, field, "fleet-intake")
    assert severe(browser) == []


def test_browser_device_page_charts_have_data_points(browser: WebDriver, field: Field) -> None:
    log_in(browser, field, field.viewer)
    wait_until(
        lambda: field.server.client().telemetry("dev-00").total >= 3, 30, "three telemetry samples"
    )
    browser.get(field.server.url + "/ui/devices/dev-00")
    charts = browser.find_elements(By.CSS_SELECTOR, "#charts figure.chart")
    assert len(charts) >= 6
    points = {
        chart.find_element(By.TAG_NAME, "figcaption").text.split(" (")[0]: len(
            chart.find_elements(By.CSS_SELECTOR, "circle.point")
        )
        for chart in charts
    }
    assert points["Memory"] >= 3 and points["CPU"] >= 3, points
    assert browser.find_elements(By.CSS_SELECTOR, "#charts polyline.line")
    assert browser.find_elements(By.CSS_SELECTOR, "#timeline li.ok"), "the base model's report"
    screenshot(browser, field, "device-charts")
    assert severe(browser) == []


def test_browser_rollout_progress_updates_live_without_a_reload(
    browser: WebDriver, field: Field
) -> None:
    log_in(browser, field, field.viewer)
    client = field.server.client()
    rollout = client.create_rollout(
        RolloutCreate(
            model=field.good,
            waves=["1", "100%"],
            criteria=Criteria(wave_timeout_s=8, max_failure_rate=1.0),
        )
    )
    browser.get(f"{field.server.url}/ui/rollouts/{rollout.id}")
    assert browser.find_element(By.ID, "rollout-state").text == "running"
    assert browser.find_element(By.ID, "rollout-wave").text == "1"
    browser.execute_script("window.notReloaded = true")
    seen = {browser.find_element(By.ID, "rollout-ended").text}

    def finished(driver: WebDriver) -> bool:
        seen.add(driver.find_element(By.ID, "rollout-ended").text)
        return driver.find_element(By.ID, "rollout-state").text == "completed"

    WebDriverWait(browser, 90, poll_frequency=0.3).until(finished)
    assert browser.execute_script("return window.notReloaded") is True, "the page was reloaded"
    assert browser.find_element(By.ID, "rollout-ended").text == "4"
    assert {"0", "4"} <= seen, seen
    row = browser.find_element(By.CSS_SELECTOR, 'tr[data-wave="1"]')
    assert row.find_element(By.CLASS_NAME, "failures").text == "1", "the ghost timed out"
    assert client.rollout(rollout.id).state == RolloutState.COMPLETED
    screenshot(browser, field, "rollout-live")
    assert severe(browser) == []


def test_browser_an_operator_pauses_a_rollout_and_a_viewer_sees_no_buttons(
    browser: WebDriver, field: Field
) -> None:
    client = field.server.client()
    rollout = client.create_rollout(
        RolloutCreate(model=field.base, waves=["1", "100%"], criteria=Criteria(wave_timeout_s=600))
    )
    page = f"{field.server.url}/ui/rollouts/{rollout.id}"
    try:
        log_in(browser, field, field.viewer)
        for path in ("/ui/", "/ui/devices/dev-00", "/ui/rollouts", "/ui/models", "/ui/loop"):
            browser.get(field.server.url + path)
            assert browser.find_elements(By.CSS_SELECTOR, "form[method=post], .op") == [], path
        browser.get(page)
        assert browser.find_element(By.ID, "rollout-state").text == "running"
        assert browser.find_elements(By.TAG_NAME, "button") == []
        screenshot(browser, field, "rollout-viewer")

        log_in(browser, field, field.server.token or "")
        browser.get(page)
        buttons = {b.text for b in browser.find_elements(By.CSS_SELECTOR, "button.op")}
        assert buttons == {"Pause", "Cancel", "Rollback"}
        browser.find_element(By.ID, "action-pause").click()
        # The click posts a form and the page reloads: an element read mid-reload is stale.
        WebDriverWait(browser, 10, ignored_exceptions=(StaleElementReferenceException,)).until(
            lambda d: d.find_element(By.ID, "rollout-state").text == "paused"
        )
        assert client.rollout(rollout.id).state == RolloutState.PAUSED
        audit = client.audit(action="rollout.pause").items
        assert (
            audit and audit[0].actor == "bootstrap" and audit[0].target == f"rollout:{rollout.id}"
        )
        assert {b.text for b in browser.find_elements(By.CSS_SELECTOR, "button.op")} == {
            "Resume",
            "Cancel",
            "Rollback",
        }
        screenshot(browser, field, "rollout-paused")
        assert severe(browser) == []
    finally:
        client.rollout_action(rollout.id, "cancel")
