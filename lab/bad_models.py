"""A corpus of bad models, each with the gate that must refuse it on a device.

Every case is a model version as a device would receive it: real bytes uploaded to a real
control plane's artifact store and a manifest pointing at them. What is wrong with each is
what goes wrong in the field: a file cut short or empty, an archive uploaded instead of the
model, a hash that does not match, external data that reaches outside its directory, an op
set this onnxruntime does not run, a model that is wrong, slow, allocates far more memory than
the device has, or disagrees with the model it replaces.

``edgeloop bench robustness`` sends all of them to a live agent and counts how many were
refused by the expected gate while the previous model kept serving.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import requests
from onnx import TensorProto, helper, numpy_helper

from edgeloop.agent.golden import golden_bytes
from edgeloop.agent.profiles import PROFILES
from edgeloop.agent.protocol import FileRef, Gate, ModelManifest, TensorSpec

FEATURES, CLASSES = 64, 10
GOLDEN_INPUTS = np.random.default_rng(1).normal(size=(32, FEATURES)).astype(np.float32)
WEIGHTS = np.random.default_rng(0).normal(size=(FEATURES, CLASSES)).astype(np.float32)

DEVICE = PROFILES["pi-zero-2"]
"""The device the corpus is aimed at, a Raspberry Pi Zero 2 W: its own budgets (128 KB files,
2 ms, 256 MB) decide the size, latency and memory cases (a 2 MB file, a model of ~100 ms, one
allocating ~1.8 GB)."""

HOG_FLOATS = 450_000_000
"""The memory hog's runtime intermediate: 450 M float32 = 1.8 GB, from a 1 KB file."""


class Uploader:
    """Puts bytes into a control plane's artifact store; hands back the reference devices get."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url.rstrip("/")
        self._http = requests.Session()

    def put(self, data: bytes) -> FileRef:
        digest = hashlib.sha256(data).hexdigest()
        response = self._http.put(
            f"{self.server_url}/api/v1/artifacts/{digest}", data=data, timeout=60
        )
        response.raise_for_status()
        return self.ref(digest, len(data))

    def ref(self, sha256: str, size: int, *, url_sha256: str | None = None) -> FileRef:
        """A reference; ``url_sha256`` points the URL at another file than the hash claims."""
        return FileRef(
            url=f"{self.server_url}/artifacts/{url_sha256 or sha256}", sha256=sha256, size=size
        )


# --------------------------------------------------------------------------- model builders


def _model(nodes: list, initializers: list, *, input_name: str = "x", opset: int = 17) -> bytes:
    graph = helper.make_graph(
        nodes,
        "robustness",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString()


def linear(weights: np.ndarray = WEIGHTS, *, input_name: str = "x", opset: int = 17) -> bytes:
    """A real classifier ``logits = x @ W``: the good model, and the base of most bad ones."""
    return _model(
        [helper.make_node("MatMul", [input_name, "W"], ["logits"])],
        [numpy_helper.from_array(weights, "W")],
        input_name=input_name,
        opset=opset,
    )


def _with_side_branch(branch: list, branch_output: str, initializers: list) -> bytes:
    """``logits = x @ W + 0 * mean(branch)``: right answers, whatever the branch costs.

    The branch depends on the input, so onnxruntime cannot fold it away at load time: its cost
    (time or memory) is paid on every inference.
    """
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["base"]),
        *branch,
        helper.make_node("ReduceMean", [branch_output], ["branch_mean"], keepdims=0),
        helper.make_node("Mul", ["branch_mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["base", "nothing"], ["logits"]),
    ]
    return _model(
        nodes,
        [
            numpy_helper.from_array(WEIGHTS, "W"),
            numpy_helper.from_array(np.array(0, np.float32), "zero"),
            *initializers,
        ],
    )


def slow() -> bytes:
    """Six 1024x1024 matrix products per inference (~13 GFLOP): ~100 ms on one core."""
    row = helper.make_node("ReduceMean", ["x"], ["row"], axes=[0], keepdims=1)  # any batch
    tiled = helper.make_node("Tile", ["row", "reps"], ["square"])  # [1, 64] -> [1024, 1024]
    reshape = helper.make_node("Reshape", ["square", "square_shape"], ["a0"])
    products = [helper.make_node("MatMul", [f"a{i}", "a0"], [f"a{i + 1}"]) for i in range(6)]
    return _with_side_branch(
        [row, tiled, reshape, *products],
        "a6",
        [
            numpy_helper.from_array(np.array([1024, 16], np.int64), "reps"),
            numpy_helper.from_array(np.array([1024, 1024], np.int64), "square_shape"),
        ],
    )


def memory_hog(floats: int = HOG_FLOATS) -> bytes:
    """A ~1 KB file whose inference allocates ``floats`` float32 (1.8 GB by default)."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["x_mean"], keepdims=0),
        helper.make_node("Expand", ["x_mean", "hog_shape"], ["hog"]),
    ]
    return _with_side_branch(
        nodes, "hog", [numpy_helper.from_array(np.array([floats], np.int64), "hog_shape")]
    )


