"""Fault campaigns and figures for the device agent, on real processes.

Used by the test suite (few runs) and by ``edgeloop bench agent`` (the issue's counts):

- :func:`kill9_campaign`: a real agent process updates between model versions served by a
  real control plane; each run publishes a new desired revision, kills the agent with SIGKILL
  at a random moment of the update, checks the state file on disk as the kill left it,
  restarts the agent and checks that the update ended ``committed`` or ``rolled_back`` with a
  loadable model in the current slot that the endpoint serves.
- :func:`outage_campaign`: the broker is stopped while the agent keeps producing telemetry;
  after it returns, every telemetry sequence number must arrive, in order.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import requests

from edgeloop.agent.golden import golden_bytes
from edgeloop.agent.profiles import PROFILES
from edgeloop.agent.protocol import (
    Channel,
    Desired,
    DeviceProfile,
    FileRef,
    ModelManifest,
    Phase,
    TargetRef,
    TensorSpec,
    decode,
    encode,
    topic,
)
from edgeloop.agent.runtime import open_session
from edgeloop.agent.slots import sha256_file
from edgeloop.agent.states import StateFileError, StateStore
from edgeloop.lab.broker import MosquittoBroker
from edgeloop.lab.launch import AgentProcess, ServerProcess, operator_headers
from edgeloop.server.releases import ReleaseSigner

log = logging.getLogger("edgeloop.lab.faults")

PROFILE = PROFILES["host-1t"]
"""The fault campaigns' device: this host, one thread, budgets that a tiny model never misses."""
FEATURES, CLASSES = 64, 10


def linear_model(weights: np.ndarray, padding_floats: int = 0) -> bytes:
    """A real classifier ``x @ W``; ``padding_floats`` makes the file (and download) bigger."""
    from onnx import TensorProto, helper, numpy_helper

    initializers = [numpy_helper.from_array(weights, "W")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["logits"])]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    # Bulk in the doc string: a bigger file to move and hash, nothing onnxruntime keeps in memory
    # (an unused initializer would be loaded, warned about and dropped).
    model.doc_string = "edgeloop bench padding " + "0" * (4 * padding_floats)
    return model.SerializeToString()


def upload_version(
    server_url: str, version: str, weights: np.ndarray, padding_floats: int, **fields: object
) -> ModelManifest:
    """Build a model version, upload model and golden file (as the operator of the
    :class:`ServerProcess` at ``server_url``), return the manifest devices get."""
    import hashlib

    inputs = np.random.default_rng(1).normal(size=(32, FEATURES)).astype(np.float32)
    golden = golden_bytes({"x": inputs}, inputs @ weights)
    refs = []
    for data in (linear_model(weights, padding_floats), golden):
        digest = hashlib.sha256(data).hexdigest()
        response = requests.put(
            f"{server_url}/api/v1/artifacts/{digest}",
            data=data,
            headers=operator_headers(server_url),
            timeout=30,
        )
        response.raise_for_status()
        refs.append(FileRef(url=f"{server_url}/artifacts/{digest}", sha256=digest, size=len(data)))
    return ModelManifest(
        name="linear",
        version=version,
        artifact=refs[0],
        golden=refs[1],
        inputs=[TensorSpec(name="x", dtype="float32", shape=["batch", FEATURES])],
        outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", CLASSES])],
        **fields,
    )


class DesiredPublisher:
    """Plays the control plane's bridge: signs each manifest into the server's TUF repository
    (as the server does for a model it sends) and publishes the desired state naming it,
    retained. Going back to an older release re-signs it above the last one sent, as the
    server does for a rollback; everything else the agent checks for itself."""

    def __init__(self, port: int, device_id: str, tuf_dir: Path) -> None:
        self.device_id = device_id
        self.releases = ReleaseSigner.open(tuf_dir)
        self.last: TargetRef | None = None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-planner")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def sign(self, manifest: ModelManifest) -> TargetRef:
        target = self.releases.ensure(manifest)
        last = self.last
        if last is not None and target.path != last.path and target.sequence < last.sequence:
            target = self.releases.resign_above(manifest, last.sequence)
        self.last = target
        return target

    def publish(
        self,
        revision: int,
        manifest: ModelManifest | None,
        profile: DeviceProfile = PROFILE,
    ) -> None:
        """Retain ``manifest``'s signed target as the device's desired state; ``profile`` is
        what the message asks (the agent judges by its own, which a message may only
        tighten)."""
        desired = Desired(
            device_id=self.device_id,
            revision=revision,
            target=self.sign(manifest) if manifest is not None else None,
            profile=profile,
        )
        info = self.client.publish(
            topic(self.device_id, Channel.DESIRED), encode(desired), qos=1, retain=True
        )
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def control_plane(workdir: Path) -> Iterator[tuple[ServerProcess, int]]:
    """A control plane process on its own broker, plus the broker devices talk to.

    Two brokers, so that the server's own planner (which answers every ``hello`` with its
    choice) stays out of a campaign that publishes desired states itself.
    """
    with (
        MosquittoBroker(workdir / "server-broker") as server_broker,
        MosquittoBroker(workdir / "device-broker") as device_broker,
    ):
        server = ServerProcess(workdir / "server", server_broker.port)
        try:
            server.wait_ready()
            yield server, device_broker.port
        finally:
            server.stop()


