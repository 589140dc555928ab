"""The station outbox against real servers: Mosquitto (MQTT v5) and SeaweedFS (S3), with the real results.db."""

from __future__ import annotations

import json
import queue
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry

from edge.daemon.mqtt import MqttConfig, MqttPublisher
from edge.daemon.record import ModelScore, VerdictRecord
from edge.daemon.store import ResultStore
from edge.plant.config import PlantConfig
from edge.plant.outbox import Outbox
from edge.plant.record import ResultRecord, new_result_id
from edge.plant.s3 import ObjectStore, S3Config
from tests.servers import Mosquitto, SeaweedS3

PLANT = {"enabled": True, "site": "wuxi", "area": "assembly", "line": "L3", "station": "drum-07"}
RESULTS = "wuxi/assembly/L3/drum-07/inspection/v1/result"
STATUS = "wuxi/assembly/L3/drum-07/status"


def verdict(seq: int, verdict: str = "NG") -> VerdictRecord:
    return VerdictRecord(
        sequence=seq, frame_number=seq, device_ts_ns=seq, host_ts_ns=time.time_ns(), kind="frame", part_id=None,
        verdict=verdict,  # type: ignore[arg-type]
        late=False, roi_fill=0.7,
        scores=(ModelScore("ast-tiny", raw=3.0, score=0.8 if verdict == "NG" else 0.2, verdict="NG" if verdict ==
                           "NG" else "OK", infer_ms=4.0),),
        stage_ms={"crop": 1.0, "infer:ast-tiny": 4.0, "score": 0.1, "total": 6.0}, roi_version="r0a1",
        model_versions={"ast-tiny": "abc123abc123"}, scoring_versions={"ast-tiny": "def456def456"},
        result_id=new_result_id(),
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ResultStore]:
    s = ResultStore(tmp_path / "results.db", outbox=True)
    s.open()
    s.start_run({"source": "test", "camera_serial": "153122078"})
    yield s
    s.close()


