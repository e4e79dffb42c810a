"""The device package installs alone: `edgeloop[agent]` from the wheel, without torch,
FastAPI or any generic top-level module."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
        check=True,
    )
    (wheel,) = out.glob("edgeloop-*.whl")
    return wheel


def test_wheel_keeps_everything_under_the_edgeloop_namespace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert {n for n in top_level if not n.endswith(".dist-info")} == {"edgeloop"}
    assert "edgeloop/agent/protocol.py" in names
    assert "edgeloop/server/app.py" in names
    assert "edgeloop/compressor/examples/digits.py" in names
    # The control plane migrates its database on start: the migrations ship with it.
    assert "edgeloop/server/migrations/env.py" in names
    assert "edgeloop/server/migrations/script.py.mako" in names
    assert "edgeloop/server/migrations/versions/0001_initial_schema.py" in names


def test_agent_extra_installs_alone_and_runs_without_torch(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "device-venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"{wheel}[agent]"], check=True)
    shown = subprocess.run(
        [str(env_dir / "bin" / "edgeloop-agent"), "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert shown.returncode == 0, shown.stderr
    assert "edgeloop-agent" in shown.stdout
    probe = (
        "import importlib.util as u, edgeloop.agent.daemon, edgeloop.agent.protocol;"
        "names = ('torch', 'fastapi', 'sqlalchemy', 'agent', 'server');"
        "print([m for m in names if u.find_spec(m)])"
    )
    found = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert found.stdout.strip() == "[]"
