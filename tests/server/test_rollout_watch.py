"""``edgeloop rollout status ID --watch`` follows a rollout until it ends, against a real
server process, then prints where it ended."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from helpers import PI, publish, register, wait_until
from rich.console import Console

from edgeloop.agent.protocol import Channel, Hello, encode, topic
from edgeloop.lab.broker import Broker
from edgeloop.lab.faults import upload_version
from edgeloop.lab.launch import ServerProcess
from edgeloop.server.schemas import RolloutCreate, RolloutState

DEVICES = ["dev-0", "dev-1", "dev-2"]


def started_rollout(server: ServerProcess, mosquitto: Broker) -> int:
    """A rollout of a new version to three devices that never report: it runs until ended."""
    client = server.client()
    hellos = [
        (
            topic(device_id, Channel.HELLO),
            encode(Hello(device_id=device_id, agent_version="t", profile=PI, tags=["lab"])),
        )
        for device_id in DEVICES
    ]
    publish(mosquitto.port, hellos, "watch-test")
    wait_until(lambda: len(client.devices()) == len(DEVICES), 20, "hellos to be stored")
    manifest = upload_version(server.url, "1", np.eye(64, 10, dtype=np.float32), 0)
    label = register(client, manifest, 0.9).label
    rollout = client.create_rollout(RolloutCreate(model=label, waves=["1", "100%"]))
    assert rollout.state == RolloutState.RUNNING
    assert sum(rollout.waves[0].steps.values()) == 1
    return rollout.id


def test_a_watch_follows_the_rollout_until_it_is_cancelled_then_prints_the_end(
    server: ServerProcess, mosquitto: Broker
) -> None:
    rollout_id = started_rollout(server, mosquitto)
    watch = subprocess.Popen(
        [sys.executable, "-m", "edgeloop.cli.main", "rollout", "status", str(rollout_id),
         "--watch", *server.cli_args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(3)  # a few refreshes of a running rollout
        assert watch.poll() is None, "a running rollout keeps the watch going"
        server.client().rollout_action(rollout_id, "cancel")
        stdout, stderr = watch.communicate(timeout=30)
    finally:
        watch.kill()
    assert watch.returncode == 0, stderr
    assert f"rollout {rollout_id}: linear:1" in stdout and "cancelled" in stdout
    assert "waves" in stdout and "devices" in stdout
    assert all(device_id in stdout for device_id in DEVICES)


def test_a_watch_of_a_rollout_that_ended_returns_at_once_and_without_it_status_is_unchanged(
    server: ServerProcess, mosquitto: Broker
) -> None:
    rollout_id = started_rollout(server, mosquitto)
    server.client().rollout_action(rollout_id, "cancel")
    command = [sys.executable, "-m", "edgeloop.cli.main", "rollout", "status", str(rollout_id)]
    watched = subprocess.run(
        [*command, "--watch", *server.cli_args], capture_output=True, text=True, timeout=30
    )
    plain = subprocess.run([*command, *server.cli_args], capture_output=True, text=True, timeout=30)
    assert watched.returncode == plain.returncode == 0, watched.stderr + plain.stderr
    assert watched.stdout == plain.stdout
    assert "cancelled" in plain.stdout


def test_on_a_terminal_the_watch_draws_one_bar_per_wave(
    server: ServerProcess, mosquitto: Broker
) -> None:
    from edgeloop.cli.rollouts import _watch

    rollout_id = started_rollout(server, mosquitto)
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    watching = ThreadPoolExecutor(1).submit(
        _watch, server.client(), rollout_id, console, interval_s=0.2
    )
    time.sleep(1)
    assert not watching.done()
    server.client().rollout_action(rollout_id, "cancel")
    final = watching.result(timeout=10)
    assert final.state == RolloutState.CANCELLED
    drawn = screen.getvalue()
    assert "wave 1" in drawn and "wave 2" in drawn
    assert "failed 0" in drawn and "running" in drawn and "waiting" in drawn
