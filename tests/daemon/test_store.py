"""The results database: schema, round trip, durability settings, bad files and two writers on one file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.daemon.record import ModelScore, VerdictRecord
from edge.daemon.store import SCHEMA_VERSION, ResultStore, StoreError, read_summary


def make_record(seq: int, verdict: str = "OK", total_ms: float = 10.0, *, late: bool = False) -> VerdictRecord:
    return VerdictRecord(
        sequence=seq,
        frame_number=100 + seq,
        device_ts_ns=1_000_000 * seq,
        host_ts_ns=1_700_000_000_000_000_000 + 1_000_000 * seq,
        kind="frame",
        part_id=None,
        verdict=verdict,  # type: ignore[arg-type]
        late=late,
        roi_fill=0.5,
        scores=(
            ModelScore("ast/small/fg", raw=1.5, score=0.3, verdict="OK", infer_ms=4.0),
            ModelScore("sg/small/fg", raw=0.2, score=0.9 if verdict == "NG" else 0.1, verdict="OK", infer_ms=5.0),
        ),
        stage_ms={"ring_wait": 0.1, "crop": 1.0, "infer:ast/small/fg": 4.0, "total": total_ms},
        roi_version="roi123",
        model_versions={"ast/small/fg": "aaaaaaaaaaaa"},
        scoring_versions={"ast/small/fg": "bbbbbbbbbbbb"},
        gap_before=seq % 2,
        error="boom" if verdict == "ERROR" else "",
    )


def test_round_trip_counts_latency_and_schema(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "results.db"
    store = ResultStore(db)
    store.open()
    run = store.start_run({"source": "bag:x.bag", "config": {"fps": 30}, "versions": {"edge": "0.1.0"}})
    verdicts = ["OK"] * 97 + ["NG", "NG", "ERROR"]
    for i, v in enumerate(verdicts):
        store.write(make_record(i, v, total_ms=float(i + 1), late=i < 3))
    store.update_counters(run, {"seen": 150, "scored": 100, "gated": 40, "dropped": 10})
    store.finish_run(run, {"seen": 160, "scored": 100, "gated": 45, "dropped": 15})
    store.close()
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0

    s = read_summary(db)
    assert s["run_id"] == run and s["source"] == "bag:x.bag"
    assert s["verdicts"] == {"OK": 97, "NG": 2, "ERROR": 1} and s["records"] == 100
    assert s["late"] == 3 and s["gap_frames"] == 50
    assert (s["gated"], s["dropped"]) == (45, 15) and s["counters"]["seen"] == 160
    assert s["finished_ns"] >= s["started_ns"] > 0
    assert s["latency_ms"]["p50"] == pytest.approx(50.5)
    assert s["latency_ms"]["p99"] == pytest.approx(99.01)

    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = conn.execute(
        "SELECT s.model, s.raw, s.score FROM scores s JOIN verdicts v ON v.id = s.verdict_id "
        "WHERE v.sequence = 97 ORDER BY s.model"
    ).fetchall()
    assert rows == [("ast/small/fg", 1.5, 0.3), ("sg/small/fg", 0.2, 0.9)]
    plan = conn.execute("EXPLAIN QUERY PLAN SELECT * FROM verdicts WHERE verdict = 'NG'").fetchall()
    assert any("verdicts_by_verdict" in str(r) for r in plan)
    conn.close()


def test_runs_are_separate_and_reopen_keeps_data(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    for n in (3, 5):
        store = ResultStore(db)
        store.open()
        store.start_run({"source": f"run{n}"})
        for i in range(n):
            store.write(make_record(i))
        store.close()
    assert read_summary(db)["records"] == 5
    assert read_summary(db, run_id=1)["records"] == 3
    with pytest.raises(StoreError, match="no run 7"):
        read_summary(db, run_id=7)


def test_synchronous_full_is_set(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "s.db")
    store.open()
    assert store._conn is not None
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # 2 = FULL
    store.close()
    with pytest.raises(StoreError, match="FULL"):
        ResultStore(tmp_path / "s.db", synchronous="OFF")


def test_write_before_start_run_or_open_is_an_error(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "w.db")
    with pytest.raises(StoreError, match="not open"):
        store.update_counters(1, {})
    store.open()
    with pytest.raises(StoreError, match="start_run"):
        store.write(make_record(0))
    store.close()


def test_corrupt_file_names_file_and_remedy(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match=r"bad\.db.*corrupt.*move the file aside"):
        ResultStore(bad).open()
    with pytest.raises(StoreError, match="corrupt"):
        read_summary(bad)


def test_newer_schema_and_foreign_database_are_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1}.*upgrade the daemon"):
        ResultStore(newer).open()
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(StoreError, match="not a drumsight results database"):
        ResultStore(foreign).open()
    with pytest.raises(StoreError, match="no results database"):
        read_summary(tmp_path / "missing.db")


_WRITER = """
import sys
from pathlib import Path
from tests.daemon.test_store import make_record
from edge.daemon.store import ResultStore
store = ResultStore(Path(sys.argv[1]))
store.open()
store.start_run({"source": sys.argv[2]})
for i in range(200):
    store.write(make_record(i))