class Listener:
    """An MQTT v5 subscriber that records every message on ``topic``."""

    def __init__(self, port: int, topic: str) -> None:
        self.got: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda _c, _u, msg: self.got.put(msg)
        acked = threading.Event()
        self.client.on_subscribe = lambda *_a: acked.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        assert acked.wait(5), "broker did not acknowledge the subscription"

    def take(self, n: int, timeout_s: float) -> list[mqtt.MQTTMessage]:
        out: list[mqtt.MQTTMessage] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < deadline:
            try:
                out.append(self.got.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                break
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def outbox_for(store: ResultStore, port: int, objects: ObjectStore | None = None, **plant: object) -> Outbox:
    config = PlantConfig.model_validate({**PLANT, **plant})
    publisher = MqttPublisher(
        MqttConfig(enabled=True, host="127.0.0.1", port=port, reconnect_max_s=1),
        status_topic=config.station_id().topic("status"), v5=True,
    )  # fmt: skip
    outbox = Outbox(store, publisher, config, objects, CollectorRegistry())
    outbox.start()
    return outbox


def close(outbox: Outbox) -> None:
    outbox.stop(flush_s=0.0)
    outbox.publisher.close()


def test_broker_down_for_n_results_then_back_all_arrive_once_in_order(tmp_path: Path, store: ResultStore) -> None:
    broker = Mosquitto(tmp_path)  # not started yet: the broker is down
    outbox = outbox_for(store, broker.port)
    listener = None
    try:
        written = []
        for seq in range(25):
            record = verdict(seq, "NG" if seq % 5 == 0 else "OK")
            store.write(record)
            outbox.ready(record.result_id)
            written.append(record.result_id)
        time.sleep(1.0)
        assert store.outbox_state()[0] == 25 and outbox.sent == 0  # all wait in results.db

        broker.start()
        listener = Listener(broker.port, RESULTS)
        got = listener.take(25, timeout_s=20)
        got += listener.take(1, timeout_s=1.5)  # anything more would be a duplicate
        ids = [json.loads(m.payload)["ResultId"] for m in got]
        assert ids == written  # all 25, once each, in the order they were written
        assert written == sorted(written)  # UUIDv7: time-ordered
        first = ResultRecord.model_validate_json(got[0].payload)
        assert first.ResultState == "NotOK" and first.verdict == "NG" and first.camera_serial == "153122078"
        assert first.RecipeId == "ast-tiny@abc123abc123"
        assert first.ConfigurationId == "ast-tiny@def456def456,roi@r0a1"
        assert first.ProcessingTimes == {"crop": 1.0, "infer": 4.0, "score": 0.1, "total": 6.0}
        assert first.scores["ast-tiny"].score == 0.8 and first.evidence_uris == []
        assert json.loads(got[1].payload)["ResultState"] == "OK"
        deadline = time.monotonic() + 5
        while store.outbox_state()[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.outbox_state()[0] == 0 and outbox.sent == 25
        conn = sqlite3.connect(store.path)
        assert conn.execute("SELECT COUNT(*) FROM verdicts WHERE published_at > 0").fetchone()[0] == 25
        conn.close()
    finally:
        close(outbox)
        if listener is not None:
            listener.close()
        broker.stop()


def test_status_is_retained_online_and_the_last_will_says_offline(mosquitto: Mosquitto, store: ResultStore) -> None:
    outbox = outbox_for(store, mosquitto.port)
    listener = None
    try:
        assert outbox.publisher.wait_connected(5)
        listener = Listener(mosquitto.port, STATUS)  # subscribes after the fact: the retained value is delivered
        assert [m.payload for m in listener.take(1, 5)] == [b"online"]
        sock = outbox.publisher._client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)  # the connection dies without DISCONNECT: the broker sends the will
        assert b"offline" in [m.payload for m in listener.take(2, 5)]
    finally:
        close(outbox)
        if listener is not None:
            listener.close()


def test_outbox_limit_gives_up_the_oldest_and_raises_the_alarm(tmp_path: Path, store: ResultStore) -> None:
    broker = Mosquitto(tmp_path)  # never started
    outbox = outbox_for(store, broker.port, outbox_max=5)
    try:
        for seq in range(8):
            record = verdict(seq)
            store.write(record)
            outbox.ready(record.result_id)
        deadline = time.monotonic() + 5
        while not outbox.alarm_reason and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "plant.outbox_max" in outbox.alarm_reason and outbox.expired == 3
        assert outbox.metrics.alarm._value.get() == 1 and outbox.metrics.pending._value.get() == 5
        conn = sqlite3.connect(store.path)
        states = [r[0] for r in conn.execute("SELECT published_at FROM verdicts ORDER BY id")]
        conn.close()
        assert states == [-1, -1, -1, None, None, None, None, None]  # the oldest given up, still in results.db
    finally:
        close(outbox)


def test_s3_down_results_wait_for_their_evidence(tmp_path: Path, store: ResultStore, mosquitto: Mosquitto) -> None:
    s3 = SeaweedS3(tmp_path)  # not started yet: the object store is down
    objects = ObjectStore(S3Config(endpoint_url=s3.endpoint, bucket="evidence", access_key_id="k",
                                   secret_access_key="s", timeout_s=2))  # fmt: skip
    outbox = outbox_for(store, mosquitto.port, objects)
    listener = Listener(mosquitto.port, RESULTS)
    try:
        written = []
        for seq in range(3):
            record = verdict(seq)
            store.write(record)
            folder = tmp_path / "evidence" / f"{seq:08d}_NG"
            folder.mkdir(parents=True)
            (folder / "color.png").write_bytes(b"png-%d" % seq)
            (folder / "record.json").write_text(json.dumps({"sequence": seq}))
            store.set_evidence(record.result_id, folder)
            outbox.ready(record.result_id)
            written.append(record)
        assert listener.take(1, timeout_s=3) == []  # no result goes out before its evidence
        assert store.outbox_state()[0] == 3 and outbox.metrics.upload_failures._value.get() >= 1

        s3.start()
        s3.make_bucket("evidence")
        got = listener.take(3, timeout_s=30)
        results = [ResultRecord.model_validate_json(m.payload) for m in got]
        assert [r.ResultId for r in results] == [r.result_id for r in written]
        client = s3.client()
        for seq, result in enumerate(results):
            day = result.CreationTime.strftime("%Y/%m/%d")
            prefix = f"s3://evidence/wuxi/L3/drum-07/{day}/{result.ResultId}/"
            assert result.evidence_uris == [prefix + "color.png", prefix + "record.json"]
            key = result.evidence_uris[0].removeprefix("s3://evidence/")
            assert client.get_object(Bucket="evidence", Key=key)["Body"].read() == b"png-%d" % seq
    finally:
        close(outbox)
        listener.close()
        s3.stop()
