"""``edgeloop demo`` and ``edgeloop bench NAME``: the whole system on this machine."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo", help="run the whole loop locally on embedded defaults")
    demo.add_argument("--devices", type=int, default=2, help="number of device agents (>=1)")
    demo.add_argument("--json", type=Path, dest="json_path", help="also write results as JSON")
    demo.add_argument("--workdir", type=Path, default=Path(".edgeloop/demo"))
    demo.add_argument("--broker", choices=["auto", "mosquitto", "amqtt"], default="auto")
    demo.set_defaults(run=_demo)

    bench = commands.add_parser("bench", help="run a benchmark and write its figures")
    bench.add_argument(
        "name", help="benchmark name: demo, compress, agent, loop, robustness, security, dashboard"
    )
    bench.add_argument("--json", type=Path, dest="json_path", help="write figures as JSON")
    bench.add_argument("--devices", type=int, default=2)
    bench.add_argument("--workdir", type=Path, default=Path(".edgeloop"))
    bench.add_argument("--broker", choices=["auto", "mosquitto", "amqtt"], default="auto")
    bench.add_argument("--cases", help="compress: comma-separated cases (image,nlp,control)")
    bench.add_argument(
        "--runs",
        type=int,
        help="agent: kill -9 runs (default 200); loop: calls per timing (100); security: "
        "updates timed each way (5)",
    )
    bench.add_argument("--outage", type=float, help="agent: broker outage seconds (default 60)")
    bench.add_argument(
        "--payloads", type=int, help="robustness: hostile MQTT payloads (default 100000)"
    )
    bench.add_argument(
        "--rest-examples",
        type=int,
        help="robustness: schemathesis examples per operation (default 500)",
    )
    bench.set_defaults(run=_bench)


def _demo(args: argparse.Namespace) -> int:
    from edgeloop.lab.demo import run_demo

    if args.devices < 1:
        print("edgeloop demo: --devices must be at least 1", file=sys.stderr)
        return 2
    logging.getLogger().setLevel(logging.WARNING)
    result = run_demo(
        devices=args.devices, workdir=args.workdir, json_path=args.json_path, broker=args.broker
    )
    return 0 if result.ok else 1


def _bench(args: argparse.Namespace) -> int:
    from edgeloop.lab.bench import BENCHES, run_bench, write_bench

    if args.name not in BENCHES:
        print(
            f"edgeloop bench: unknown benchmark {args.name!r}; known: {', '.join(sorted(BENCHES))}",
            file=sys.stderr,
        )
        return 2
    logging.getLogger().setLevel(logging.WARNING)
    figures = run_bench(args.name, args)
    write_bench(args.name, figures, args.json_path, extra=getattr(args, "extra", None))
    return 0
