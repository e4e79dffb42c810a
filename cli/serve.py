"""``edgeloop serve`` runs the control plane; ``edgeloop db upgrade|current`` its schema.

On start, a server whose database holds no live operator token creates one and writes it to
``<workdir>/operator.token`` (mode 0600): the first token cannot come from the API."""

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
    serve.add_argument(
        "--metrics-per-device",
        type=_device_count,
        default=os.environ.get("EDGELOOP_METRICS_PER_DEVICE", "0"),
        metavar="N",
        help="give at most N devices their own series on /metrics (edgeloop_device_info, ...); "
        "0, the default, exports aggregates only (env EDGELOOP_METRICS_PER_DEVICE)",
    )
    env_path = lambda name: Path(os.environ[name]) if os.environ.get(name) else None  # noqa: E731
    serve.add_argument(
        "--tuf-dir",
        type=Path,
        default=env_path("EDGELOOP_TUF_DIR"),
        help="the signed-update repository, made by `edgeloop tuf init` (env EDGELOOP_TUF_DIR; "
        "default: WORKDIR/tuf)",
    )
    serve.add_argument(
        "--ca-dir",
        type=Path,
        default=env_path("EDGELOOP_CA_DIR"),
        help="the fleet CA (`edgeloop ca init`) that signs device certificates at enrolment "
        "and whose CRL `devices revoke` writes (env EDGELOOP_CA_DIR; none: no enrolment)",
    )
    serve.add_argument(
        "--ca-key",
        type=Path,
        default=env_path("EDGELOOP_CA_KEY"),
        help="the CA key, if not CA_DIR/ca.key (env EDGELOOP_CA_KEY)",
    )
    for flag, env, what in (
        ("--mqtt-ca", "EDGELOOP_MQTT_CA", "CA certificate the broker's certificate chains to"),
        (
            "--mqtt-cert",
            "EDGELOOP_MQTT_CERT",
            "the server's client certificate (CN edgeloop-server)",
        ),
        ("--mqtt-key", "EDGELOOP_MQTT_KEY", "its private key"),
    ):
        serve.add_argument(
            flag, type=Path, default=env_path(env), help=f"MQTT over TLS: {what} (env {env})"
        )
    serve.add_argument(
        "--tls-cert",
        type=Path,
        default=env_path("EDGELOOP_TLS_CERT"),
        help="serve HTTPS with this certificate (e.g. `edgeloop ca issue edgeloop-server "
        "--kind server --host NAME`) (env EDGELOOP_TLS_CERT)",
    )
    serve.add_argument(
        "--tls-key",
        type=Path,
        default=env_path("EDGELOOP_TLS_KEY"),
        help="its key (env EDGELOOP_TLS_KEY)",
    )
    serve.add_argument(
        "--anonymous-downloads",
        action="store_true",
        help="let requests without a token download artifact files (for agents that send no "
        "device token yet); every other route still needs one",
    )
    serve.set_defaults(run=_serve)

    database = commands.add_parser(
        "db", help="database schema: upgrade to the newest revision, or show the current one"
    )
    database.add_argument("action", choices=["upgrade", "current"])
    database_options(database)
    database.set_defaults(run=_database)


def database_options(sub: argparse.ArgumentParser) -> None:
    """``--database-url`` and ``--workdir``, for commands that work on the database itself."""
    sub.add_argument(
        "--database-url",
        default=None,
        help="SQLAlchemy URL (default: env EDGELOOP_DATABASE_URL, else the SQLite file in "
        "--workdir)",
    )
    sub.add_argument(
        "--workdir",
        type=Path,
        default=Path(".edgeloop/server"),
        help="the server's workdir (as `edgeloop serve --workdir`)",
    )


def database_url(args: argparse.Namespace) -> str:
    """The URL :func:`database_options` name: the flag, else the server's default."""
    from edgeloop.server.config import Settings

    return args.database_url or Settings.for_workdir(args.workdir, http_port=0).database_url


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from edgeloop.agent.identity import MqttTls
    from edgeloop.server.app import create_app
    from edgeloop.server.auth import bootstrap_operator_token
    from edgeloop.server.config import Settings
    from edgeloop.server.tuf_repo import TufRepoError

    mqtt_tls_files = (args.mqtt_ca, args.mqtt_cert, args.mqtt_key)
    if any(mqtt_tls_files) and not all(mqtt_tls_files):
        print(
            "edgeloop serve: MQTT over TLS needs --mqtt-ca, --mqtt-cert and --mqtt-key",
            file=sys.stderr,
        )
        return 2
    if bool(args.tls_cert) != bool(args.tls_key):
        print("edgeloop serve: HTTPS needs both --tls-cert and --tls-key", file=sys.stderr)
        return 2

    host, _, port = args.mqtt.rpartition(":")
    settings = Settings.for_workdir(
        args.workdir,
        http_port=args.port,
        mqtt_host=host or "127.0.0.1",
        mqtt_port=int(port),
        public_host=args.public_host or args.host,
    )
    update: dict[str, object] = {
        "max_json_body": args.max_json_body,
        "max_artifact_size": args.max_artifact_size,
        "ca_dir": args.ca_dir,
        "ca_key": args.ca_key,
        "metrics_per_device": args.metrics_per_device,
    }
    if args.tuf_dir is not None:
        update["tuf_dir"] = args.tuf_dir
    if all(mqtt_tls_files):
        update["mqtt_tls"] = MqttTls(ca=args.mqtt_ca, cert=args.mqtt_cert, key=args.mqtt_key)
    if args.tls_cert:
        update["public_url"] = settings.public_url.replace("http://", "https://", 1)
    settings = settings.model_copy(update=update)
    try:
        app = create_app(settings, anonymous_downloads=args.anonymous_downloads)
    except TufRepoError as exc:
        print(f"edgeloop serve: {exc}", file=sys.stderr)
        return 2
    bootstrap_operator_token(app.state.fleet.sessions, args.workdir.resolve())
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        ssl_certfile=str(args.tls_cert) if args.tls_cert else None,
        ssl_keyfile=str(args.tls_key) if args.tls_key else None,
    )
    return 0


def _database(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from edgeloop.server.db import current_revision, make_engine

    url = database_url(args)
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


def _device_count(text: str) -> int:
    """A number of devices: 0 or more."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of devices (0 or more)")
    return int(text)
