"""The code's rooms match the system: layers hold, each concept has one home.

The layers are import-linter contracts in ``pyproject.toml`` (``lint-imports``); what
import-linter cannot state (private names across packages, cycles inside a package, one
session opener, one golden writer, one profile catalogue) is checked here on the source.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"agent", "server", "compressor", "loop", "lab", "cli"}


def source_files() -> Iterator[tuple[str, Path]]:
    for package in sorted(PACKAGES):
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                yield package, path


def calls(tree: ast.AST) -> Iterator[ast.Call]:
    return (node for node in ast.walk(tree) if isinstance(node, ast.Call))


def called_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"


def test_the_import_contracts_hold() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "import-linter is part of the dev extra"
    result = subprocess.run(
        [lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert ", 0 broken" in result.stdout


def test_no_private_name_is_imported_across_packages() -> None:
    crossings = []
    for package, path in source_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            parts = node.module.split(".")
            if parts[0] != "edgeloop" or len(parts) < 2 or parts[1] == package:
                continue
            private = [a.name for a in node.names if a.name.startswith("_")]
            private_module = [p for p in parts[2:] if p.startswith("_")]
            if private or private_module:
                crossings.append(f"{where(path, node)} imports {node.module}: {private}")
    assert not crossings, "\n".join(crossings)


def test_there_are_no_import_cycles() -> None:
    roots = [f"edgeloop.{package}" for package in sorted(PACKAGES)]
    graph = grimp.build_graph(*roots, cache_dir=None)
    modules = {m for m in graph.modules if m.startswith("edgeloop.")}
    edges = {
        m: {d for d in graph.find_modules_directly_imported_by(m) if d in modules} for m in modules
    }
    cycles = []
    for module in sorted(modules):
        for target in edges[module]:
            back = graph.find_shortest_chain(importer=target, imported=module)
            if back:
                cycles.append(" -> ".join([module, *back]))
    assert not cycles, "\n".join(sorted(cycles)[:20])


def test_one_session_opener() -> None:
    """Every onnxruntime session is opened by agent/runtime.py, with the profile's options."""
    openers = [
        where(path, call)
        for _, path in source_files()
        for call in calls(ast.parse(path.read_text()))
        if called_name(call) in ("InferenceSession", "SessionOptions")
    ]
    assert openers and all(o.startswith("agent/runtime.py:") for o in openers), openers


def test_one_golden_writer() -> None:
    """Only agent/golden.py writes arrays called ``outputs`` into an npz."""
    writers = [
        where(path, call)
        for _, path in source_files()
        for call in calls(ast.parse(path.read_text()))
        if called_name(call) in ("savez", "savez_compressed")
        and any(k.arg == "outputs" for k in call.keywords)
    ]
    assert writers and all(w.startswith("agent/golden.py:") for w in writers), writers


def test_one_profile_catalogue() -> None:
    """No module-level DeviceProfile outside the catalogue (agent/profiles/*.toml)."""
    constants = []
    for _, path in source_files():
        for node in ast.parse(path.read_text()).body:
            value = getattr(node, "value", None)
            if isinstance(node, ast.Assign | ast.AnnAssign) and value is not None:
                if any(called_name(c) == "DeviceProfile" for c in calls(value)):
                    constants.append(where(path, node))
    assert not constants, constants


@pytest.mark.parametrize("name", ["jetson-nano", "pi-zero-2", "pi4", "sensor-hub", "host-1t"])
def test_every_catalogued_profile_is_read_from_its_file(name: str) -> None:
    from edgeloop.agent.profiles import PROFILES, load_profile

    assert load_profile(name) is PROFILES[name]
    assert (ROOT / "agent" / "profiles" / f"{name}.toml").is_file()
