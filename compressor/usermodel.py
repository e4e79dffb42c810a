"""A user's trained model, from a file or an entry point, made into something every pass can use.

What a model can be (``edgeloop compress MODEL --task KIND --train T --eval E``):

- ``model.onnx``: the fp32 baseline is the file itself. ``onnx2torch`` is tried to get an
  editable ``nn.Module`` (checked to reproduce the file's outputs on the evaluation data); when
  it works every pass applies, otherwise only the ONNX passes (quantization, fp16) do, and the
  reason is kept for the messages.
- ``model.ts`` / ``model.pt`` (``torch.jit.save``) and ``model.pt2`` (``torch.export.save``):
  neither can be edited in place (torch-pruning needs an eager module), so the model is exported
  to ONNX once (that file is the baseline) and converted back with ``onnx2torch``; when the
  conversion fails, as for an ONNX file, only ONNX passes apply.
- ``path/to/file.py:factory`` or ``package.module:factory``: a function (or class) returning
  an ``nn.Module``; every pass applies and the tool exports it.

:func:`open_model` reads the model and its input names (to find them in the data files);
:meth:`UserModel.prepare` then exports and converts it with a few evaluation samples.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edgeloop.compressor.task import ExportSpec
from edgeloop.compressor.usertask import is_code_reference, load_object

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ModelFormat", "UserModel", "open_model", "run_onnx"]

ModelFormat = Literal["onnx", "torchscript", "torch.export", "python"]

TORCHSCRIPT_SUFFIXES = (".ts", ".pt", ".pth", ".jit")
BATCH = "batch"


@dataclass
class UserModel:
    """A user's model, opened: its inputs, and once :meth:`prepare` ran, what passes work on.

    ``module`` is an editable ``nn.Module`` (eager, or converted by onnx2torch) or None;
    ``onnx`` is the ONNX file the model is (an ONNX source, or a TorchScript / torch.export
    program exported once), None for an eager module the ``export`` pass exports.
    """

    label: str
    format: ModelFormat
    input_names: list[str]
    loaded: Any
    """The ONNX path, or the module as loaded: eager, TorchScript, or a torch.export
    program's ``module()``, which runs but is not editable."""
    program: Any = None
    """The torch.export program itself (the dynamo exporter reads it)."""
    input_dtypes: dict[str, np.dtype] = field(default_factory=dict)
    input_shapes: dict[str, list[int | None]] = field(default_factory=dict)
    batch_dynamic: bool = True
    output_names: list[str] = field(default_factory=list)
    module: nn.Module | None = None
    onnx: Path | None = None
    onnx_only_reason: str | None = None
    messages: list[str] = field(default_factory=list)
    """What happened while preparing (converted, or why not), for the command's output."""
    scratch: Any = field(default=None, repr=False)
    """A temporary folder holding the exported or inlined ONNX file, owned by this model."""

    @property
    def is_torch(self) -> bool:
        return self.format != "onnx"

    def source(self) -> nn.Module | Path:
        """What pipelines start from (:meth:`Task.source`): the editable module, or the ONNX
        file when there is none. Call after :meth:`prepare`."""
        if self.module is not None:
            return self.module
        if self.onnx is None:
            raise RuntimeError(f"{self.label}: prepare() has not run")
        return self.onnx

    def source_onnx(self) -> Path | None:
        """The ONNX file the editable module stands for (:meth:`Task.source_onnx`)."""
        return self.onnx if self.module is not None else None

    def prepare(self, check: dict[str, np.ndarray], work_dir: Path) -> None:
        """Make the model usable by the passes, with ``check`` (a few samples per input) as
        example inputs for exporting and as the test a converted module must pass.

        Raises:
            ValueError: a TorchScript or torch.export model that cannot be exported to ONNX,
                or an eager model that fails on the data.
        """
        import torch

        from edgeloop.compressor.training import first_tensor

        work_dir.mkdir(parents=True, exist_ok=True)
        if self.format == "python":
            self.module = self.loaded.eval()
            try:
                with torch.no_grad():
                    produced = self.loaded(*_tensors(check, self.input_names))
                first_tensor(produced)
            except Exception as exc:
                raise ValueError(
                    f"{self.label}: the model fails on the evaluation data: "
                    f"{type(exc).__name__}: {_first_line(exc)}"
                ) from exc
            count = len(produced) if isinstance(produced, tuple | list) else 1
            self.output_names = _output_names(count)
            return
        if self.format == "onnx":
            self.onnx = _self_contained(Path(self.loaded), work_dir)
            self.output_names = _onnx_outputs(self.onnx)
            what = f"{self.label} could not be converted by onnx2torch"
        else:
            self.onnx = self._export(check, work_dir / "source.onnx")
            self.output_names = _onnx_outputs(self.onnx)
            self.batch_dynamic = _open_onnx(self.onnx).batch_dynamic
            what = (
                f"{self.label} is {self.format}, which the passes cannot edit, and onnx2torch "
                "could not convert its ONNX export"
            )
        module, problem = _convert(self.onnx, check, self.original_outputs)
        if module is None:
            self.onnx_only_reason = f"{what}: {problem}"
            self.messages.append(f"{self.onnx_only_reason}; only ONNX passes apply")
        else:
            self.module = module
            via = "" if self.format == "onnx" else "exported to ONNX and "
            self.messages.append(
                f"{self.label}: {via}converted to PyTorch by onnx2torch (outputs match on "
                f"{len(next(iter(check.values())))} evaluation samples): every pass applies"
            )

    def original_outputs(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The original model's first output for ``inputs`` (batched, first axis samples)."""
        if self.format == "onnx":
            from edgeloop.compressor.evaluate import session

            return run_onnx(session(Path(self.loaded)), inputs)
        import torch

        from edgeloop.compressor.training import first_tensor

        model = self.loaded
        count = len(next(iter(inputs.values())))
        chunks = []
        with torch.no_grad():
            for start in range(0, count, 256):
                part = {k: v[start : start + 256] for k, v in inputs.items()}
                chunks.append(first_tensor(model(*_tensors(part, self.input_names))).numpy())
        return np.concatenate(chunks)

    def export_spec(self, example: dict[str, np.ndarray]) -> ExportSpec:
        """How to export the model: ``example`` (batch 1) as inputs, the batch axis dynamic."""
        return ExportSpec(
            example_inputs=_tensors(example, self.input_names),
            input_names=list(self.input_names),
            output_names=list(self.output_names),
            dynamic_axes={name: {0: BATCH} for name in [*self.input_names, *self.output_names]},
        )

    def _export(self, check: dict[str, np.ndarray], path: Path) -> Path:
        example = {name: array[:1] for name, array in check.items()}
        try:
            self.output_names = _output_names(self._output_count(check))
            if self.format == "torchscript":
                from edgeloop.compressor.export import export_model

                with warnings.catch_warnings():
                    # "no signature found for ScriptMethod": the names come from the spec
                    warnings.simplefilter("ignore", UserWarning)
                    export_model(self.loaded, self.export_spec(example), path)
            else:
                _export_program(self.program, self.export_spec(example), path)
        except Exception as exc:
            raise ValueError(
                f"{self.label}: exporting the {self.format} model to ONNX failed, so no pass "
                f"can work on it: {type(exc).__name__}: {_first_line(exc)}"
            ) from exc
        return path

    def _output_count(self, check: dict[str, np.ndarray]) -> int:
        import torch

        with torch.no_grad():
            produced = self.loaded(*_tensors(check, self.input_names))
        return len(produced) if isinstance(produced, tuple | list) else 1


def open_model(spec: str) -> UserModel:
    """Open ``spec``: an ONNX file, a TorchScript file, a torch.export program, or
    ``file.py:factory`` / ``package.module:factory``; :meth:`UserModel.prepare` finishes.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a file of an unknown kind, or one its loader refuses.
        ImportError, TypeError: an entry point that does not load or returns no ``nn.Module``.
    """
    if is_code_reference(spec):
        return _open_python(spec)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{spec}: no such model file (or `file.py:factory` entry point)")
    if path.suffix == ".onnx":
        return _open_onnx(path)
    if path.suffix == ".pt2":
        return _open_program(path)
    if path.suffix in TORCHSCRIPT_SUFFIXES:
        return _open_torchscript(path)
    raise ValueError(
        f"{spec}: unknown model file type {path.suffix!r}; give an .onnx file, a TorchScript "
        "file (.ts/.pt, torch.jit.save), a torch.export program (.pt2, torch.export.save) or "
        "an entry point `file.py:factory`"
    )


# ---------------------------------------------------------------------------- opening


def _open_onnx(path: Path) -> UserModel:
    import onnx

    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from None
    initializers = {init.name for init in proto.graph.initializer}
    names, dtypes, shapes = [], {}, {}
    batch_dynamic = True
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        names.append(value.name)
        dtypes[value.name] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if dims and dims[0] is not None:
            if dims[0] != 1:
                raise ValueError(
                    f"{path}: input {value.name!r} has a fixed batch of {dims[0]}; export the "
                    "model with a dynamic (or batch-1) first axis"
                )
            batch_dynamic = False
        shapes[value.name] = dims[1:]
    return UserModel(
        label=path.name,
        format="onnx",
        input_names=names,
        loaded=path,
        input_dtypes=dtypes,
        input_shapes=shapes,
        batch_dynamic=batch_dynamic,
    )


def _open_torchscript(path: Path) -> UserModel:
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "switch to torch.export": news
            module = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:
        raise ValueError(
            f"{path}: not a TorchScript file (torch.jit.save); a state dict or a pickled module "
            f"cannot be opened without its code: use `file.py:factory` ({_first_line(exc)})"
        ) from None
    arguments = module.forward.schema.arguments[1:]
    return UserModel(path.name, "torchscript", [a.name for a in arguments], module)


def _open_program(path: Path) -> UserModel:
    import torch

    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise ValueError(
            f"{path}: not a torch.export program (torch.export.save): {_first_line(exc)}"
        ) from None
    names = [str(name) for name in program.graph_signature.user_inputs]
    return UserModel(path.name, "torch.export", names, program.module(), program=program)


def _open_python(spec: str) -> UserModel:
    import inspect

    from torch import nn

    factory = load_object(spec)
    module = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    if not isinstance(module, nn.Module):
        raise TypeError(f"{spec} returned {type(module).__name__}, not a torch.nn.Module")
    parameters = inspect.signature(module.forward).parameters.values()
    names = [
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if not names:
        raise TypeError(f"{spec}: forward() takes no named positional inputs")
    return UserModel(spec.rpartition(":")[2], "python", names, module)


# ---------------------------------------------------------------------------- converting


def _convert(
    onnx_path: Path,
    check: dict[str, np.ndarray],
    reference: Any,
) -> tuple[nn.Module | None, str]:
    """``(module, "")`` when onnx2torch converts the file and the module reproduces
    ``reference``'s outputs on ``check``; ``(None, why not)`` otherwise."""
    import torch

    from edgeloop.compressor.training import first_tensor

    try:
        from onnx2torch import convert
    except ImportError:
        return None, "onnx2torch is not installed (pip install 'onnx2torch>=1.5')"
    try:
        module = convert(str(onnx_path)).eval()
    except Exception as exc:
        return None, _first_line(exc)
    names = _onnx_inputs(onnx_path)
    try:
        with torch.no_grad():
            produced = first_tensor(module(*_tensors(check, names))).numpy()
    except Exception as exc:
        return None, f"the converted module fails on the data: {_first_line(exc)}"
    expected = reference(check)
    if produced.shape != expected.shape:
        return None, f"the converted module outputs {produced.shape}, not {expected.shape}"
    error = float(np.abs(produced.astype(np.float64) - expected).max())
    scale = float(np.abs(expected).max())
    if error > 1e-4 + 1e-3 * scale:
        return None, f"the converted module's outputs differ by up to {error:.3g}"
    return module, ""


def _export_program(program: Any, spec: ExportSpec, path: Path) -> None:
    """A torch.export program to one ONNX file.

    First as the ``export`` pass exports (TorchScript exporter, opset 17), tracing the
    program's module: onnx2torch 1.5 reads that opset, while the dynamo exporter's graphs
    (opset 18-20: ``ReduceMean``-18, ``Reshape``-19, ``Gelu``-20) mostly defeat it. The
    dynamo exporter, which reads programs natively, is the fallback; its weights sidecar is
    folded into the file.
    """
    import torch

    from edgeloop.compressor.export import export_model, inline_sidecars

    class Traced(torch.nn.Module):
        """The program's module as the TorchScript exporter takes it: that exporter switches
        models to eval mode, and a torch.export module refuses ``train()``."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: torch.Tensor) -> Any:
            return self.inner(*inputs)

        def train(self, mode: bool = True) -> Traced:
            return self

    try:
        with warnings.catch_warnings():
            # The program's shape guards are Python checks: tracing keeps the batch axis free.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            export_model(Traced(program.module()), spec, path)
        return
    except Exception:
        for stale in path.parent.glob(path.name + "*"):
            stale.unlink()
    with contextlib.redirect_stdout(io.StringIO()):  # its progress lines, on stdout
        torch.onnx.export(
            program,
            spec.example_inputs,
            str(path),
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamo=True,
        )
    inline_sidecars(path)


def _self_contained(path: Path, work_dir: Path) -> Path:
    """``path``, or a copy with external weights folded in: devices fetch one file."""
    import onnx

    proto = onnx.load_model(str(path), load_external_data=False)
    external = any(
        init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer
    )
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise ValueError(f"{path}: not a valid ONNX model ({_first_line(exc)})") from None
    if not external:
        return path
    inline = work_dir / path.name
    onnx.save_model(onnx.load_model(str(path)), str(inline), save_as_external_data=False)
    return inline


# ---------------------------------------------------------------------------- helpers


def run_onnx(session: Any, inputs: dict[str, np.ndarray], batch_size: int = 256) -> np.ndarray:
    """The first output of an onnxruntime session over every sample of ``inputs``, in batches
    (or one sample per call, for a model whose batch axis is fixed at 1)."""
    fixed = [i.shape[0] for i in session.get_inputs() if i.shape and isinstance(i.shape[0], int)]
    step = 1 if fixed else batch_size
    count = len(next(iter(inputs.values())))
    return np.concatenate(
        [
            session.run(None, {k: v[start : start + step] for k, v in inputs.items()})[0]
            for start in range(0, count, step)
        ]
    )


def _tensors(arrays: dict[str, np.ndarray], names: list[str]) -> tuple[Any, ...]:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(arrays[name])) for name in names)


def _output_names(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _onnx_inputs(path: Path) -> list[str]:
    import onnx

    graph = onnx.load_model(str(path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    return [value.name for value in graph.input if value.name not in initializers]


def _onnx_outputs(path: Path) -> list[str]:
    import onnx

    return [v.name for v in onnx.load_model(str(path), load_external_data=False).graph.output]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return re.sub(r"\s+", " ", text.splitlines()[0])[:300]
