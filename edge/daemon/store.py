"""The results database: one SQLite row per verdict, committed with a full fsync so a power cut loses none.

Layout (schema version :data:`SCHEMA_VERSION`, kept in ``PRAGMA user_version``):

- ``runs``: one row per daemon start — start/finish time, source, config summary and versions (JSON),
  and the run's counters (JSON, rewritten by :meth:`ResultStore.update_counters`).
- ``verdicts``: one row per scored frame or part. Everything a query filters or aggregates on is a column
  (time, verdict, late, roi_fill, gap_before, total latency); the per-stage breakdown and the version maps
  are JSON because their keys depend on the configured models.
- ``scores``: one row per model per verdict (raw and normalised score, the model's own verdict), so score
  drift of one model is a plain ``SELECT … WHERE model = ?``.

The outbox (schema 2, docs/plant.md): every verdict has a UUIDv7 ``result_id``; ``published_at`` is NULL while the
verdict waits to be sent to the plant, the send time (ns) once the broker acknowledged it, 0 for a verdict that is
not for the plant (written with ``plant.enabled`` off, or before schema 2) and -1 for one given up past the outbox
limit. ``evidence_dir`` is the verdict's local evidence folder (to upload). A schema-1 file is migrated on open.

Concurrency: the database runs in WAL mode, so readers (the CLI, a dashboard) never block the daemon and
never see a half-written verdict. Two daemons writing the same file are serialised by SQLite's lock (each
waits up to ``busy_timeout_ms``); rows stay intact and each belongs to its own run. WAL needs a local
filesystem (shared memory for the ``-shm`` index): never put the database on NFS/SMB.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.errors import EdgeError
from edge.daemon.record import ModelScore, VerdictRecord

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
PRUNE_BATCH = 2000  # verdict rows per retention transaction (keeps the write lock short)

_SCHEMA = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    started_ns INTEGER NOT NULL,
    finished_ns INTEGER,
    source TEXT NOT NULL,
    config_json TEXT NOT NULL,
    versions_json TEXT NOT NULL,
    counters_json TEXT NOT NULL DEFAULT '{}',
    camera_serial TEXT NOT NULL DEFAULT ''
);
CREATE TABLE verdicts (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    sequence INTEGER NOT NULL,
    frame_number INTEGER NOT NULL,
    device_ts_ns INTEGER NOT NULL,
    host_ts_ns INTEGER NOT NULL,
    kind TEXT NOT NULL,
    part_id INTEGER,
    verdict TEXT NOT NULL,
    late INTEGER NOT NULL,
    roi_fill REAL NOT NULL,
    gap_before INTEGER NOT NULL,
    total_ms REAL,
    stage_ms_json TEXT NOT NULL,
    roi_version TEXT NOT NULL,
    model_versions_json TEXT NOT NULL,
    scoring_versions_json TEXT NOT NULL,
    error TEXT NOT NULL,
    result_id TEXT,
    published_at INTEGER,
    evidence_dir TEXT NOT NULL DEFAULT ''
);
CREATE INDEX verdicts_by_time ON verdicts(host_ts_ns);
CREATE INDEX verdicts_by_verdict ON verdicts(verdict, host_ts_ns);
CREATE INDEX verdicts_by_run ON verdicts(run_id, sequence);
CREATE TABLE scores (
    verdict_id INTEGER NOT NULL REFERENCES verdicts(id),
    model TEXT NOT NULL,
    raw REAL NOT NULL,
    score REAL NOT NULL,
    verdict TEXT NOT NULL,
    infer_ms REAL NOT NULL,
    PRIMARY KEY (verdict_id, model)
) WITHOUT ROWID;
CREATE INDEX scores_by_model ON scores(model, verdict_id);
"""

# What schema 2 adds (the outbox, docs/plant.md); the end of _SCHEMA for a new file, a migration for a schema-1 file.
_OUTBOX_INDEXES = """
CREATE UNIQUE INDEX verdicts_by_result_id ON verdicts(result_id);
CREATE INDEX verdicts_outbox ON verdicts(id) WHERE published_at IS NULL;
"""
_MIGRATE_1_TO_2 = f"""
ALTER TABLE runs ADD COLUMN camera_serial TEXT NOT NULL DEFAULT '';
ALTER TABLE verdicts ADD COLUMN result_id TEXT;
ALTER TABLE verdicts ADD COLUMN published_at INTEGER;
ALTER TABLE verdicts ADD COLUMN evidence_dir TEXT NOT NULL DEFAULT '';
UPDATE verdicts SET published_at = 0;
{_OUTBOX_INDEXES}
"""

