"""The compressor's Pareto plot and its trials reach the control plane: pushed with the model,
downloadable, listed in the version's figures, and kept from garbage collection while the
version is live. Against a real server process; uploads report their progress."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from helpers import register, run_command

from edgeloop.agent.protocol import ModelManifest
from edgeloop.lab.faults import upload_version
from edgeloop.lab.launch import ServerProcess
from edgeloop.server.client import ApiError
from edgeloop.server.schemas import ModelCreate, ModelFigures

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


def edgeloop(*args: str) -> subprocess.CompletedProcess[str]:
    return run_command("edgeloop.cli.main", *args)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def downloaded(server: ServerProcess, sha: str) -> bytes:
    response = requests.get(f"{server.url}/artifacts/{sha}", headers=server.headers, timeout=30)
    response.raise_for_status()
    return response.content


def with_plot(manifest: ModelManifest, pareto_sha256: str) -> ModelCreate:
    """The registration of ``manifest``'s files with a Pareto plot's hash."""
    return ModelCreate(
        name=manifest.name,
        version=manifest.version,
        artifact_sha256=manifest.artifact.sha256,
        golden_sha256=manifest.golden.sha256,
        pareto_sha256=pareto_sha256,
        inputs=manifest.inputs,
        outputs=manifest.outputs,
        report=ModelFigures(accuracy=0.9),
    )


def test_a_compressed_model_is_pushed_with_its_pareto_plot_and_trials(
    server: ServerProcess, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    compressed = subprocess.run(  # a search: longer than a command's usual minute on a busy host
        [sys.executable, "-m", "edgeloop.cli.main", "compress", "example", "control",
         "--max-trials", "2", "--out", str(out), "--push", server.url, "--name", "ctl",
         "--version", "1"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert compressed.returncode == 0, compressed.stdout[-2000:] + compressed.stderr
    assert "registered ctl:1" in compressed.stdout

    report = json.loads((out / "model_report.json").read_text())
    trials = report["trials"]
    assert trials[0]["label"] == "export", "the baseline comes first"
    assert [t["chosen"] for t in trials].count(True) == 1
    assert all(t["size_bytes"] > 0 and t["latency_p50_ms"] > 0 for t in trials)

    pushed = edgeloop("models", "push", str(out), "--name", "ctl", "--version", "2",
                      *server.cli_args)  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr

    first, second = server.client().models()
    for version in (first, second):
        assert version.pareto_sha256 == sha256(out / "pareto.png")
        assert [t.model_dump() for t in version.report.trials] == trials
    assert first.pareto_sha256 is not None
    assert downloaded(server, first.pareto_sha256) == (out / "pareto.png").read_bytes()


def test_a_version_registered_without_a_pareto_plot_has_none(server: ServerProcess) -> None:
    manifest = upload_version(server.url, "1", np.eye(64, 10, dtype=np.float32), 0)
    model = register(server.client(), manifest, 0.9)
    assert model.pareto_sha256 is None and model.report.trials == []


def test_a_live_versions_pareto_plot_is_not_collected_until_the_version_is_retired(
    server: ServerProcess, tmp_path: Path
) -> None:
    client = server.client()
    manifest = upload_version(server.url, "1", np.eye(64, 10, dtype=np.float32), 0)
    plot = tmp_path / "pareto.png"
    plot.write_bytes(PNG)
    pareto = client.upload_artifact(plot).sha256
    client.register_model(with_plot(manifest, pareto), plan=False)

    kept = client.collect_artifacts(min_age_s=0)
    assert pareto not in {removed.sha256 for removed in kept.removed}
    with pytest.raises(ApiError) as refused:
        client.delete_artifact(pareto)
    assert refused.value.status == 409 and "linear:1" in str(refused.value)
    assert downloaded(server, pareto) == PNG

    client.retire_model("linear:1")
    collected = client.collect_artifacts(min_age_s=0)
    assert pareto in {removed.sha256 for removed in collected.removed}


def test_a_version_naming_a_pareto_plot_never_uploaded_is_refused(server: ServerProcess) -> None:
    client = server.client()
    manifest = upload_version(server.url, "1", np.eye(64, 10, dtype=np.float32), 0)
    with pytest.raises(ApiError) as refused:
        client.register_model(with_plot(manifest, "0" * 64), plan=False)
    assert refused.value.status == 409 and "not uploaded" in str(refused.value)


def test_an_upload_reports_growing_byte_counts_ending_at_the_file_size(
    server: ServerProcess, tmp_path: Path
) -> None:
    big = tmp_path / "model.bin"
    big.write_bytes(np.random.default_rng(0).bytes(3 * 1024 * 1024 + 17))
    seen: list[tuple[int, int]] = []
    stored = server.client().upload_artifact(big, progress=lambda *counts: seen.append(counts))
    assert stored.sha256 == sha256(big)
    sent = [done for done, _ in seen]
    assert len(sent) > 3 and sent == sorted(set(sent))
    assert sent[-1] == big.stat().st_size
    assert {total for _, total in seen} == {big.stat().st_size}
    assert downloaded(server, stored.sha256) == big.read_bytes()
