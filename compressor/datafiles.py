"""A user's data, from ``.npz`` files or folders of ``.npy`` files, checked against the model.

Layout (first axis = samples, the same count in every array)::

    train.npz            x (a one-input model) or one array per model input, by input name
                         y: targets (class labels, or values); optional for embeddings
    eval/                the same as a folder: x.npy, y.npy, <input name>.npy

Arrays are read with ``allow_pickle=False``: a data file never runs code. Every problem is a
:class:`DataFileError` naming the file, the array and what to do; nothing else escapes
:func:`load_arrays` and :func:`load_dataset`.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "MAX_DATA_BYTES",
    "SINGLE_INPUT",
    "TARGETS",
    "DataFileError",
    "Dataset",
    "load_arrays",
    "load_dataset",
]

SINGLE_INPUT = "x"
"""The name a one-input model's data may use instead of the input's own name."""

TARGETS = "y"

MAX_DATA_BYTES = 4 << 30
"""Largest total of uncompressed arrays in one data file or folder (4 GiB): the search holds
its data in memory, and a bigger set should be sampled down before compressing."""


class DataFileError(ValueError):
    """A data file or folder that cannot serve as the model's data; the message says why."""


@dataclass(frozen=True)
class Dataset:
    """Model inputs by input name and optional targets, all with the same number of samples."""

    inputs: dict[str, np.ndarray]
    targets: np.ndarray | None
    origin: Path

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def head(self, count: int) -> dict[str, np.ndarray]:
        """The first ``count`` samples of every input."""
        return {name: array[:count] for name, array in self.inputs.items()}