# What decided the verdicts (edge/daemon/release.py): one row per start and per SIGHUP, accepted or refused. Created on
# open if missing, so a database written before the table existed gains it without a schema version change.
_CONFIG_CHANGES = """
CREATE TABLE IF NOT EXISTS config_changes (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    at_ns INTEGER NOT NULL,
    event TEXT NOT NULL,
    accepted INTEGER NOT NULL,
    release TEXT NOT NULL,
    signed_by TEXT NOT NULL,
    digests_json TEXT NOT NULL,
    changes_json TEXT NOT NULL,
    error TEXT NOT NULL
)
"""

_VERDICT_COLUMNS = (
    "run_id, sequence, frame_number, device_ts_ns, host_ts_ns, kind, part_id, verdict, late, roi_fill, "
    "gap_before, total_ms, stage_ms_json, roi_version, model_versions_json, scoring_versions_json, error, "
    "result_id, published_at"
)


class StoreError(EdgeError):
    """The results database cannot be opened, read or written."""


class StoreFullError(StoreError):
    """The results database's disk (or its size limit) is full."""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A verdict waiting for the plant: its row, the record as written, its evidence folder, the camera serial."""

    row_id: int
    record: VerdictRecord
    evidence_dir: Path | None
    camera_serial: str


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What one retention pass did: verdict rows deleted, database bytes in use before and after."""

    deleted: int
    bytes_before: int
    bytes_after: int


def _mount_point(path: Path) -> Path:
    p = path.resolve()
    while not p.exists() or not os.path.ismount(p):
        if p.parent == p:
            break
        p = p.parent
    return p


def disk_report(path: Path) -> str:
    """``disk mounted at /x: N MB free of M MB`` for the folder of ``path`` (names the disk in errors)."""
    folder = Path(path).parent
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return f"disk of {folder}: free space unknown"
    return f"disk mounted at {_mount_point(folder)}: {usage.free / 1e6:.1f} MB free of {usage.total / 1e6:.1f} MB"


FULL_BELOW_BYTES = 1 << 20  # an I/O error on a disk with less free space than this is a full disk


