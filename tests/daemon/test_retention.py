"""Results retention (age, size, incremental vacuum, old databases) and verdicts through a results-disk outage."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from edge.core.metrics import Metrics
from edge.daemon.results import ResultsOutageError, ResultWriter
from edge.daemon.store import ResultStore, StoreError, StoreFullError
from tests.daemon.test_store import make_record


def _store(db: Path) -> ResultStore:
    store = ResultStore(db)
    store.open()
    store.start_run({"source": "test"})
    return store


def _sequences(db: Path) -> list[int]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT sequence FROM verdicts ORDER BY id")]


def _orphan_scores(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        q = "SELECT COUNT(*) FROM scores WHERE verdict_id NOT IN (SELECT id FROM verdicts)"
        return int(conn.execute(q).fetchone()[0])


def test_retention_by_age_deletes_older_verdicts_and_their_scores(tmp_path: Path) -> None:
    db = tmp_path / "results.db"
    store = _store(db)
    now = time.time_ns()
    day = 86_400 * 10**9
    for i in range(30):  # 10 verdicts each 3, 2 and 0 days old
        age = (3, 2, 0)[i // 10]
        store.write(replace(make_record(i), host_ts_ns=now - age * day))
    done = store.prune(max_age_s=2.5 * 86_400)
    assert done.deleted == 10 and _sequences(db) == list(range(10, 30))
    assert store.prune(max_age_s=2.5 * 86_400).deleted == 0, "nothing more is that old"
    assert store.prune(max_age_s=86_400).deleted == 10 and _sequences(db) == list(range(20, 30))
    assert _orphan_scores(db) == 0
    store.close()


def test_retention_by_size_keeps_the_newest_and_gives_space_back(tmp_path: Path) -> None:
    db = tmp_path / "results.db"
    store = _store(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2, "new databases are INCREMENTAL"
    for i in range(3000):
        store.write(make_record(i))
    store.close()
    big = db.stat().st_size
    store = ResultStore(db)
    store.open()
    limit = big // 4
    done = store.prune(max_bytes=limit)
    store.close()
    kept = _sequences(db)
    assert done.bytes_before > limit >= done.bytes_after, done
    assert kept == list(range(3000 - len(kept), 3000)) and 0 < len(kept) < 1000, "the newest survive, in order"
    assert db.stat().st_size <= limit + 8192, f"the file shrank ({big} → {db.stat().st_size} bytes)"
    assert _orphan_scores(db) == 0


def test_a_database_from_before_retention_is_converted_to_incremental_vacuum(tmp_path: Path) -> None:
    db = tmp_path / "results.db"
    store = _store(db)
    store.close()
    with sqlite3.connect(db) as conn:  # what the previous release created: auto_vacuum NONE
        conn.execute("PRAGMA auto_vacuum = NONE")
        conn.execute("VACUUM")
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    store = _store(db)
    for i in range(2000):
        store.write(make_record(i))
    assert store.enable_incremental_vacuum() is True
    before = db.stat().st_size + Path(f"{db}-wal").stat().st_size
    store.prune(max_bytes=before // 5)
    store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.stat().st_size < before // 4


def _fill_limit(store: ResultStore, extra_pages: int) -> None:
    """Inject SQLITE_FULL: the database may grow ``extra_pages`` pages more (what a full disk does to SQLite)."""
    conn = store._conn
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + extra_pages}")


def test_a_full_database_names_the_disk(tmp_path: Path) -> None:
    store = _store(tmp_path / "results.db")
    _fill_limit(store, 0)
    with pytest.raises(StoreFullError, match=r"database or disk is full \(disk mounted at /\S*: .* MB free of") as err:
        for i in range(100):
            store.write(make_record(i))
    assert "move the file aside" not in str(err.value) and "storage.max_db_mb" in str(err.value)
    store.close()


def test_writer_queues_through_an_outage_and_writes_everything_when_space_returns(tmp_path: Path) -> None:
    db = tmp_path / "results.db"
    store = _store(db)
    metrics = Metrics()
    writer = ResultWriter(store, metrics, pending_max=1000, outage_limit_s=60, retry_every_s=0.0)
    _fill_limit(store, 1)
    for i in range(200):
        writer.write(make_record(i))
    assert writer.alarm and len(writer.pending) > 100 and writer.lost == 0
    assert metrics.registry.get_sample_value("edge_results_alarm") == 1
    written = len(_sequences(db))
    assert written + len(writer.pending) == 200
    _fill_limit(store, 10_000)  # space returns
    writer.write(make_record(200))
    assert not writer.alarm and not writer.pending and _sequences(db) == list(range(201)), "all of them, in order"
    assert metrics.registry.get_sample_value("edge_results_alarm") == 0
    store.close()


def test_writer_counts_what_does_not_fit_and_stops_after_the_outage_limit(tmp_path: Path) -> None:
    store = _store(tmp_path / "results.db")
    metrics = Metrics()
    writer = ResultWriter(store, metrics, pending_max=5, outage_limit_s=0.2, retry_every_s=0.0)
    _fill_limit(store, 0)
    written = 0
    while not writer.alarm:  # the last pages fill up
        writer.write(make_record(written))
        written += 1
    written -= 1  # the one that failed is queued
    for i in range(written + 1, written + 12):
        writer.write(make_record(i))
    assert len(writer.pending) == 5 and writer.lost == 12 - 5 and len(_sequences(tmp_path / "results.db")) == written
    assert metrics.registry.get_sample_value("edge_verdicts_lost_total") == 7
    writer.retry()  # within the limit: no error
    time.sleep(0.3)
    with pytest.raises(ResultsOutageError, match=r"unwritable for more than 0.2 s \(5 verdicts queued\)"):
        writer.retry()
    assert writer.close() == 12, "at exit the queue is counted lost too, never dropped silently"
    assert metrics.registry.get_sample_value("edge_verdicts_lost_total") == 12
    store.close()


def _fill(filler: Path) -> None:
    with filler.open("wb", buffering=0) as f:
        try:
            while f.write(b"\0" * 4096):
                pass
        except OSError:
            pass


def test_a_disk_full_at_start_names_the_disk(tmp_path: Path) -> None:
    """Opening on a full disk: the error says the disk is full, not that the file is corrupt."""
    mount = tmp_path / "full"
    mount.mkdir()

    run = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], capture_output=True,
                         check=False)  # fmt: skip
    if run.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {run.stderr.decode().strip()}")
    try:
        (mount / "filler").write_bytes(b"\0" * 16_384)
        with pytest.raises(StoreError) as err:
            _store(mount / "results.db")
        assert isinstance(err.value, StoreFullError), err.value
        assert f"(disk mounted at {mount}: 0.0 MB free of 0.0 MB)" in str(err.value), err.value
        assert "corrupt" not in str(err.value)
        (mount / "filler").unlink()
        subprocess.run(["mount", "-o", "remount,size=4m", str(mount)], check=True)
        store = _store(mount / "results.db")  # an existing database (WAL) on a disk that fills up meanwhile
        for i in range(20):
            store.write(make_record(i))
        store.close()
        _fill(mount / "filler")
        with pytest.raises(
            StoreFullError, match=rf"opening results database .*: disk I/O error \(disk mounted at {mount}"
        ):
            _store(mount / "results.db")  # SQLite says "disk I/O error" here: still a full disk, not a corrupt file
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