store.close()
"""


def test_two_daemons_writing_one_file_do_not_corrupt_it(tmp_path: Path) -> None:
    """Two real processes write concurrently; every row lands and the file passes integrity_check."""
    db = tmp_path / "shared.db"
    first = ResultStore(db)
    first.open()  # create the schema once so both writers race only on inserts
    first.close()
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(db), f"d{k}"], env=env) for k in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    per_run = conn.execute("SELECT run_id, COUNT(*) FROM verdicts GROUP BY run_id ORDER BY run_id").fetchall()
    assert [n for _, n in per_run] == [200, 200]
    assert conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == 800
    conn.close()
    assert np.isfinite(read_summary(db)["latency_ms"]["p50"])


def test_schema_1_database_is_migrated_and_its_verdicts_stay_out_of_the_outbox(tmp_path: Path) -> None:
    db = tmp_path / "results.db"
    store = ResultStore(db)
    store.open()
    store.start_run({"source": "old"})
    store.write(make_record(0, "NG"))
    store.close()
    conn = sqlite3.connect(db)  # make it the schema-1 file an older daemon wrote
    conn.executescript(
        "DROP INDEX verdicts_by_result_id; DROP INDEX verdicts_outbox; ALTER TABLE verdicts DROP COLUMN result_id; "
        "ALTER TABLE verdicts DROP COLUMN published_at; ALTER TABLE verdicts DROP COLUMN evidence_dir; "
        "ALTER TABLE runs DROP COLUMN camera_serial; PRAGMA user_version = 1;"
    )
    conn.close()
    assert read_summary(db)["verdicts"]["NG"] == 1  # a schema-1 file reads as before

    store = ResultStore(db, outbox=True)
    store.open()
    store.start_run({"source": "new", "camera_serial": "153122078"})
    assert store.outbox_state() == (0, None, None)  # the old verdict is not for the plant
    new = make_record(1, "OK")
    store.write(VerdictRecord(**{**{f: getattr(new, f) for f in new.__slots__}, "result_id": "0190-x"}))
    assert store.outbox_state()[0] == 1 and store.outbox_state()[2] == "0190-x"
    [row] = store.outbox_batch(10)
    assert row.record == VerdictRecord(**{**{f: getattr(new, f) for f in new.__slots__}, "result_id": "0190-x"})
    assert row.camera_serial == "153122078" and row.evidence_dir is None
    store.mark_published([row.row_id], 123)
    assert store.outbox_state()[0] == 0
    store.close()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [r[0] for r in conn.execute("SELECT published_at FROM verdicts ORDER BY id")] == [0, 123]
    conn.close()
