"""``edgeloop bench robustness`` at a small scale: a live server and agent survive hostile MQTT
payloads and a schemathesis run, refuse every bad model of the corpus by its own gate, and
the device's endpoint answers every call meanwhile. The bench runs the same code with the
issue's counts (100,000 payloads, 10,000+ REST cases)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeloop.lab.bad_models import CORPUS

pytestmark = pytest.mark.slow


def test_a_small_robustness_run_keeps_every_process_up_and_refuses_every_bad_model(
    tmp_path: Path,
) -> None:
    out = tmp_path / "robustness.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeloop.cli.main",
            "bench",
            "robustness",
            "--workdir",
            str(tmp_path),
            "--payloads",
            "3000",
            "--rest-examples",
            "3",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    figures = {f["name"]: f["value"] for f in result["figures"]}
    details = result["robustness"]
    assert figures["robustness.mqtt_payloads"] == 3000
    assert figures["robustness.mqtt_crashes"] == 0, details["mqtt_checks"]
    assert figures["robustness.rest_cases"] > 0
    assert figures["robustness.rest_5xx"] == 0, details["rest_failures"]
    assert figures["robustness.rest_contract_failures"] == 0, details["rest_failures"]
    assert figures["robustness.bad_models"] == len(CORPUS)
    assert figures["robustness.bad_models_refused"] == len(CORPUS), details["bad_models"]
    assert figures["robustness.serving_gaps"] == 0, details["gap_errors"]
    assert figures["robustness.serving_calls"] > 100
    # the flood reached the server and was dropped with reasons, not lost
    assert sum(details["server_dropped"].values()) > 1000
