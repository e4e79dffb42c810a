"""Shared fixtures: real brokers, a real control plane process, real models."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeloop.server.broker import Broker, EmbeddedBroker, MosquittoBroker, find_mosquitto
from edgeloop.server.launch import ServerProcess

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_report_header(config: pytest.Config) -> str:
    mosquitto = find_mosquitto()
    return f"mosquitto: {mosquitto or 'not installed (end-to-end tests that need it are skipped)'}"


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
def server(tmp_path: Path, mosquitto: Broker) -> Iterator[ServerProcess]:
    """The control plane as a separate process with its own SQLite file."""
    process = ServerProcess(tmp_path, mosquitto.port)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def digits_models(tmp_path_factory: pytest.TempPathFactory):
    """The real digits CNN, fp32 and int8, built once per test session."""
    from edgeloop.compressor.examples.digits import build_digits

    return build_digits(tmp_path_factory.mktemp("digits"), progress=False)
