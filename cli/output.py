"""What every operator command shares: the control plane's address, tables or JSON, and one
line on stderr (exit 2) when the server refuses a request."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime

from pydantic import BaseModel
from rich.console import Console

from edgeloop.server.client import TOKEN_ENV, ApiClient, ApiError

DEFAULT_SERVER = "http://127.0.0.1:8000"

ApiCommand = Callable[[ApiClient, argparse.Namespace, Console], int]


def api_options(sub: argparse.ArgumentParser) -> None:
    """``--server``, ``--token`` and ``--json``, for commands that talk to the control plane."""
    sub.add_argument(
        "--server",
        default=os.environ.get("EDGELOOP_SERVER", DEFAULT_SERVER),
        help="control plane URL (env EDGELOOP_SERVER)",
    )
    token_option(sub)
    sub.add_argument("--json", action="store_true", help="print JSON instead of a table")


def token_option(sub: argparse.ArgumentParser) -> None:
    """``--token``: the API token a command sends (``edgeloop tokens create`` makes one)."""
    sub.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV) or None,
        help=f"API token (env {TOKEN_ENV}; the server's first one is in its "
        "<workdir>/operator.token)",
    )


def over_api(command: ApiCommand) -> Callable[[argparse.Namespace], int]:
    """Run ``command`` with a client for ``--server`` and ``--token``; a refusal is one line
    and exit 2."""

    def run(args: argparse.Namespace) -> int:
        client = ApiClient(args.server, token=args.token)
        console = Console(width=None if sys.stdout.isatty() else 160)
        try:
            return command(client, args, console)
        except ApiError as exc:
            print(f"edgeloop: {exc}", file=sys.stderr)
            return 2

    return run


def print_json(value: BaseModel | Sequence[BaseModel]) -> None:
    """An API answer as the server sent it (``--json``)."""
    data: object
    if isinstance(value, BaseModel):
        data = value.model_dump(mode="json")
    else:
        data = [item.model_dump(mode="json") for item in value]
    print(json.dumps(data, indent=1))


def when(moment: datetime | None) -> str:
    """A UTC time to the second, for tables."""
    return "-" if moment is None else moment.isoformat()[:19]


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
