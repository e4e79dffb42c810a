"""Hostile models, messages and disks against a real agent process.

Each scenario runs the agent as its own process (``edgeloop-agent run``) against a real
control plane and Mosquitto, commits a first model, then throws one hostile thing at it: a
model that needs gigabytes at run time, an empty artifact, a disk that fills mid-download or is
full when the agent starts, a desired state that relaxes the device's budgets, a model that
already failed. Every one ends in a report naming its gate, with the same agent process still
running, the first model serving, and the local endpoint answering every request meanwhile.

The rules behind them (the effective profile, which failures are remembered) are pure
functions; their tables are at the end.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from agent_models import (
    BASE_WEIGHTS,
    GOLDEN_INPUTS,
    downloader,
    golden_npz,
    linear_model,
    memory_hog_model,
    publish,
    slow_model,
)
from helpers import wait_until

from edgeloop.agent.config import AgentConfig
from edgeloop.agent.endpoint_client import InferenceClient
from edgeloop.agent.host import ModelHost
from edgeloop.agent.protocol import (
    Channel,
    DeviceProfile,
    Gate,
    ModelManifest,
    Phase,
    Report,
    decode,
    topic,
)
from edgeloop.agent.states import (
    MAX_FAILED_MODELS,
    FailedModel,
    Slot,
    SlotModel,
    Update,
    failed_before,
    remember_failure,
    worth_remembering,
)
from edgeloop.agent.updater import Updater
from edgeloop.agent.validate import budget_of, budget_verdicts, effective_profile
from edgeloop.lab.broker import find_mosquitto
from edgeloop.lab.emulation import Confinement, DeviceClass
from edgeloop.lab.faults import DesiredPublisher, control_plane
from edgeloop.lab.launch import AgentProcess, ServerProcess

needs_mosquitto = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")

DEVICE = "hostile-01"
OWN = DeviceProfile(name="hostile", cpu_threads=1, memory_budget_mb=512, latency_budget_ms=50)
"""The device's own profile, as its configuration gives it."""
MB = 2**20


# --------------------------------------------------------------------------- the field


class ReportInbox:
    """Every report the device publishes, by revision (subscribed before the agent starts)."""

    def __init__(self, port: int, device_id: str) -> None:
        self._reports: dict[int, Report] = {}
        self._arrived = threading.Condition()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="report-inbox")
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.subscribe(topic(device_id, Channel.REPORT), qos=1)
        self._client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        report = decode(message.payload, message.topic)
        assert isinstance(report, Report)
        with self._arrived:
            self._reports[report.revision] = report
            self._arrived.notify_all()

    def wait(self, revision: int, timeout_s: float = 90) -> Report:
        with self._arrived:
            if not self._arrived.wait_for(lambda: revision in self._reports, timeout_s):
                raise AssertionError(f"no report for revision {revision} in {timeout_s:.0f} s")
            return self._reports[revision]

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


