"""Central ingest: results from every station's MQTT topic into PostgreSQL, once each, partitioned by month.

``edge-ingest`` subscribes to ``$share/<group>/+/+/+/+/inspection/v1/result`` (an MQTT v5 shared subscription:
run two or more ingesters with the same group and the broker spreads the results over them; one that dies leaves
its unacknowledged messages to the broker to deliver again). Each message is one :class:`ResultRecord`; it is
written to the ``results`` table, and only then acknowledged (manual PUBACK), so a result the broker handed over
is either in the database or delivered again. Redelivery never duplicates: the table's key is
``(result_id, creation_time)`` and an insert of a known result does nothing.

``results`` is range-partitioned on ``creation_time`` by month (``results_YYYY_MM``); a month's partition is
created at start for this month and the next, else the first time a result of another month arrives (under an
advisory lock, so concurrent ingesters agree).
Dropping an old month is ``DROP TABLE results_2026_01``. A message that is not a valid result is logged and
acknowledged (never retried forever); a database failure stops the ingester (exit 1) without acknowledging, so
the service manager restarts it and the broker delivers the message again.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from edge.core.errors import EdgeError
from edge.plant.record import ResultRecord

log = logging.getLogger(__name__)

RESULT_FILTER = "+/+/+/+/inspection/v1/result"

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    result_id uuid NOT NULL,
    creation_time timestamptz NOT NULL,
    site text NOT NULL,
    area text NOT NULL,
    line text NOT NULL,
    station text NOT NULL,
    result_state text NOT NULL,
    verdict text NOT NULL,
    recipe_id text NOT NULL,
    configuration_id text NOT NULL,
    camera_serial text NOT NULL,
    sequence bigint NOT NULL,
    total_ms double precision,
    defect_types text[] NOT NULL,
    evidence_uris text[] NOT NULL,
    processing_times jsonb NOT NULL,
    latencies jsonb NOT NULL,
    scores jsonb NOT NULL,
    record jsonb NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (result_id, creation_time)
) PARTITION BY RANGE (creation_time);
CREATE INDEX IF NOT EXISTS results_by_station_time ON results (site, line, station, creation_time);
"""

_INSERT = """
INSERT INTO results (result_id, creation_time, site, area, line, station, result_state, verdict, recipe_id,
    configuration_id, camera_serial, sequence, total_ms, defect_types, evidence_uris, processing_times, latencies,
    scores, record)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (result_id, creation_time) DO NOTHING
"""


class IngestError(EdgeError):
    """The database or the broker cannot be used."""


def month_partition(when: datetime) -> tuple[str, str, str]:
    """(partition name, first day, first day of the next month) of the month of ``when`` (UTC)."""
    t = when.astimezone(UTC)
    start = datetime(t.year, t.month, 1, tzinfo=UTC)
    end = datetime(t.year + (t.month == 12), t.month % 12 + 1, 1, tzinfo=UTC)
    return f"results_{t.year:04d}_{t.month:02d}", start.isoformat(), end.isoformat()


def defect_types(record: ResultRecord) -> list[str]:
    """The models that called the part NG, sorted: the 'defect type' of an anomaly-detection station (it has no
    defect classes; each model watches its own crop and features, docs/plant.md)."""
    return sorted(name for name, s in record.scores.items() if s.verdict == "NG")


