"""``edgeloop bench agent``: the device agent's footprint (idle RSS against a bare runtime,
import time), download against curl, resume, the cost of the local endpoint and of the
in-process runtime (:mod:`edgeloop.agent.local`), a kill -9 campaign and a broker outage (the
campaigns live in :mod:`edgeloop.lab.faults`)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests
from rich.console import Console

from edgeloop.agent.local import LocalModel
from edgeloop.agent.protocol import FileRef
from edgeloop.agent.runtime import open_session
from edgeloop.compressor.evaluate import interleaved
from edgeloop.lab.bench import Figure
from edgeloop.lab.faults import (
    CLASSES,
    FEATURES,
    PROFILE,
    DesiredPublisher,
    control_plane,
    upload_version,
    wait_settled,
)
from edgeloop.lab.launch import AgentProcess


def run(args: Any) -> list[Figure]:
    """The device agent: footprint, transfer, endpoint, kill -9 campaign, broker outage."""
    import shutil

    from edgeloop.lab.faults import kill9_campaign, outage_campaign

    root = args.workdir / "bench-agent"
    shutil.rmtree(root, ignore_errors=True)
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print("[bold]agent footprint, download, resume and endpoint[/]")
    foot = footprint(root / "footprint", padding_floats=0)
    runs = getattr(args, "runs", None) or 200
    console.print(f"[bold]kill -9 at {runs} random moments of updates[/]")
    kills = kill9_campaign(root / "kill9", runs, progress=True)
    outage_s = getattr(args, "outage", None) or 60.0
    console.print(f"[bold]broker stopped for {outage_s:.0f} s while telemetry flows[/]")
    outage = outage_campaign(root / "outage", outage_s)
    args.extra = {
        "footprint": foot.__dict__,
        "kill9": kills.__dict__,
        "outage": outage.__dict__,
    }
    return [
        Figure("agent.idle_rss_mb", round(foot.idle_rss_mb, 1), "MB", ""),
        Figure("agent.bare_runtime_rss_mb", round(foot.bare_rss_mb, 1), "MB", ""),
        Figure(
            "agent.idle_rss_ratio", round(foot.idle_rss_mb / foot.bare_rss_mb, 3), "x", "<= 1.15"
        ),
        Figure("agent.import_s", round(foot.import_s, 3), "s", "<= 1"),
        Figure("agent.download_vs_curl", round(foot.curl_s / foot.download_s, 3), "x", ">= 0.8"),
        Figure("agent.resume_resent_bytes", foot.resume_resent_bytes, "bytes", "<= 65536"),
        Figure("agent.resume_used_range", int(foot.resumed_with_range), "bool", ">= 1"),
        Figure("agent.endpoint_overhead_ms", round(foot.endpoint_ms - foot.direct_ms, 3), "ms", ""),
        Figure(
            "agent.inproc_overhead_ms",
            round(foot.inproc_ms - foot.direct_ms, 4),
            "ms",
            "<= 0.05",
        ),
        Figure(
            "agent.inproc_first_overhead_ms",
            round(foot.inproc_first_ms - foot.direct_ms, 4),
            "ms",
            "",
        ),
        Figure("agent.kill9_consistent", kills.consistent, "runs", f">= {kills.runs}"),
        Figure("agent.kill9_runs", kills.runs, "runs", f">= {runs}"),
        Figure("agent.outage_lost", outage.lost, "messages", "<= 0"),
        Figure("agent.outage_out_of_order", outage.out_of_order, "messages", "<= 0"),
        Figure("agent.outage_produced", outage.produced, "messages", ""),
    ]


# --------------------------------------------------------------------------- footprint figures

# The yardstick for the agent's idle memory: a program with only the agent's third-party
# imports and the same session options, written out without edgeloop on purpose (importing
# edgeloop.agent.runtime would bring the protocol and pydantic, which is what is measured).
_BARE_RUNTIME = """
import sys, time
import numpy, onnxruntime, paho.mqtt.client, requests
options = onnxruntime.SessionOptions()
options.intra_op_num_threads = 1  # as the agent, with the bench profile's one thread
options.inter_op_num_threads = 1
session = onnxruntime.InferenceSession(
    sys.argv[1], sess_options=options, providers=["CPUExecutionProvider"]
)
x = numpy.zeros((1, {features}), numpy.float32)
for _ in range(30):
    session.run(None, {{"x": x}})
time.sleep(2)
print([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1])
"""

_IMPORT_TIME = (
    "import time; t = time.perf_counter(); import edgeloop.agent.daemon, edgeloop.agent.cli; "
    "print(time.perf_counter() - t)"
)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def bare_runtime_rss_mb(model_path: Path) -> float:
    """RSS of a process that only imports what the agent needs and opens the same model."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _BARE_RUNTIME.format(features=FEATURES), str(model_path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(out.strip()) / 1024


def import_seconds(repeats: int = 5) -> float:
    import statistics
    import subprocess
    import sys

    times = [
        float(
            subprocess.run(
                [sys.executable, "-c", _IMPORT_TIME], check=True, capture_output=True, text=True
            ).stdout
        )
        for _ in range(repeats)
    ]
    return statistics.median(times)


_KILLED_DOWNLOAD = """
import os, sys, time, json, requests
from pathlib import Path
from edgeloop.agent.fetch import fetch
from edgeloop.agent.protocol import FileRef
from edgeloop.agent.runtime import open_session
ref = FileRef.model_validate_json(sys.argv[1])
http = requests.Session()
http.headers.update(json.loads(os.environ["EDGELOOP_BENCH_HEADERS"]))
def progress(have):
    print(have, flush=True)
    time.sleep(0.002)  # a slow link, so the kill can land mid-transfer
fetch(ref, Path(sys.argv[2]), http, progress)
"""