class EndpointProbe:
    """Calls the agent's local endpoint every 20 ms, as an application would, and keeps each
    answer's model or the error: proof that serving never stopped."""

    def __init__(self, device_dir: Path, stale_url: str | None = None) -> None:
        """``stale_url``: the url a killed agent left behind; the probe waits for the new one."""
        url = wait_until(
            lambda: (
                (_read(device_dir / "endpoint.url") or stale_url) != stale_url
                and _read(device_dir / "endpoint.url")
            ),
            30,
            "the endpoint's url",
        )
        self.client = InferenceClient(url, timeout_s=10)
        self.answered: list[str | None] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="endpoint-probe", daemon=True)

    def __enter__(self) -> EndpointProbe:
        self._thread.start()
        self._one_more_answer()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._one_more_answer()  # answering at the end too, not only before
        self._stop.set()
        self._thread.join(15)
        self.client.close()

    def _one_more_answer(self) -> None:
        seen = len(self.answered) + len(self.failures)
        wait_until(lambda: len(self.answered) + len(self.failures) > seen, 15, "a request")

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                outputs = self.client.infer({"x": GOLDEN_INPUTS[:1]})
                assert outputs["logits"].shape == (1, 3)
                self.answered.append(self.client.model)
            except Exception as exc:
                self.failures.append(f"{time.strftime('%X')} {exc}")

    def served_only(self) -> set[str | None]:
        assert not self.failures, f"{len(self.failures)} failed requests: {self.failures[:3]}"
        return set(self.answered)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class Field:
    """A control plane, the device's broker, a planner that publishes desired states, an inbox
    of the device's reports, and (once started) the agent process."""

    def __init__(self, root: Path, server: ServerProcess, device_port: int) -> None:
        self.root = root
        self.server = server
        self.device_port = device_port
        self.device_dir = root / "devices" / DEVICE
        self.planner = DesiredPublisher(device_port, DEVICE, server.workdir / "tuf")
        self.inbox = ReportInbox(device_port, DEVICE)
        self.agent: AgentProcess | None = None
        self.revision = 0
        self._mounted = False

    def start_agent(
        self, profile: DeviceProfile = OWN, device_class: DeviceClass | None = None
    ) -> AgentProcess:
        self.agent = AgentProcess(
            DEVICE,
            profile,
            self.root,
            self.device_port,
            inferences=20,
            probation_s=0.2,
            telemetry_interval_s=60,
            device_class=device_class,
            server=self.server,
        )
        return self.agent

    def publish(self, manifest: ModelManifest, profile: DeviceProfile = OWN) -> int:
        self.revision += 1
        self.planner.publish(self.revision, manifest, profile)
        return self.revision

    def send(self, manifest: ModelManifest, profile: DeviceProfile = OWN) -> Report:
        return self.inbox.wait(self.publish(manifest, profile))

    def commit_first_model(self, profile: DeviceProfile = OWN) -> None:
        first = publish(self.server.url, "1", linear_model(BASE_WEIGHTS))
        report = self.send(first.manifest, profile)
        assert report.ok, self._diagnose(report)

    def _diagnose(self, report: Report) -> str:
        return f"{report.gate}: {report.error}\n{self.agent.log_tail(30) if self.agent else ''}"

    def mount_small_disk(self, size_mb: int) -> None:
        """The device's workdir on a filesystem of ``size_mb`` (a tmpfs), so that it fills."""
        self.device_dir.mkdir(parents=True, exist_ok=True)
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(self.device_dir)],
            capture_output=True,
            text=True,
        )
        if mounted.returncode != 0:
            pytest.skip(
                f"cannot mount a {size_mb} MB tmpfs ({mounted.stderr.strip()}): a full disk is "
                "tested on a real small filesystem, which needs root (CAP_SYS_ADMIN)"
            )
        self._mounted = True

    def close(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        self.planner.close()
        self.inbox.close()
        if self._mounted:
            subprocess.run(["umount", "-l", str(self.device_dir)], check=False)


@pytest.fixture()
def field(tmp_path: Path) -> Iterator[Field]:
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    with control_plane(tmp_path) as (server, device_port):
        arena = Field(tmp_path, server, device_port)
        try:
            yield arena
        finally:
            arena.close()


def fill_disk(directory: Path) -> Path:
    """Write a file of another program into ``directory`` until its filesystem is full."""
    filler = directory / "filler-of-another-program"
    with filler.open("wb", buffering=0) as handle:
        for size in (MB, 4096):
            block = b"\0" * size
            with contextlib.suppress(OSError):
                while True:
                    handle.write(block)
    assert _free_bytes(directory) < MB, "the filesystem did not fill"
    return filler


def _free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free


def _partial_bytes(device_dir: Path) -> int:
    return sum(p.stat().st_size for p in (device_dir / "blobs").glob("*.part"))


class StallingOrigin:
    """An HTTP origin for one file: sends the first ``stall_at`` bytes, then holds the
    connection until :meth:`release` (a link that stalls, as the agent sees it); afterwards
    whole. Honours ``Range`` as the control plane does, so a download can resume."""

    def __init__(self, data: bytes, stall_at: int) -> None:
        self.data = data
        self.stall_at = stall_at
        self.released = threading.Event()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                start = 0
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes="):
                    start = int(ranged.removeprefix("bytes=").split("-")[0])
                body = memoryview(origin.data)[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(origin.data) - 1}/{len(origin.data)}"
                    )
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):
                    stall = max(0, origin.stall_at - start)
                    if not origin.released.is_set():
                        self.wfile.write(body[:stall])
                        self.wfile.flush()
                        origin.released.wait(60)
                        body = body[stall:]
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/model.onnx"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()