def nan_model() -> bytes:
    return _model(
        [
            helper.make_node("MatMul", ["x", "W"], ["raw"]),
            helper.make_node("Mul", ["raw", "nan"], ["logits"]),
        ],
        [
            numpy_helper.from_array(WEIGHTS, "W"),
            numpy_helper.from_array(np.array([np.nan], np.float32), "nan"),
        ],
    )


def external_data(location: str) -> bytes:
    """A model whose weights live in a file at ``location`` (relative to the model's folder)."""
    weights = numpy_helper.from_array(WEIGHTS, "W")
    weights.ClearField("raw_data")
    weights.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location, "offset": "0", "length": str(WEIGHTS.nbytes)}.items():
        entry = weights.external_data.add()
        entry.key, entry.value = key, value
    return _model([helper.make_node("MatMul", ["x", "W"], ["logits"])], [weights])


def padded(size: int) -> bytes:
    """A valid model of about ``size`` bytes: the bulk in its doc string, which onnxruntime
    does not keep in memory."""
    model = onnx.load_from_string(linear())
    model.doc_string = "0" * size
    return model.SerializeToString()


def zip_archive(member: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.onnx", member)
    return buffer.getvalue()


def tar_archive(member: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("model.onnx")
        info.size = len(member)
        archive.addfile(info, io.BytesIO(member))
    return buffer.getvalue()


def golden_for(weights: np.ndarray = WEIGHTS) -> bytes:
    return golden_bytes({"x": GOLDEN_INPUTS}, GOLDEN_INPUTS @ weights)


# --------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class BadModel:
    name: str
    expect: Gate
    why: str
    make: Callable[[Uploader, str], ModelManifest]
    """(uploader, version) -> the manifest a device receives."""


def manifest(
    uploader: Uploader,
    version: str,
    model: bytes | FileRef,
    golden: bytes | FileRef | None = None,
    *,
    input_name: str = "x",
    **fields: object,
) -> ModelManifest:
    artifact = model if isinstance(model, FileRef) else uploader.put(model)
    golden_ref = (
        golden
        if isinstance(golden, FileRef)
        else uploader.put(golden if golden is not None else golden_for())
    )
    return ModelManifest(
        name="robust",
        version=version,
        artifact=artifact,
        golden=golden_ref,
        inputs=[TensorSpec(name=input_name, dtype="float32", shape=["batch", FEATURES])],
        outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", CLASSES])],
        **fields,
    )


def good(uploader: Uploader, version: str, weights: np.ndarray = WEIGHTS) -> ModelManifest:
    return manifest(uploader, version, linear(weights), golden_for(weights))


def _wrong_hash(uploader: Uploader, version: str) -> ModelManifest:
    real = uploader.put(linear(WEIGHTS * 2))
    claimed = hashlib.sha256(b"not these bytes").hexdigest()
    return manifest(uploader, version, uploader.ref(claimed, real.size, url_sha256=real.sha256))


def _missing(uploader: Uploader, version: str) -> ModelManifest:
    absent = hashlib.sha256(b"never uploaded " + version.encode()).hexdigest()
    return manifest(uploader, version, uploader.ref(absent, 4096))


def _no_room(uploader: Uploader, version: str) -> ModelManifest:
    """A golden file of 1 PiB: the device has no room for the download (the model itself is
    within the size budget, so only the disk check can refuse it)."""
    model = uploader.put(linear())
    golden = uploader.put(golden_for())
    return manifest(uploader, version, model, uploader.ref(golden.sha256, 2**50))


def _truncated(uploader: Uploader, version: str) -> ModelManifest:
    data = linear()
    return manifest(uploader, version, data[: len(data) // 2])


CORPUS: tuple[BadModel, ...] = (
    BadModel(
        "too-big",
        Gate.SIZE,
        "a 2 MB file on a device with a 128 KB model budget",
        lambda up, v: manifest(up, v, padded(2 * 2**20)),
    ),
    BadModel("no-room", Gate.DISK, "files larger than the device's free disk", _no_room),
    BadModel("missing", Gate.DOWNLOAD, "a file the server does not have (404)", _missing),
    BadModel("wrong-hash", Gate.VERIFY, "bytes that do not hash to the manifest", _wrong_hash),
    BadModel("zero-bytes", Gate.LOADS, "an empty file", lambda up, v: manifest(up, v, b"")),
    BadModel("truncated", Gate.LOADS, "the first half of a model", _truncated),
    BadModel(
        "zip-archive",
        Gate.LOADS,
        "a zip holding the model instead of the model",
        lambda up, v: manifest(up, v, zip_archive(linear())),
    ),
    BadModel(
        "tar-archive",
        Gate.LOADS,
        "a .tar.gz holding the model",
        lambda up, v: manifest(up, v, tar_archive(linear())),
    ),
    BadModel(
        "random-bytes",
        Gate.LOADS,
        "64 KiB of noise",
        lambda up, v: manifest(up, v, np.random.default_rng(3).bytes(65536)),
    ),
    BadModel(
        "external-escape",
        Gate.LOADS,
        "external weights at ../../../../etc/passwd",
        lambda up, v: manifest(up, v, external_data("../../../../etc/passwd")),
    ),
    BadModel(
        "external-absolute",
        Gate.LOADS,
        "external weights at an absolute path",
        lambda up, v: manifest(up, v, external_data("/etc/passwd")),
    ),
    BadModel(
        "future-opset",
        Gate.OPSET,
        "op set 99, which no onnxruntime runs",
        lambda up, v: manifest(up, v, linear(opset=99)),
    ),
    BadModel(
        "renamed-input",
        Gate.IO,
        "input `features` where the manifest says `x`",
        lambda up, v: manifest(up, v, linear(input_name="features")),
    ),
    BadModel(
        "wrong-outputs",
        Gate.GOLDEN,
        "golden outputs of other weights",
        lambda up, v: manifest(up, v, linear(), golden_for(-WEIGHTS)),
    ),
    BadModel("nan", Gate.FINITE, "NaN on every output", lambda up, v: manifest(up, v, nan_model())),
    BadModel(
        "slow",
        Gate.LATENCY,
        "~100 ms where 2 ms is the budget",
        lambda up, v: manifest(up, v, slow()),
    ),
    BadModel(
        "memory-hog",
        Gate.MEMORY,
        "allocates 1.8 GB at run time on a 256 MB device",
        lambda up, v: manifest(up, v, memory_hog()),
    ),
    BadModel(
        "disagrees",
        Gate.AGREEMENT,
        "passes its own golden check, disagrees with the serving model on live inputs",
        lambda up, v: manifest(
            up, v, linear(WEIGHTS[:, ::-1].copy()), golden_for(WEIGHTS[:, ::-1].copy())
        ),
    ),
)
"""Every case, in the order the bench sends them. At least one per gate a model can fail
before it commits; ``activate``, ``errors``, ``operator`` and ``restarts`` are about the
device or the operator, not the file, and are covered by the agent's fault tests."""
