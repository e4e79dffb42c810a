"""Users' models, the way a user would have them: small networks trained on scikit-learn's
data sets, saved as ONNX, TorchScript and torch.export files, with their data as ``.npz``
files (and one evaluation set as a folder of ``.npy`` files). The compressor's tests and the
end-to-end tests build them once per session (:func:`build_user_models`)."""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_diabetes, load_digits
from sklearn.model_selection import train_test_split
from torch import nn

PIXELS = "pixels"
"""The input name of every digits model here (the data files use it, or ``x``)."""


@dataclass(frozen=True)
class UserModels:
    root: Path
    classifier_onnx: Path
    classifier_ts: Path
    gelu_onnx: Path
    """A classifier whose GELU the default (dynamo) exporter writes as the opset-20 ``Gelu``
    op, which onnx2torch 1.5 cannot convert."""
    digits_train: Path
    digits_eval: Path
    """The evaluation inputs under the ONNX models' input name, ``pixels``."""
    digits_eval_x: Path
    """The same under ``x``, as a model of unknown input name (TorchScript) takes them."""
    regressor_onnx: Path
    regressor_ts: Path
    regressor_pt2: Path
    regressor_factory: str
    diabetes_train: Path
    diabetes_eval_folder: Path
    embedder_onnx: Path
    embedder_ts: Path
    embedding_train: Path
    """Inputs only: an embedding needs no targets."""
    embedding_eval: Path


def _fit(
    model: nn.Module, x: np.ndarray, y: np.ndarray, loss: object, *, epochs: int, lr: float
) -> nn.Module:
    torch.manual_seed(0)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    shuffle = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for batch in torch.randperm(len(inputs), generator=shuffle).split(64):
            optimizer.zero_grad()
            loss(model(inputs[batch]), targets[batch]).backward()  # type: ignore[operator]
            optimizer.step()
    return model.eval()


def _to_onnx(model: nn.Module, example: np.ndarray, path: Path, input_name: str) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.from_numpy(example[:1]),),
            str(path),
            input_names=[input_name],
            output_names=["output"],
            dynamic_axes={input_name: {0: "batch"}, "output": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return path


def regressor_network() -> nn.Module:
    return nn.Sequential(
        nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1)
    )


REGRESSOR_CODE = """\
from pathlib import Path

import torch
from torch import nn


def build() -> nn.Module:
    model = nn.Sequential(
        nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1)
    )
    weights = Path(__file__).with_name("regressor-weights.pt")
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model
"""
"""A user's model code: ``regressor_code.py:build`` returns the trained regressor."""


def build_user_models(root: Path) -> UserModels:
    """Train and save every model and data file under ``root`` (a few seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit: "deprecated"
            return _build(root)
    finally:
        torch.set_num_threads(threads)


def _build(root: Path) -> UserModels:
    digits = load_digits()
    pixels = (digits.data / 16).astype(np.float32)
    x_train, x_eval, y_train, y_eval = train_test_split(
        pixels,
        digits.target.astype(np.int64),
        test_size=0.2,
        random_state=0,
        stratify=digits.target,
    )
    np.savez(root / "digits-train.npz", x=x_train, y=y_train)
    np.savez(root / "digits-eval.npz", **{PIXELS: x_eval, "y": y_eval})
    np.savez(root / "digits-eval-x.npz", x=x_eval, y=y_eval)

    torch.manual_seed(0)
    classifier = _fit(
        nn.Sequential(
            nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)
        ),
        x_train,
        y_train,
        nn.functional.cross_entropy,
        epochs=15,
        lr=3e-3,
    )
    classifier_onnx = _to_onnx(classifier, x_eval, root / "classifier.onnx", PIXELS)
    classifier_ts = root / "classifier.ts"
    torch.jit.save(torch.jit.trace(classifier, torch.from_numpy(x_eval[:1])), str(classifier_ts))

    torch.manual_seed(1)
    gelu = _fit(
        nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 10)),
        x_train,
        y_train,
        nn.functional.cross_entropy,
        epochs=5,
        lr=3e-3,
    )
    gelu_onnx = root / "gelu.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            gelu,
            (torch.from_numpy(x_eval[:2]),),
            str(gelu_onnx),
            input_names=[PIXELS],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
        )

    diabetes = load_diabetes()
    features = (diabetes.data * 10).astype(np.float32)
    r_train, r_eval, t_train, t_eval = train_test_split(
        features, diabetes.target.astype(np.float32), test_size=0.2, random_state=0
    )
    np.savez(root / "diabetes-train.npz", x=r_train, y=t_train)
    folder = root / "diabetes-eval"
    folder.mkdir()
    np.save(folder / "x.npy", r_eval)
    np.save(folder / "y.npy", t_eval)
    torch.manual_seed(2)
    regressor = _fit(
        regressor_network(),
        r_train,
        t_train[:, None],
        nn.functional.mse_loss,
        epochs=150,
        lr=1e-2,
    )
    regressor_onnx = _to_onnx(regressor, r_eval, root / "regressor.onnx", "features")
    regressor_ts = root / "regressor.ts"
    torch.jit.save(torch.jit.trace(regressor, torch.from_numpy(r_eval[:1])), str(regressor_ts))
    regressor_pt2 = root / "regressor.pt2"
    program = torch.export.export(
        regressor,
        (torch.from_numpy(r_eval[:4]),),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    torch.export.save(program, str(regressor_pt2))
    torch.save(regressor.state_dict(), root / "regressor-weights.pt")
    (root / "regressor_code.py").write_text(REGRESSOR_CODE)

    torch.manual_seed(3)
    embedder = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 16)).eval()
    embedder_onnx = _to_onnx(embedder, x_eval, root / "embedder.onnx", PIXELS)
    embedder_ts = root / "embedder.ts"
    torch.jit.save(torch.jit.trace(embedder, torch.from_numpy(x_eval[:1])), str(embedder_ts))
    np.savez(root / "embedding-train.npz", x=x_train)
    np.savez(root / "embedding-eval.npz", x=x_eval)

    return UserModels(
        root=root,
        classifier_onnx=classifier_onnx,
        classifier_ts=classifier_ts,
        gelu_onnx=gelu_onnx,
        digits_train=root / "digits-train.npz",
        digits_eval=root / "digits-eval.npz",
        digits_eval_x=root / "digits-eval-x.npz",
        regressor_onnx=regressor_onnx,
        regressor_ts=regressor_ts,
        regressor_pt2=regressor_pt2,
        regressor_factory=f"{root / 'regressor_code.py'}:build",
        diabetes_train=root / "diabetes-train.npz",
        diabetes_eval_folder=folder,
        embedder_onnx=embedder_onnx,
        embedder_ts=embedder_ts,
        embedding_train=root / "embedding-train.npz",
        embedding_eval=root / "embedding-eval.npz",
    )
