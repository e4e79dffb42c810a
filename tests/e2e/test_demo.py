"""The README's demo, as a user runs it, and the benchmark format every bench shares."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeloop.lab.bench import Figure, goal_met, write_bench


@pytest.mark.slow
def test_demo_on_the_embedded_broker_reports_every_device(tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeloop.cli.main",
            "demo",
            "--devices",
            "3",
            "--broker",
            "amqtt",
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "broker  amqtt" in run.stdout
    result = json.loads(out.read_text())
    assert result["ok"] and result["broker"] == "amqtt"
    # The loop started every class on fp32 and moved the Pi Zero (128 KB of storage) off it.
    assert sum(m["baseline"] for m in result["models"]) == 1
    assert result["rounds"] >= 1
    moved = [h for h in result["history"] if h["round"] >= 1 and h["action"] == "deploy"]
    assert any(h["profile"] == "pi-zero-2" and "size" in h["reason"] for h in moved)
    assert result["history"][-1]["action"] == "stop"
    assert len(result["devices"]) == 3
    assert len({d["profile"] for d in result["devices"]}) == 2
    for device in result["devices"]:
        assert device["ok"] and device["verified"]
        assert device["p50_ms"] > 0 and device["p95_ms"] >= device["p50_ms"]
        assert device["peak_rss_mb"] > 0 and device["energy_mj_per_inference"] > 0
        assert device["size_bytes"] > 0 and 0 < device["accuracy"] <= 1
        assert isinstance(device["within_budget"], bool)
        assert device["artifact_sha256"] in {m["artifact_sha256"] for m in result["models"]}
        assert device["round"] is not None


@pytest.mark.parametrize(
    ("value", "goal", "met"),
    [
        (2, ">= 2", True),
        (1, ">= 2", False),
        (130.0, "<= 120", False),
        (0.5, "< 1", True),
        (3, "about 3", None),
    ],
)
def test_a_goal_is_met_missed_or_informational(value: float, goal: str, met: bool | None) -> None:
    assert goal_met(value, goal) is met


def test_bench_json_has_the_shared_format(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    write_bench("demo", [Figure("demo.wall_s", 200.0, "s", "<= 120")], path)
    result = json.loads(path.read_text())
    assert result["bench"] == "demo"
    assert {"cpu", "cores", "python", "onnxruntime"} <= result["machine"].keys()
    assert result["figures"] == [
        {"name": "demo.wall_s", "value": 200.0, "unit": "s", "goal": "<= 120", "met": False}
    ]
