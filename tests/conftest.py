"""Shared fixtures: real brokers, a real control plane process, real models."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres import PostgresCluster, unavailable_reason

from edgeloop.lab.broker import Broker, EmbeddedBroker, MosquittoBroker, find_mosquitto
from edgeloop.lab.launch import ServerProcess
from edgeloop.server.client import TOKEN_ENV

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_report_header(config: pytest.Config) -> list[str]:
    mosquitto = find_mosquitto()
    return [
        f"mosquitto: {mosquitto or 'not installed (end-to-end tests that need it are skipped)'}",
        f"postgresql: {unavailable_reason() or 'initdb found: database tests run on both'}",
    ]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of our own (initdb in a temp dir, free port), for the session."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    # Not under pytest's tmp dir: that is private to root, and the cluster may run as nobody.
    root = Path(tempfile.mkdtemp(prefix="edgeloop-pg-"))
    cluster = PostgresCluster(root)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each database test runs on both backends: a fresh SQLite file, a fresh PG database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'edgeloop.db'}"
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    return cluster.create_database()


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A Mosquitto of our own on a free port (never the machine's shared :1883)."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed: apt-get install mosquitto (.ci/run does)")
    with MosquittoBroker(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


@pytest.fixture(scope="session")
def embedded_broker() -> Iterator[Broker]:
    with EmbeddedBroker() as broker:
        yield broker


@pytest.fixture()
def server(
    tmp_path: Path, mosquitto: Broker, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ServerProcess]:
    """The control plane as a separate process with its own SQLite file; ``EDGELOOP_TOKEN``
    is its operator token meanwhile, as in an operator's shell, so a client or command made
    without a token acts as the operator (``server.client()`` and ``server.headers`` say so
    explicitly)."""
    process = ServerProcess(tmp_path, mosquitto.port)
    try:
        process.wait_ready()
        assert process.token is not None
        monkeypatch.setenv(TOKEN_ENV, process.token)
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def digits_models(tmp_path_factory: pytest.TempPathFactory):
    """The real digits CNN, fp32 and int8, built once per test session."""
    from edgeloop.compressor.examples.digits import build_digits

    return build_digits(tmp_path_factory.mktemp("digits"), progress=False)
