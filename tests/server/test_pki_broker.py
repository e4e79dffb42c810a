"""Device identity on the broker: the fleet CA, the shipped ACL, and revocation.

Every test runs a real Mosquitto in the secure mode of ``deploy/mosquitto-secure.conf`` with
the shipped ``deploy/mosquitto.acl``, and real paho clients holding certificates that
``edgeloop.server.pki`` made. Non-delivery is shown without sleeping on a guess: after the
broker has dealt with each forbidden message, a message that is allowed follows it; Mosquitto
handles one event at a time and forwards in that order, so once the allowed one arrives,
the forbidden ones would have arrived before it.
"""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path

import pytest
from cryptography import x509
from helpers import run_command, wait_until

from edgeloop.agent.protocol import Channel, topic
from edgeloop.cli.ca import DEFAULT_CA_DIR
from edgeloop.lab.acl import connected, connects, publish_once, violations
from edgeloop.lab.broker import MOSQUITTO_TLS_CONF, MosquittoBroker, find_mosquitto, listener_for
from edgeloop.server.pki import (
    SERVER_COMMON_NAME,
    CaDir,
    CertKind,
    PkiError,
    init_ca,
    issue,
    load_index,
    revoke,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SHIPPED_ACL = DEPLOY / "mosquitto.acl"
SHIPPED_CONF = DEPLOY / "mosquitto-secure.conf"


def require_mosquitto() -> None:
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed: apt-get install mosquitto (.ci/run does)")


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture()
def ca(tmp_path: Path) -> CaDir:
    """A fleet CA with the server's identity and two devices, ``dev-a`` and ``dev-b``."""
    ca = CaDir.at(tmp_path / "pki")
    init_ca(ca)
    issue(ca, SERVER_COMMON_NAME, CertKind.SERVER)
    issue(ca, "dev-a", CertKind.DEVICE)
    issue(ca, "dev-b", CertKind.DEVICE)
    return ca


@pytest.fixture()
def broker(tmp_path: Path, ca: CaDir) -> Iterator[MosquittoBroker]:
    require_mosquitto()
    with MosquittoBroker(tmp_path / "mosquitto", tls=listener_for(ca)) as broker:
        yield broker


# ---------------------------------------------------------------------------- who connects


def test_a_client_without_a_certificate_of_the_fleet_ca_is_refused(
    tmp_path: Path, ca: CaDir, broker: MosquittoBroker
) -> None:
    stranger_ca = CaDir.at(tmp_path / "stranger")
    init_ca(stranger_ca, "not the fleet CA")
    issue(stranger_ca, "dev-a", CertKind.DEVICE)

    assert not connects(broker, ca, None), "TLS without a client certificate"
    assert not connects(broker, ca, "dev-a", client_ca=stranger_ca), "dev-a, made by another CA"
    assert not connects(broker, ca, None, tls=False), "plain MQTT on the TLS port"
    assert connects(broker, ca, "dev-a"), "and the fleet's own dev-a gets in"


# ---------------------------------------------------------------------------- the ACL


def test_a_device_publishes_under_its_own_id_and_nowhere_else(
    ca: CaDir, broker: MosquittoBroker
) -> None:
    server = connected(broker, ca, SERVER_COMMON_NAME)
    server.subscribe("edgeloop/v2/devices/#")
    device_a = connected(broker, ca, "dev-a")
    try:
        for channel in (Channel.HELLO, Channel.STATUS, Channel.REPORT, Channel.TELEMETRY):
            device_a.publish(topic("dev-a", channel), b"mine")
            assert server.next_message() == (topic("dev-a", channel), b"mine")
    finally:
        device_a.close()

    forged = [topic("dev-b", channel) for channel in Channel] + [
        topic("dev-a", Channel.DESIRED),
        "edgeloop/v2/elsewhere",
    ]
    for name in forged:
        assert publish_once(broker, ca, "dev-a", name, b"forged"), name
    assert publish_once(broker, ca, "dev-a", topic("dev-a", Channel.TELEMETRY), b"marker")

    assert server.next_message() == (topic("dev-a", Channel.TELEMETRY), b"marker")
    assert server.received.empty(), "a forged message got through"
    server.close()


def test_a_device_leaves_a_last_will_under_its_own_id_only(
    ca: CaDir, broker: MosquittoBroker
) -> None:
    server = connected(broker, ca, SERVER_COMMON_NAME)
    server.subscribe("edgeloop/v2/devices/#")
    try:
        for will in (topic("dev-b", Channel.STATUS), topic("dev-a", Channel.STATUS)):
            connected(broker, ca, "dev-a", will=will).lose_power()
        assert server.next_message() == (topic("dev-a", Channel.STATUS), b"offline")
        assert server.received.empty(), "dev-a's will spoke for dev-b"
    finally:
        server.close()


def test_a_device_reads_its_own_desired_state_and_no_one_elses(
    ca: CaDir, broker: MosquittoBroker
) -> None:
    server = connected(broker, ca, SERVER_COMMON_NAME)
    server.publish(topic("dev-b", Channel.DESIRED), b"for b, retained", retain=True)
    device_a = connected(broker, ca, "dev-a")
    device_b = connected(broker, ca, "dev-b")
    try:
        device_a.subscribe(topic("dev-b", Channel.DESIRED))
        device_a.subscribe("edgeloop/v2/devices/+/desired")
        device_a.subscribe("edgeloop/v2/devices/dev-b/#")
        device_b.subscribe(topic("dev-b", Channel.DESIRED))
        assert device_b.next_message() == (topic("dev-b", Channel.DESIRED), b"for b, retained")

        server.publish(topic("dev-b", Channel.DESIRED), b"for b")
        server.publish(topic("dev-b", Channel.REPORT), b"b's report")
        server.publish(topic("dev-a", Channel.DESIRED), b"for a")

        assert device_b.next_message() == (topic("dev-b", Channel.DESIRED), b"for b")
        assert device_a.next_message() == (topic("dev-a", Channel.DESIRED), b"for a")
        assert device_a.received.empty(), "dev-a saw another device's topics"
    finally:
        for peer in (device_a, device_b, server):
            peer.close()


def test_a_device_cannot_take_over_another_device_by_claiming_its_client_id(
    ca: CaDir, broker: MosquittoBroker
) -> None:
    server = connected(broker, ca, SERVER_COMMON_NAME)
    device_b = connected(broker, ca, "dev-b", client_id="edgeloop-agent-dev-b")
    device_b.subscribe(topic("dev-b", Channel.DESIRED))
    try:
        for claimed in ("dev-b", "edgeloop-agent-dev-b"):
            impostor = connected(broker, ca, "dev-a", client_id=claimed)
            impostor.close()

        server.publish(topic("dev-b", Channel.DESIRED), b"still yours")
        assert device_b.next_message() == (topic("dev-b", Channel.DESIRED), b"still yours")
        assert not device_b.closed.is_set()
    finally:
        device_b.close()
        server.close()


def test_every_way_one_device_may_act_for_another_is_refused(
    ca: CaDir, broker: MosquittoBroker
) -> None:
    """The catalogue ``edgeloop bench security`` counts, asserted one by one."""
    results = violations(broker, ca)
    assert len(results) >= 6
    assert [v.name for v in results if not v.refused] == [], results


# ---------------------------------------------------------------------------- revocation


def test_a_revoked_device_cannot_connect_once_the_broker_reloads(
    ca: CaDir, broker: MosquittoBroker
) -> None:
    server = connected(broker, ca, SERVER_COMMON_NAME)
    device_b = connected(broker, ca, "dev-b")
    device_b.subscribe(topic("dev-b", Channel.DESIRED))
    revoke(ca, "dev-a")
    revoke(ca, "dev-b")

    assert connects(broker, ca, "dev-a"), "Mosquitto reads crlfile only at start and on SIGHUP"
    broker.reload()
    wait_until(lambda: not connects(broker, ca, "dev-a"), 10, "dev-a refused after SIGHUP")
    assert not connects(broker, ca, "dev-b")

    # A reload checks new connections only: dev-b's open one goes on until it drops.
    server.publish(topic("dev-b", Channel.DESIRED), b"still delivered")
    assert device_b.next_message() == (topic("dev-b", Channel.DESIRED), b"still delivered")
    device_b.close()
    server.close()


def test_a_broker_started_after_a_revocation_refuses_the_device(tmp_path: Path, ca: CaDir) -> None:
    require_mosquitto()
    revoke(ca, "dev-a")
    revoke(ca, "dev-b")

    with MosquittoBroker(tmp_path / "restarted", tls=listener_for(ca)) as broker:
        assert not connects(broker, ca, "dev-a")
        assert not connects(broker, ca, "dev-b")
        assert connects(broker, ca, SERVER_COMMON_NAME)


# ---------------------------------------------------------------------------- the CA itself


def test_the_ca_key_stays_private_and_is_refused_once_others_can_read_it(ca: CaDir) -> None:
    for private in (ca.key, ca.issued_key("dev-a"), ca.issued_key(SERVER_COMMON_NAME)):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private

    ca.key.chmod(0o640)
    with pytest.raises(PkiError, match=r"readable by others.*chmod 600"):
        issue(ca, "dev-c", CertKind.DEVICE)
    with pytest.raises(PkiError, match="readable by others"):
        revoke(ca, "dev-a")


def test_the_ca_key_can_live_apart_from_the_ca_directory(tmp_path: Path) -> None:
    offline = tmp_path / "usb" / "fleet-ca.key"
    ca = CaDir.at(tmp_path / "pki", ca_key=offline)
    init_ca(ca)
    assert offline.exists() and not (ca.root / "ca.key").exists()

    issue(ca, "dev-a", CertKind.DEVICE)
    with pytest.raises(PkiError, match=r"CA key .* is not there"):
        issue(CaDir.at(ca.root), "dev-b", CertKind.DEVICE)


@pytest.mark.parametrize(
    ("name", "kind", "refusal"),
    [
        (SERVER_COMMON_NAME, CertKind.DEVICE, "control plane's name"),
        ("dev-a", CertKind.SERVER, "already names a device"),
        ("dev-a", CertKind.DEVICE, "active certificate.*revoke it first"),
        ("dev/#", CertKind.DEVICE, "cannot be a certificate name"),
        ("+", CertKind.DEVICE, "cannot be a certificate name"),
        ("", CertKind.DEVICE, "cannot be a certificate name"),
    ],
)
def test_a_name_names_one_identity(ca: CaDir, name: str, kind: CertKind, refusal: str) -> None:
    with pytest.raises(PkiError, match=refusal):
        issue(ca, name, kind)


def test_a_server_certificate_answers_to_the_hosts_clients_reach_it_by(ca: CaDir) -> None:
    issue(ca, "broker-2", CertKind.SERVER, hosts=["10.0.0.5", "Broker.Example.net"])
    cert = x509.load_pem_x509_certificate(ca.issued_cert("broker-2").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ip_address("10.0.0.5")]
    assert names.get_values_for_type(x509.DNSName) == ["broker.example.net"]

    with pytest.raises(PkiError, match="neither an IP address nor a DNS name"):
        issue(ca, "broker-3", CertKind.SERVER, hosts=["not a host"])


def test_a_revoked_name_can_be_issued_again_and_the_crl_keeps_the_old_serial(ca: CaDir) -> None:
    (old,) = revoke(ca, "dev-a")
    assert revoke(ca, "dev-a") == [], "revoking twice changes nothing"
    new = issue(ca, "dev-a", CertKind.DEVICE)

    crl = x509.load_pem_x509_crl(ca.crl.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(old.serial, 16)) is not None
    assert crl.get_revoked_certificate_by_serial_number(int(new.serial, 16)) is None
    assert crl.is_signature_valid(x509.load_pem_x509_certificate(ca.cert.read_bytes()).public_key())
    assert crl.next_update_utc is not None
    assert crl.next_update_utc > datetime.now(UTC) + timedelta(days=365)
    assert [c.status() for c in load_index(ca).certs if c.common_name == "dev-a"] == [
        "revoked",
        "active",
    ]
    with pytest.raises(PkiError, match="no certificate named"):
        revoke(ca, "dev-z")


def test_each_new_crl_is_dated_after_the_one_it_replaces(ca: CaDir) -> None:
    dates = []
    for device in ("dev-a", "dev-b"):
        revoke(ca, device)
        dates.append(x509.load_pem_x509_crl(ca.crl.read_bytes()).last_update_utc)
    assert dates[0] < dates[1]


# ---------------------------------------------------------------------------- the operator


def test_the_operator_makes_the_ca_with_edgeloop_ca_commands(tmp_path: Path) -> None:
    root, offline_key = tmp_path / "pki", tmp_path / "usb" / "fleet-ca.key"

    def edgeloop_ca(*args: str):
        where = ("--dir", str(root), "--ca-key", str(offline_key))
        return run_command("edgeloop.cli.main", "ca", *args, *where)

    assert edgeloop_ca("init").returncode == 0
    assert offline_key.exists() and not (root / "ca.key").exists()
    assert edgeloop_ca("issue", SERVER_COMMON_NAME, "--kind", "server").returncode == 0
    issued = edgeloop_ca("issue", "pi-0042")
    assert issued.returncode == 0, issued.stderr
    refused = edgeloop_ca("issue", "pi-0042")
    assert refused.returncode == 2
    assert refused.stderr.startswith("edgeloop: 'pi-0042' has an active certificate")

    revoked = edgeloop_ca("revoke", "pi-0042")
    assert revoked.returncode == 0, revoked.stderr
    assert "systemctl reload mosquitto" in revoked.stdout
    listing = edgeloop_ca("ls", "--json")
    rows = {row["common_name"]: row for row in json.loads(listing.stdout)}
    assert rows[SERVER_COMMON_NAME]["revoked_at"] is None
    assert rows["pi-0042"]["revoked_at"] is not None


# ---------------------------------------------------------------------------- the shipped files


def directives(text: str) -> dict[str, str]:
    lines = (line.strip() for line in text.splitlines())
    pairs = (line.split(None, 1) for line in lines if line and not line.startswith("#"))
    return {pair[0]: pair[1] if len(pair) > 1 else "" for pair in pairs}


SECURITY = (
    "tls_version",
    "require_certificate",
    "use_identity_as_username",
    "use_username_as_clientid",
    "allow_anonymous",
)


def test_the_shipped_config_secures_the_broker_as_the_tests_run_it() -> None:
    shipped = directives(SHIPPED_CONF.read_text())
    tested = directives(MOSQUITTO_TLS_CONF)
    assert {key: shipped.get(key) for key in SECURITY} == {key: tested[key] for key in SECURITY}
    installed = CaDir.at(Path(DEFAULT_CA_DIR))
    assert {key: Path(shipped[key]) for key in ("cafile", "certfile", "keyfile", "crlfile")} == {
        "cafile": installed.cert,
        "certfile": installed.issued_cert(SERVER_COMMON_NAME),
        "keyfile": installed.issued_key(SERVER_COMMON_NAME),
        "crlfile": installed.crl,
    }, "the broker reads the CA directory that `edgeloop ca` writes by default"
    listeners = re.findall(r"^listener .*$", SHIPPED_CONF.read_text(), re.M)
    assert listeners == ["listener 8883"], "one listener, TLS, nothing in the clear"
