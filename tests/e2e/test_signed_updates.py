"""Signed updates, attacked: every TUF attack fails against the real server and agent.

One control plane (``edgeloop serve`` with its TUF repository, timestamp metadata that lives
only seconds) and one enrolled device whose update flow reaches it only through an attacker on
the network path (:mod:`edgeloop.lab.attacks`). Each attack must end on its gate, with the
committed model still serving; a genuine release still installs after all of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from edgeloop.agent.protocol import Gate, Phase
from edgeloop.lab.attacks import ATTACKS, TIMESTAMP_LIFE_S, Stage, play
from edgeloop.lab.broker import Broker
from edgeloop.lab.launch import ServerProcess
from edgeloop.server.tuf_repo import Expiry


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory, mosquitto: Broker) -> Iterator[Stage]:
    root = tmp_path_factory.mktemp("attacked")
    server = ServerProcess(
        root / "server",
        mosquitto.port,
        tuf_expiry=Expiry(timestamp=timedelta(seconds=TIMESTAMP_LIFE_S)),
    )
    try:
        server.wait_ready()
        stage = Stage(server, root)
        stage.commit_genuine()
        yield stage
        stage.close()
    finally:
        server.stop()


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_the_attack_is_refused_on_its_gate_and_the_committed_model_keeps_serving(
    stage: Stage, attack: str
) -> None:
    outcome = play(stage, attack)
    assert outcome.gate == outcome.expected, outcome
    assert outcome.serving is not None, "the committed model stopped serving"
    report = stage.reports[-1]
    assert report.phase == Phase.FAILED and not report.ok
    assert report.running == outcome.serving, "the report names what still serves"


def test_after_every_attack_a_genuine_release_still_installs(stage: Stage) -> None:
    report = stage.commit_genuine()
    assert report.ok and report.phase == Phase.COMMITTED
    assert stage.serving() == report.running


def test_a_desired_state_is_refused_until_the_device_has_a_pinned_root(
    stage: Stage, tmp_path: Path
) -> None:
    from edgeloop.agent.config import AgentConfig
    from edgeloop.agent.host import ModelHost
    from edgeloop.agent.protocol import Desired
    from edgeloop.agent.releases import Releases, device_session
    from edgeloop.agent.updater import Hooks, Updater

    config = AgentConfig(
        device_id="never-enrolled",
        workdir=tmp_path,
        profile=stage.config.profile,
        server=stage.server.url,
    )
    reports = []
    updater = Updater(
        config,
        ModelHost(),
        Hooks(on_report=reports.append),
        resolve=Releases(config, device_session(config)).resolve,
    )
    updater.start()
    _, target = stage.release()
    updater.apply(
        Desired(device_id="never-enrolled", revision=1, target=target, profile=config.profile)
    )
    assert reports[-1].gate == Gate.SIGNATURE
    assert "enrol" in (reports[-1].error or "")
    assert updater.host.model is None


def test_the_server_re_signs_the_timestamp_before_it_expires(stage: Stage) -> None:
    """Nobody publishes meanwhile: the server's own refresh keeps devices unfrozen."""
    import time
    from datetime import UTC, datetime

    from tuf.api.metadata import Metadata

    def timestamp() -> Metadata:
        body = stage.server.http.get(f"{stage.server.url}/tuf/timestamp.json", timeout=10)
        body.raise_for_status()
        return Metadata.from_bytes(body.content)

    first = timestamp()
    time.sleep(TIMESTAMP_LIFE_S * 1.5)
    later = timestamp()
    assert later.signed.version > first.signed.version
    assert later.signed.expires > datetime.now(UTC), "the served timestamp has expired"