class ResultDatabase:
    """The ``results`` table of one PostgreSQL database (one connection, used from one thread)."""

    def __init__(self, dsn: str) -> None:
        try:
            self.conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
        except psycopg.Error as err:
            raise IngestError(
                f"cannot connect to PostgreSQL ({dsn}): {' '.join(str(err).split())}",
                "check --dsn (host, port, user, dbname) and that the server is up and accepts this client",
            ) from None
        self._months: set[str] = set()
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext('edge-ingest-schema'))")
            self.conn.execute(SCHEMA)
            # This month's and next month's partitions now: creating one locks the whole table (it waits for
            # running queries), so results of a normal day never need it.
            now = datetime.now(UTC)
            for when in (now, datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)):
                self._create_partition(when)

    def _create_partition(self, when: datetime) -> None:
        name, start, end = month_partition(when)
        if name not in self._months:
            self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF results FOR VALUES FROM ('{start}') TO ('{end}')"
            )

    def insert(self, record: ResultRecord) -> bool:
        """Write one result; False when it was already there (a redelivery)."""
        name = month_partition(record.CreationTime)[0]
        with self.conn.transaction():
            if name not in self._months:
                self.conn.execute("SELECT pg_advisory_xact_lock(hashtext('edge-ingest-schema'))")
                self._create_partition(record.CreationTime)
            cur = self.conn.execute(
                _INSERT,
                (
                    record.ResultId, record.CreationTime, record.site, record.area, record.line, record.station,
                    record.ResultState, record.verdict, record.RecipeId, record.ConfigurationId, record.camera_serial,
                    record.sequence, record.ProcessingTimes.get("total"), defect_types(record), record.evidence_uris,
                    json.dumps(record.ProcessingTimes), json.dumps(record.latencies),
                    json.dumps({k: v.model_dump() for k, v in record.scores.items()}), record.model_dump_json(),
                ),
            )  # fmt: skip
        self._months.add(name)
        return cur.rowcount == 1

    def close(self) -> None:
        self.conn.close()


class Ingester:
    """Subscribes with a shared subscription and writes every result; :meth:`run` blocks until :meth:`stop`."""

    def __init__(
        self,
        db: ResultDatabase,
        *,
        host: str,
        port: int,
        group: str = "ingest",
        client_id: str = "",
        session_expiry_s: int = 0,
    ) -> None:
        self.db = db
        self.host, self.port = host, port
        self.topic = f"$share/{group}/{RESULT_FILTER}"
        self.inserted = 0
        self.duplicates = 0
        self.rejected = 0
        self.error: BaseException | None = None
        self.subscribed = threading.Event()
        self._done = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 30)
        self._client = client
        self._session_expiry_s = session_expiry_s

    def run(self) -> None:
        """Connect, then handle messages until stopped; raises IngestError after a database failure."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._session_expiry_s
        self._client.connect_async(self.host, self.port, 30, clean_start=self._session_expiry_s == 0, properties=props)
        self._client.loop_start()
        self._done.wait()
        self._client.disconnect()
        self._client.loop_stop()
        if self.error is not None:
            raise IngestError(
                f"writing a result to PostgreSQL failed: {self.error}",
                "check the database; the unacknowledged result is delivered again after the restart",
            )

    def stop(self) -> None:
        self._done.set()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("event=ingest_refused broker=%s:%d reason=%s", self.host, self.port, reason)
            return
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
        if any(r.is_failure for r in reasons):
            log.error("event=ingest_subscribe_refused topic=%s reasons=%s", self.topic, reasons)
            return
        self.subscribed.set()
        log.info("event=ingest_subscribed broker=%s:%d topic=%s", self.host, self.port, self.topic)

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if self._done.is_set():
            return  # not acknowledged: the broker delivers it again
        try:
            record = ResultRecord.model_validate_json(msg.payload)
        except ValidationError as err:
            self.rejected += 1
            log.error("event=ingest_rejected topic=%s error=%r", msg.topic, str(err).splitlines()[0])
            client.ack(msg.mid, msg.qos)
            return
        try:
            new = self.db.insert(record)
        except psycopg.Error as err:
            log.error("event=ingest_db_failed result_id=%s error=%r", record.ResultId, str(err).strip())
            self.error = err
            self._done.set()
            return
        if new:
            self.inserted += 1
        else:
            self.duplicates += 1
            log.info("event=ingest_duplicate result_id=%s", record.ResultId)
        client.ack(msg.mid, msg.qos)
