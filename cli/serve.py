"""``edgeloop serve`` runs the control plane; ``edgeloop db upgrade|current`` its schema."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pydantic import ByteSize, TypeAdapter, ValidationError


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="run the control plane (REST API + MQTT bridge)")
    serve.add_argument(
        "--workdir",
        type=Path,
        default=Path(".edgeloop/server"),
        help="SQLite database and artifact files live here",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--mqtt", default="127.0.0.1:1883", help="broker host:port")
    serve.add_argument(
        "--public-host",
        default=None,
        help="host name devices use to download artifacts (default: --host)",
    )
    serve.add_argument(
        "--max-json-body",
        type=_size,
        default=os.environ.get("EDGELOOP_MAX_JSON_BODY", "1MiB"),
        help="largest request body but an artifact upload, e.g. 512KiB (default: env "
        "EDGELOOP_MAX_JSON_BODY, else 1MiB)",
    )
    serve.add_argument(
        "--max-artifact-size",
        type=_size,
        default=os.environ.get("EDGELOOP_MAX_ARTIFACT_SIZE", "2GiB"),
        help="largest artifact file an upload may store, e.g. 500MB (default: env "
        "EDGELOOP_MAX_ARTIFACT_SIZE, else 2GiB)",
    )
    serve.set_defaults(run=_serve)

    database = commands.add_parser(
        "db", help="database schema: upgrade to the newest revision, or show the current one"
    )
    database.add_argument("action", choices=["upgrade", "current"])
    database.add_argument(
        "--database-url",
        default=None,
        help="SQLAlchemy URL (default: env EDGELOOP_DATABASE_URL, else the SQLite file in "
        "--workdir)",
    )
    database.add_argument("--workdir", type=Path, default=Path(".edgeloop/server"))
    database.set_defaults(run=_database)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from edgeloop.server.app import create_app
    from edgeloop.server.config import Settings

    host, _, port = args.mqtt.rpartition(":")
    settings = Settings.for_workdir(
        args.workdir,
        http_port=args.port,
        mqtt_host=host or "127.0.0.1",
        mqtt_port=int(port),
        public_host=args.public_host or args.host,
    ).model_copy(
        update={"max_json_body": args.max_json_body, "max_artifact_size": args.max_artifact_size}
    )
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")
    return 0


def _database(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from edgeloop.server.config import Settings
    from edgeloop.server.db import current_revision, make_engine

    url = args.database_url or Settings.for_workdir(args.workdir, http_port=0).database_url
    try:
        engine = make_engine(url, migrate_schema=args.action == "upgrade")
        revision = current_revision(engine)
    except SQLAlchemyError as exc:
        print(
            f"edgeloop db: {url}: {exc.__class__.__name__}: {exc}".splitlines()[0], file=sys.stderr
        )
        return 2
    engine.dispose()
    print(f"{url.split('@')[-1]}: schema revision {revision or 'none (empty database)'}")
    return 0


def _size(text: str) -> ByteSize:
    """A size with its unit (``1MiB``, ``500MB``, ``2GiB``) or a number of bytes."""
    try:
        size = TypeAdapter(ByteSize).validate_python(text)
    except ValidationError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size like 1MiB, 500MB or 2GiB"
        ) from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a limit must be more than 0 bytes")
    return size