def _is_full(err: BaseException, path: Path) -> bool:
    """ENOSPC/EDQUOT, SQLITE_FULL — or an SQLite I/O error (what opening an existing WAL database on a full disk
    gives: its ``-shm``/``-wal`` cannot grow) while the disk has less than FULL_BELOW_BYTES free."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    code = getattr(err, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL:
        return True
    if code is None or (code & 0xFF) not in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN):
        return False
    try:
        return shutil.disk_usage(path.parent).free < FULL_BELOW_BYTES
    except OSError:
        return False


def _full_error(path: Path, doing: str, err: BaseException) -> StoreFullError:
    return StoreFullError(
        f"{doing} results database {path} failed: {err} ({disk_report(path)})",
        "free space on that disk (or set storage.max_db_mb / storage.retention_days so old verdicts are pruned)",
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


class ResultStore:
    """Append-only verdict log of one daemon. Every :meth:`write` is one committed transaction.

    ``synchronous`` is ``"FULL"`` by default: each commit waits for the WAL fsync, so a verdict the PLC has
    seen is on disk. ``"NORMAL"`` is faster but may lose the last commits on a power cut (not on a crash).
    The connection is guarded by a lock so the app may call it from more than one thread.
    """

    def __init__(
        self, path: Path, *, synchronous: str = "FULL", busy_timeout_ms: int = 5000, outbox: bool = False
    ) -> None:
        """``outbox``: verdicts written wait in the outbox (``published_at`` NULL) to be sent to the plant."""
        if synchronous not in ("FULL", "NORMAL"):
            raise StoreError(f"synchronous={synchronous!r} is not supported", "use 'FULL' or 'NORMAL'")
        self.path = Path(path)
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._outbox = outbox
        self._conn: sqlite3.Connection | None = None
        self._run_id: int | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        """Open (creating the file and schema on first use) and check the schema version."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if _is_full(e, self.path):
                raise _full_error(self.path, "creating the folder of", e) from e
            raise StoreError(f"cannot create the folder of results database {self.path}: {e}", _FIX_PATH) from e
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open results database {self.path}: {e}", _FIX_PATH) from e
        try:
            _prepare(conn, self.path, self._synchronous, self._busy_timeout_ms)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def start_run(self, info: Mapping[str, Any]) -> int:
        """Add a ``runs`` row; ``info`` may hold ``source``, ``config`` and ``versions`` (anything JSON-able)."""
        with self._transaction() as conn:
            cur = conn.execute(
                "INSERT INTO runs (started_ns, source, config_json, versions_json, camera_serial) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    time.time_ns(),
                    str(info.get("source", "")),
                    _dumps(info.get("config", {})),
                    _dumps(info.get("versions", {})),
                    str(info.get("camera_serial", "")),
                ),
            )
        assert cur.lastrowid is not None
        self._run_id = cur.lastrowid
        return cur.lastrowid

    def write(self, record: VerdictRecord) -> None:
        """Store one verdict and its per-model scores in one committed transaction (under the current run)."""
        if self._run_id is None:
            raise StoreError("a verdict was written before start_run()", "call start_run() after open()")
        row = (
            self._run_id,
            record.sequence,
            record.frame_number,
            record.device_ts_ns,
            record.host_ts_ns,
            record.kind,
            record.part_id,
            record.verdict,
            int(record.late),
            float(record.roi_fill),
            record.gap_before,
            record.stage_ms.get("total"),
            _dumps(record.stage_ms),
            record.roi_version,
            _dumps(record.model_versions),
            _dumps(record.scoring_versions),
            record.error,
            record.result_id or None,
            None if self._outbox else 0,
        )
        with self._transaction() as conn:
            cur = conn.execute(f"INSERT INTO verdicts ({_VERDICT_COLUMNS}) VALUES ({', '.join('?' * len(row))})", row)
            conn.executemany(
                "INSERT INTO scores (verdict_id, model, raw, score, verdict, infer_ms) VALUES (?, ?, ?, ?, ?, ?)",
                [(cur.lastrowid, s.model, s.raw, s.score, s.verdict, s.infer_ms) for s in record.scores],
            )

    def update_counters(self, run_id: int, counters: Mapping[str, int]) -> None:
        """Replace the run's counters (frames seen, scored, gated, dropped, late, errors …)."""
        with self._transaction() as conn:
            conn.execute("UPDATE runs SET counters_json = ? WHERE id = ?", (_dumps(dict(counters)), run_id))

    def finish_run(self, run_id: int, counters: Mapping[str, int]) -> None:
        """Store the final counters and the finish time."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE runs SET counters_json = ?, finished_ns = ? WHERE id = ?",
                (_dumps(dict(counters)), time.time_ns(), run_id),
            )

    def set_evidence(self, result_id: str, folder: Path) -> None:
        """Note the local evidence folder of a written verdict (the outbox uploads it before publishing)."""
        with self._transaction() as conn:
            conn.execute("UPDATE verdicts SET evidence_dir = ? WHERE result_id = ?", (str(folder), result_id))

    def outbox_batch(self, limit: int, *, up_to: str | None = None) -> list[OutboxRow]:
        """The oldest verdicts waiting for the plant, in write order (``up_to``: no result id past this one)."""
        query = (
            "SELECT v.id, v.result_id, v.sequence, v.frame_number, v.device_ts_ns, v.host_ts_ns, v.kind, v.part_id, "
            "v.verdict, v.late, v.roi_fill, v.gap_before, v.stage_ms_json, v.roi_version, v.model_versions_json, "
            "v.scoring_versions_json, v.error, v.evidence_dir, r.camera_serial "
            "FROM verdicts v JOIN runs r ON r.id = v.run_id WHERE v.published_at IS NULL"
        )
        params: tuple[Any, ...] = (limit,)
        if up_to is not None:
            query += " AND v.result_id <= ?"
            params = (up_to, limit)
        with self._lock:
            conn = self._open_conn()
            rows = conn.execute(f"{query} ORDER BY v.id LIMIT ?", params).fetchall()
            scores: dict[int, list[ModelScore]] = {}
            if rows:
                ids = [r[0] for r in rows]
                for vid, model, raw, score, verdict, infer_ms in conn.execute(
                    f"SELECT verdict_id, model, raw, score, verdict, infer_ms FROM scores "
                    f"WHERE verdict_id IN ({', '.join('?' * len(ids))})",
                    ids,
                ):
                    scores.setdefault(vid, []).append(ModelScore(model, raw, score, verdict, infer_ms))
        out = []
        for r in rows:
            record = VerdictRecord(
                sequence=r[2], frame_number=r[3], device_ts_ns=r[4], host_ts_ns=r[5], kind=r[6], part_id=r[7],
                verdict=r[8], late=bool(r[9]), roi_fill=r[10], gap_before=r[11], stage_ms=json.loads(r[12]),
                roi_version=r[13], model_versions=json.loads(r[14]), scoring_versions=json.loads(r[15]), error=r[16],
                scores=tuple(sorted(scores.get(r[0], []), key=lambda s: s.model)), result_id=r[1],
            )  # fmt: skip
            out.append(OutboxRow(r[0], record, Path(r[17]) if r[17] else None, r[18]))
        return out

    def mark_published(self, row_ids: list[int], at_ns: int) -> None:
        """The plant has these verdicts (``at_ns`` > 0), or they were given up (-1)."""
        with self._transaction() as conn:
            conn.executemany("UPDATE verdicts SET published_at = ? WHERE id = ?", [(at_ns, i) for i in row_ids])

    def outbox_state(self) -> tuple[int, int | None, str | None]:
        """(verdicts waiting for the plant, host time in ns of the oldest, result id of the newest; None if none)."""
        with self._lock:
            n, oldest, newest = (
                self._open_conn()
                .execute("SELECT COUNT(*), MIN(host_ts_ns), MAX(result_id) FROM verdicts WHERE published_at IS NULL")
                .fetchone()
            )
        return int(n), oldest, newest

    def expire_oldest(self, n: int) -> int:
        """Give up the ``n`` oldest waiting verdicts (``published_at`` = -1; they stay in the database)."""
        with self._transaction() as conn:
            return int(
                conn.execute(
                    "UPDATE verdicts SET published_at = -1 WHERE id IN "
                    "(SELECT id FROM verdicts WHERE published_at IS NULL ORDER BY id LIMIT ?)",
                    (n,),
                ).rowcount
            )

    def add_config_change(  # noqa: PLR0917 (one row's columns)
        self,
        run_id: int,
        event: str,
        accepted: bool,
        digests: Mapping[str, str],
        changes: list[dict[str, str | None]],
        release: str = "",
        signed_by: str = "",
        error: str = "",
    ) -> None:
        """One ``config_changes`` row: the bundle's sha256 per file at ``event`` (start/reload) and what changed."""
        row = (run_id, time.time_ns(), event, int(accepted), release, signed_by, _dumps(dict(digests)),
               _dumps(changes), error)  # fmt: skip
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO config_changes (run_id, at_ns, event, accepted, release, signed_by, digests_json, "
                "changes_json, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )

    def last_release_digests(self) -> dict[str, str] | None:
        """The file digests of the last accepted bundle in this database (any run), None if there is none."""
        with self._transaction() as conn:
            got = conn.execute(
                "SELECT digests_json FROM config_changes WHERE accepted = 1 ORDER BY id DESC LIMIT 1"
            ).fetchone()
        return dict(json.loads(got[0])) if got is not None else None

    def used_bytes(self) -> int:
        """Bytes of the database in use (pages minus free pages): what ``storage.max_db_mb`` limits."""
        with self._lock:
            conn = self._open_conn()
            pages = (
                conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
            )
            return int(pages) * int(conn.execute("PRAGMA page_size").fetchone()[0])

    def enable_incremental_vacuum(self) -> bool:
        """Switch a database created without ``auto_vacuum=INCREMENTAL`` (before retention existed) to it.

        That needs one ``VACUUM``: it rewrites the file (time, and free space of about its size). When it fails
        (no space) the database is left as it was and ``False`` returned: pruned rows' pages are then reused
        by new verdicts, so the file stops growing but does not shrink.
        """
        with self._lock:
            conn = self._open_conn()
            if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
                return True
            size = self.path.stat().st_size
            log.warning("event=db_convert auto_vacuum=incremental bytes=%d (one-time VACUUM)", size)
            try:
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
                conn.execute("VACUUM")
            except sqlite3.Error as e:
                log.error("event=db_convert_failed error=%r action=reuse_freed_pages", str(e))
                return False
            return bool(conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2)

    def prune(self, *, max_age_s: float | None = None, max_bytes: int | None = None) -> PruneResult:
        """Delete the oldest verdicts (with their scores): those older than ``max_age_s``, then more until the
        database uses at most ``max_bytes``; give the freed pages back to the disk (incremental vacuum).

        Runs rows are kept (one per daemon start). Each batch of :data:`PRUNE_BATCH` rows is one transaction.
        """
        before = self.used_bytes()
        deleted = 0
        if max_age_s is not None:
            cutoff = time.time_ns() - int(max_age_s * 1e9)
            while n := self._delete_oldest("WHERE host_ts_ns < ?", (cutoff,)):
                deleted += n
        if max_bytes is not None:
            while (used := self.used_bytes()) > max_bytes:
                rows = self._count_verdicts()
                if rows == 0:
                    break
                per_row = used / rows  # scores and index entries included
                n = self._delete_oldest("", (), limit=int((used - max_bytes) / per_row) + 1)
                if n == 0:
                    break
                deleted += n
        if deleted:
            with self._lock:
                conn = self._open_conn()
                try:
                    # no-op unless auto_vacuum=INCREMENTAL; executescript steps it to the end (execute frees one page)
                    conn.executescript("PRAGMA incremental_vacuum;")
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                except sqlite3.Error as e:
                    log.warning("event=vacuum_failed error=%r", str(e))
        return PruneResult(deleted, before, self.used_bytes())

    def _count_verdicts(self) -> int:
        with self._lock:
            return int(self._open_conn().execute("SELECT COUNT(*) FROM verdicts").fetchone()[0])

    def _delete_oldest(self, where: str, params: tuple[Any, ...], limit: int = PRUNE_BATCH) -> int:
        oldest = f"SELECT id FROM verdicts {where} ORDER BY id LIMIT {max(1, min(limit, PRUNE_BATCH))}"
        with self._transaction() as conn:
            conn.execute(f"DELETE FROM scores WHERE verdict_id IN ({oldest})", params)
            return int(conn.execute(f"DELETE FROM verdicts WHERE id IN ({oldest})", params).rowcount)

    def unfinished_runs(self) -> list[int]:
        """Ids of earlier runs without a finish time (the daemon was killed or lost power), except the current."""
        with self._lock:
            rows = self._open_conn().execute("SELECT id FROM runs WHERE finished_ns IS NULL ORDER BY id").fetchall()
        return [r[0] for r in rows if r[0] != self._run_id]

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"results database {self.path} is not open", "call open() first")
        return self._conn

    def close(self) -> None:
        """Checkpoint the WAL into the main file (so a copied ``.db`` is complete) and close."""
        with self._lock:
            if self._conn is None:
                return
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._conn.close()
                self._conn = None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise StoreError(f"results database {self.path} is not open", "call open() first")
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if _is_full(e, self.path):
                    raise _full_error(self.path, "writing", e) from e
                raise StoreError(f"writing results database {self.path} failed: {e}", _FIX_WRITE) from e


