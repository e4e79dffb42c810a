"""``edgeloop models push|ls|retire|retention|gc``: model versions in the registry, and the
files of those retired."""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from edgeloop.cli.output import api_options, ms, over_api, print_json, when
from edgeloop.server.client import ApiClient, ApiError, card_from_onnx
from edgeloop.server.client import Progress as ProgressCallback
from edgeloop.server.schemas import ModelFigures


def register(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser("models", help="model versions in the registry")
    models.add_argument("action", choices=["push", "ls", "retire", "retention", "gc"])
    models.add_argument(
        "path",
        nargs="?",
        help="push: a compressor output dir (model.onnx, golden.npz, model_report.json, "
        "pareto.png if there) or an .onnx file; retire: NAME:VERSION",
    )
    models.add_argument("--report", type=Path, help="push: report JSON (needs `accuracy`)")
    models.add_argument("--golden", type=Path, help="push: golden npz (default: next to FILE)")
    models.add_argument("--name", help="push: model name (default: dir or file name)")
    models.add_argument("--version", help="push: version (default: model hash, 12 hex)")
    models.add_argument(
        "--app",
        default="default",
        help="push: the application this model is a version of (default: `default`); only "
        "devices running it are offered it",
    )
    models.add_argument(
        "--plan",
        action="store_true",
        help="push: re-plan the devices of its application now (default: register only; "
        "roll it out, or `edgeloop apps plan APP`)",
    )
    models.add_argument("--all", action="store_true", help="ls: include retired versions")
    models.add_argument("--keep", type=int, default=3, help="retention: live versions per name")
    models.add_argument(
        "--min-age",
        type=float,
        default=3600,
        help="gc: only files stored at least this many seconds ago (default: an hour, so a "
        "push in progress keeps its files)",
    )
    models.add_argument("--dry-run", action="store_true", help="gc: list what would go")
    api_options(models)
    models.set_defaults(run=over_api(_models))


def _models(client: ApiClient, args: argparse.Namespace, console: Console) -> int:
    if args.action == "push":
        return _push(client, args)
    if args.action == "retire":
        if not args.path:
            raise ApiError("models retire needs NAME:VERSION")
        model = client.retire_model(args.path)
        print(f"retired {model.label}")
        return 0
    if args.action == "retention":
        retired = client.apply_retention(args.keep, args.name).retired
        print(f"retired {len(retired)}: {', '.join(retired) or '-'}")
        return 0
    if args.action == "gc":
        collected = client.collect_artifacts(min_age_s=args.min_age, dry_run=args.dry_run)
        if args.json:
            print_json(collected)
            return 0
        verb = "would remove" if collected.dry_run else "removed"
        print(
            f"{verb} {len(collected.removed)} artifact files no live model version uses and "
            f"{collected.stray_uploads} abandoned uploads: "
            f"{collected.bytes_freed / 1024**2:.1f} MiB"
        )
        for removed in collected.removed:
            print(f"  {removed.sha256}  {removed.bytes_freed / 1024:.1f} KB")
        return 0
    rows = client.models(include_retired=args.all)
    if args.json:
        print_json(rows)
        return 0
    table = Table(title=f"{len(rows)} model versions")
    columns = ("model", "application", "variant", "metric", "size KB", "host p95 ms", "created",
               "retired")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in columns[:2] else "right")
    for row in rows:
        report = row.report
        arrow = "↑" if report.higher_is_better else "↓"
        table.add_row(
            row.label,
            row.application,
            report.variant or "-",
            f"{report.metric_name} {report.accuracy:.4g} {arrow}",
            f"{report.size_bytes / 1024:.1f}" if report.size_bytes else "-",
            ms(report.host_latency_p95_ms),
            when(row.created_at),
            when(row.retired_at),
        )
    console.print(table)
    return 0


def _push(client: ApiClient, args: argparse.Namespace) -> int:
    if not args.path:
        raise ApiError("models push needs a compressor output DIR or an .onnx FILE")
    path = Path(args.path)
    if path.is_dir():
        model, golden = path / "model.onnx", args.golden or path / "golden.npz"
        report_path = args.report or path / "model_report.json"
        name = args.name or path.name
    else:
        model, golden = path, args.golden or path.with_name("golden.npz")
        report_path = args.report
        name = args.name or path.stem
    for label, file in (("model", model), ("golden file", golden), ("report", report_path)):
        if file is None or not file.is_file():
            raise ApiError(f"{label} not found: {file or 'give --report R'}")
    try:
        figures = ModelFigures.model_validate_json(report_path.read_text())
    except ValidationError as exc:
        raise ApiError(f"{report_path} is not a model report: {exc}") from None
    version = args.version or hashlib.sha256(model.read_bytes()).hexdigest()[:12]
    card = card_from_onnx(model, name=name, version=version, figures=figures, application=args.app)
    pareto = path / "pareto.png" if path.is_dir() else None
    with upload_bars() as progress:
        registered = client.push_model(
            card,
            model,
            golden,
            plan=args.plan,
            pareto_path=pareto if pareto is not None and pareto.is_file() else None,
            progress=progress,
        )
    planned = f"; devices of '{args.app}' re-planned" if args.plan else ""
    print(
        f"registered {registered.label} for application '{registered.application}' "
        f"({model.stat().st_size / 1024:.1f} KB){planned}"
    )
    return 0


@contextmanager
def upload_bars() -> Iterator[Callable[[Path], ProgressCallback]]:
    """For each file a push uploads, a callback that moves its own bar on stderr; bars show
    only when stderr is a terminal, so logs and pipes get the usual lines alone."""
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        disable=not console.is_terminal,
    ) as bars:

        def for_file(path: Path) -> ProgressCallback:
            bar = bars.add_task(f"upload {path.name}", total=path.stat().st_size)
            return lambda sent, total: bars.update(bar, completed=sent, total=total)

        yield for_file
