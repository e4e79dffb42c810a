"""The golden file has one format, written and read by agent/golden.py."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from edgeloop.agent.errors import GateError
from edgeloop.agent.golden import golden_bytes, load_golden, save_golden
from edgeloop.agent.protocol import Gate

RNG = np.random.default_rng(7)


def test_what_is_saved_is_what_a_device_reads_for_every_input(tmp_path: Path) -> None:
    ids, mask = RNG.integers(0, 100, (3, 8)), np.ones((3, 8), np.int64)
    outputs = RNG.standard_normal((3, 4)).astype(np.float32)
    path = save_golden(tmp_path / "g" / "golden.npz", {"ids": ids, "mask": mask}, outputs)

    golden = load_golden(path, ["ids", "mask"])

    assert golden.count == 3
    np.testing.assert_array_equal(golden.inputs["ids"], ids)
    np.testing.assert_array_equal(golden.outputs, outputs)
    assert golden.sample(2)["mask"].shape == (1, 8)


def test_files_of_the_older_single_input_format_are_still_read(tmp_path: Path) -> None:
    inputs, outputs = RNG.standard_normal((5, 2)), RNG.standard_normal((5, 3))
    np.savez(tmp_path / "old.npz", inputs=inputs, outputs=outputs)

    golden = load_golden(tmp_path / "old.npz", ["x"])

    np.testing.assert_array_equal(golden.inputs["x"], inputs)


def test_inputs_and_outputs_of_different_batch_sizes_are_never_written() -> None:
    with pytest.raises(ValueError, match="batch size"):
        golden_bytes({"x": np.zeros((4, 2))}, np.zeros((3, 1)))


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"not an npz", id="garbage"),
        pytest.param(golden_bytes({"y": np.zeros((2, 2))}, np.zeros((2, 1))), id="other-input"),
    ],
)
def test_a_file_that_is_not_a_golden_for_the_model_is_refused_by_the_golden_gate(
    tmp_path: Path, content: bytes
) -> None:
    (tmp_path / "golden.npz").write_bytes(content)
    with pytest.raises(GateError) as refused:
        load_golden(tmp_path / "golden.npz", ["x"])
    assert refused.value.gate == Gate.GOLDEN


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, input_x=np.array([{"evil": 1}], dtype=object), outputs=np.zeros(1))
    (tmp_path / "golden.npz").write_bytes(buffer.getvalue())
    with pytest.raises(GateError, match="pickle"):
        load_golden(tmp_path / "golden.npz", ["x"])