def load_arrays(path: Path, *, role: str = "data") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, or of the ``.npy`` files in a folder (by file stem).
    Messages start with ``role`` and the path (``--train train.npz: ...``).

    Raises:
        DataFileError: missing or unreadable, not .npz or a folder, no arrays, pickled object
            arrays, or more than :data:`MAX_DATA_BYTES` of arrays.
    """
    try:
        return _arrays(path)
    except DataFileError as exc:
        raise DataFileError(f"{role} {exc}") from None


def _arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise DataFileError(f"{path}: no such file or folder")
    if path.is_dir():
        files = sorted(path.glob("*.npy"))
        if not files:
            raise DataFileError(f"{path}: a data folder holds x.npy (or <input>.npy) and y.npy")
        _check_size(path, sum(_npy_bytes(f) for f in files))
        return {
            f.stem: _read(f, lambda f=f: np.load(f, allow_pickle=False))  # type: ignore[misc]
            for f in files
        }
    if path.suffix != ".npz":
        raise DataFileError(f"{path}: data must be an .npz file or a folder of .npy files")
    try:
        with zipfile.ZipFile(path) as archive:
            _check_size(path, sum(info.file_size for info in archive.infolist()))
        with np.load(path, allow_pickle=False) as archive:
            arrays = {
                name: _read(path, lambda name=name: archive[name], name)  # type: ignore[misc]
                for name in archive.files
            }
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataFileError(f"{path}: not a readable .npz file ({exc})") from None
    if not arrays:
        raise DataFileError(f"{path}: holds no arrays")
    return arrays


def load_dataset(
    path: Path,
    input_names: Sequence[str],
    *,
    dtypes: Mapping[str, np.dtype] | None = None,
    shapes: Mapping[str, Sequence[int | None]] | None = None,
    targets_required: bool = True,
    role: str = "data",
) -> Dataset:
    """The model's inputs (and targets ``y``) from ``path``, checked against the model.

    Args:
        input_names: the model's inputs; a one-input model also takes an array ``x``.
        dtypes: the dtype each input must have; floats and integers are converted within
            their kind (float64 data for a float32 input), anything else is refused.
        shapes: per input, the dims after the batch axis; ``None`` for a free dim.
        targets_required: refuse a file without ``y``.
        role: how messages name the file (``--train``, ``--eval``).

    Raises:
        DataFileError: as :func:`load_arrays`, or an input or the targets missing, sample
            counts that differ, no samples, a non-numeric array, a dtype of another kind, or a
            shape the model does not take.
    """
    arrays = load_arrays(path, role=role)
    where = f"{role} {path}"
    found = ", ".join(sorted(arrays)) or "none"
    inputs: dict[str, np.ndarray] = {}
    for name in input_names:
        if name in arrays:
            inputs[name] = arrays[name]
        elif len(input_names) == 1 and SINGLE_INPUT in arrays:
            inputs[name] = arrays[SINGLE_INPUT]
        else:
            alias = f" (or {SINGLE_INPUT!r})" if len(input_names) == 1 else ""
            raise DataFileError(
                f"{where}: no array {name!r}{alias} for the model input {name!r}; "
                f"found: {found}; the model's inputs: {', '.join(input_names)}"
            )
    targets = arrays.get(TARGETS)
    if targets is None and targets_required:
        raise DataFileError(f"{where}: no array {TARGETS!r} with the targets; found: {found}")
    named = dict(inputs) | ({TARGETS: targets} if targets is not None else {})
    counts = {name: (len(a) if a.ndim else 0) for name, a in named.items()}
    if len(set(counts.values())) != 1:
        detail = ", ".join(f"{name}: {count}" for name, count in counts.items())
        raise DataFileError(
            f"{where}: arrays disagree on the number of samples (first axis): {detail}"
        )
    if next(iter(counts.values())) == 0:
        raise DataFileError(f"{where}: holds no samples (first axis of length 0)")
    for name, array in named.items():
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise DataFileError(f"{where}: array {name!r} is {array.dtype}, not numbers")
    for name in input_names:
        if dtypes is not None and name in dtypes:
            inputs[name] = _convert(inputs[name], np.dtype(dtypes[name]), f"{where}: {name!r}")
        if shapes is not None and name in shapes:
            _check_shape(inputs[name], shapes[name], f"{where}: {name!r}")
    return Dataset(inputs, targets, path)


def _read(path: Path, read: Callable[[], np.ndarray], name: str | None = None) -> np.ndarray:
    what = f"{path}: " + (f"array {name!r}" if name else "the array")
    try:
        array = read()
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataFileError(
                f"{what} holds pickled Python objects, which are refused (allow_pickle=False); "
                "save plain numeric arrays (numpy.savez with numbers, not objects)"
            ) from None
        raise DataFileError(f"{what}: {exc}") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataFileError(f"{what}: unreadable ({exc})") from None
    return np.asarray(array)


def _npy_bytes(path: Path) -> int:
    """The array's size from its header (memory-mapped, nothing read); the file's otherwise."""
    try:
        return int(np.load(path, mmap_mode="r", allow_pickle=False).nbytes)
    except Exception:
        return path.stat().st_size


def _check_size(path: Path, total: int) -> None:
    if total > MAX_DATA_BYTES:
        raise DataFileError(
            f"{path}: {total / 2**30:.1f} GiB of arrays, more than the "
            f"{MAX_DATA_BYTES / 2**30:.0f} GiB a compression run holds; sample it down"
        )


def _convert(array: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    if array.dtype == dtype:
        return array
    for kind in (np.floating, np.integer):
        if np.issubdtype(dtype, kind) and np.issubdtype(array.dtype, kind):
            return array.astype(dtype)
    if np.issubdtype(dtype, np.floating) and array.dtype == np.bool_:
        return array.astype(dtype)
    raise DataFileError(f"{what} is {array.dtype} but the model takes {dtype}")


def _check_shape(array: np.ndarray, dims: Sequence[int | None], what: str) -> None:
    sample = array.shape[1:]
    if len(sample) != len(dims) or any(
        want is not None and want != got for want, got in zip(dims, sample, strict=False)
    ):
        expected = "[" + ", ".join(["n", *("?" if d is None else str(d) for d in dims)]) + "]"
        raise DataFileError(
            f"{what} has shape {list(array.shape)} but the model takes {expected} "
            "(first axis = samples)"
        )
