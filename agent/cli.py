"""``edgeloop-agent``: the device-side command."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from .errors import ConfigError


def _profile_arg(value: str) -> dict:
    """A profile as inline JSON or as a path to a JSON/TOML file."""
    if value.lstrip().startswith("{"):
        return json.loads(value)
    path = Path(value)
    if path.suffix == ".toml":
        import tomllib

        return tomllib.loads(path.read_text())
    return json.loads(path.read_text())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeloop-agent",
        description="Run a model on this device as the edgeloop control plane asks.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="connect to the broker and apply desired models")
    run.add_argument("--config", type=Path, help="agent.toml (flags below override it)")
    run.add_argument("--device-id", help="this device's id, e.g. pi-kitchen-01")
    run.add_argument("--broker", help="MQTT broker host:port (default 127.0.0.1:1883)")
    run.add_argument("--workdir", type=Path, help="where blobs and state live")
    run.add_argument("--profile", type=_profile_arg, help="device profile: JSON or a file")
    run.add_argument("--inferences", type=int, help="inferences measured per model (>=1)")
    run.add_argument("--telemetry-interval", dest="telemetry_interval_s", type=float)
    run.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from .config import load_config
    from .daemon import Agent

    overrides = {
        k: getattr(args, k)
        for k in ("device_id", "broker", "workdir", "profile", "inferences", "telemetry_interval_s")
    }
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"edgeloop-agent: {exc}", file=sys.stderr)
        return 2
    agent = Agent(config)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
