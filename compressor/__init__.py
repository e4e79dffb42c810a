"""Compress models for a device profile and describe what was built.

Importing this package never imports torch: the server reads ``ModelReport`` and
``BuiltModel`` from here, and ``build_digits`` loads torch only when first looked up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgeloop.compressor.report import BuiltModel, ModelReport

if TYPE_CHECKING:
    from edgeloop.compressor.examples.digits import build_digits

__all__ = ["BuiltModel", "ModelReport", "build_digits"]


def __getattr__(name: str) -> Any:
    if name == "build_digits":
        from edgeloop.compressor.examples.digits import build_digits

        return build_digits
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
