"""``edgeloop``: the operator's command (control plane, demo, benchmarks)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeloop", description="Compress models for device profiles and ship them to fleets."
    )
    commands = parser.add_subparsers(dest="command", required=True)

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

    demo = commands.add_parser("demo", help="run the whole loop locally on embedded defaults")
    demo.add_argument("--devices", type=int, default=2, help="number of device agents (>=1)")
    demo.add_argument("--json", type=Path, dest="json_path", help="also write results as JSON")
    demo.add_argument("--workdir", type=Path, default=Path(".edgeloop/demo"))
    demo.add_argument("--broker", choices=["auto", "mosquitto", "amqtt"], default="auto")

    compress = commands.add_parser(
        "compress",
        help="search compression pipelines for a device profile",
        description="edgeloop compress --recipe R --profile P TASK, or: edgeloop compress "
        "example NAME [--profile P]",
    )
    compress.add_argument(
        "target",
        nargs="*",
        metavar="TASK",
        help="an example task name (image, nlp, control), or `example NAME`",
    )
    compress.add_argument("--recipe", type=Path, help="recipe YAML/JSON (default: the example's)")
    compress.add_argument(
        "--profile", default="host-1t", help="built-in profile name or a JSON/TOML profile file"
    )
    compress.add_argument(
        "--out", type=Path, help="output directory (default .edgeloop/compress/TASK)"
    )
    compress.add_argument("--max-trials", type=int)
    compress.add_argument("--time-budget", type=float, help="seconds; returns the best so far")
    compress.add_argument("--strategy", choices=["grid", "random"])
    compress.add_argument(
        "--push", metavar="URL", help="register the chosen model with the control plane at URL"
    )
    compress.add_argument("--version", help="version to register (default: a content hash)")

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

    from .operator_cli import add_commands

    add_commands(commands)

    bench = commands.add_parser("bench", help="run a benchmark and write its figures")
    bench.add_argument("name", help="benchmark name: demo, compress, agent, loop")
    bench.add_argument("--json", type=Path, dest="json_path", help="write figures as JSON")
    bench.add_argument("--devices", type=int, default=2)
    bench.add_argument("--workdir", type=Path, default=Path(".edgeloop"))
    bench.add_argument("--broker", choices=["auto", "mosquitto", "amqtt"], default="auto")
    bench.add_argument("--cases", help="compress: comma-separated cases (image,nlp,control)")
    bench.add_argument(
        "--runs", type=int, help="agent: kill -9 runs (default 200); loop: calls per timing (100)"
    )
    bench.add_argument("--outage", type=float, help="agent: broker outage seconds (default 60)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "serve":
        return _serve(args)
    if args.command == "demo":
        from .demo import run_demo

        if args.devices < 1:
            print("edgeloop demo: --devices must be at least 1", file=sys.stderr)
            return 2
        logging.getLogger().setLevel(logging.WARNING)
        result = run_demo(
            devices=args.devices, workdir=args.workdir, json_path=args.json_path, broker=args.broker
        )
        return 0 if result.ok else 1
    if args.command == "compress":
        return _compress(args)
    if args.command == "db":
        return _database(args)
    if args.command in ("devices", "models", "rollout", "telemetry", "loop"):
        from .operator_cli import run

        return run(args)
    if args.command == "bench":
        from .bench import BENCHES, write_bench

        if args.name not in BENCHES:
            print(
                f"edgeloop bench: unknown benchmark {args.name!r}; known: "
                f"{', '.join(sorted(BENCHES))}",
                file=sys.stderr,
            )
            return 2
        logging.getLogger().setLevel(logging.WARNING)
        figures = BENCHES[args.name](args)
        write_bench(args.name, figures, args.json_path, extra=getattr(args, "extra", None))
        return 0
    return 2


def _compress(args: argparse.Namespace) -> int:
    from edgeloop.compressor.compress import compress
    from edgeloop.compressor.examples import example_recipe, example_task
    from edgeloop.compressor.passes.base import RecipeError
    from edgeloop.compressor.profiles import load_profile
    from edgeloop.compressor.recipe import load_recipe

    target = args.target[1:] if args.target[:1] == ["example"] else args.target
    if len(target) > 1:
        print(
            "edgeloop compress: name one task, e.g. `edgeloop compress example image`",
            file=sys.stderr,
        )
        return 2
    try:
        profile = load_profile(args.profile)
        if args.recipe:
            recipe = load_recipe(args.recipe)
        elif target:
            recipe = load_recipe(example_recipe(target[0]))
        else:
            raise ValueError("give a task (e.g. `example image`) or --recipe FILE")
        name = target[0] if target else recipe.task
        if name is None:
            raise ValueError(
                "the recipe names no `task:`; give one, e.g. `edgeloop compress image`"
            )
        if args.strategy:
            recipe.search.strategy = args.strategy
        task = example_task(name)
    except (ValueError, OSError) as exc:
        kind = "recipe" if isinstance(exc, RecipeError) else "input"
        print(f"edgeloop compress: bad {kind}: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path(".edgeloop/compress") / name
    result = compress(
        task, recipe, profile, out, max_trials=args.max_trials, time_budget_s=args.time_budget
    )
    print(f"report: {out / 'report.json'}  plot: {out / 'pareto.png'}")
    if result.chosen is None:
        return 1
    from edgeloop.compressor.compress import built_model
    from edgeloop.server.client import ApiClient, ApiError

    version = args.version or result.chosen.key[:12]
    try:
        built = built_model(task, result, out, name=name, version=version)
    except ValueError as exc:
        print(f"edgeloop compress: not publishable: {exc}", file=sys.stderr)
        return 1 if args.push else 0
    # What `edgeloop models push DIR` registers as the version's metadata.
    (out / "model_report.json").write_text(built.report.model_dump_json(indent=2))
    if args.push:
        try:
            ApiClient(args.push).push_model(built)
        except ApiError as exc:
            print(f"edgeloop compress: not pushed: {exc}", file=sys.stderr)
            return 1
        print(f"registered {name}:{version} at {args.push}")
    return 0


def _database(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from .config import Settings
    from .db import current_revision, make_engine

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


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .config import Settings

    host, _, port = args.mqtt.rpartition(":")
    settings = Settings.for_workdir(
        args.workdir,
        http_port=args.port,
        mqtt_host=host or "127.0.0.1",
        mqtt_port=int(port),
        public_host=args.public_host or args.host,
    )
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
