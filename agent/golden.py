"""The golden file: reference inputs and the outputs this very artifact produced for them.

A device's golden gate runs the inputs and compares its outputs with the stored ones, so a
file that does not compute what was published (another model, a broken kernel, a bad
conversion) is refused before it serves. This module is the one home of the format: the
compressor, the loop and the lab write with :func:`save_golden` (or
:func:`edgeloop.agent.runtime.record_golden`, which runs the artifact first), the agent reads
with :func:`load_golden`.

Format (``numpy.savez``, no pickled objects): ``input_<name>`` per model input, batch first,
and ``outputs``, the model's first output for that batch. Files written before that format
(one model input stored as ``inputs``) are still read.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import GateError
from .protocol import Gate

__all__ = ["Golden", "golden_bytes", "load_golden", "save_golden"]

_LEGACY_SINGLE_INPUT = "inputs"


@dataclass(frozen=True)
class Golden:
    """Golden inputs by name (batch first) and the first output they must reproduce."""

    inputs: dict[str, np.ndarray]
    outputs: np.ndarray

    @property
    def count(self) -> int:
        return len(next(iter(self.inputs.values())))

    def sample(self, index: int) -> dict[str, np.ndarray]:
        return {name: array[index : index + 1] for name, array in self.inputs.items()}


def golden_bytes(inputs: dict[str, np.ndarray], outputs: np.ndarray) -> bytes:
    """The golden file's content for ``inputs`` (by model input name) and ``outputs``.

    Raises:
        ValueError: no inputs, or inputs whose batch sizes differ from each other or from
            the outputs'.
    """
    if not inputs:
        raise ValueError("a golden file needs at least one input")
    batches = {len(array) for array in inputs.values()} | {len(outputs)}
    if len(batches) != 1:
        raise ValueError(f"golden inputs and outputs disagree on the batch size: {batches}")
    buffer = io.BytesIO()
    arrays = {f"input_{name}": np.asarray(array) for name, array in inputs.items()}
    np.savez(buffer, outputs=np.asarray(outputs), **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def save_golden(path: Path, inputs: dict[str, np.ndarray], outputs: np.ndarray) -> Path:
    """Write :func:`golden_bytes` to ``path`` (parents created); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(golden_bytes(inputs, outputs))
    return path


def load_golden(path: Path, input_names: list[str]) -> Golden:
    """Read a golden file for a model with ``input_names``. Pickled objects are refused.

    Raises:
        GateError(Gate.GOLDEN): not a golden file for these inputs, or its arrays disagree on
            the batch size.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            if _LEGACY_SINGLE_INPUT in data.files and len(input_names) == 1:
                inputs = {input_names[0]: data[_LEGACY_SINGLE_INPUT]}
            else:
                inputs = {name: data[f"input_{name}"] for name in input_names}
            golden = Golden(inputs, data["outputs"])
    except Exception as exc:
        raise GateError(
            Gate.GOLDEN,
            f"{path.name} is not a golden npz with inputs ({'/'.join(input_names)}) and "
            f"outputs: {exc}",
        ) from exc
    if len({len(a) for a in golden.inputs.values()}) != 1 or golden.count == 0:
        raise GateError(Gate.GOLDEN, f"{path.name}: golden inputs disagree on the batch size")
    return golden