class _Calls:
    """A call on a feed, shaped as a session for :func:`interleaved` (which calls
    ``run(None, feed)``). The extra Python call it adds is counted against the runtime it
    wraps, never against the bare session."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def run(self, _output_names: None, feed: dict[str, np.ndarray]) -> Any:
        return self._call(feed)


@dataclass
class FootprintResult:
    idle_rss_mb: float
    bare_rss_mb: float
    import_s: float
    download_s: float
    curl_s: float
    resume_resent_bytes: int
    resumed_with_range: bool
    endpoint_ms: float
    direct_ms: float
    inproc_ms: float
    inproc_first_ms: float
    model_bytes: int
    download_bytes: int


def footprint(workdir: Path, *, download_mb: int = 64, padding_floats: int = 1_500_000):
    """Idle RSS vs the bare runtime, import time, download vs curl, resume, endpoint cost."""
    import hashlib
    import json
    import os
    import signal
    import statistics
    import subprocess
    import sys

    from edgeloop.agent.endpoint_client import InferenceClient
    from edgeloop.agent.fetch import fetch

    device_id = "footprint-01"
    device_dir = workdir / "devices" / device_id
    with control_plane(workdir) as (server, device_port):
        agent: AgentProcess | None = None
        planner: DesiredPublisher | None = None
        try:
            weights = np.random.default_rng(0).normal(size=(FEATURES, CLASSES)).astype(np.float32)
            manifest = upload_version(server.url, "a", weights, padding_floats)
            planner = DesiredPublisher(device_port, device_id, server.workdir / "tuf")
            agent = AgentProcess(
                device_id, PROFILE, workdir, device_port, telemetry_interval_s=10, server=server
            )
            planner.publish(1, manifest)
            if wait_settled(device_dir, 1, 60) != "committed":
                raise RuntimeError(f"agent did not commit the model:\n{agent.log_tail()}")
            time.sleep(3)
            idle = rss_mb(agent.pid)
            model_path = device_dir / "current" / "model.onnx"
            bare = bare_runtime_rss_mb(model_path)

            # The endpoint and the in-process runtime (following this agent's workdir) vs a
            # bare onnxruntime session of the same file and thread count, calls interleaved.
            url = (device_dir / "endpoint.url").read_text().strip()
            client = InferenceClient(url)
            session = open_session(model_path, PROFILE)
            x = {"x": np.ones((1, FEATURES), np.float32)}
            with LocalModel(device_dir) as local:
                local.wait(timeout_s=30)
                calls = interleaved(
                    {
                        "direct": session,
                        "endpoint": _Calls(client.infer),
                        "inproc": _Calls(local.run),
                        "inproc_first": _Calls(local.run_first),
                    },
                    x,
                    calls=1000,
                )
            client.close()

            # download throughput: the agent's fetch vs curl, same file, interleaved
            blob = os.urandom(download_mb * 2**20)
            digest = hashlib.sha256(blob).hexdigest()
            requests.put(
                f"{server.url}/api/v1/artifacts/{digest}",
                data=blob,
                headers=server.headers,
                timeout=120,
            ).raise_for_status()
            ref = FileRef(url=f"{server.url}/artifacts/{digest}", sha256=digest, size=len(blob))
            del blob

            # Artifacts are served to credentials only (a device's token; the operator's here).
            def authorized() -> requests.Session:
                http = requests.Session()
                http.headers.update(server.headers)
                return http

            curl_auth = [arg for k, v in server.headers.items() for arg in ("-H", f"{k}: {v}")]
            ours, theirs = [], []
            scratch = workdir / "download"
            for _ in range(3):
                for path in scratch.glob("*"):
                    path.unlink()
                start = time.perf_counter()
                fetch(ref, scratch, authorized())
                ours.append(time.perf_counter() - start)
                start = time.perf_counter()
                subprocess.run(
                    ["curl", "-fsS", *curl_auth, "-o", str(scratch / "curl.bin"), ref.url],
                    check=True,
                )
                theirs.append(time.perf_counter() - start)

            # resume: kill a downloading process at ~50%, then resume in-process
            for path in scratch.glob("*"):
                path.unlink()
            killed = subprocess.Popen(
                [sys.executable, "-c", _KILLED_DOWNLOAD, ref.model_dump_json(), str(scratch)],
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "EDGELOOP_BENCH_HEADERS": json.dumps(server.headers)},
            )
            assert killed.stdout is not None
            received = 0
            for line in killed.stdout:
                received = int(line)
                if received >= ref.size // 2:
                    killed.send_signal(signal.SIGKILL)
                    break
            killed.wait()
            for line in killed.stdout:  # lines already in the pipe when it died
                received = max(received, int(line))
            on_disk = (scratch / f"{digest}.part").stat().st_size
            ranges: list[int] = []
            http = authorized()
            http.hooks["response"].append(lambda r, *a, **k: ranges.append(r.status_code))
            fetch(ref, scratch, http)
        finally:
            if agent is not None:
                agent.stop()
            if planner is not None:
                planner.close()
    return FootprintResult(
        idle_rss_mb=idle,
        bare_rss_mb=bare,
        import_s=import_seconds(),
        download_s=statistics.median(ours),
        curl_s=statistics.median(theirs),
        resume_resent_bytes=max(0, received - on_disk),
        resumed_with_range=ranges == [206],
        endpoint_ms=float(np.median(calls["endpoint"])),
        direct_ms=float(np.median(calls["direct"])),
        inproc_ms=float(np.median(calls["inproc"])),
        inproc_first_ms=float(np.median(calls["inproc_first"])),
        model_bytes=manifest.artifact.size,
        download_bytes=ref.size,
    )
