"""Tiny real ONNX models and the manifests that ship them, for the agent's update tests.

A linear classifier ``logits = x @ W + b`` (4 features, 3 classes) built with onnx.helper:
small enough to build in milliseconds, real enough that onnxruntime loads, runs and times it.
Hostile variants keep its inputs and outputs (so every gate before theirs passes) and differ
in what they cost: :func:`memory_hog_model` needs gigabytes at run time from a file of a few
hundred bytes, :func:`slow_model` takes milliseconds where the linear one takes microseconds.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import requests
from onnx import TensorProto, helper, numpy_helper

from edgeloop.agent.golden import golden_bytes
from edgeloop.agent.protocol import DeviceProfile, FileRef, ModelManifest, TensorSpec
from edgeloop.agent.runtime import record_golden
from edgeloop.lab.launch import operator_headers

FEATURES, CLASSES = 4, 3
RNG = np.random.default_rng(0)
GOLDEN_INPUTS = RNG.normal(size=(16, FEATURES)).astype(np.float32)
BASE_WEIGHTS = RNG.normal(size=(FEATURES, CLASSES)).astype(np.float32)

ROOMY = DeviceProfile(name="roomy", cpu_threads=1, memory_budget_mb=2048, latency_budget_ms=50)


def linear_model(
    weights: np.ndarray,
    *,
    opset: int = 17,
    input_name: str = "x",
    nan: bool = False,
    padding_bytes: int = 0,
) -> bytes:
    """Serialized model. ``nan`` multiplies by NaN; ``padding_bytes`` adds an unused initializer
    (a bigger file); ``opset`` stamps the model's version."""
    nodes = [helper.make_node("MatMul", [input_name, "W"], ["logits_raw"])]
    initializers = [numpy_helper.from_array(weights, "W")]
    if nan:
        nodes.append(helper.make_node("Mul", ["logits_raw", "nan"], ["logits"]))
        initializers.append(numpy_helper.from_array(np.array([np.nan], np.float32), "nan"))
    else:
        nodes.append(helper.make_node("Identity", ["logits_raw"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    model.doc_string = "0" * padding_bytes  # a bigger file without an unused tensor
    return model.SerializeToString()


def memory_hog_model(intermediate_bytes: int, weights: np.ndarray = BASE_WEIGHTS) -> bytes:
    """``x @ weights`` computed the wasteful way: each input copied ``k`` times along a new axis
    (``Expand``), then reduced back (``ReduceMax`` of equal copies is the input itself).

    The intermediate is ``batch x 4 x k`` floats; ``k`` is chosen so that it holds
    ``intermediate_bytes`` at the golden batch (:data:`GOLDEN_INPUTS`), while the file stays a
    few hundred bytes. ``k`` depends on the input's shape, so onnxruntime cannot fold it away
    when it opens the model: the memory is asked for when the golden inputs run. Its outputs
    are the linear model's with the same weights, so only the memory gate can refuse it.
    """
    copies = intermediate_bytes // (len(GOLDEN_INPUTS) * FEATURES * 4)
    nodes = [
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Concat", ["x_shape", "copies"], ["wide_shape"], axis=0),
        helper.make_node("Unsqueeze", ["x", "last_axis"], ["x_column"]),
        helper.make_node("Expand", ["x_column", "wide_shape"], ["wide"]),
        helper.make_node("ReduceMax", ["wide"], ["x_again"], axes=[2], keepdims=0),
        helper.make_node("MatMul", ["x_again", "W"], ["logits"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([copies], np.int64), "copies"),
        numpy_helper.from_array(np.array([2], np.int64), "last_axis"),
        numpy_helper.from_array(weights, "W"),
    ]
    return _model(nodes, initializers, "memory_hog")


def slow_model(matmuls: int, width: int = 1024) -> tuple[bytes, bytes]:
    """A model of ``matmuls`` chained ``width x width`` products (an orthogonal matrix, so
    values stay bounded): about 0.17 ms per product at width 1024 on one core here. Returns
    the model and its golden file, recorded by running it."""
    rng = np.random.default_rng(2)
    into = (rng.normal(size=(FEATURES, width)) / 2).astype(np.float32)
    rotation = np.linalg.qr(rng.normal(size=(width, width)))[0].astype(np.float32)
    out = (rng.normal(size=(width, CLASSES)) / np.sqrt(width)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "into"], ["h0"])]
    nodes += [
        helper.make_node("MatMul", [f"h{i}", "rotation"], [f"h{i + 1}"]) for i in range(matmuls)
    ]
    nodes.append(helper.make_node("MatMul", [f"h{matmuls}", "out"], ["logits"]))
    initializers = [
        numpy_helper.from_array(into, "into"),
        numpy_helper.from_array(rotation, "rotation"),
        numpy_helper.from_array(out, "out"),
    ]
    model = _model(nodes, initializers, "slow")
    return model, golden_of(model)


def golden_of(model: bytes) -> bytes:
    """The golden file of ``model``: its own outputs on :data:`GOLDEN_INPUTS`, recorded the way
    the compressor records them (:func:`~edgeloop.agent.runtime.record_golden`)."""
    with tempfile.TemporaryDirectory() as tmp:
        model_path, golden_path = Path(tmp) / "model.onnx", Path(tmp) / "golden.npz"
        model_path.write_bytes(model)
        record_golden(model_path, {"x": GOLDEN_INPUTS}, golden_path)
        return golden_path.read_bytes()


def _model(nodes: list, initializers: list, name: str) -> bytes:
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def golden_npz(outputs: np.ndarray, inputs: np.ndarray = GOLDEN_INPUTS) -> bytes:
    return golden_bytes({"x": inputs}, outputs)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Published:
    model: bytes
    golden: bytes
    manifest: ModelManifest


def downloader(server_url: str) -> requests.Session:
    """An HTTP session that may download from the control plane at ``server_url``: for the
    update flow's own tests, which start past trust (a real agent sends its device token)."""
    session = requests.Session()
    session.headers.update(operator_headers(server_url))
    return session


def publish(
    server_url: str,
    version: str,
    model: bytes,
    golden: bytes | None = None,
    *,
    weights: np.ndarray | None = None,
    **manifest_fields: object,
) -> Published:
    """Upload both files to the control plane's artifact store (as the operator of the
    :class:`~edgeloop.lab.launch.ServerProcess` at ``server_url``); build their manifest.

    ``golden`` defaults to the model's own outputs on :data:`GOLDEN_INPUTS` (``weights``
    gives them without running the model, which a broken model could not).
    """
    if golden is None:
        w = BASE_WEIGHTS if weights is None else weights
        golden = golden_npz(GOLDEN_INPUTS @ w)
    headers = operator_headers(server_url)
    refs = []
    for data in (model, golden):
        digest = sha(data)
        response = requests.put(
            f"{server_url}/api/v1/artifacts/{digest}", data=data, headers=headers, timeout=10
        )
        assert response.status_code in (200, 201), response.text
        refs.append(FileRef(url=f"{server_url}/artifacts/{digest}", sha256=digest, size=len(data)))
    fields: dict = {
        "name": "linear",
        "version": version,
        "artifact": refs[0],
        "golden": refs[1],
        "inputs": [TensorSpec(name="x", dtype="float32", shape=["batch", FEATURES])],
        "outputs": [TensorSpec(name="logits", dtype="float32", shape=["batch", CLASSES])],
        **manifest_fields,
    }
    return Published(model, golden, ModelManifest.model_validate(fields))


def load(data: bytes) -> onnx.ModelProto:
    return onnx.load_from_string(data)