@dataclass
class Kill9Result:
    runs: int = 0
    consistent: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    killed_in: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def check_state_file(workdir: Path) -> tuple[str, str | None]:
    """(state, problem or None): the state file parses and is of this agent's schema."""
    try:
        return StateStore(workdir / "state.json").load().state.value, None
    except StateFileError as exc:
        return "unreadable", str(exc)


def check_device(workdir: Path, revision: int | None = None) -> tuple[str, str | None]:
    """(state, problem or None) for a device's workdir as it is on disk right now."""
    try:
        record = StateStore(workdir / "state.json").load()
    except StateFileError as exc:
        return "unreadable", str(exc)
    state = record.state.value
    if revision is not None and record.revision != revision:
        return state, f"state file is at revision {record.revision}, expected {revision}"
    committed = record.committed
    link = workdir / "current"
    if committed is None:
        return state, None if not link.exists() else "a current model without a committed one"
    if record.state in (Phase.COMMITTED, Phase.ROLLED_BACK, Phase.FAILED, Phase.IDLE):
        try:
            target = link.resolve(strict=True)
        except (FileNotFoundError, RuntimeError):
            return state, "no current slot although a model is committed"
        if target.name != committed.slot.value:
            return state, f"current -> {target.name}, committed model is in {committed.slot}"
        model = target / "model.onnx"
        if sha256_file(model) != committed.sha256:
            return state, f"{model} does not have the committed model's SHA-256"
        try:
            open_session(model, PROFILE)
        except Exception as exc:
            return state, f"committed model does not load: {exc}"
    return state, None


