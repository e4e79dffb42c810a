"""``edgeloop-agent``: the device-side command.

    edgeloop-agent enrol --config ... --server URL --token T # once: certificate, token, root
    edgeloop-agent run --config /etc/edgeloop/agent.toml     # the daemon (systemd runs this)
    edgeloop-agent status --config ... [--json]              # state, slots, outbox
    edgeloop-agent rollback --config ...                     # back to the previous model

``status`` reads the workdir and works whether or not the daemon runs. ``rollback`` asks a
running daemon through its local endpoint, or, when none runs (the workdir lock is free),
switches the slots itself.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from .errors import AgentError, ConfigError

LOCK_FILE = "agent.lock"
ENDPOINT_FILE = "endpoint.url"


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
    status = commands.add_parser("status", help="show the update state, slots and outbox")
    rollback = commands.add_parser("rollback", help="go back to the previous committed model")
    enrol = commands.add_parser(
        "enrol",
        help="join the fleet with a one-time token: get a certificate, an API token and the "
        "update repository's root metadata",
    )
    for sub in (run, status, rollback, enrol):
        sub.add_argument("--config", type=Path, help="agent.toml (flags below override it)")
        sub.add_argument("--workdir", type=Path, help="where slots, state and blobs live")
        sub.add_argument("-v", "--verbose", action="store_true")
    status.add_argument("--json", action="store_true", help="print the state record as JSON")
    for sub in (run, enrol):
        sub.add_argument("--device-id", help="this device's id, e.g. pi-kitchen-01")
        sub.add_argument("--server", help="control plane URL (signed metadata, downloads)")
    enrol.add_argument("--token", required=True, help="the one-time enrolment token")
    enrol.add_argument(
        "--server-ca", help="CA bundle to check an https control plane with (the fleet CA)"
    )
    run.add_argument("--broker", help="MQTT broker host:port (default 127.0.0.1:1883)")
    run.add_argument(
        "--mqtt-tls",
        action="store_true",
        default=None,
        help="TLS to the broker with the enrolled certificate",
    )
    run.add_argument("--profile", type=_profile_arg, help="device profile: JSON or a file")
    run.add_argument("--inferences", type=int, help="inferences measured per model (>=1)")
    run.add_argument("--telemetry-interval", dest="telemetry_interval_s", type=float)
    run.add_argument("--probation", dest="probation_s", type=float, help="seconds (default 30)")
    run.add_argument("--endpoint-port", type=int, help="local endpoint port (0: any free)")
    run.add_argument(
        "--tag", dest="tags", action="append", help="a label rollouts can target (repeatable)"
    )
    run.add_argument("--application", help="the application this device runs (announced in hello)")
    return parser


RUN_FLAGS = (
    "device_id",
    "broker",
    "mqtt_tls",
    "server",
    "workdir",
    "profile",
    "inferences",
    "telemetry_interval_s",
    "probation_s",
    "endpoint_port",
    "tags",
    "application",
)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "enrol":
            return _enrol(args)
        workdir = _workdir(args)
        if args.command == "status":
            return _status(workdir, as_json=args.json)
        return _rollback(workdir, args)
    except (ConfigError, AgentError) as exc:
        print(f"edgeloop-agent: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .daemon import Agent

    config = load_config(args.config, {k: getattr(args, k, None) for k in RUN_FLAGS})
    config.workdir.mkdir(parents=True, exist_ok=True)
    lock = (config.workdir / LOCK_FILE).open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise AgentError(f"another agent already runs on {config.workdir}") from None
    agent = Agent(config)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    agent.run()
    return 0


def _enrol(args: argparse.Namespace) -> int:
    from .config import load_toml
    from .identity import Identity, enrol

    table: dict[str, Any] = load_toml(args.config) if args.config else {}
    device_id = args.device_id or table.get("device_id")
    server = args.server or table.get("server")
    if not device_id or not server:
        raise ConfigError("enrol needs --device-id and --server (or both in --config)")
    workdir = _workdir(args)
    identity_dir = table.get("identity_dir")
    identity = Identity(Path(identity_dir) if identity_dir else workdir / "identity")
    enrol(
        server,
        device_id,
        args.token,
        identity,
        workdir / "trust",
        verify=args.server_ca or True,
    )
    print(f"enrolled {device_id}: certificate, API token and root metadata in {identity.root}")
    return 0


def _workdir(args: argparse.Namespace) -> Path:
    if args.workdir is not None:
        return args.workdir
    if args.config is not None:
        import tomllib

        try:
            data = tomllib.loads(args.config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read agent config {args.config}: {exc}") from exc
        return Path(data.get("workdir", "/var/lib/edgeloop-agent"))
    return Path("/var/lib/edgeloop-agent")


def _status(workdir: Path, *, as_json: bool) -> int:
    from .slots import Slots
    from .states import StateStore

    record = StateStore(workdir / "state.json").load()
    active = Slots(workdir).active() if (workdir / "slots").exists() else None
    queued, dropped = _outbox_counts(workdir)
    if as_json:
        payload: dict[str, Any] = json.loads(record.model_dump_json())
        payload.update(active_slot=active, outbox_queued=queued, outbox_dropped=dropped)
        print(json.dumps(payload, indent=1))
        return 0
    rows = [
        ("state", record.state.value),
        ("revision", str(record.revision)),
        ("serving", _slot_text(record.committed) if active else "nothing"),
        ("active slot", str(active)),
        ("previous", _slot_text(record.previous)),
        ("last update", _slot_text(record.candidate)),
        ("reason", f"{record.gate}: {record.reason}" if record.reason else "-"),
        ("since", record.entered_at.isoformat(timespec="seconds")),
        ("outbox", f"{queued} queued, {dropped} dropped"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _slot_text(model: Any) -> str:
    return f"{model.label} (slot {model.slot}, revision {model.revision})" if model else "-"


def _outbox_counts(workdir: Path) -> tuple[int, int]:
    path = workdir / "outbox.sqlite"
    if not path.exists():
        return 0, 0
    from .outbox import Outbox

    with Outbox(path) as outbox:
        return len(outbox), outbox.dropped


def _rollback(workdir: Path, args: argparse.Namespace) -> int:
    lock_path = workdir / LOCK_FILE
    lock = lock_path.open("a") if workdir.exists() else None
    try:
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        from .endpoint_client import InferenceClient

        url = (workdir / ENDPOINT_FILE).read_text().strip()
        result = InferenceClient(url).rollback()
        print(f"rolled back: now {result['state']}, serving {result['running']}")
        return 0
    from .config import load_config, load_toml
    from .host import ModelHost
    from .outbox import Outbox
    from .protocol import Channel, Report, encode, topic
    from .states import StateStore
    from .updater import Hooks, Updater

    record = StateStore(workdir / "state.json").load()
    if record.desired is None:
        raise AgentError(f"{workdir} has no installed model to roll back from")
    device_id = record.desired.device_id
    # The device's own profile (agent.toml) bounds what it loads; only without one does the
    # last desired state's profile stand in.
    own = load_toml(args.config).get("profile") if args.config else None
    config = load_config(
        args.config,
        {
            "workdir": workdir,
            "device_id": device_id,
            "profile": None if own is not None else record.desired.profile.model_dump(),
        },
    )
    with Outbox(workdir / "outbox.sqlite") as outbox:

        def queue_report(report: Report) -> None:
            outbox.put(topic(device_id, Channel.REPORT), encode(report), qos=1)

        hooks = Hooks(on_report=queue_report)
        after = Updater(config, ModelHost(), hooks).operator_rollback()
    running = after.committed.label if after.committed else None
    print(f"rolled back: now {after.state}, serving {running}")
    print("the report goes out when the agent next runs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
