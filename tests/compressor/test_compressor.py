"""The compressor's first real case: the digits CNN, built for real with torch and onnxruntime.

One build is shared by the session (conftest's ``digits_models``, a few seconds); each test
reads one promise off it.
Speed is measured by the build and printed here, never asserted: timings belong to benchmarks.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgeloop.agent.golden import load_golden
from edgeloop.agent.protocol import TensorSpec
from edgeloop.compressor import BuiltModel, ModelReport, build_digits
from edgeloop.compressor.examples.digits import load_split


@pytest.fixture(scope="module")
def built(digits_models: list[BuiltModel]) -> dict[str, BuiltModel]:
    """The session's digits build (conftest), keyed by variant; prints what was measured."""
    for model in digits_models:
        r = model.report
        p50_us, p95_us = r.host_latency_p50_ms * 1e3, r.host_latency_p95_ms * 1e3
        print(
            f"\n{model.version}: {r.size_bytes} B, accuracy {r.accuracy:.4f}, "
            f"host p50 {p50_us:.1f} us, p95 {p95_us:.1f} us ({r.host_threads} thread), "
            f"golden_atol {r.golden_atol}"
        )
    return {model.report.variant: model for model in digits_models}


def run(model_path: Path, inputs: np.ndarray, *, optimized: bool = True) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


def test_builds_an_fp32_and_an_int8_version_of_digits_cnn(built: dict[str, BuiltModel]) -> None:
    assert {(m.name, m.version) for m in built.values()} == {
        ("digits-cnn", "1-fp32"),
        ("digits-cnn", "1-int8"),
    }
    for model in built.values():
        assert model.model_path == model.model_path.parent / "model.onnx"
        assert model.model_path.parent.name == model.version
        assert model.golden_path == model.model_path.parent / "golden.npz"


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_each_model_is_one_self_contained_onnx_file(
    built: dict[str, BuiltModel], variant: str
) -> None:
    model = built[variant]
    assert sorted(p.name for p in model.model_path.parent.iterdir()) == [
        "golden.npz",
        "model.onnx",
        "report.json",
    ]
    proto = onnx.load_model(str(model.model_path), load_external_data=False)
    assert not any(
        init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer
    )
    onnx.checker.check_model(proto)
    assert run(model.model_path, np.zeros((3, 1, 8, 8), np.float32)).shape == (3, 10)


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_io_specs_are_an_8x8_image_batch_in_and_10_logits_out(
    built: dict[str, BuiltModel], variant: str
) -> None:
    model = built[variant]
    [image] = model.inputs
    [logits] = model.outputs
    assert isinstance(image.shape[0], str) and image.shape[0] == logits.shape[0]
    assert image == TensorSpec(name="image", dtype="float32", shape=[image.shape[0], 1, 8, 8])
    assert logits == TensorSpec(name="logits", dtype="float32", shape=[logits.shape[0], 10])


def test_fp32_classifies_held_out_digits(built: dict[str, BuiltModel]) -> None:
    _, x_test, _, y_test = load_split(seed=0)
    predictions = run(built["fp32"].model_path, x_test).argmax(axis=1)
    assert built["fp32"].report.accuracy == pytest.approx(float((predictions == y_test).mean()))
    assert built["fp32"].report.accuracy >= 0.95


def test_int8_is_at_least_3x_smaller_and_loses_at_most_2_points(
    built: dict[str, BuiltModel],
) -> None:
    fp32, int8 = built["fp32"], built["int8"]
    assert fp32.report.size_bytes == fp32.model_path.stat().st_size
    assert int8.report.size_bytes == int8.model_path.stat().st_size
    assert int8.report.size_bytes * 3 <= fp32.report.size_bytes
    assert int8.report.accuracy_drop <= 0.02