def wait_settled(workdir: Path, revision: int, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    state = "absent"
    while time.monotonic() < deadline:
        try:
            record = StateStore(workdir / "state.json").load()
            state = record.state.value
            if record.revision == revision and record.state in (
                Phase.COMMITTED,
                Phase.ROLLED_BACK,
                Phase.FAILED,
            ):
                return state
        except StateFileError:
            state = "unreadable"
        time.sleep(0.05)
    return f"timeout in {state}"


def kill9_campaign(
    workdir: Path,
    runs: int,
    *,
    seed: int = 0,
    padding_floats: int = 1_500_000,
    progress: bool = False,
) -> Kill9Result:
    """SIGKILL a real agent at ``runs`` random moments of real updates; count consistent ends.

    Versions alternate between two good models; every fourth revision is a new model that
    passes every gate but disagrees with its predecessor, so probation rolls it back (new each
    time, as the agent refuses a model that failed on it before without trying it again).
    """
    rng = random.Random(seed)
    device_id = "kill9-01"
    device_dir = workdir / "devices" / device_id
    result = Kill9Result()
    with control_plane(workdir) as (server, device_port):
        planner: DesiredPublisher | None = None
        agent: AgentProcess | None = None
        try:
            weights = (
                np.random.default_rng(seed).normal(size=(FEATURES, CLASSES)).astype(np.float32)
            )
            versions = [
                upload_version(server.url, "a", weights, padding_floats),
                upload_version(server.url, "b", weights * 1.01, padding_floats),
            ]

            def rogue(revision: int) -> ModelManifest:
                # A new model each time: one that failed here once is refused at once after.
                return upload_version(
                    server.url,
                    f"rogue-{revision}",
                    weights[:, ::-1] * (1 + revision / 1000),
                    padding_floats,
                    min_agreement=0.9,
                )

            planner = DesiredPublisher(device_port, device_id, server.workdir / "tuf")

            def start_agent() -> AgentProcess:
                return AgentProcess(
                    device_id,
                    PROFILE,
                    workdir,
                    device_port,
                    inferences=30,
                    telemetry_interval_s=60,
                    probation_s=0.3,
                    server=server,
                )

            agent = start_agent()
            planner.publish(1, versions[0])
            first = wait_settled(device_dir, 1, 60)
            if first != "committed":
                raise RuntimeError(f"the first update ended {first}:\n{agent.log_tail()}")
            # how long one update takes here: kills are spread over that window
            started = time.monotonic()
            planner.publish(2, versions[1])
            wait_settled(device_dir, 2, 60)
            window = (time.monotonic() - started) * 1.1
            log.info("one update takes %.2f s; killing within that window", window)
            revision = 2
            for run in range(runs):
                revision += 1
                manifest = rogue(revision) if revision % 4 == 0 else versions[revision % 2]
                planner.publish(revision, manifest)
                time.sleep(rng.uniform(0, window))
                agent.kill()
                # As the kill left it: the state file must parse and name a state. Slots and
                # the serving model may lag the record until the next start settles them.
                state_at_kill, problem = check_state_file(device_dir)
                result.killed_in[state_at_kill] = result.killed_in.get(state_at_kill, 0) + 1
                agent = start_agent()
                ended = wait_settled(device_dir, revision, 60)
                if ended not in ("committed", "rolled_back"):
                    problem = problem or f"ended {ended}"
                # The restarted agent serves only once it has settled; then check everything.
                problem = problem or _check_serving(device_dir, device_id)
                problem = problem or check_device(device_dir, revision)[1]
                result.runs += 1
                result.outcomes[ended] = result.outcomes.get(ended, 0) + 1
                if problem is None:
                    result.consistent += 1
                else:
                    result.failures.append(f"run {run} (killed in {state_at_kill}): {problem}")
                if progress:
                    print(
                        f"kill -9 run {run + 1}/{runs}: killed in {state_at_kill}, "
                        f"ended {ended}{'' if problem is None else ' PROBLEM ' + problem}",
                        flush=True,
                    )
        finally:
            if agent is not None:
                agent.stop()
            if planner is not None:
                planner.close()
    return result


def _check_serving(device_dir: Path, device_id: str) -> str | None:
    """The restarted agent's endpoint serves the committed model."""
    record = StateStore(device_dir / "state.json").load()
    expected = record.committed.label if record.committed else None
    deadline = time.monotonic() + 10
    served = None
    while time.monotonic() < deadline:
        try:
            url = (device_dir / "endpoint.url").read_text().strip()
            served = requests.get(f"{url}/v1/health", timeout=2).json().get("model")
            if served == expected:
                return None
        except (OSError, requests.RequestException, ValueError):
            pass
        time.sleep(0.1)
    return f"endpoint serves {served!r}, committed model is {expected!r}"


@dataclass
class OutageResult:
    produced: int
    received: int
    lost: int
    out_of_order: int
    duplicates: int
    outage_s: float
    drain_s: float


def outage_campaign(workdir: Path, outage_s: float, *, interval_s: float = 0.2) -> OutageResult:
    """Stop the broker for ``outage_s`` while the agent produces telemetry every
    ``interval_s``; count what never arrived once the broker is back."""
    device_id = "outage-01"
    received: list[int] = []
    lock = threading.Lock()
    broker_dir = workdir / "broker"
    broker = MosquittoBroker(broker_dir)
    port = broker.port

    def on_message(client, userdata, message) -> None:
        try:
            telemetry = decode(message.payload, message.topic)
        except ValueError:
            return
        with lock:
            received.append(getattr(telemetry, "seq", None) or 0)

    listener = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="outage-listener", clean_session=False
    )
    listener.on_message = on_message
    listener.on_connect = lambda c, *a: c.subscribe(topic(device_id, Channel.TELEMETRY), qos=1)
    listener.reconnect_delay_set(min_delay=0.2, max_delay=1)
    listener.connect("127.0.0.1", port)
    listener.loop_start()
    agent = AgentProcess(
        device_id, PROFILE, workdir, port, telemetry_interval_s=interval_s, probation_s=0.3
    )
    try:
        time.sleep(3)
        broker.stop()
        time.sleep(outage_s)
        broker = MosquittoBroker(broker_dir, port=port)
        back = time.monotonic()
        drain_s = float("nan")
        device_dir = workdir / "devices" / device_id
        # The agent reconnects on its own backoff (up to 30 s); wait until its backlog drained.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            produced, queued = _outbox_state(device_dir)
            with lock:
                complete = set(range(1, produced + 1)) <= set(received)
            if queued == 0 and complete:
                drain_s = time.monotonic() - back
                break
            time.sleep(0.5)
        agent.stop()
        produced, _ = _outbox_state(device_dir)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with lock:
                if set(range(1, produced + 1)) <= set(received):
                    break
            time.sleep(0.2)
    finally:
        listener.disconnect()
        listener.loop_stop()
        broker.stop()
    with lock:
        seen = list(received)
    first_seen: list[int] = []
    for seq in seen:
        if seq not in first_seen:
            first_seen.append(seq)
    return OutageResult(
        produced=produced,
        received=len(set(seen)),
        lost=len(set(range(1, produced + 1)) - set(seen)),
        out_of_order=sum(1 for a, b in itertools.pairwise(first_seen) if b < a),
        duplicates=len(seen) - len(set(seen)),
        outage_s=outage_s,
        drain_s=drain_s,
    )


def _outbox_state(device_dir: Path) -> tuple[int, int]:
    """(telemetry samples produced so far, messages still queued) of a device's outbox."""
    from edgeloop.agent.outbox import Outbox

    with Outbox(device_dir / "outbox.sqlite") as outbox:
        return outbox.counter("telemetry_seq"), len(outbox)


def summary(result: Kill9Result | OutageResult) -> str:
    return json.dumps(result.__dict__, indent=1, default=str)
