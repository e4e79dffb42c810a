"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str) -> T:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` and the
    last value seen."""
    deadline = time.monotonic() + timeout_s
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(0.2)
        value = predicate()
    if not value:
        raise AssertionError(
            f"timed out after {timeout_s:.0f}s waiting for {what}; last: {value!r}"
        )
    return value


def run_command(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module args...`` as an operator would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=60
    )
