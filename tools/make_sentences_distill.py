"""Regenerate ``sentences_distill.txt``: natural-English distillation inputs for the nlp case.

Distillation needs only inputs (the fp32 teacher supplies the targets), and the template
sentences in ``sentences_train.txt`` are too narrow to teach a sliced student English. This
extracts prose sentences from text every CPython 3.11 install carries, no download:

* ``pydoc_data.topics`` -- the language reference and library topics that ``help()`` shows
  (Python documentation, (c) Python Software Foundation, PSF License Agreement);
* the docstrings of the pure-Python standard-library modules and their public classes and
  functions (CPython source, PSF License Agreement).

Sentences are split on end punctuation, kept only when they read as prose (6-40 words, mostly
letters, no code punctuation), de-duplicated, and never equal to or containing a sentence of
the evaluation set (``sentences.txt``). Sampled with a fixed seed down to :data:`COUNT`.
Run with the project's Python 3.11: ``python tools/make_sentences_distill.py``
(deterministic for a given Python version; rewrites the file).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import random
import re
import sys
import warnings
from pathlib import Path

SEED = 20240612
COUNT = 8000
HERE = Path(__file__).resolve().parents[1] / "compressor" / "data"

SKIP_MODULES = (
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "lib2to3",
    "ensurepip",
    "antigravity",
    "this",
    "__main__",
    "turtle",
    "pydoc_data",
    "xxsubtype",
    "xxlimited",
)


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def _pydoc_texts() -> list[str]:
    import pydoc_data.topics

    return [pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics)]


def _docstring_texts() -> list[str]:
    texts: list[str] = []
    names = sorted(
        name
        for name in sys.stdlib_module_names
        if not name.startswith("_") and name not in SKIP_MODULES
    )
    seen: set[int] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            try:
                module = importlib.import_module(name)
            except Exception:  # platform modules that do not import here
                continue
            modules = [module]
            for info in pkgutil.iter_modules(getattr(module, "__path__", []) or []):
                if info.name.startswith("_") or info.name in SKIP_MODULES:
                    continue
                try:
                    modules.append(importlib.import_module(f"{name}.{info.name}"))
                except Exception:
                    continue
            for mod in modules:
                objects = [mod] + [
                    obj
                    for key, obj in sorted(vars(mod).items())
                    if not key.startswith("_")
                    and (inspect.isclass(obj) or inspect.isfunction(obj))
                    and getattr(obj, "__module__", None) == mod.__name__
                ]
                for obj in list(objects):
                    if inspect.isclass(obj):
                        objects += [
                            member
                            for key, member in sorted(vars(obj).items())
                            if not key.startswith("_") and inspect.isfunction(member)
                        ]
                for obj in objects:
                    doc = inspect.getdoc(obj)
                    if doc and id(doc) not in seen:
                        seen.add(id(doc))
                        texts.append(doc)
    return texts


_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CODE = re.compile(r"[=<>{}\[\]_|\\#@$%^~`*]|\(\)|::|\.\.|\w\.\w|--")


def _sentences(text: str) -> list[str]:
    out = []
    # reST emphasis (*word*, **word**) and typographic quotes read as plain prose.
    text = re.sub(r"\*{1,2}(\w[^*\n]*?)\*{1,2}", r"\1", text)
    text = text.replace("\u2019", "'").replace("\u201c", '"').replace("\u201d", '"')
    for paragraph in re.split(r"\n\s*\n", text):
        lines = paragraph.splitlines()
        # Code blocks, tables and REPL sessions are indented or prompted; prose is not.
        if any(line.startswith(("   ", ">>>", "...", "+", "|", "$")) for line in lines):
            continue
        for sentence in _SPLIT.split(" ".join(line.strip() for line in lines)):
            sentence = sentence.strip().strip('"')
            words = sentence.split()
            if not 6 <= len(words) <= 40 or sentence[-1] not in ".!?" or not sentence[0].isupper():
                continue
            if _CODE.search(sentence) or sentence.count("(") != sentence.count(")"):
                continue
            letters = sum(ch.isalpha() or ch == " " for ch in sentence)
            if letters / len(sentence) < 0.9:
                continue
            # Mostly dictionary-looking words: drop identifier soup and all-caps lines.
            plain = sum(word.strip(".,;:!?\"'()").isalpha() for word in words)
            if plain / len(words) < 0.85 or sentence.isupper():
                continue
            out.append(sentence)
    return out


def main() -> None:
    evaluation = [
        line.strip()
        for line in (HERE / "sentences.txt").read_text("utf-8").splitlines()
        if line.strip()
    ]
    banned = {_normalise(s) for s in evaluation}
    unique: dict[str, str] = {}
    for text in _pydoc_texts() + _docstring_texts():
        for sentence in _sentences(text):
            key = _normalise(sentence)
            if key in banned or any(b in key for b in banned if len(b) > 20):
                continue
            unique.setdefault(key, sentence)
    sentences = sorted(unique.values())
    random.Random(SEED).shuffle(sentences)
    sentences = sentences[:COUNT]
    (HERE / "sentences_distill.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    print(f"{len(unique)} prose sentences found, {len(sentences)} written")


if __name__ == "__main__":
    main()
