"""Run a concrete pipeline of passes on a task's source model, caching every stage.

Stages are keyed by the source's fingerprint plus the passes so far, so trials that share
a prefix (the same pruning, then different quantizations) run that prefix once, and a re-run
of a search after an interruption reuses every stage already on disk.

The source is :meth:`Task.source`: the teacher as a PyTorch model, or an ONNX file, where the
empty pipeline is the file itself. A PyTorch source that stands for an ONNX file
(:meth:`Task.source_onnx`) exports, untouched, to that very file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from edgeloop.compressor.passes import get_pass
from edgeloop.compressor.passes.base import (
    Handle,
    OnnxModel,
    PassConfig,
    PassContext,
    TorchModel,
)
from edgeloop.compressor.recipe import describe
from edgeloop.compressor.task import Task

log = logging.getLogger("edgeloop.compressor.pipeline")

Pipeline = list[tuple[str, PassConfig]]


class StageCache:
    """Torch stages in memory (and as pickled modules on disk), ONNX stages as files."""

    def __init__(self, root: Path, task: Task, seed: int = 0) -> None:
        self.root = root
        self.task = task
        self.seed = seed
        self._memory: dict[str, Handle] = {}
        self._source: Handle | None = None
        self._source_key: str | None = None

    def source(self) -> tuple[Handle, str]:
        """The task's starting model and its key (the task's name and the model's content)."""
        if self._source is None:
            start = self.task.source()
            self._source = OnnxModel(start) if isinstance(start, Path) else TorchModel(start.eval())
            self._source_key = _hash(self.task.name, self._source.fingerprint())
        assert self._source_key is not None
        return self._source, self._source_key

    def run(self, pipeline: Pipeline) -> tuple[OnnxModel, str]:
        """The ONNX model at the end of ``pipeline`` and its stage key."""
        handle, key = self.source()
        for index, (name, config) in enumerate(pipeline):
            key = _hash(key, json.dumps(describe([(name, config)]), sort_keys=True))
            cached = self._load(key)
            if cached is not None:
                handle = cached
                continue
            pass_cls = get_pass(name)
            if handle.kind != pass_cls.input_kind:
                raise ValueError(
                    f"step {index + 1} ({name}) needs a {pass_cls.input_kind} model, "
                    f"got {handle.kind}"
                )
            stage_dir = self.root / key[:16]
            if stage_dir.exists():
                shutil.rmtree(stage_dir)
            stage_dir.mkdir(parents=True)
            original = self.task.source_onnx() if index == 0 and name == "export" else None
            if original is not None:
                shutil.copyfile(original, stage_dir / "model.onnx")
                handle = OnnxModel(stage_dir / "model.onnx", dict(handle.notes))
            else:
                ctx = PassContext(task=self.task, work_dir=stage_dir, seed=self.seed)
                source = handle.clone() if isinstance(handle, TorchModel) else handle
                log.info("running %s", name)
                handle = pass_cls().run(source, config, ctx)
            self._store(key, handle)
        if not isinstance(handle, OnnxModel):
            raise ValueError("pipeline ended on a torch model; it must end after export")
        return handle, key

    def _load(self, key: str) -> Handle | None:
        if key in self._memory:
            return self._memory[key]
        stage_dir = self.root / key[:16]
        done = stage_dir / "stage.json"
        if not done.exists():
            return None
        meta = json.loads(done.read_text())
        handle: Handle
        if meta["kind"] == "onnx":
            handle = OnnxModel(stage_dir / "model.onnx", meta["notes"])
        else:
            import torch

            module = torch.load(stage_dir / "module.pt", weights_only=False)
            handle = TorchModel(module, meta["notes"])
        self._memory[key] = handle
        return handle

    def _store(self, key: str, handle: Handle) -> None:
        stage_dir = self.root / key[:16]
        if isinstance(handle, TorchModel):
            import torch

            torch.save(handle.module, stage_dir / "module.pt")
        meta: dict[str, Any] = {"kind": handle.kind, "notes": _jsonable(handle.notes)}
        (stage_dir / "stage.json").write_text(json.dumps(meta))
        self._memory[key] = handle


def _hash(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _jsonable(notes: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(notes, default=str))
