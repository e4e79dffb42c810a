"""``edgeloop``: the operator's command. One module per verb group registers its
sub-commands; each sets ``run`` to its handler."""

from __future__ import annotations

import argparse
import logging
import sys

from edgeloop.cli import (
    apps,
    ca,
    compress,
    devices,
    lab,
    loop,
    models,
    rollouts,
    serve,
    tokens,
    tuf,
)

VERB_GROUPS = (serve, lab, compress, devices, apps, models, rollouts, loop, ca, tokens, tuf)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeloop", description="Compress models for device profiles and ship them to fleets."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for group in VERB_GROUPS:
        group.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
