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
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The wheel, and everything the build printed."""
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = out.glob("edgeloop-*.whl")
    return wheel, build.stdout + build.stderr


@pytest.fixture(scope="module")
def wheel(built: tuple[Path, str]) -> Path:
    return built[0]


def test_the_build_prints_no_packaging_warnings(built: tuple[Path, str]) -> None:
    log = built[1]
    for warning in ("would be ignored", "SetuptoolsDeprecationWarning", "is not a package"):
        assert warning not in log, [line for line in log.splitlines() if warning in line]


def test_wheel_keeps_everything_under_the_edgeloop_namespace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert {n for n in top_level if not n.endswith(".dist-info")} == {"edgeloop"}
    assert "edgeloop/agent/protocol.py" in names
    assert "edgeloop/server/app.py" in names
    assert "edgeloop/compressor/examples/digits.py" in names
    for package in ("loop/driver.py", "lab/demo.py", "cli/main.py", "agent/profiles/pi4.toml"):
        assert f"edgeloop/{package}" in names
    assert "edgeloop/compressor/recipes/image.yaml" in names
    assert "edgeloop/compressor/data/sentences.txt" in names
    assert not [n for n in names if "make_sentences" in n], "data-building scripts stay in tools/"
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
        "names = ('torch', 'fastapi', 'sqlalchemy', 'rich', 'agent', 'server', 'loop', 'lab');"
        "print([m for m in names if u.find_spec(m)])"
    )
    found = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert found.stdout.strip() == "[]"
