"""``edgeloop bench security``: the fleet attacked as the threat model says, on real parts.

1. **TUF attacks** (:mod:`edgeloop.lab.attacks`): a real ``edgeloop serve`` with its signed
   repository, a device enrolled with it whose update flow reaches it only through an attacker
   on the network path. Every attack must end on its gate with the committed model serving.
2. **Broker ACL** (:mod:`edgeloop.lab.acl`): Mosquitto in the shipped secure configuration;
   one device tries every way to speak or listen for another, and strangers try to connect.
   Refused means: nothing of it reached the server or the other device.
3. **API auth**: every write route of the server's own OpenAPI document, called without a
   token, with a viewer token and with a device token; each must answer 401 or 403 (the
   enrolment route, whose credential is a one-time token in its body, with tokens that are not
   enrolment tokens).
4. **Update overhead**: seconds from desired state to committed report for a signed update
   (metadata refreshed and verified) over the same flow past trust, same model each time,
   medians of several updates.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from datetime import timedelta
from typing import Any

import requests
from rich.console import Console
from rich.progress import Progress

from edgeloop.lab import attacks
from edgeloop.lab.acl import violations
from edgeloop.lab.bench import Figure
from edgeloop.lab.broker import MosquittoBroker, listener_for
from edgeloop.lab.launch import ServerProcess, fleet_ca
from edgeloop.server.auth import write_routes
from edgeloop.server.pki import CertKind, issue
from edgeloop.server.tuf_repo import Expiry

UPDATES = 5
"""Updates timed each way for ``security.update_overhead``."""


def run(args: Any) -> list[Figure]:
    root = args.workdir / "bench-security"
    shutil.rmtree(root, ignore_errors=True)
    console = Console(stderr=True)
    updates = getattr(args, "runs", None) or UPDATES
    details: dict[str, Any] = {}
    with Progress(console=console, transient=True) as progress:
        step = progress.add_task("security", total=4)
        ca = fleet_ca(root / "pki")
        with MosquittoBroker(root / "broker", tls=listener_for(ca)) as broker:
            for name in ("dev-a", "dev-b"):
                issue(ca, name, CertKind.DEVICE)
            acl = violations(broker, ca)
            progress.advance(step)
            server = ServerProcess(
                root / "server",
                broker.port,
                ca=ca,
                mqtt_tls=True,
                tuf_expiry=Expiry(timestamp=timedelta(seconds=attacks.TIMESTAMP_LIFE_S)),
            )
            try:
                server.wait_ready()
                stage = attacks.Stage(server, root)
                try:
                    stage.commit_genuine()
                    outcomes = [attacks.play(stage, name) for name in attacks.ATTACKS]
                    progress.advance(step)
                    api = _api_attempts(server)
                    progress.advance(step)
                    signed_s, unsigned_s, ratio = attacks.update_overhead(stage, updates)
                    progress.advance(step)
                finally:
                    stage.close()
            finally:
                server.stop()
    details["tuf"] = {o.attack: f"{o.gate}: {o.detail[:160]}" for o in outcomes}
    details["acl"] = {v.name: v.refused for v in acl}
    details["api_not_refused"] = [
        f"{m} {p} as {who}: {s}" for m, p, who, s in api if s not in (401, 403)
    ]
    details["update_s"] = {"signed": signed_s, "unsigned": unsigned_s}
    args.extra = {"details": details}
    rejected = sum(o.rejected for o in outcomes)
    refused_acl = sum(v.refused for v in acl)
    refused_api = sum(status in (401, 403) for *_, status in api)
    return [
        Figure("security.tuf_attacks", len(outcomes), "attacks", ">= 7"),
        Figure("security.tuf_attacks_rejected", rejected, "attacks", f">= {len(outcomes)}"),
        Figure("security.acl_violations_tried", len(acl), "attempts", ">= 6"),
        Figure("security.acl_violations_refused", refused_acl, "attempts", f">= {len(acl)}"),
        Figure("security.api_unauthorized_tried", len(api), "requests", f">= {len(api)}"),
        Figure("security.api_unauthorized_refused", refused_api, "requests", f">= {len(api)}"),
        Figure("security.update_overhead", ratio, "ratio", "<= 1.2"),
        Figure("security.update_signed_s", signed_s, "s", ""),
        Figure("security.update_unsigned_s", unsigned_s, "s", ""),
    ]


def _api_attempts(server: ServerProcess) -> list[tuple[str, str, str, int]]:
    """Every write route × (no token, a viewer's, a device's): (method, path, who, status)."""
    credentials = {
        "no token": None,
        "viewer": _token(server, "bench-viewer", "viewer"),
        "device": _token(server, "bench-device", "device", device="attacked-0"),
    }
    document = requests.get(f"{server.url}/openapi.json", headers=server.headers, timeout=10).json()
    routes = [*write_routes(document), ("POST", "/api/v1/enrol")]
    csr = _csr("attacked-0")
    attempts = []
    for method, template in routes:
        path = re.sub(r"\{(\w+)\}", lambda m: _placeholder(m.group(1)), template)
        for who, token in credentials.items():
            if template == "/api/v1/enrol":
                # Its credential is the body's token: a well-formed request whose token is
                # anything but a live enrolment token must fail on the token.
                body: Any = {
                    "device_id": "attacked-0",
                    "token": token or "elt_" + "x" * 43,
                    "csr_pem": csr,
                }
                response = requests.post(server.url + path, json=body, timeout=10)
            else:
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                response = requests.request(
                    method, server.url + path, headers=headers, json={}, timeout=10
                )
            attempts.append((method, template, who, response.status_code))
    return attempts


def _csr(device_id: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM).decode()


def _placeholder(name: str) -> str:
    return {
        "sha256": "0" * 64,
        "device_id": "attacked-0",
        "rollout_id": "1",
        "action": "pause",
        "name": "linear",
        "version": "1",
        "profile": "host-1t",
    }.get(name, "1")


def _token(server: ServerProcess, name: str, role: str, device: str | None = None) -> str:
    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeloop.cli.main",
            "tokens",
            "create",
            name,
            "--role",
            role,
            *(["--device", device] if device else []),
            "--workdir",
            str(server.workdir),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return _secret(created.stdout)


def _secret(output: str) -> str:
    match = re.search(r"elt_[A-Za-z0-9_-]{20,}", output)
    if match is None:
        raise RuntimeError(f"no token in the output of `edgeloop tokens create`: {output!r}")
    return match.group(0)
