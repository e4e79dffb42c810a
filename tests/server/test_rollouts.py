"""Staged rollouts over ten real agent processes, a real broker and the control plane process.

Fleet: dev-00 … dev-09, even ones roomy, odd ones with a 64 KB model-size budget. A rollout of a
400 KB model halts by itself in the wave that first reaches a small device; a rollout of a good
model completes even though the server is killed and restarted in the middle of it, and no
device is sent the model twice.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import register as register_version
from helpers import run_command, signing_repository, wait_until
from sqlalchemy import select

from edgeloop.agent.protocol import DeviceProfile, ModelManifest, TensorSpec
from edgeloop.lab.broker import Broker
from edgeloop.lab.faults import upload_version
from edgeloop.lab.launch import AgentProcess, ServerProcess
from edgeloop.server.client import ApiClient, ApiError
from edgeloop.server.releases import ReleaseSigner
from edgeloop.server.rollouts import wave_sizes
from edgeloop.server.schemas import (
    Criteria,
    ModelCreate,
    ModelFigures,
    RolloutCreate,
    RolloutState,
    Step,
    Target,
)

ROOMY = DeviceProfile(name="roomy", cpu_threads=1, memory_budget_mb=2048, latency_budget_ms=100)
SMALL = ROOMY.model_copy(update={"name": "small", "model_size_budget_kb": 64})
DEVICES = 10


def test_wave_sizes_are_cumulative_and_always_reach_the_whole_group() -> None:
    assert wave_sizes(["1%", "10%", "50%", "100%"], 200) == [2, 20, 100, 200]
    assert wave_sizes(["1", "30%"], 10) == [1, 3, 10]
    assert wave_sizes(["2", "2"], 5) == [2, 4, 5]
    assert wave_sizes(["100%"], 1) == [1]


def test_a_wave_that_is_neither_a_share_nor_a_count_is_refused() -> None:
    with pytest.raises(ValueError, match="neither a share"):
        RolloutCreate(model="m:1", waves=["half"])
    with pytest.raises(ValueError, match=r"\(0%, 100%\]"):
        RolloutCreate(model="m:1", waves=["150%"])


def register(client: ApiClient, manifest: ModelManifest, accuracy: float) -> str:
    return register_version(client, manifest, accuracy).label


def running(client: ApiClient) -> dict[str, str | None]:
    return {row.device_id: row.report.running if row.report else None for row in client.fleet()}


@pytest.mark.slow
def test_rollouts_halt_on_failing_devices_roll_back_and_survive_a_server_restart(
    tmp_path: Path, mosquitto: Broker
) -> None:
    server = ServerProcess(tmp_path / "server", mosquitto.port)
    agents: list[AgentProcess] = []
    try:
        server.wait_ready()
        client = server.client()
        weights = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)
        base = register(client, upload_version(server.url, "base", weights, 0), 0.9)
        big = register(client, upload_version(server.url, "big", weights, 100_000), 0.5)
        good = register(client, upload_version(server.url, "good", weights * 1.01, 0), 0.5)
        client.plan()
        for index in range(DEVICES):
            agents.append(
                AgentProcess(
                    f"dev-{index:02d}",
                    ROOMY if index % 2 == 0 else SMALL,
                    tmp_path,
                    mosquitto.port,
                    inferences=20,
                    telemetry_interval_s=30,
                    probation_s=0.3,
                    server=server,
                )
            )
        wait_until(
            lambda: list(running(client).values()) == [base] * DEVICES,
            120,
            "every device to run the base model",
        )

        # 1. A model too big for the small devices: halts in the wave that reaches dev-01.
        halted = client.create_rollout(
            RolloutCreate(
                model=big, waves=["1", "30%", "100%"], criteria=Criteria(max_failure_rate=0.0)
            )
        )
        assert [w.cumulative_size for w in halted.waves] == [1, 3, 10]
        status = wait_until(
            lambda: (s := client.rollout(halted.id)).state == RolloutState.HALTED and s,
            120,
            "the big rollout to halt",
        )
        assert status.current_wave == 2
        assert "dev-01" in status.reason and "size" in status.reason
        steps = {d.device_id: d.step for d in status.devices}
        assert steps["dev-00"] == "committed" and steps["dev-01"] == "failed"
        assert {steps[f"dev-{i:02d}"] for i in range(3, DEVICES)} == {"pending"}
        now = running(client)
        assert now["dev-00"] == big and now["dev-01"] == base
        assert all(now[f"dev-{i:02d}"] == base for i in range(3, DEVICES)), now
        with pytest.raises(ApiError, match="HTTP 409"):
            client.rollout_action(halted.id, "resume")

        # 2. The operator rolls it back: every touched device returns to the base model.
        client.rollout_action(halted.id, "rollback")
        wait_until(
            lambda: list(running(client).values()) == [base] * DEVICES,
            120,
            "the rollback to reach every device",
        )

        # 3. A good model to the roomy devices; the server dies after the first wave.
        rollout = client.create_rollout(
            RolloutCreate(model=good, target=Target(profile="roomy"), waves=["1", "3", "100%"])
        )
        wait_until(
            lambda: client.rollout(rollout.id).current_wave >= 2,
            120,
            "the first wave of the good rollout to pass",
        )
        server.kill()
        time.sleep(1)
        server = ServerProcess(tmp_path / "server", mosquitto.port, port=server.port)
        server.wait_ready()
        client = server.client()
        done = wait_until(
            lambda: (s := client.rollout(rollout.id)).state == RolloutState.COMPLETED and s,
            180,
            "the good rollout to complete after the restart",
        )
        assert {d.step for d in done.devices} == {Step.COMMITTED}
        now = running(client)
        assert {d: m for d, m in now.items() if int(d[-2:]) % 2 == 0} == {
            f"dev-{i:02d}": good for i in range(0, DEVICES, 2)
        }
        db = sqlite3.connect(tmp_path / "server" / "edgeloop.db")
        sent_to = db.execute(
            "SELECT device_id, COUNT(*) FROM reports WHERE model = ? GROUP BY device_id", (good,)
        ).fetchall()
        db.close()
        assert dict(sent_to) == {f"dev-{i:02d}": 1 for i in range(0, DEVICES, 2)}, (
            "each device applied the rollout's model exactly once"
        )
        page = client.rollouts(limit=1)
        assert page.total == 2 and [r.id for r in page.items] == [rollout.id]
    finally:
        for agent in agents:
            agent.stop()
        server.stop()


# --------------------------------------------------------------------------- engine, in-process


class FleetOnDisk:
    """A Fleet on a real database (SQLite file or PostgreSQL), recording every desired state
    it publishes."""

    def __init__(self, database_url: str) -> None:
        from edgeloop.server.db import make_engine, make_sessionmaker
        from edgeloop.server.fleet import Fleet
        from edgeloop.server.rollouts import RolloutController

        repository = signing_repository(Path(tempfile.mkdtemp(prefix="edgeloop-tuf-")))
        self.fleet = Fleet(
            make_sessionmaker(make_engine(database_url)),
            "http://h",
            ReleaseSigner.open(repository),
        )
        self.sent: list = []
        self.fleet.publish = self.sent.append
        self.controller = RolloutController(self.fleet)
        for sha in ("a" * 64, "b" * 64):
            self.fleet.record_artifact(sha, 10)
        for version, accuracy in (("1", 0.9), ("2", 0.5), ("3", 0.5)):
            self.fleet.register_model(
                ModelCreate(
                    name="m",
                    version=version,
                    artifact_sha256="a" * 64,
                    golden_sha256="b" * 64,
                    inputs=[TensorSpec(name="x", dtype="float32", shape=["batch", 4])],
                    outputs=[TensorSpec(name="y", dtype="float32", shape=["batch", 2])],
                    report=ModelFigures(accuracy=accuracy, size_bytes=10),
                ),
                plan=False,
            )

    def hello(self, device_id: str, profile: DeviceProfile = ROOMY, tags=()) -> None:
        from edgeloop.agent.protocol import Hello

        self.fleet.on_hello(
            Hello(device_id=device_id, agent_version="t", profile=profile, tags=list(tags))
        )

    def revisions(self, device_id: str) -> list[tuple[int, str | None]]:
        return [
            (d.revision, d.target.path.rsplit("/", 1)[1] if d.target else None)
            for d in self.sent
            if d.device_id == device_id
        ]

    def report(self, device_id: str, ok: bool = True, **fields) -> None:
        from edgeloop.agent.protocol import Report

        revision = self.revisions(device_id)[-1][0]
        self.fleet.on_report(
            Report(
                device_id=device_id,
                revision=revision,
                model="m:x",
                artifact_sha256="a" * 64,
                ok=ok,
                phase="committed" if ok else "failed",
                verified=True,
                running="m:x",
                **fields,
            )
        )

    def steps(self, rollout_id: int) -> dict[str, str]:
        return {d.device_id: d.step for d in self.controller.status(rollout_id).devices}


@pytest.fixture()
def fleet(database_url: str) -> FleetOnDisk:
    on_disk = FleetOnDisk(database_url)
    for index in range(4):
        on_disk.hello(f"d{index}", tags=["lab"] if index < 3 else [])
    return on_disk


def test_waves_advance_only_on_reports_and_each_device_gets_one_revision(
    fleet: FleetOnDisk,
) -> None:
    rollout = fleet.controller.create(RolloutCreate(model="m:2", waves=["50%", "100%"]))
    fleet.controller.tick()
    assert fleet.steps(rollout) == {"d0": "sent", "d1": "sent", "d2": "pending", "d3": "pending"}
    fleet.controller.tick()
    assert fleet.revisions("d0") == [(1, "1"), (2, "2")], "no second revision for the same wave"
    fleet.report("d0")
    fleet.report("d1")
    fleet.controller.tick()  # wave 1 passes
    fleet.controller.tick()  # wave 2 is sent
    assert fleet.steps(rollout)["d3"] == "sent"
    for device in ("d2", "d3"):
        fleet.report(device)
    fleet.controller.tick()
    assert fleet.controller.status(rollout).state == "completed"
    fleet.fleet.plan_all()
    assert fleet.revisions("d3")[-1] == (2, "2"), "the planner leaves rollout devices alone"


def test_a_newer_rollout_supersedes_the_older_one_on_shared_devices(fleet: FleetOnDisk) -> None:
    older = fleet.controller.create(RolloutCreate(model="m:2", waves=["100%"]))
    fleet.controller.tick()
    newer = fleet.controller.create(
        RolloutCreate(model="m:3", target=Target(tags=["lab"]), waves=["100%"])
    )
    assert fleet.steps(older) == {
        "d0": "superseded",
        "d1": "superseded",
        "d2": "superseded",
        "d3": "sent",
    }
    fleet.report("d3")
    fleet.controller.tick()
    assert fleet.controller.status(older).state == "completed", "never waits on lost devices"
    fleet.controller.tick()
    assert set(fleet.steps(newer).values()) == {"sent"}
    assert fleet.revisions("d0")[-1] == (3, "3")


def test_a_device_registering_mid_rollout_joins_the_running_wave(fleet: FleetOnDisk) -> None:
    rollout = fleet.controller.create(
        RolloutCreate(model="m:2", target=Target(tags=["lab"]), waves=["100%"])
    )
    fleet.controller.tick()
    fleet.hello("d9", tags=["lab"])
    fleet.hello("other", tags=["elsewhere"])
    fleet.controller.tick()
    steps = fleet.steps(rollout)
    assert steps["d9"] == "sent" and "other" not in steps


def test_silent_devices_time_out_and_halt_the_wave_and_cancel_stops_everything(
    fleet: FleetOnDisk,
) -> None:
    import time

    halting = fleet.controller.create(
        RolloutCreate(
            model="m:2",
            waves=["1", "100%"],
            criteria=Criteria(wave_timeout_s=0.2, max_failure_rate=0.0),
        )
    )
    fleet.controller.tick()
    time.sleep(0.3)
    fleet.controller.tick()
    status = fleet.controller.status(halting)
    assert status.state == "halted" and "no report within" in status.reason
    fleet.controller.cancel(halting)
    fleet.controller.tick()
    assert fleet.steps(halting)["d3"] == "pending", "a cancelled rollout sends nothing more"
    with pytest.raises(ValueError, match="cancelled"):
        fleet.controller.rollback(halting)


def test_a_failed_report_or_one_over_budget_halts(fleet: FleetOnDisk) -> None:
    rollout = fleet.controller.create(
        RolloutCreate(model="m:2", waves=["2", "100%"], criteria=Criteria(max_failure_rate=0.5))
    )
    fleet.controller.tick()
    fleet.report("d0", within_budget=False, budget_detail={"latency": False})
    fleet.controller.tick()
    assert fleet.controller.status(rollout).state == "running", "1 of 2 is within 50%"
    fleet.report("d1", ok=False, gate="golden", error="max abs error 3")
    fleet.controller.tick()
    status = fleet.controller.status(rollout)
    assert status.state == "halted"
    assert "over budget" in status.reason and "golden" in status.reason
    assert fleet.controller.rollback(rollout) == 2
    assert fleet.revisions("d0")[-1] == (3, "1")


def edgeloop(*args: str) -> subprocess.CompletedProcess[str]:
    return run_command("edgeloop.cli.main", *args)


def test_the_operator_cli_drives_rollouts_over_the_rest_api(server: ServerProcess) -> None:
    url = server.cli_args
    missing = edgeloop("rollout", "create", "nothing:1", *url)
    assert missing.returncode == 2
    assert "no model 'nothing:1'" in missing.stderr and "Traceback" not in missing.stderr
    listed = edgeloop("rollout", "status", *url, "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout)["total"] == 0
    unknown = edgeloop("rollout", "pause", "42", *url)
    assert unknown.returncode == 2 and "HTTP 404" in unknown.stderr
    bad = edgeloop("rollout", "cancel", "first", *url)
    assert bad.returncode == 2 and "needs a rollout ID" in bad.stderr
    devices = edgeloop("devices", "ls", *url, "--json")
    assert devices.returncode == 0 and json.loads(devices.stdout) == []
    assert "0 devices" in edgeloop("devices", "ls", *url).stdout


def test_a_halt_reason_names_each_failing_gate_once(fleet: FleetOnDisk) -> None:
    from edgeloop.agent.errors import GateError
    from edgeloop.agent.protocol import Gate

    rollout = fleet.controller.create(
        RolloutCreate(model="m:2", waves=["100%"], criteria=Criteria(max_failure_rate=0.5))
    )
    fleet.controller.tick()
    # Worded as the agent words them: a gate's error carries the gate, a restart loop's not.
    unloadable = "onnxruntime cannot open the file: INVALID_PROTOBUF"
    fleet.report("d0", ok=False, gate=Gate.LOADS, error=str(GateError(Gate.LOADS, unloadable)))
    fleet.report(
        "d1", ok=False, gate=Gate.RESTARTS, error="agent restarted 3 times during verifying"
    )
    fleet.report("d2", ok=False, error="disk full")
    fleet.controller.tick()
    status = fleet.controller.status(rollout)
    assert status.state == "halted"
    assert (
        "d0: failed at loads: onnxruntime cannot open the file: INVALID_PROTOBUF" in status.reason
    )
    assert "d1: failed at restarts: agent restarted 3 times during verifying" in status.reason
    assert "d2: failed: disk full" in status.reason
    assert status.reason.count("loads") == 1 and status.reason.count("restarts") == 1
    details = {d.device_id: d.detail for d in status.devices}
    assert details["d0"] == f"failed at loads: {unloadable}"


def test_a_rollout_whose_model_row_went_bad_halts_and_the_others_go_on(
    fleet: FleetOnDisk,
) -> None:
    from edgeloop.server.models import ModelVersion

    spoiled = fleet.controller.create(
        RolloutCreate(model="m:2", target=Target(devices=["d0"]), waves=["100%"])
    )
    healthy = fleet.controller.create(
        RolloutCreate(model="m:3", target=Target(devices=["d1"]), waves=["100%"])
    )
    with fleet.fleet.sessions.begin() as db:
        model = db.scalar(select(ModelVersion).where(ModelVersion.version == "2"))
        assert model is not None
        model.report = {"accuracy": "high"}
    fleet.controller.tick()
    status = fleet.controller.status(spoiled)
    assert status.state == "halted"
    assert "model m:2 as stored is unusable (report.accuracy" in status.reason
    assert "retire it" in status.reason
    assert fleet.steps(healthy) == {"d1": "sent"}
    with pytest.raises(ValueError, match="m:2 as stored is unusable"):
        fleet.controller.create(RolloutCreate(model="m:2", waves=["100%"]))


def test_only_running_and_paused_rollouts_hold_their_model_against_retention(
    fleet: FleetOnDisk,
) -> None:
    """A halted rollout cannot be resumed, and completed, cancelled or rolled-back ones send
    nothing more: retention retires their models unless a device was sent, runs, or can roll
    back to them. A paused one can be resumed, so its model stays."""
    from edgeloop.server.registry import RetentionError, apply_retention, retire

    for version in range(4, 13):
        fleet.fleet.register_model(
            ModelCreate(
                name="m",
                version=str(version),
                artifact_sha256="a" * 64,
                golden_sha256="b" * 64,
                inputs=[TensorSpec(name="x", dtype="float32", shape=["batch", 4])],
                outputs=[TensorSpec(name="y", dtype="float32", shape=["batch", 2])],
                report=ModelFigures(accuracy=0.5, size_bytes=10),
            ),
            plan=False,
        )
    create, tick = fleet.controller.create, fleet.controller.tick

    halted = create(
        RolloutCreate(
            model="m:4",
            target=Target(devices=["d0"]),
            waves=["100%"],
            criteria=Criteria(wave_timeout_s=0.2),
        )
    )
    tick()
    time.sleep(0.3)
    tick()
    completed = create(RolloutCreate(model="m:5", waves=["100%"]))
    tick()
    for device in ("d0", "d1", "d2", "d3"):
        fleet.report(device)
    tick()
    cancelled = create(RolloutCreate(model="m:6", target=Target(devices=["d1"]), waves=["100%"]))
    fleet.controller.cancel(cancelled)
    rolled_back = create(RolloutCreate(model="m:7", target=Target(devices=["d2"]), waves=["100%"]))
    tick()
    fleet.report("d2")
    fleet.controller.rollback(rolled_back)
    paused = create(RolloutCreate(model="m:8", target=Target(devices=["d3"]), waves=["100%"]))
    fleet.controller.pause(paused)

    listed = fleet.controller.page()
    assert [(r.id, r.state) for r in listed.items] == [
        (paused, "paused"),
        (rolled_back, "rolled_back"),
        (cancelled, "cancelled"),
        (completed, "completed"),
        (halted, "halted"),
    ]
    with fleet.fleet.sessions.begin() as db:
        with pytest.raises(RetentionError, match=f"target of paused rollout {paused}"):
            retire(db, "m", "8")
        retired = apply_retention(db, keep=1)
    assert sorted(retired, key=lambda label: int(label[2:])) == [
        f"m:{v}" for v in (1, 2, 3, 4, 6, 7, 9, 10, 11)
    ], "kept: m:12 (newest), m:5 (sent to every device), m:8 (a paused rollout's)"