def from_origin(manifest: ModelManifest, origin: StallingOrigin) -> ModelManifest:
    artifact = manifest.artifact.model_copy(update={"url": origin.url})
    return manifest.model_copy(update={"artifact": artifact})


def memory_cgroup_class(limit_mb: int) -> DeviceClass | None:
    """A device class of ``limit_mb`` of memory, if a writable memory cgroup can enforce it."""
    device_class = DeviceClass(name=f"memory-{limit_mb}", threads=1, memory_limit_mb=limit_mb)
    mechanism = Confinement(device_class).mechanism
    return device_class if mechanism in ("cgroup1", "cgroup2") else None


# --------------------------------------------------------------------------- memory


@needs_mosquitto
def test_a_model_that_needs_gigabytes_at_run_time_is_refused_on_memory_and_the_agent_lives_on(
    field: Field,
) -> None:
    small = OWN.model_copy(update={"memory_budget_mb": 256})
    # Where a memory cgroup is writable, the whole agent lives in 512 MB, as on the device
    # where such a model used to get the agent killed; elsewhere the budget alone stands.
    agent = field.start_agent(small, device_class=memory_cgroup_class(512))
    field.commit_first_model(small)
    pid = agent.pid
    hog = publish(field.server.url, "hog", memory_hog_model(1_700_000_000))
    assert len(hog.model) < 1024, "a tiny file"
    with EndpointProbe(field.device_dir) as probe:
        report = field.send(hog.manifest, small)
    assert (report.ok, report.phase, report.gate) == (False, Phase.FAILED, Gate.MEMORY), (
        report.error
    )
    assert "1621 MB buffer" in (report.error or ""), report.error
    assert report.peak_rss_mb is not None, "the validation child's own peak is reported"
    assert report.peak_rss_mb < 256, "refused before it grew: the child's peak, not the agent's"
    assert report.budget_detail["memory"] is False and report.within_budget is False
    assert report.running == "linear:1"
    assert agent.alive() and agent.pid == pid, "the agent process never died"
    assert probe.served_only() == {"linear:1"}
    if agent.confinement is not None:
        assert agent.confinement.oom_kills() == 0, "nothing was killed for memory"


