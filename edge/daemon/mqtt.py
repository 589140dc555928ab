"""MQTT verdict sink: one JSON message per verdict, published from paho's own thread so the caller never waits.

A broker that is down or slow never holds up a verdict: QoS 1/2 messages wait in paho's bounded queue and go
out after the reconnect (possibly twice — consumers deduplicate on ``sequence`` + ``host_ts_ns``); when that
queue is full, or for QoS 0 while disconnected, the message is dropped and counted in ``dropped``. A retained
``status`` topic reads ``online``/``offline`` (the broker publishes ``offline`` as our last will).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from pydantic import Field, SecretStr

from edge.core.config import EdgeModel
from edge.daemon.record import VerdictRecord

log = logging.getLogger(__name__)

PAYLOAD_SCHEMA_VERSION = 1


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
    username: str | None = Field(None, description="Broker user name, if the broker needs one.")
    password: SecretStr | None = Field(None, description="Broker password (never logged).")
    max_queued: int = Field(
        1000, ge=1, description="Messages kept while the broker is unreachable; older ones stay, new ones drop."
    )
    reconnect_max_s: int = Field(30, ge=1, description="Longest wait between reconnect attempts.")


class MqttPublisher:
    """Publishes :class:`VerdictRecord` JSON; connects and reconnects in the background."""

    def __init__(self, config: MqttConfig, *, serial: str = "unknown") -> None:
        self.config = config
        self.topic = config.topic.format(serial=serial)
        self.status_topic = config.status_topic.format(serial=serial)
        self.published = 0
        self.queued_offline = 0
        self.dropped = 0
        self._connected = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=config.client_id)
        client.max_queued_messages_set(config.max_queued)
        client.reconnect_delay_set(1, config.reconnect_max_s)
        if config.username is not None:
            password = config.password.get_secret_value() if config.password is not None else None
            client.username_pw_set(config.username, password)
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self._client = client
        client.connect_async(config.host, config.port, config.keepalive)
        client.loop_start()

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
        self._connected.set()
        log.info("MQTT connected to %s:%d", self.config.host, self.config.port)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if self._connected.is_set():
            log.warning("MQTT disconnected from %s:%d: %s", self.config.host, self.config.port, reason)
        self._connected.clear()
