"""MQTT verdict sink: one JSON message per verdict, published from paho's own thread so the caller never waits.

A broker that is down or slow never holds up a verdict: QoS 1/2 messages wait in paho's bounded queue and go
out after the reconnect (possibly twice — consumers deduplicate on ``sequence`` + ``host_ts_ns``); when that
queue is full, or for QoS 0 while disconnected, the message is dropped and counted in ``dropped``. A retained
``status`` topic reads ``online``/``offline`` (the broker publishes ``offline`` as our last will).

TLS (``tls:``): the broker's certificate must chain to ``ca_file`` and name ``host`` (hostname check always on, TLS
1.2 or newer); ``cert_file``/``key_file`` add a client certificate. A handshake that fails (wrong CA, wrong host
name, expired certificate) is logged as ``event=mqtt_tls_refused`` with the reason, once per distinct reason, and
kept in :attr:`MqttPublisher.tls_error`; paho keeps retrying, so a fixed broker certificate needs no restart.

The plant outbox (edge/plant/outbox.py) uses the same publisher over MQTT v5: :meth:`MqttPublisher.send` hands one
message to paho and returns its delivery handle (the outbox marks a result sent only once the broker acknowledged
it), :meth:`MqttPublisher.follow` subscribes a callback to a topic again after every reconnect (the rollout's
retained ``config/desired``), and the status topic is the station's ``…/status``.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from pydantic import Field, SecretStr, model_validator

from edge.core.config import EdgeModel
from edge.core.errors import EdgeError
from edge.daemon.record import VerdictRecord

log = logging.getLogger(__name__)

PAYLOAD_SCHEMA_VERSION = 1


class MqttError(EdgeError):
    """The MQTT sink cannot be set up (a TLS file is missing or unusable)."""


class MqttTlsConfig(EdgeModel):
    """TLS to the broker. Its certificate must chain to ``ca_file`` and name ``host`` (no option turns that off)."""

    type: Literal["mqtt_tls"] = Field("mqtt_tls", description="Section discriminator.")
    ca_file: Path = Field(description="PEM CA certificate(s) the broker's certificate must chain to.")
    cert_file: Path | None = Field(None, description="Client certificate (PEM), for a broker that requires one.")
    key_file: Path | None = Field(None, description="Private key of cert_file (PEM, unencrypted; keep it 0640).")

    @model_validator(mode="after")
    def _pair(self) -> MqttTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both for a client certificate, or neither")
        return self


def tls_context(config: MqttTlsConfig) -> ssl.SSLContext:
    """The client TLS context of ``config``: system defaults (TLS ≥ 1.2, hostname check), our CA, our certificate."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(config.ca_file))
    except (OSError, ssl.SSLError) as err:
        raise MqttError(
            f"mqtt.tls.ca_file: cannot use {config.ca_file}: {getattr(err, 'strerror', None) or err}",
            "point it at a readable PEM file holding the CA that signed the broker's certificate",
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.cert_file is not None and config.key_file is not None:
        try:
            context.load_cert_chain(str(config.cert_file), str(config.key_file))
        except (OSError, ssl.SSLError) as err:
            raise MqttError(
                f"mqtt.tls.cert_file/key_file: cannot use {config.cert_file} with {config.key_file}: "
                f"{getattr(err, 'strerror', None) or err}",
                "point them at a readable PEM certificate and its unencrypted private key",
            ) from None
    return context


class MqttConfig(EdgeModel):
    """Where and how verdicts are published."""

    type: Literal["mqtt"] = Field("mqtt", description="Sink discriminator.")
    enabled: bool = Field(False, description="Publish verdicts over MQTT.")
    host: str = Field("localhost", description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker TCP port.")
    topic: str = Field(
        "drumsight/{serial}/verdict",
        description="Verdict topic; '{serial}' becomes the camera serial. No wildcards.",
        pattern=r"^[^#+]+$",
    )
    status_topic: str = Field(
        "drumsight/{serial}/status",
        description="Retained online/offline topic ('{serial}' as above).",
        pattern=r"^[^#+]+$",
    )
    qos: Literal[0, 1, 2] = Field(1, description="MQTT QoS of verdict messages (1: at least once).")
    client_id: str = Field("", description="MQTT client id; empty lets paho pick a random one.")
    keepalive: int = Field(30, ge=5, le=3600, description="Seconds between keep-alive pings.")
    tls: MqttTlsConfig | None = Field(None, description="TLS to the broker (absent: plain TCP; TLS brokers use 8883).")
    username: str | None = Field(None, description="Broker user name, if the broker needs one.")
    password: SecretStr | None = Field(None, description="Broker password (never logged).")
    max_queued: int = Field(
        1000, ge=1, description="Messages kept while the broker is unreachable; older ones stay, new ones drop."
    )
    reconnect_max_s: int = Field(30, ge=1, description="Longest wait between reconnect attempts.")


class MqttPublisher:
    """Publishes :class:`VerdictRecord` JSON; connects and reconnects in the background."""

    def __init__(
        self, config: MqttConfig, *, serial: str = "unknown", status_topic: str | None = None, v5: bool = False
    ) -> None:
        """``status_topic`` replaces the configured one (the plant's ``…/status``); ``v5`` speaks MQTT 5."""
        self.config = config
        self.topic = config.topic.format(serial=serial)
        self.status_topic = status_topic or config.status_topic.format(serial=serial)
        self.connections = 0  # accepted connections so far: a message sent on an earlier one may be resent by paho
        self._follows: dict[str, Any] = {}
        self.published = 0
        self.queued_offline = 0
        self.dropped = 0
        self.tls_error = ""  # the latest TLS handshake failure; "" after a handshake succeeded
        self._connected = threading.Event()
        protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=config.client_id, protocol=protocol)
        if config.tls is not None:
            context = tls_context(config.tls)
            context.sslsocket_class = self._watched_socket_class()  # documented hook: the SSLSocket class to use
            client.tls_set_context(context)
        client.max_queued_messages_set(config.max_queued)
        client.reconnect_delay_set(1, config.reconnect_max_s)
        if config.username is not None:
            password = config.password.get_secret_value() if config.password is not None else None
            client.username_pw_set(config.username, password)
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        client.connect_async(config.host, config.port, config.keepalive)
        client.loop_start()

    def _watched_socket_class(self) -> type[ssl.SSLSocket]:
        """An SSLSocket whose handshake reports its failure to this publisher (paho retries and swallows it)."""
        publisher = self

        class WatchedSSLSocket(ssl.SSLSocket):
            def do_handshake(self, block: bool = False) -> None:
                try:
                    super().do_handshake(block)
                except ssl.SSLError as err:
                    publisher.on_tls_error(err)
                    raise
                publisher.tls_error = ""

        return WatchedSSLSocket

    def on_tls_error(self, err: ssl.SSLError) -> None:
        """Log a failed TLS handshake once per distinct reason (paho retries every few seconds)."""
        if isinstance(err, ssl.SSLCertVerificationError):  # wrong CA, wrong host name, expired, …
            message = f"certificate verify failed: {err.verify_message}"
        else:
            message = f"TLS handshake failed: {err.reason or err}"
        if message == self.tls_error:
            return
        self.tls_error = message
        ca = self.config.tls.ca_file if self.config.tls is not None else None
        log.error(
            "event=mqtt_tls_refused broker=%s:%d error=%r remedy=%r", self.config.host, self.config.port, message,
            f"the broker's certificate must be signed by the CA in {ca} and name {self.config.host!r} "
            "(connect by the name in its certificate, or re-issue it)",
        )  # fmt: skip

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until the broker accepted us (start-up checks and tests; the verdict path never calls it)."""
        return self._connected.wait(timeout_s)

    def publish(self, record: VerdictRecord) -> None:
        """Hand one verdict to paho's queue; never blocks on the network, never raises for a broker problem."""
        payload = json.dumps({"schema_version": PAYLOAD_SCHEMA_VERSION, **record.to_json_dict()})
        rc = self._client.publish(self.topic, payload, qos=self.config.qos).rc
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.published += 1
        elif rc == MQTTErrorCode.MQTT_ERR_NO_CONN and self.config.qos > 0:
            self.queued_offline += 1
        else:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("MQTT message dropped (%s); %d dropped so far", mqtt.error_string(rc), self.dropped)

    def send(self, topic: str, payload: str, *, qos: int = 1, retain: bool = False) -> mqtt.MQTTMessageInfo:
        """Hand one message to paho (never blocks on the network); the handle says when the broker has it."""
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def follow(self, topic: str, callback: Any) -> None:
        """Call ``callback(payload: bytes)`` for every message on ``topic`` (QoS 1), resubscribing on reconnect."""
        self._follows[topic] = callback
        if self.connected:
            self._client.subscribe(topic, qos=1)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        callback = self._follows.get(msg.topic)
        if callback is None:
            return
        try:
            callback(msg.payload)
        except Exception:  # a failing handler must not kill paho's network thread
            log.exception("event=mqtt_handler_failed topic=%s", msg.topic)

    def close(self) -> None:
        """Say ``offline`` (retained), disconnect cleanly and stop paho's thread."""
        if self.connected:
            self._client.publish(self.status_topic, "offline", qos=1, retain=True)
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT broker %s:%d refused the connection: %s", self.config.host, self.config.port, reason)
            return
        client.publish(self.status_topic, "online", qos=1, retain=True)
        for topic in self._follows:
            client.subscribe(topic, qos=1)
        self.connections += 1
        self._connected.set()
        log.info("MQTT connected to %s:%d", self.config.host, self.config.port)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if self._connected.is_set():
            log.warning("MQTT disconnected from %s:%d: %s", self.config.host, self.config.port, reason)
        self._connected.clear()
