"""Tiny real ONNX models and the manifests that ship them, for the agent's update tests.

A linear classifier ``logits = x @ W + b`` (4 features, 3 classes) built with onnx.helper:
small enough to build in milliseconds, real enough that onnxruntime loads, runs and times it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import onnx
import requests
from onnx import TensorProto, helper, numpy_helper

from edgeloop.agent.golden import golden_bytes
from edgeloop.agent.protocol import DeviceProfile, FileRef, ModelManifest, TensorSpec

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


def golden_npz(outputs: np.ndarray, inputs: np.ndarray = GOLDEN_INPUTS) -> bytes:
    return golden_bytes({"x": inputs}, outputs)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Published:
    model: bytes
    golden: bytes
    manifest: ModelManifest


def publish(
    server_url: str,
    version: str,
    model: bytes,
    golden: bytes | None = None,
    *,
    weights: np.ndarray | None = None,
    **manifest_fields: object,
) -> Published:
    """Upload both files to the control plane's artifact store; build their manifest.

    ``golden`` defaults to the model's own outputs on :data:`GOLDEN_INPUTS` (``weights``
    gives them without running the model, which a broken model could not).
    """
    if golden is None:
        w = BASE_WEIGHTS if weights is None else weights
        golden = golden_npz(GOLDEN_INPUTS @ w)
    refs = []
    for data in (model, golden):
        digest = sha(data)
        response = requests.put(f"{server_url}/api/v1/artifacts/{digest}", data=data, timeout=10)
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
