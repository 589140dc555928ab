"""The daemon with the plant on, end to end: a real daemon process, Mosquitto and SeaweedFS S3."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from edge.plant.record import ResultRecord
from tests.daemon.test_daemon import daemon
from tests.plant.test_outbox import RESULTS, Listener
from tests.servers import Mosquitto, SeaweedS3


def test_daemon_sends_every_verdict_with_its_evidence(
    make_config: Callable[..., Path], mosquitto: Mosquitto, seaweed: SeaweedS3
) -> None:
    seaweed.make_bucket("daemon-evidence")
    listener = Listener(mosquitto.port, RESULTS)
    plant = {
        "enabled": True, "site": "wuxi", "area": "assembly", "line": "L3", "station": "drum-07",
        "s3": {"endpoint_url": seaweed.endpoint, "bucket": "daemon-evidence", "access_key_id": "k",
               "secret_access_key": "s"},
    }  # fmt: skip
    config = make_config(mqtt={"enabled": True, "host": "127.0.0.1", "port": mosquitto.port}, plant=plant)
    try:
        with daemon(config) as d:
            assert d.finish() == 0, "\n".join(d.lines[-30:])
        conn = sqlite3.connect(config.parent / "data" / "results.db")
        rows = conn.execute(
            "SELECT result_id, verdict, published_at, evidence_dir FROM verdicts ORDER BY id"
        ).fetchall()
        conn.close()
        assert rows and all(r[2] > 0 for r in rows), rows  # every verdict left the outbox before the daemon exited
        got = [ResultRecord.model_validate_json(m.payload) for m in listener.take(len(rows) + 1, timeout_s=10)]
        assert [g.ResultId for g in got] == [r[0] for r in rows]  # each once, in order
        assert {g.ResultState for g in got} <= {"OK", "NotOK"} and "NotOK" in {g.ResultState for g in got}
        client = seaweed.client()
        for result, row in zip(got, rows, strict=True):
            assert bool(result.evidence_uris) == bool(row[3])  # NG verdicts keep evidence (sample_ok_every: 0)
            for uri in result.evidence_uris:
                key = uri.removeprefix("s3://daemon-evidence/")
                assert key.startswith(f"wuxi/L3/drum-07/{result.CreationTime:%Y/%m/%d}/{result.ResultId}/")
                assert client.head_object(Bucket="daemon-evidence", Key=key)["ContentLength"] > 0
            assert result.camera_serial and result.RecipeId.startswith("ast-tiny@")
    finally:
        listener.close()
