"""The agent under faults, as real processes: kill -9 mid-update, a broker outage, the CLI.

The full campaigns (200 kills, a 60 s outage) run in ``edgeloop bench agent``; here the same
harness runs fewer kills so the suite stays quick, and the outage runs at full length.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import run_command

from edgeloop.lab.broker import Broker, find_mosquitto
from edgeloop.lab.faults import (
    PROFILE,
    DesiredPublisher,
    kill9_campaign,
    outage_campaign,
    upload_version,
    wait_settled,
)
from edgeloop.lab.launch import AgentProcess, ServerProcess

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed"),
]

KILL_RUNS = int(os.environ.get("EDGELOOP_KILL9_RUNS", "12"))
OUTAGE_S = float(os.environ.get("EDGELOOP_OUTAGE_S", "60"))


def test_kill_9_at_random_moments_of_updates_always_ends_committed_or_rolled_back(
    tmp_path: Path,
) -> None:
    result = kill9_campaign(tmp_path, KILL_RUNS, seed=1, padding_floats=500_000)
    assert result.runs == KILL_RUNS
    assert result.consistent == KILL_RUNS, "\n".join(result.failures)
    assert set(result.outcomes) <= {"committed", "rolled_back"}
    assert "rolled_back" in result.outcomes, "every fourth version must fail probation"


def test_telemetry_produced_while_the_broker_is_down_arrives_complete_and_in_order(
    tmp_path: Path,
) -> None:
    result = outage_campaign(tmp_path, OUTAGE_S)
    assert result.produced >= OUTAGE_S / 0.2 * 0.8, result
    assert result.lost == 0, result
    assert result.out_of_order == 0, result


def agent_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_command("edgeloop.agent.cli", *args)


def test_status_and_rollback_commands_work_with_and_without_a_running_agent(
    tmp_path: Path, mosquitto: Broker
) -> None:
    import numpy as np

    from edgeloop.lab.broker import MosquittoBroker

    device_dir = tmp_path / "devices" / "cli-01"
    with MosquittoBroker(tmp_path / "server-broker") as server_broker:
        server = ServerProcess(tmp_path / "server", server_broker.port)
        planner = DesiredPublisher(mosquitto.port, "cli-01", server.workdir / "tuf")
        agent = None
        try:
            server.wait_ready()
            weights = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)
            first = upload_version(server.url, "1", weights, 0)
            second = upload_version(server.url, "2", weights * 1.01, 0)
            agent = AgentProcess(
                "cli-01", PROFILE, tmp_path, mosquitto.port, probation_s=0.2, server=server
            )
            planner.publish(101, first)
            assert wait_settled(device_dir, 101, 60) == "committed", agent.log_tail()
            planner.publish(102, second)
            assert wait_settled(device_dir, 102, 60) == "committed", agent.log_tail()

            shown = agent_cli("status", "--workdir", str(device_dir))
            assert shown.returncode == 0, shown.stderr
            assert "committed" in shown.stdout and "linear:2" in shown.stdout

            rolled = agent_cli("rollback", "--workdir", str(device_dir))  # via the endpoint
            assert rolled.returncode == 0, rolled.stderr
            assert "serving linear:1" in rolled.stdout
            again = agent_cli("rollback", "--workdir", str(device_dir))
            assert again.returncode != 0 and "nothing to roll back to" in again.stderr
        finally:
            if agent is not None:
                agent.stop()
            planner.close()
            server.stop()

    record = json.loads(agent_cli("status", "--workdir", str(device_dir), "--json").stdout)
    assert record["state"] == "rolled_back"
    assert record["committed"]["label"] == "linear:1"
    assert record["gate"] == "operator"
    assert record["active_slot"] == record["committed"]["slot"]


# A crash right after each state is persisted, and where the restarted agent must end up.
CRASH_TABLE = [
    # (killed right after persisting, model of the update, expected end)
    ("downloading", "good", "committed"),
    ("verifying", "good", "committed"),
    ("validating", "good", "committed"),
    ("activating", "good", "committed"),
    ("probation", "good", "committed"),
    ("committed", "good", "committed"),
    ("probation", "rogue", "rolled_back"),
    ("rolled_back", "rogue", "rolled_back"),
]


@pytest.mark.parametrize(("killed_at", "model", "expected"), CRASH_TABLE)
def test_a_crash_right_after_each_state_is_persisted_resumes_to_a_consistent_end(
    killed_at: str, model: str, expected: str, tmp_path: Path
) -> None:
    import time

    import numpy as np

    from edgeloop.agent.updater import KILL_AT_ENV
    from edgeloop.lab.faults import (
        _check_serving,
        check_device,
        check_state_file,
        control_plane,
    )

    device_id = "crash-01"
    device_dir = tmp_path / "devices" / device_id
    with control_plane(tmp_path) as (server, device_port):
        weights = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)
        first = upload_version(server.url, "1", weights, 0)
        update = upload_version(
            server.url,
            model,
            weights * 1.01 if model == "good" else weights[:, ::-1].copy(),
            0,
            min_agreement=0.9,
        )
        planner = DesiredPublisher(device_port, device_id, server.workdir / "tuf")
        agent = AgentProcess(
            device_id, PROFILE, tmp_path, device_port, probation_s=0.2, server=server
        )
        try:
            planner.publish(1, first)
            assert wait_settled(device_dir, 1, 60) == "committed", agent.log_tail()
            agent.stop()
            agent = AgentProcess(
                device_id,
                PROFILE,
                tmp_path,
                device_port,
                probation_s=0.2,
                env={KILL_AT_ENV: killed_at},
                server=server,
            )
            planner.publish(2, update)
            deadline = time.monotonic() + 60
            while agent.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert agent.process.returncode == -9, "the fault hook did not fire"
            assert check_state_file(device_dir) == (killed_at, None)
            agent.stop()
            agent = AgentProcess(
                device_id, PROFILE, tmp_path, device_port, probation_s=0.2, server=server
            )
            assert wait_settled(device_dir, 2, 60) == expected, agent.log_tail()
            assert _check_serving(device_dir, device_id) is None
            assert check_device(device_dir, 2) == (expected, None)
        finally:
            agent.stop()
            planner.close()
