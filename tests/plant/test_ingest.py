"""edge-ingest against real servers: a Mosquitto broker, a PostgreSQL server, and the edge-ingest process."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.plant.ingest import ResultDatabase
from edge.plant.record import ResultRecord, ResultScore, new_result_id
from tests.servers import Mosquitto, Postgres, free_port

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "plant.md"


def result(state: str, when: datetime, *, station: str = "drum-07", total_ms: float = 20.0) -> ResultRecord:
    ng = state == "NotOK"
    return ResultRecord(
        ResultId=new_result_id(), CreationTime=when, ResultState=state,  # type: ignore[arg-type]
        RecipeId="ast-tiny@abc123abc123", ConfigurationId="ast-tiny@def456def456,roi@r0a1",
        ProcessingTimes={"infer": 12.0, "total": total_ms}, site="wuxi", area="assembly", line="L3", station=station,
        sequence=1, kind="part", part_id=7, verdict="NG" if ng else "OK",
        scores={"ast-tiny": ResultScore(raw=3.0, score=0.9 if ng else 0.1, verdict="NG" if ng else "OK"),
                "dsr3d": ResultScore(raw=0.2, score=0.2, verdict="OK")},
        latencies={"infer:ast-tiny": 12.0, "total": total_ms}, camera_serial="153122078",
        evidence_uris=["s3://ev/x/color.png"] if ng else [],
    )  # fmt: skip


@pytest.fixture
def dsn(postgres: Postgres) -> Iterator[str]:
    """A fresh database on the session's server."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres.dsn.replace("dbname=postgres", f"dbname={name}")
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def count(dsn: str, expected: int, timeout_s: float = 15) -> int:
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(dsn, autocommit=True) as conn:  # no open transaction: it would block partition creation
        while True:
            n = int(conn.execute("SELECT count(*) FROM results").fetchone()[0])  # type: ignore[index]
            if n >= expected or time.monotonic() > deadline:
                return n
            time.sleep(0.1)


class IngestProcess:
    def __init__(self, dsn: str, port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.ingest", "--dsn", dsn, "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def wait_for(self, pattern: str, timeout_s: float = 15) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(re.search(pattern, line) for line in self.lines):
                return
            assert self.proc.poll() is None, "\n".join(self.lines)
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in:\n" + "\n".join(self.lines))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(15)
        self._reader.join(5)
        return code


def test_ingest_is_idempotent_partitions_by_month_and_the_documented_queries_run(
    dsn: str, mosquitto: Mosquitto
) -> None:
    ingest = IngestProcess(dsn, mosquitto.port)
    try:
        ingest.wait_for("event=ingest_subscribed")
        now = datetime.now(UTC)
        ok1, ok2, ng = result("OK", now, total_ms=10.0), result("OK", now, total_ms=30.0), result("NotOK", now)
        november = result("OK", datetime(2026, 11, 30, 23, 59, tzinfo=UTC))
        topic = "wuxi/assembly/L3/drum-07/inspection/v1/result"
        payloads = [r.model_dump_json().encode() for r in (ok1, ng, ok2, november)]
        publish(mosquitto.port, [(topic, p) for p in payloads])
        publish(mosquitto.port, [(topic, payloads[1]), (topic, payloads[0]), (topic, b"{not json")])  # redelivery
        assert count(dsn, 4) == 4, "\n".join(ingest.lines)
        time.sleep(1.0)
        assert count(dsn, 5, timeout_s=0) == 4, "a redelivered result must not be written twice"
        assert ingest.stop() == 0
        assert any("inserted=4 duplicates=2 rejected=1" in line for line in ingest.lines), ingest.lines[-5:]
    finally:
        if ingest.proc.poll() is None:
            ingest.proc.kill()

    with psycopg.connect(dsn) as conn:
        query = "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'results'::regclass"
        parts = {r[0] for r in conn.execute(query)}
        assert {"results_2026_11", f"results_{now:%Y_%m}"} <= parts and len(parts) == 3  # + next month, made ahead
        row = conn.execute("SELECT defect_types, evidence_uris, record->>'ResultId' FROM results WHERE result_id = %s",
                           (ng.ResultId,)).fetchone()  # fmt: skip
        assert row == (["ast-tiny"], ["s3://ev/x/color.png"], ng.ResultId)
        queries = re.findall(r"```sql\n(.*?)```", DOCS.read_text(), re.S)
        assert len(queries) == 4
        rate, defects, latency, _undecided = (conn.execute(q).fetchall() for q in queries)
        assert [(r[2], r[4], r[5]) for r in rate] == [("drum-07", 3, 1)]  # the November part is not in the window
        assert float(rate[0][6]) == pytest.approx(1 / 3, abs=1e-4)
        assert defects == [("L3", "ast-tiny", 1)]
        assert latency[0][0] == "drum-07" and latency[0][1] == pytest.approx(20.0) and latency[0][4] == 30.0


def test_a_result_is_written_once_however_often_it_arrives(dsn: str) -> None:
    db = ResultDatabase(dsn)
    try:
        r = result("NotOK", datetime.now(UTC))
        assert db.insert(r) is True
        assert db.insert(r) is False and db.insert(r) is False
        db2 = ResultDatabase(dsn)  # a second ingester of the group (schema and partition already there)
        assert db2.insert(r) is False
        db2.close()
    finally:
        db.close()
    assert count(dsn, 1, timeout_s=0) == 1


def test_unreachable_database_is_one_line_and_exit_2() -> None:
    dead = f"host=127.0.0.1 port={free_port()} user=edge dbname=quality connect_timeout=2"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.ingest", "--dsn", dead, "--port", str(free_port())],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "cannot connect to PostgreSQL" in err[0] and "check --dsn" in err[0], err