def test_int8_runs_quantized_kernels(built: dict[str, BuiltModel]) -> None:
    op_types = {node.op_type for node in onnx.load_model(str(built["int8"].model_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= op_types
    assert "ConvInteger" not in op_types


def test_reports_compare_each_variant_with_the_fp32_baseline(
    built: dict[str, BuiltModel],
) -> None:
    fp32, int8 = built["fp32"].report, built["int8"].report
    assert fp32.recipe == ["train", "export-onnx"]
    assert int8.recipe == ["train", "export-onnx", "quantize-static-qdq-int8"]
    for report in (fp32, int8):
        assert report.baseline_accuracy == fp32.accuracy
        assert report.accuracy_drop == pytest.approx(fp32.accuracy - report.accuracy)
        assert report.compression_ratio == pytest.approx(fp32.size_bytes / report.size_bytes)
        assert report.host_threads == 1
        assert 0 < report.host_latency_p50_ms <= report.host_latency_p95_ms
    assert fp32.compression_ratio == 1.0 and fp32.accuracy_drop == 0.0


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_report_json_round_trips_to_the_returned_report(
    built: dict[str, BuiltModel], variant: str
) -> None:
    model = built[variant]
    stored = (model.model_path.parent / "report.json").read_text()
    assert ModelReport.model_validate_json(stored) == model.report


def golden_arrays(model: BuiltModel) -> tuple[np.ndarray, np.ndarray]:
    """The golden file as a device reads it."""
    golden = load_golden(model.golden_path, [spec.name for spec in model.inputs])
    return next(iter(golden.inputs.values())), golden.outputs


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_golden_holds_8_test_images_and_this_models_own_outputs(
    built: dict[str, BuiltModel], variant: str
) -> None:
    model = built[variant]
    with np.load(model.golden_path, allow_pickle=False) as stored:
        assert sorted(stored.files) == [f"input_{model.inputs[0].name}", "outputs"]
    inputs, outputs = golden_arrays(model)
    _, x_test, _, _ = load_split(seed=0)
    np.testing.assert_array_equal(inputs, x_test[:8])
    assert outputs.dtype == np.float32 and outputs.shape == (8, 10)
    np.testing.assert_allclose(
        run(model.model_path, inputs), outputs, rtol=0, atol=model.report.golden_atol
    )


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_golden_atol_absorbs_other_kernels_computing_the_same_graph(
    built: dict[str, BuiltModel], variant: str
) -> None:
    """Unoptimized onnxruntime runs plain Conv/Gemm with separate Q/DQ instead of the fused
    NCHWc / QLinearConv kernels: a stand-in for another CPU that rounds differently."""
    model = built[variant]
    inputs, outputs = golden_arrays(model)
    np.testing.assert_allclose(
        run(model.model_path, inputs, optimized=False),
        outputs,
        rtol=0,
        atol=model.report.golden_atol,
    )


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_golden_atol_still_catches_a_different_model(
    built: dict[str, BuiltModel], variant: str, tmp_path: Path
) -> None:
    """Another version of the model (here: the logits shifted by 3% of the output range, far
    less than retraining would move them) fails the golden check. The fp32 and int8 builds
    are not "different models" for this purpose: they differ by quantization error, which is
    what the tolerance is sized to absorb."""
    model = built[variant]
    inputs, outputs = golden_arrays(model)
    graph = onnx.load(str(model.model_path)).graph
    name = graph.output[0].name
    for node in graph.node:
        node.output[:] = [f"{o}_before" if o == name else o for o in node.output]
    shift = np.full(outputs.shape[-1], 0.03 * float(np.abs(outputs).max()), np.float32)
    graph.initializer.append(onnx.numpy_helper.from_array(shift, "bias_shift"))
    graph.node.append(onnx.helper.make_node("Add", [f"{name}_before", "bias_shift"], [name]))
    other_path = tmp_path / "other.onnx"
    whole = onnx.load(str(model.model_path))
    whole.graph.CopyFrom(graph)
    onnx.save(whole, str(other_path))
    assert np.abs(run(other_path, inputs) - outputs).max() > model.report.golden_atol


def test_same_seed_builds_byte_identical_models(tmp_path: Path) -> None:
    first = build_digits(tmp_path / "first", epochs=2, progress=False)
    second = build_digits(tmp_path / "second", epochs=2, progress=False)
    for a, b in zip(first, second, strict=True):
        assert a.model_path.read_bytes() == b.model_path.read_bytes()
        assert a.golden_path.read_bytes() == b.golden_path.read_bytes()


def test_reading_reports_does_not_import_torch() -> None:
    probe = (
        "import sys, edgeloop.compressor, edgeloop.compressor.report, "
        "edgeloop.compressor.evaluate; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", probe], check=True)