@pytest.mark.skipif(memory_cgroup_class(400) is None, reason="no writable memory cgroup here")
def test_a_validation_child_killed_for_memory_is_reported_on_memory_and_its_parent_lives(
    tmp_path: Path,
) -> None:
    """Without the address-space cap, a hog meets the kernel's OOM killer: the child has
    volunteered for it, so it is the child that dies, and that death reads as ``memory``."""
    model, golden = tmp_path / "hog.onnx", tmp_path / "golden.npz"
    model.write_bytes(memory_hog_model(1_700_000_000))
    golden.write_bytes(golden_npz(GOLDEN_INPUTS @ BASE_WEIGHTS))
    manifest = local_manifest(model.read_bytes(), golden.read_bytes())
    script = (
        "import sys\n"
        "from edgeloop.agent.sandbox import ValidationRequest, validate_in_child\n"
        "request = ValidationRequest.model_validate_json(sys.argv[1])\n"
        "print(validate_in_child(request).model_dump_json())\n"
    )
    request = {
        "model_path": str(model),
        "golden_path": str(golden),
        "manifest": manifest.model_dump(mode="json"),
        "profile": OWN.model_dump(mode="json"),
        "inferences": 5,
        "address_limit": False,
    }
    device_class = memory_cgroup_class(400)
    assert device_class is not None
    with Confinement(device_class) as confinement:
        parent = subprocess.Popen(
            [sys.executable, "-c", script, json.dumps(request)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=confinement.preexec,
        )
        confinement.apply(parent.pid)
        out, err = parent.communicate(timeout=120)
        assert parent.returncode == 0, err[-2000:]
        assert confinement.oom_kills() >= 1
    verdict = json.loads(out.strip().splitlines()[-1])
    assert verdict["gate"] == "memory", verdict
    assert "out-of-memory killer" in verdict["reason"]
    assert verdict["measured"]["peak_rss_mb"] > 0


def local_manifest(model: bytes, golden: bytes) -> ModelManifest:
    """A manifest for local files (nothing to download): only its contract is read."""
    from agent_models import sha

    from edgeloop.agent.protocol import FileRef, TensorSpec

    return ModelManifest(
        name="linear",
        version="local",
        artifact=FileRef(url="file:model", sha256=sha(model), size=len(model)),
        golden=FileRef(url="file:golden", sha256=sha(golden), size=len(golden)),
        inputs=[TensorSpec(name="x", dtype="float32", shape=["batch", 4])],
        outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", 3])],
    )


# --------------------------------------------------------------------------- empty artifact


@needs_mosquitto
def test_an_empty_artifact_is_verified_then_refused_by_loads_while_the_endpoint_serves(
    field: Field,
) -> None:
    agent = field.start_agent()
    field.commit_first_model()
    pid = agent.pid
    empty = publish(field.server.url, "empty", b"")
    assert empty.manifest.artifact.size == 0
    with EndpointProbe(field.device_dir) as probe:
        report = field.send(empty.manifest)
    assert (report.ok, report.phase, report.gate) == (False, Phase.FAILED, Gate.LOADS), report.error
    assert report.verified, "the empty file is what the manifest promised: its SHA-256 matched"
    assert report.running == "linear:1"
    assert agent.alive() and agent.pid == pid
    assert probe.served_only() == {"linear:1"}


# --------------------------------------------------------------------------- full disks


@needs_mosquitto
def test_a_disk_that_fills_during_a_download_ends_it_on_disk_and_a_later_revision_may_retry(
    field: Field,
) -> None:
    field.mount_small_disk(64)
    agent = field.start_agent()
    field.commit_first_model()
    pid = agent.pid
    big = publish(field.server.url, "big", linear_model(BASE_WEIGHTS, padding_bytes=40 * MB))
    origin = StallingOrigin(big.model, stall_at=8 * MB)
    manifest = from_origin(big.manifest, origin)
    try:
        with EndpointProbe(field.device_dir) as probe:
            revision = field.publish(manifest)
            wait_until(lambda: _partial_bytes(field.device_dir) >= 8 * MB, 30, "8 MB on disk")
            filler = fill_disk(field.device_dir)
            origin.release()
            report = field.inbox.wait(revision)
        assert (report.ok, report.phase, report.gate) == (False, Phase.FAILED, Gate.DISK), (
            report.error
        )
        assert "No space left" in (report.error or ""), report.error
        assert _partial_bytes(field.device_dir) == 0, "the partial download was removed"
        assert agent.alive() and agent.pid == pid, "ENOSPC never took the agent down"
        assert probe.served_only() == {"linear:1"}

        filler.unlink()
        again = field.send(manifest)  # a full disk is no verdict on the model
        assert again.ok, field._diagnose(again)
    finally:
        origin.close()


def _interrupted_download(field: Field, size: int, stall_at: int) -> tuple[ModelManifest, int]:
    """Start an update of a ``size``-byte model whose download stalls at ``stall_at`` bytes;
    SIGKILL the agent there. Returns the manifest (now served whole) and its revision."""
    big = publish(field.server.url, "big", linear_model(BASE_WEIGHTS, padding_bytes=size))
    origin = StallingOrigin(big.model, stall_at=stall_at)
    manifest = from_origin(big.manifest, origin)
    revision = field.publish(manifest)
    wait_until(lambda: _partial_bytes(field.device_dir) >= stall_at, 30, "the partial file")
    assert field.agent is not None
    field.agent.kill()
    origin.release()
    return manifest, revision


@needs_mosquitto
def test_a_download_resumes_on_a_tight_disk_because_its_own_partial_file_counts_as_held(
    field: Field,
) -> None:
    field.mount_small_disk(64)
    field.start_agent()
    field.commit_first_model()
    _, revision = _interrupted_download(field, 40 * MB, stall_at=30 * MB)
    # 40 MB more (plus margin) no longer fit; the 10 MB still missing do.
    assert _free_bytes(field.device_dir) < 40 * MB
    field.start_agent()
    report = field.inbox.wait(revision)
    assert report.ok, field._diagnose(report)


@needs_mosquitto
def test_an_agent_that_finds_its_disk_full_at_start_serves_on_and_never_crash_loops(
    field: Field,
) -> None:
    field.mount_small_disk(64)
    field.start_agent()
    field.commit_first_model()
    manifest, revision = _interrupted_download(field, 40 * MB, stall_at=20 * MB)
    state_before = (field.device_dir / "state.json").read_bytes()
    stale_url = _read(field.device_dir / "endpoint.url")
    filler = fill_disk(field.device_dir)  # not even the resume counter can be written now
    agent = field.start_agent()
    pid = agent.pid
    with EndpointProbe(field.device_dir, stale_url) as probe:
        report = field.inbox.wait(revision)
        time.sleep(1)
    assert (report.phase, report.gate) == (Phase.FAILED, Gate.DISK), field._diagnose(report)
    assert report.running == "linear:1"
    assert agent.alive() and agent.pid == pid, "started once, never restarted"
    assert probe.served_only() == {"linear:1"}
    assert (field.device_dir / "state.json").read_bytes() != state_before
    assert "partial downloads" in agent.log_tail(200), "its own partial file made room"

    filler.unlink()
    assert field.send(manifest).ok


def test_a_state_file_the_disk_refuses_at_start_keeps_the_committed_model_serving_until_space(
    field: Field,
) -> None:
    """In-process, with another program's file filling the disk: nothing of the agent's own
    to free, so it serves the committed model and retries until the space is back."""
    field.mount_small_disk(32)
    config = AgentConfig(
        device_id=DEVICE, workdir=field.device_dir, profile=OWN, inferences=5, probation_s=0.1
    )
    first = Updater(config, ModelHost(), http=downloader(field.server.url))
    first.start()
    v1 = publish(field.server.url, "1", linear_model(BASE_WEIGHTS))
    first.apply(Update(device_id=DEVICE, revision=1, model=v1.manifest, profile=OWN))
    assert first.record.state == Phase.COMMITTED
    weights = BASE_WEIGHTS * 1.01
    v2 = publish(field.server.url, "2", linear_model(weights), weights=weights)
    desired = Update(device_id=DEVICE, revision=2, model=v2.manifest, profile=OWN)
    # As a power cut right after "downloading" was persisted leaves it:
    first.store.save(
        first.record.enter(
            Phase.DOWNLOADING,
            revision=2,
            desired=desired,
            candidate=SlotModel(
                slot=Slot.B, label="linear:2", sha256=v2.manifest.artifact.sha256, revision=2
            ),
        )
    )
    state_before = first.store.path.read_bytes()
    filler = fill_disk(field.device_dir)

    restarted = Updater(config, ModelHost(), http=downloader(field.server.url))
    restarted.start()  # cannot write the resume counter: must not raise
    assert restarted.host.model is not None and restarted.host.model.label == "linear:1"
    assert restarted.store.path.read_bytes() == state_before
    worker = threading.Thread(target=restarted.run)
    worker.start()
    time.sleep(2.5)
    assert worker.is_alive(), "it waits for space instead of giving up or crashing"
    assert restarted.host.model is not None and restarted.host.model.label == "linear:1"
    filler.unlink()
    worker.join(30)
    assert not worker.is_alive()
    assert restarted.record.state == Phase.COMMITTED and restarted.record.revision == 2
    assert restarted.host.model is not None and restarted.host.model.label == "linear:2"


# --------------------------------------------------------------------------- budgets


@needs_mosquitto
def test_a_desired_state_cannot_relax_the_budgets_the_device_was_configured_with(
    field: Field,
) -> None:
    own = OWN.model_copy(update={"latency_budget_ms": 5.0})
    relaxed = own.model_copy(update={"latency_budget_ms": 1000.0, "memory_budget_mb": 65536})
    agent = field.start_agent(own)
    field.commit_first_model(relaxed)
    model, golden = slow_model(150)  # ~25 ms a run here, five times the device's budget
    slow = publish(field.server.url, "slow", model, golden, min_agreement=0.0)
    with EndpointProbe(field.device_dir) as probe:
        report = field.send(slow.manifest, relaxed)
    assert (report.ok, report.gate) == (False, Gate.LATENCY), report.error
    assert "5.0 ms" in (report.error or ""), "judged by the device's budget, not the message's"
    assert report.latency is not None and report.latency.p95_ms > 5
    assert report.budget_detail["latency"] is False
    assert report.running == "linear:1"
    assert agent.alive()
    assert probe.served_only() == {"linear:1"}


TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
EFFECTIVE_PROFILES = [
    # (what the desired message asks, the field that must come out, its value)
    ({"latency_budget_ms": 1000.0}, "latency_budget_ms", 5.0),
    ({"latency_budget_ms": 1.0}, "latency_budget_ms", 1.0),
    ({"memory_budget_mb": 65536.0}, "memory_budget_mb", 256.0),
    ({"memory_budget_mb": 64.0}, "memory_budget_mb", 64.0),
    ({"model_size_budget_kb": None}, "model_size_budget_kb", 128.0),
    ({"model_size_budget_kb": 32.0}, "model_size_budget_kb", 32.0),
    ({"cpu_threads": 64}, "cpu_threads", 2),
    ({"cpu_threads": 1}, "cpu_threads", 1),
    ({"min_accuracy": 0.5}, "min_accuracy", 0.9),
    ({"min_accuracy": 0.95}, "min_accuracy", 0.95),
    ({"execution_providers": [TRT, CPU]}, "execution_providers", [CPU]),
    ({"execution_providers": [CPU, CUDA]}, "execution_providers", [CPU, CUDA]),
    ({"execution_providers": [TRT]}, "execution_providers", [CUDA, CPU]),  # none shared
    ({"name": "other", "arch": "x86_64"}, "name", "device"),
    ({"name": "other", "arch": "x86_64"}, "arch", "aarch64"),
]


@pytest.mark.parametrize(("asked", "field_name", "expected"), EFFECTIVE_PROFILES)
def test_a_desired_profile_may_tighten_each_budget_but_never_relax_one(
    asked: dict, field_name: str, expected: object
) -> None:
    own = DeviceProfile(
        name="device",
        cpu_threads=2,
        memory_budget_mb=256,
        latency_budget_ms=5,
        model_size_budget_kb=128,
        min_accuracy=0.9,
        arch="aarch64",
        execution_providers=[CUDA, CPU],
    )
    got = effective_profile(own, own.model_copy(update=asked))
    assert getattr(got, field_name) == expected


def test_a_report_judges_every_budget_even_after_the_first_refuses() -> None:
    from edgeloop.agent.protocol import LatencyStats

    slow = LatencyStats(n=5, p50_ms=90, p95_ms=100, p99_ms=100, mean_ms=90)
    verdicts = budget_verdicts(OWN, latency=slow, peak_rss_mb=1700, size_bytes=400)
    assert verdicts == {Gate.LATENCY: False, Gate.MEMORY: False, Gate.SIZE: True}


# --------------------------------------------------------------------------- failed models


@needs_mosquitto
def test_a_model_that_failed_is_refused_at_once_when_a_later_revision_names_it_again(
    field: Field,
) -> None:
    field.start_agent()
    field.commit_first_model()
    nan = publish(
        field.server.url,
        "nan",
        linear_model(BASE_WEIGHTS, nan=True),
        golden_npz(np.full((len(GOLDEN_INPUTS), 3), np.nan, np.float32)),
    )
    first = field.send(nan.manifest)
    assert first.gate == Gate.FINITE and first.latency is None, first.error
    weights = BASE_WEIGHTS * 1.01
    good = publish(field.server.url, "2", linear_model(weights), weights=weights)
    assert field.send(good.manifest).ok

    again = field.send(nan.manifest)
    assert (again.ok, again.phase, again.gate) == (False, Phase.FAILED, Gate.FINITE)
    assert f"failed on this device before, on revision {first.revision}" in (again.error or "")
    assert again.running == "linear:2"

    assert field.agent is not None
    field.agent.stop()  # remembered with the state, across restarts
    field.start_agent()
    after_restart = field.send(nan.manifest)
    assert after_restart.gate == Gate.FINITE
    assert f"on revision {first.revision}" in (after_restart.error or "")


def _failure(gate: Gate, budget: float | None = None, golden: str = "g" * 64) -> FailedModel:
    return FailedModel(
        sha256="a" * 64,
        golden_sha256=golden,
        label="m:1",
        revision=7,
        gate=gate,
        reason=f"{gate}: refused",
        budget=budget,
    )


REMEMBERED = [
    # (how the update ended, its gate, whether the model is refused when sent again)
    (Phase.FAILED, Gate.LOADS, True),
    (Phase.FAILED, Gate.OPSET, True),
    (Phase.FAILED, Gate.IO, True),
    (Phase.FAILED, Gate.GOLDEN, True),
    (Phase.FAILED, Gate.FINITE, True),
    (Phase.FAILED, Gate.LATENCY, True),
    (Phase.FAILED, Gate.MEMORY, True),
    (Phase.FAILED, Gate.SIZE, True),
    (Phase.ROLLED_BACK, Gate.AGREEMENT, True),
    (Phase.ROLLED_BACK, Gate.ERRORS, True),
    (Phase.ROLLED_BACK, Gate.RESTARTS, True),  # it was serving when the agent kept dying
    (Phase.FAILED, Gate.RESTARTS, False),  # it never served: power, not the model
    (Phase.FAILED, Gate.DISK, False),
    (Phase.FAILED, Gate.DOWNLOAD, False),
    (Phase.FAILED, Gate.VERIFY, False),  # the bytes were not the model at all
    (Phase.ROLLED_BACK, Gate.ACTIVATE, False),
    (Phase.ROLLED_BACK, Gate.OPERATOR, False),
    (Phase.COMMITTED, None, False),
]


@pytest.mark.parametrize(("ended", "gate", "remembered"), REMEMBERED)
def test_which_failures_condemn_a_model_on_this_device(
    ended: Phase, gate: Gate | None, remembered: bool
) -> None:
    assert worth_remembering(ended, gate) is remembered


def test_a_model_refused_on_a_budget_may_come_back_under_a_looser_one() -> None:
    failed = [_failure(Gate.LATENCY, budget=5.0)]
    tight = OWN.model_copy(update={"latency_budget_ms": 5.0})
    looser = OWN.model_copy(update={"latency_budget_ms": 20.0})
    assert failed_before(failed, "a" * 64, "g" * 64, lambda g: budget_of(tight, g)) is not None
    assert failed_before(failed, "a" * 64, "g" * 64, lambda g: budget_of(looser, g)) is None
    assert failed_before(failed, "b" * 64, "g" * 64, lambda g: budget_of(tight, g)) is None


def test_a_model_refused_on_its_golden_file_may_come_back_with_another_one() -> None:
    failed = [_failure(Gate.GOLDEN), _failure(Gate.FINITE)]
    same, other = "g" * 64, "h" * 64
    assert failed_before(failed, "a" * 64, same, lambda g: None) is not None
    assert failed_before(failed, "a" * 64, other, lambda g: None) is None
    loads = [_failure(Gate.LOADS)]
    assert failed_before(loads, "a" * 64, other, lambda g: None) is not None


def test_the_memory_of_failed_models_is_bounded_and_keeps_the_newest() -> None:
    failed: list[FailedModel] = []
    for index in range(MAX_FAILED_MODELS + 5):
        entry = _failure(Gate.LOADS).model_copy(update={"sha256": f"{index:064x}"})
        failed = remember_failure(failed, entry)
    assert len(failed) == MAX_FAILED_MODELS
    assert failed[-1].sha256 == f"{MAX_FAILED_MODELS + 4:064x}"
    assert failed[0].sha256 == f"{5:064x}"