_FIX_PATH = "check the store path in the daemon config and that the daemon user may write there"
_FIX_WRITE = "check free disk space and that no other program holds a long write lock on the file"
_FIX_IO = "check the disk (kernel log: dmesg), its free space and its mount options; the file may be intact"
_FIX_CORRUPT = "move the file aside (keep it for analysis) and restart the daemon; it creates a new database"


def _prepare(conn: sqlite3.Connection, path: Path, synchronous: str, busy_timeout_ms: int) -> None:
    """Set the pragmas, check the file is ours and of a schema we understand, create the schema if new."""
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:  # a new file: retention gives freed pages back to the disk (PRAGMA incremental_vacuum)
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"results database {path} has schema version {version}; this daemon understands {SCHEMA_VERSION}",
                "upgrade the daemon, or point it at a new database file",
            )
        if version == 0 and tables:
            raise StoreError(f"{path} is an SQLite database but not a drumsight results database", _FIX_PATH)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"results database {path} cannot use WAL mode (got {mode!r})", _FIX_PATH)
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        if version == 0:
            conn.executescript(
                f"BEGIN IMMEDIATE; {_SCHEMA} {_OUTBOX_INDEXES} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            )
        elif version == 1:
            log.warning("event=db_migrate from=1 to=%d path=%s (adds the plant outbox columns)", SCHEMA_VERSION, path)
            conn.executescript(f"BEGIN IMMEDIATE; {_MIGRATE_1_TO_2} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        conn.execute(_CONFIG_CHANGES)
    except sqlite3.DatabaseError as e:
        if _is_full(e, path):
            raise _full_error(path, "opening", e) from e
        if (getattr(e, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_IOERR:  # the disk, not the file's content
            raise StoreError(f"results database {path}: {e} while opening it", _FIX_IO) from e
        raise StoreError(f"results database {path} is unreadable or corrupt: {e}", _FIX_CORRUPT) from e


def read_summary(path: Path, run_id: int | None = None) -> dict[str, Any]:
    """Counts per verdict, the run's counters and total-latency p50/p99 of one run (``None``: the latest run).

    Opens the file read-only, so it is safe while the daemon is writing.
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no results database at {path}", "check the path, or run the daemon first to create it")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open results database {path}: {e}", _FIX_CORRUPT) from e
    try:
        return _summarise(conn, path, run_id)
    except sqlite3.DatabaseError as e:
        raise StoreError(f"results database {path} is unreadable or corrupt: {e}", _FIX_CORRUPT) from e
    finally:
        conn.close()


def _summarise(conn: sqlite3.Connection, path: Path, run_id: int | None) -> dict[str, Any]:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version not in (1, SCHEMA_VERSION):  # schema 2 only added columns: a schema-1 file reads the same
        raise StoreError(
            f"results database {path} has schema version {version}, expected 1 or {SCHEMA_VERSION}",
            "read it with the daemon version that wrote it",
        )
    query = "SELECT id, started_ns, finished_ns, source, counters_json FROM runs"
    run = conn.execute(
        f"{query} ORDER BY id DESC LIMIT 1" if run_id is None else f"{query} WHERE id = ?",
        () if run_id is None else (run_id,),
    ).fetchone()
    if run is None:
        raise StoreError(
            f"results database {path} has no run {run_id if run_id is not None else ''}".rstrip(),
            "list the runs with: sqlite3 <db> 'SELECT id, started_ns FROM runs'",
        )
    rid, started_ns, finished_ns, source, counters_json = run
    verdicts = {"OK": 0, "NG": 0, "ERROR": 0}
    for verdict, n in conn.execute("SELECT verdict, COUNT(*) FROM verdicts WHERE run_id = ? GROUP BY verdict", (rid,)):
        verdicts[verdict] = n
    late, gaps = conn.execute(
        "SELECT COALESCE(SUM(late), 0), COALESCE(SUM(gap_before), 0) FROM verdicts WHERE run_id = ?", (rid,)
    ).fetchone()
    totals = np.array(
        [r[0] for r in conn.execute("SELECT total_ms FROM verdicts WHERE run_id = ? AND total_ms IS NOT NULL", (rid,))],
        dtype=np.float64,
    )
    counters: dict[str, int] = json.loads(counters_json)
    return {
        "run_id": rid,
        "source": source,
        "started_ns": started_ns,
        "finished_ns": finished_ns,
        "records": sum(verdicts.values()),
        "verdicts": verdicts,
        "late": int(late),
        "gap_frames": int(gaps),
        "gated": int(counters.get("gated", 0)),
        "dropped": int(counters.get("dropped", 0)),
        "counters": counters,
        "latency_ms": {
            "p50": float(np.percentile(totals, 50)) if totals.size else None,
            "p99": float(np.percentile(totals, 99)) if totals.size else None,
        },
    }
