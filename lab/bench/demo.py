"""``edgeloop bench demo``: the demo as a benchmark (devices reporting, wall time)."""

from __future__ import annotations

from typing import Any

from edgeloop.lab.bench import Figure


def run(args: Any) -> list[Figure]:
    from edgeloop.lab.demo import run_demo

    devices = args.devices
    result = run_demo(devices=devices, workdir=args.workdir / "bench-demo", broker=args.broker)
    reporting = sum(1 for d in result.devices if d["ok"])
    return [
        Figure("demo.devices_reporting", reporting, "devices", f">= {devices}"),
        Figure("demo.wall_s", round(result.wall_s, 2), "s", "<= 120"),
    ]
