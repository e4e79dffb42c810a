"""A user's own code, named on the command line: ``file.py:Name`` or ``package.module:Name``.

Two things are loaded this way: a custom :class:`~edgeloop.compressor.task.Task` class
(``edgeloop compress --task my_task.py:MyTask``) and a model factory (``edgeloop compress
pkg.models:build --task classification``). Loading runs the user's module, as importing it
would; nothing else here executes user input.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from edgeloop.compressor.task import Task

__all__ = ["is_code_reference", "load_object", "make_user_task"]

TASK_ARGUMENTS = ("model", "train", "eval")
"""What ``edgeloop compress`` may pass to a user task by keyword, when ``__init__`` takes it."""


def is_code_reference(spec: str) -> bool:
    """Whether ``spec`` reads as ``file.py:Name`` or ``package.module:Name`` rather than a path."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name.isidentifier() or Path(spec).exists():
        return False
    return target.endswith(".py") or all(part.isidentifier() for part in target.split("."))


def load_object(spec: str) -> Any:
    """The object ``Name`` from ``path/to/file.py:Name`` or ``package.module:Name``.

    A file is imported as a module of its own (its folder is not added to ``sys.path``, so it
    imports what it needs like any script run from elsewhere would: installed packages).

    Raises:
        ImportError: a malformed reference, a missing file or module, a module that fails to
            import (its error in the message), or no ``Name`` in it.
    """
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name.isidentifier():
        raise ImportError(f"{spec!r} is not `path/to/file.py:Name` or `package.module:Name`")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ImportError(f"{spec!r}: no such file {path}")
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        module_name = f"edgeloop_user_{path.stem}_{digest}"
        module = sys.modules.get(module_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise ImportError(f"{spec!r}: {path} cannot be imported as a Python module")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module
            try:
                loader_spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[module_name]
                raise ImportError(f"{spec!r}: importing {path} failed: {_said(exc)}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise ImportError(f"{spec!r}: importing {target} failed: {_said(exc)}") from exc
    try:
        return getattr(module, name)
    except AttributeError:
        raise ImportError(f"{spec!r}: {target} defines no {name!r}") from None


def make_user_task(spec: str, *, model: str | None, train: Path | None, eval: Path | None) -> Task:
    """Create the user's task class ``spec`` with the arguments its ``__init__`` takes.

    ``model``, ``train`` and ``eval`` are passed by keyword to a class that accepts them;
    giving one the class does not accept is an error, so nothing the user typed is ignored.

    Raises:
        ImportError: as :func:`load_object`.
        TypeError: not a :class:`Task` subclass, abstract methods left, or an argument it
            does not take.
        ValueError: whatever the task's own ``__init__`` refuses (e.g. bad data).
    """
    cls = load_object(spec)
    if not (inspect.isclass(cls) and issubclass(cls, Task)):
        raise TypeError(
            f"{spec!r} is not a subclass of edgeloop.compressor.task.Task (got {cls!r}); "
            "see the Task interface in compressor/task.py"
        )
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise TypeError(f"{spec!r} does not implement {missing}")
    for attribute in ("name", "kind", "metric"):
        if not isinstance(getattr(cls, attribute, None), str):
            raise TypeError(f"{spec!r} sets no class attribute {attribute!r} (a string)")
    given = dict(zip(TASK_ARGUMENTS, (model, train, eval), strict=True))
    accepted = inspect.signature(cls).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    arguments: dict[str, Any] = {}
    for key, value in given.items():
        if value is None:
            continue
        if key not in accepted and not takes_all:
            flag = "MODEL" if key == "model" else f"--{key}"
            raise TypeError(
                f"{cls.__name__} takes no {key!r} argument, so {flag} cannot be used with it; "
                f"drop {flag} or add a `{key}` parameter to {cls.__name__}.__init__"
            )
        arguments[key] = value
    task: Task = cls(**arguments)
    return task


def _said(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
