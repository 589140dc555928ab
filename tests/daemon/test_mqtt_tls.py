"""MQTT over TLS against a real mosquitto with a TLS listener: a CA, server and client certificates made here.

The broker requires a client certificate and a user name/password; the publisher verifies the broker's certificate
against the configured CA and its host name. A wrong CA or a host name the certificate does not carry is refused,
with the reason logged once (``event=mqtt_tls_refused``).
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from edge.daemon.main import main as daemon_main
from edge.daemon.mqtt import MqttConfig, MqttError, MqttPublisher, MqttTlsConfig, tls_context
from tests.daemon.conftest import ConfigFactory
from tests.daemon.test_mqtt import MOSQUITTO, free_port, record

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto broker not installed (apt-get install mosquitto)")

USER, PASSWORD = "station-7", "s3cret-pw"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)
    path.chmod(0o600)


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    dns: tuple[str, ...] = (),
    client: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, signer = (issuer[0].subject, issuer[1]) if issuer else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if issuer is None:  # a CA
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), critical=False
        )
        if dns:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns]), critical=False)
    return builder.sign(signer, hashes.SHA256())


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path  # a CA that signed nothing the broker uses
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(d: Path) -> Pki:
    """A CA, a server certificate for DNS name ``localhost`` only (not 127.0.0.1), a client certificate."""
    d.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("drumsight test CA", ca_key, None)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _cert("some other CA", other_key, None)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert("localhost", server_key, (ca, ca_key), dns=("localhost",))
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _cert(USER, client_key, (ca, ca_key), client=True)
    paths = Pki(
        d / "ca.pem", d / "other-ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key"
    )
    paths.ca.write_bytes(ca.public_bytes(pem))
    paths.other_ca.write_bytes(other.public_bytes(pem))
    paths.server_cert.write_bytes(server.public_bytes(pem))
    _write_key(server_key, paths.server_key)
    paths.client_cert.write_bytes(client.public_bytes(pem))
    _write_key(client_key, paths.client_key)
    return paths


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Pki, int]]:
    """mosquitto with one TLS listener: client certificate required, user name/password required."""
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), USER, PASSWORD], check=True, capture_output=True)
    conf = tmp_path / "mosquitto-tls.conf"
    conf.write_text(
        # run as the test's own user: as root, mosquitto would switch to user "mosquitto", who cannot read tmp_path
        f"user {getpass.getuser()}\nper_listener_settings false\nallow_anonymous false\npassword_file {passwords}\n"
        "persistence false\n"
        f"listener {port} 127.0.0.1\ncafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
        "require_certificate true\ntls_version tlsv1.2\n"
    )
    log = tmp_path / "mosquitto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(MOSQUITTO), "-c", str(conf), "-v"], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"mosquitto did not listen with TLS on {port}: {log.read_text()[-2000:]}")
                time.sleep(0.02)
        yield pki, port
    finally:
        proc.terminate()
        proc.wait(5)


def _subscriber(pki: Pki, port: int, topic: str) -> tuple[mqtt.Client, queue.Queue[mqtt.MQTTMessage]]:
    got: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.tls_set(ca_certs=str(pki.ca), certfile=str(pki.client_cert), keyfile=str(pki.client_key))
    client.username_pw_set(USER, PASSWORD)
    client.on_message = lambda _c, _u, msg: got.put(msg)
    acked = threading.Event()
    client.on_subscribe = lambda *_args: acked.set()
    client.connect("localhost", port)
    client.loop_start()
    client.subscribe(topic, qos=1)
    assert acked.wait(5), "the TLS broker did not acknowledge the subscription"
    return client, got


def _config(pki: Pki, port: int, *, host: str = "localhost", ca: Path | None = None, **extra: object) -> MqttConfig:
    tls = MqttTlsConfig(ca_file=ca or pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    return MqttConfig.model_validate(
        {"enabled": True, "host": host, "port": port, "tls": tls, "username": USER, "password": PASSWORD, **extra}
    )


def test_verdicts_reach_a_tls_broker_with_client_certificate_and_password(tls_broker: tuple[Pki, int]) -> None:
    pki, port = tls_broker
    sub, got = _subscriber(pki, port, "drumsight/+/verdict")
    pub = MqttPublisher(_config(pki, port), serial="42")
    try:
        assert pub.wait_connected(10), pub.tls_error
        pub.publish(record(7))
        payload = json.loads(got.get(timeout=5).payload)
        assert payload["sequence"] == 7 and payload["verdict"] == "NG"
        assert pub.published == 1 and pub.tls_error == ""
    finally:
        pub.close()
        sub.disconnect()
        sub.loop_stop()
    wrong_password = MqttPublisher(_config(pki, port, password="nope"))
    try:
        assert not wrong_password.wait_connected(2), "the broker refuses a wrong password"
        assert wrong_password.tls_error == "", "TLS itself was fine"
    finally:
        wrong_password.close()


@pytest.mark.parametrize(
    ("host", "use_other_ca", "reason"),
    [
        # mosquitto sends its CA along: OpenSSL then says "self-signed certificate in certificate chain"
        ("localhost", True, "certificate verify failed: self-signed certificate in certificate chain"),
        ("127.0.0.1", False, "certificate verify failed: IP address mismatch"),  # the certificate names localhost
    ],
    ids=["wrong-ca", "wrong-host-name"],
)
def test_a_wrong_ca_or_host_name_is_refused_with_a_clear_error(
    tls_broker: tuple[Pki, int], caplog: pytest.LogCaptureFixture, host: str, use_other_ca: bool, reason: str
) -> None:
    pki, port = tls_broker
    caplog.set_level(logging.ERROR, logger="edge.daemon.mqtt")
    pub = MqttPublisher(_config(pki, port, host=host, ca=pki.other_ca if use_other_ca else None))
    try:
        assert not pub.wait_connected(3), "a broker that fails verification must never be used"
        pub.publish(record(1))
        assert pub.published == 0
        assert reason in pub.tls_error
    finally:
        pub.close()
    refusals = [r.getMessage() for r in caplog.records if "event=mqtt_tls_refused" in r.getMessage()]
    assert len(refusals) == 1, "logged once per reason, not at every retry"
    assert (
        reason in refusals[0] and f"broker={host}:{port}" in refusals[0] and "must be signed by the CA" in refusals[0]
    )


def test_tls_settings_are_checked_before_the_daemon_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_config: ConfigFactory
) -> None:
    with pytest.raises(ValidationError, match="cert_file and key_file go together"):
        MqttTlsConfig(ca_file=Path("ca.pem"), cert_file=Path("client.pem"))
    with pytest.raises(MqttError, match=r"mqtt\.tls\.ca_file: cannot use .*nowhere\.pem"):
        tls_context(MqttTlsConfig(ca_file=tmp_path / "nowhere.pem"))
    pki = make_pki(tmp_path / "pki")
    with pytest.raises(MqttError, match="cert_file/key_file: cannot use"):
        tls_context(MqttTlsConfig(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.server_key))  # not its key
    # every other file is real (the preflight reads them all): only the TLS setting is wrong
    config = make_config(
        mqtt={"enabled": True, "host": "localhost", "port": 8883, "tls": {"ca_file": "pki/missing-ca.pem"}}
    )
    assert daemon_main(["--config", str(config), "--check-config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"mqtt.tls.ca_file: cannot use {tmp_path}/pki/missing-ca.pem" in err
    config.write_text(config.read_text().replace("missing-ca.pem", "ca.pem"))
    assert daemon_main(["--config", str(config), "--check-config"]) == 0
