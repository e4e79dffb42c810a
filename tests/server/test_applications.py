"""Applications on one fleet, against a real server process: a model version belongs to one
application, a device runs one (its config declares it, an operator's assignment by tag
wins), and the planner, rollouts and pushes never reach across applications."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import PI, publish, run_command, wait_until

from edgeloop.agent.protocol import Channel, Hello, encode, topic
from edgeloop.lab.broker import Broker
from edgeloop.lab.faults import CLASSES, FEATURES, upload_version
from edgeloop.lab.launch import ServerProcess
from edgeloop.server.client import ApiError
from edgeloop.server.schemas import (
    Criteria,
    ModelCreate,
    ModelFigures,
    RolloutCreate,
    Target,
)


@pytest.fixture()
def api(tmp_path: Path, mosquitto: Broker) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path / "server", mosquitto.port)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def hello(device_id: str, *, application: str | None = None, tags: list[str] | None = None):
    message = Hello(
        device_id=device_id,
        agent_version="t",
        profile=PI,
        application=application,
        tags=tags or [],
    )
    return topic(device_id, Channel.HELLO), encode(message)


def push(
    api: ServerProcess,
    application: str,
    name: str,
    version: str,
    figure: float,
    *,
    higher_is_better: bool = True,
    plan: bool = True,
) -> str:
    weights = np.random.default_rng(len(version)).normal(size=(FEATURES, CLASSES))
    manifest = upload_version(api.url, version, weights.astype(np.float32), 0)
    api.client().register_model(
        ModelCreate(
            name=name,
            version=version,
            application=application,
            artifact_sha256=manifest.artifact.sha256,
            golden_sha256=manifest.golden.sha256,
            inputs=manifest.inputs,
            outputs=manifest.outputs,
            report=ModelFigures(
                accuracy=figure,
                metric_name="accuracy" if higher_is_better else "mae",
                higher_is_better=higher_is_better,
                size_bytes=manifest.artifact.size,
            ),
        ),
        plan=plan,
    )
    return f"{name}:{version}"


def desired(api: ServerProcess) -> dict[str, str | None]:
    return {d.device_id: (d.desired.model if d.desired else None) for d in api.client().devices()}


def test_a_device_is_offered_only_its_applications_versions(
    api: ServerProcess, mosquitto: Broker
) -> None:
    publish(
        mosquitto.port,
        [
            hello("cam-1", application="vision"),
            hello("arm-1", application="control"),
            hello("old-1"),
        ],
    )
    client = api.client()
    wait_until(lambda: len(client.devices()) == 3, 20, "three hellos")
    apps = {d.device_id: (d.application, d.application_source) for d in client.devices()}
    assert apps == {
        "cam-1": ("vision", "device"),
        "arm-1": ("control", "device"),
        "old-1": ("default", "default"),
    }

    vision = push(api, "vision", "detector", "1", 0.91)
    assert desired(api) == {"cam-1": vision, "arm-1": None, "old-1": None}
    # A lower-is-better figure of any size: the control policy's error, not a 0..1 score.
    worse = push(api, "control", "policy", "a", 12.5, higher_is_better=False)
    better = push(api, "control", "policy", "b", 3.25, higher_is_better=False)
    assert desired(api)["arm-1"] == better != worse
    assert desired(api)["cam-1"] == vision, "another application's push touched nothing"
    reason = client.device("arm-1").desired
    assert reason is not None and "application 'control'" in reason.reason

    listed = {a.name: a for a in client.applications()}
    assert listed["control"].versions == [worse, better] and listed["control"].devices == 1
    assert listed["default"].devices == 1 and listed["default"].versions == []


def test_pushing_without_plan_changes_no_device(api: ServerProcess, mosquitto: Broker) -> None:
    publish(mosquitto.port, [hello("cam-1", application="vision")])
    client = api.client()
    wait_until(lambda: len(client.devices()) == 1, 20, "the hello")
    revision = client.device("cam-1").desired
    push(api, "vision", "detector", "1", 0.9, plan=False)
    assert client.device("cam-1").desired == revision
    client.plan("other-app")
    assert client.device("cam-1").desired == revision, "planning another application"
    client.plan("vision")
    assert desired(api)["cam-1"] == "detector:1"


def test_an_operator_assignment_by_tag_wins_and_can_be_dropped(
    api: ServerProcess, mosquitto: Broker
) -> None:
    publish(
        mosquitto.port,
        [
            hello("arm-1", application="control", tags=["line:3"]),
            hello("arm-2", tags=["line:3"]),
            hello("cam-1", application="vision", tags=["line:4"]),
        ],
    )
    client = api.client()
    wait_until(lambda: len(client.devices()) == 3, 20, "three hellos")
    policy = push(api, "robot", "policy", "1", 0.5)
    assert desired(api) == {"arm-1": None, "arm-2": None, "cam-1": None}

    assigned = run_command(
        "edgeloop.cli.main", "apps", "assign", "robot", "--tag", "line:3", *api.cli_args
    )
    assert assigned.returncode == 0, assigned.stderr
    assert "2 now" in assigned.stdout
    assert desired(api) == {"arm-1": policy, "arm-2": policy, "cam-1": None}
    sources = {d.device_id: d.application_source for d in client.devices(application="robot")}
    assert sources == {"arm-1": "operator", "arm-2": "operator"}

    # A device that registers later with the tag joins the application too.
    publish(mosquitto.port, [hello("arm-3", application="control", tags=["line:3"])])
    wait_until(lambda: desired(api).get("arm-3") == policy, 20, "the latecomer's plan")

    listed = json.loads(
        run_command("edgeloop.cli.main", "apps", "ls", *api.cli_args, "--json").stdout
    )
    assert {a["name"]: a["tags"] for a in listed}["robot"] == ["line:3"]

    dropped = client.unassign_application("line:3")
    assert (dropped.application, dropped.devices) == ("robot", 3)
    apps = {d.device_id: d.application for d in client.devices()}
    assert apps == {"arm-1": "control", "arm-2": "default", "arm-3": "control", "cam-1": "vision"}
    # Moved to an application without versions, a device keeps its model until one comes.
    assert desired(api)["arm-1"] == policy
    assert "keeps its model" in (client.device("arm-1").desired.reason or "")  # type: ignore[union-attr]
    with pytest.raises(ApiError, match="no application is assigned to tag 'line:3'"):
        client.unassign_application("line:3")


def test_a_rollout_reaches_only_devices_of_its_models_application(
    api: ServerProcess, mosquitto: Broker
) -> None:
    publish(
        mosquitto.port,
        [hello("cam-1", application="vision"), hello("arm-1", application="control")],
    )
    client = api.client()
    wait_until(lambda: len(client.devices()) == 2, 20, "two hellos")
    detector = push(api, "vision", "detector", "1", 0.9, plan=False)
    rollout = client.create_rollout(
        RolloutCreate(model=detector, target=Target(profile=PI.name), criteria=Criteria())
    )
    assert [d.device_id for d in rollout.devices] == ["cam-1"]
    policy = push(api, "control", "policy", "1", 0.9, plan=False)
    with pytest.raises(ApiError, match="running application 'control'"):
        client.create_rollout(
            RolloutCreate(model=policy, target=Target(devices=["cam-1"]), criteria=Criteria())
        )
