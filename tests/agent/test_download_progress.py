"""A download run by hand shows its progress on one line; a download under systemd shows none.
Over real HTTP, from the control plane's artifact route."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import requests

from edgeloop.agent.fetch import PROGRESS_INTERVAL_S, ProgressLine, fetch, progress_line
from edgeloop.agent.protocol import FileRef
from edgeloop.lab.launch import ServerProcess


def served(server: ServerProcess, tmp_path: Path, size: int) -> FileRef:
    """A file of ``size`` random bytes, uploaded to the control plane for download."""
    data = np.random.default_rng(size).bytes(size)
    path = tmp_path / "artifact.bin"
    path.write_bytes(data)
    stored = server.client().upload_artifact(path)
    return FileRef(url=stored.url, sha256=hashlib.sha256(data).hexdigest(), size=size)


def device_session(server: ServerProcess) -> requests.Session:
    session = requests.Session()
    session.headers.update(server.headers)
    return session


def test_a_forced_progress_line_follows_a_download_to_100_percent(
    server: ServerProcess, tmp_path: Path
) -> None:
    ref = served(server, tmp_path, 8 * 1024 * 1024 + 5)
    stream = io.StringIO()
    line = progress_line(ref, tmp_path / "blobs", stream=stream, force=True)
    assert line is not None
    path = fetch(ref, tmp_path / "blobs", device_session(server), line)
    assert path.read_bytes() == (tmp_path / "artifact.bin").read_bytes()

    written = stream.getvalue()
    updates = [update for update in written.split("\r") if update]
    assert updates, "at least the final line is drawn"
    assert written.endswith("\n") and written.count("\n") == 1
    assert "8.0/8.0 MiB 100.0%" in updates[-1] and "MiB/s" in updates[-1]
    percents = [float(update.split("%")[0].rsplit(" ", 1)[-1]) for update in updates]
    assert percents == sorted(percents)


def test_progress_is_drawn_at_most_ten_times_a_second_and_always_at_the_end() -> None:
    now = [0.0]
    stream = io.StringIO()
    ref = FileRef(url="http://x/a", sha256="a" * 64, size=1000)
    line = ProgressLine(ref, stream, clock=lambda: now[0])
    for have in range(10, 1001, 10):  # 100 chunks in 0.5 s
        now[0] += 0.005
        line(have)
    updates = [update for update in stream.getvalue().split("\r") if update]
    assert len(updates) <= 0.5 / PROGRESS_INTERVAL_S + 2
    assert "100.0%" in updates[-1] and updates[-1].endswith("\n")


def test_no_progress_is_written_where_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    ref = FileRef(url="http://x/a", sha256="a" * 64, size=1000)
    assert progress_line(ref, tmp_path, stream=io.StringIO()) is None
