"""MQTT sink against a real mosquitto broker: payload, retained status, and a broker that comes up late."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from edge.daemon.mqtt import PAYLOAD_SCHEMA_VERSION, MqttConfig, MqttPublisher
from edge.daemon.record import ModelScore, VerdictRecord
from tests.servers import MOSQUITTO, Mosquitto, free_port

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto broker not installed (apt-get install mosquitto)")


def start_broker(tmp_path: Path, port: int) -> subprocess.Popen[bytes]:
    broker = Mosquitto(tmp_path, port).start()
    assert broker.proc is not None
    return broker.proc


Subscriber = tuple[mqtt.Client, "queue.Queue[mqtt.MQTTMessage]"]


@pytest.fixture
def subscriber() -> Iterator[Subscriber]:
    got: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, msg: got.put(msg)
    yield client, got
    client.disconnect()
    client.loop_stop()


def subscribe(client: mqtt.Client, port: int, topic: str) -> None:
    """Connect and block until the broker acknowledged the subscription (SUBACK)."""
    acked = threading.Event()
    client.on_subscribe = lambda *_args: acked.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe(topic, qos=1)
    assert acked.wait(5), "broker did not acknowledge the subscription"


def record(seq: int) -> VerdictRecord:
    return VerdictRecord(
        sequence=seq,
        frame_number=seq + 10,
        device_ts_ns=seq,
        host_ts_ns=1_767_225_600_000_000_000 + seq,
        kind="frame",
        part_id=None,
        verdict="NG",
        late=False,
        roi_fill=0.6,
        scores=(ModelScore("ast/s/fg", raw=3.0, score=0.8, verdict="NG", infer_ms=2.5),),
        stage_ms={"total": 9.5},
        roi_version="r1",
        model_versions={"ast/s/fg": "abc"},
        scoring_versions={},
    )


def test_payload_and_status_reach_a_real_broker(tmp_path: Path, subscriber: Subscriber) -> None:
    port = free_port()
    broker = start_broker(tmp_path, port)
    try:
        sub, got = subscriber
        subscribe(sub, port, "drumsight/#")
        pub = MqttPublisher(MqttConfig(enabled=True, host="127.0.0.1", port=port), serial="123456")
        assert pub.wait_connected(5) and pub.connected
        pub.publish(record(1))
        messages: dict[str, mqtt.MQTTMessage] = {}
        deadline = time.monotonic() + 5
        while len(messages) < 2 and time.monotonic() < deadline:
            msg = got.get(timeout=5)
            messages[msg.topic] = msg
        assert messages["drumsight/123456/status"].payload == b"online"
        payload = json.loads(messages["drumsight/123456/verdict"].payload)
        assert payload == {"schema_version": PAYLOAD_SCHEMA_VERSION, **record(1).to_json_dict()}
        assert pub.published == 1 and pub.dropped == 0
        pub.close()
        assert got.get(timeout=5).payload == b"offline"
        assert not pub.connected
    finally:
        broker.terminate()
        broker.wait(5)


def test_broker_down_never_blocks_and_queued_verdicts_arrive_later(tmp_path: Path, subscriber: Subscriber) -> None:
    port = free_port()
    pub = MqttPublisher(MqttConfig(enabled=True, host="127.0.0.1", port=port, max_queued=3, qos=1))
    broker: subprocess.Popen[bytes] | None = None
    try:
        t0 = time.perf_counter_ns()
        for i in range(5):
            pub.publish(record(i))
        per_call_ms = (time.perf_counter_ns() - t0) / 5 / 1e6
        assert per_call_ms < 5.0, per_call_ms
        assert not pub.connected
        assert (pub.queued_offline, pub.dropped) == (3, 2)  # the bounded queue keeps the first three

        broker = start_broker(tmp_path, port)
        sub, got = subscriber
        subscribe(sub, port, "drumsight/+/verdict")
        assert pub.wait_connected(10)
        seqs = sorted(json.loads(got.get(timeout=5).payload)["sequence"] for _ in range(3))
        assert seqs == [0, 1, 2]
    finally:
        pub.close()
        if broker is not None:
            broker.terminate()
            broker.wait(5)


def test_config_rejects_wildcards_and_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        MqttConfig(topic="drumsight/#")
    with pytest.raises(ValidationError):
        MqttConfig(hots="x")  # type: ignore[call-arg]
    cfg = MqttConfig(username="u", password="secret")
    assert "secret" not in repr(cfg) and cfg.enabled is False and cfg.port == 1883
