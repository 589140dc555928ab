"""The station's outbox: results leave the results database in order, evidence first, and nothing is lost.

Every verdict is written to ``results.db`` with ``published_at`` NULL (edge/daemon/store.py). This thread takes
the oldest waiting verdicts, uploads each one's evidence folder to the object store under
``{site}/{line}/{station}/YYYY/MM/DD/<result_id>/<file>``, then publishes its :class:`ResultRecord` on
``{site}/{area}/{line}/{station}/inspection/v1/result`` (MQTT v5, QoS 1), and sets ``published_at`` once the
broker acknowledged it. While the broker or the store is down nothing is sent and results wait in the database,
in order (a result whose evidence cannot be uploaded holds back the ones after it, so they stay in order); when
it comes back they go out oldest first. At least once: a result sent just before a crash may be sent again after
the restart, so consumers deduplicate on ``ResultId`` (``edge-ingest`` does).

Limits: at most ``plant.outbox_max`` results wait; past it the oldest are given up (``published_at`` = -1, the
verdict stays in the database, ``edge_outbox_expired_total``). The alarm (``edge_outbox_alarm`` and an
``event=outbox_alarm`` log line) is on while the limit is reached or the oldest waiting result is older than
``plant.outbox_alarm_after_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import ValidationError

from edge.daemon.mqtt import MqttPublisher
from edge.daemon.store import OutboxRow, ResultStore, StoreError
from edge.plant.config import PlantConfig
from edge.plant.record import ResultRecord, StationId
from edge.plant.s3 import ObjectStore, S3Error

log = logging.getLogger(__name__)

RESULT_TOPIC = "inspection/v1/result"
STATE_EVERY_S = 1.0  # how often the waiting count, age and limit are checked
UPLOAD_RETRY_S = 2.0  # after a failed upload, wait this long before trying the object store again


class OutboxMetrics:
    """The outbox's Prometheus metrics, on the daemon's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.pending = Gauge("edge_outbox_pending", "Results waiting to be sent to the plant.", registry=r)
        self.oldest_age = Gauge(
            "edge_outbox_oldest_age_seconds", "Age of the oldest result waiting for the plant (0: none).", registry=r
        )
        self.alarm = Gauge(
            "edge_outbox_alarm", "1 while the outbox is at its limit or its oldest result waits too long.", registry=r
        )
        self.sent = Counter("edge_outbox_published_total", "Results the broker acknowledged.", registry=r)
        self.expired = Counter(
            "edge_outbox_expired_total", "Results given up past plant.outbox_max (kept in results.db).", registry=r
        )
        self.upload_failures = Counter(
            "edge_evidence_upload_failures_total", "Evidence uploads the object store refused or missed.", registry=r
        )


def evidence_key(station: StationId, record: ResultRecord, name: str) -> str:
    """``{site}/{line}/{station}/YYYY/MM/DD/<result_id>/<name>`` (the day of CreationTime, UTC)."""
    day = record.CreationTime.astimezone(UTC).strftime("%Y/%m/%d")
    return f"{station.site}/{station.line}/{station.station}/{day}/{record.ResultId}/{name}"


class Outbox:
    """Sends waiting results from ``store`` through ``publisher`` in a background thread."""

    def __init__(
        self,
        store: ResultStore,
        publisher: MqttPublisher,
        config: PlantConfig,
        objects: ObjectStore | None,
        registry: CollectorRegistry,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.config = config
        self.station = config.station_id()
        self.topic = self.station.topic(RESULT_TOPIC)
        self.objects = objects
        self.metrics = OutboxMetrics(registry)
        self.sent = 0
        self.expired = 0
        self.alarm_reason = ""
        _n, _oldest, newest = store.outbox_state()
        self._ready = newest  # results up to this id are complete (evidence linked); earlier runs' all are
        self._inflight: dict[int, tuple[mqtt.MQTTMessageInfo, int]] = {}  # row id → (delivery, connection number)
        self._uris: dict[int, list[str]] = {}  # row id → evidence URIs already uploaded
        self._acked: list[int] = []  # acknowledged rows not yet marked (the database was busy or failing)
        self._upload_error = ""
        self._next_upload = 0.0
        self._next_state = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="plant-outbox", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def ready(self, result_id: str) -> None:
        """The verdict ``result_id`` (and every one before it) is written with its evidence linked: it may go."""
        self._ready = result_id
        self._wake.set()

    def stop(self, flush_s: float = 5.0) -> None:
        """Send what waits for up to ``flush_s`` (broker and store up), then stop; the rest waits for the next start."""
        deadline = time.monotonic() + flush_s
        while time.monotonic() < deadline and self._thread.is_alive() and self.publisher.connected:
            if self.store.outbox_state()[0] == 0:
                break
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        self._thread.join(10.0)
        self._collect()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except StoreError as err:  # the results database is failing: the ResultWriter raises that alarm
                log.warning("event=outbox_paused error=%r", str(err))
                self._stop.wait(1.0)
            self._wake.wait(0.05 if self._inflight else 0.5)
            self._wake.clear()

    def _step(self) -> None:
        self._collect()
        if time.monotonic() >= self._next_state:
            self._next_state = time.monotonic() + STATE_EVERY_S
            self._check_limits()
        if self._ready is None or not self.publisher.connected:
            return
        if any(conn != self.publisher.connections for _, conn in self._inflight.values()):
            return  # paho resends those after a reconnect; newer results go after them, so order holds
        room = self.config.send_window - len(self._inflight)
        if room <= 0:
            return
        for row in self.store.outbox_batch(self.config.send_window, up_to=self._ready):
            if row.row_id in self._inflight:
                continue
            if room <= 0 or not self._send(row):
                break
            room -= 1

    def _send(self, row: OutboxRow) -> bool:
        """Upload the evidence (if not yet), publish; False when this row must wait (store or queue trouble)."""
        try:
            result = ResultRecord.of(row.record, station=self.station, camera_serial=row.camera_serial)
        except (ValueError, ValidationError) as err:  # cannot happen for rows the daemon wrote; never block on one
            log.error("event=outbox_unsendable row=%d error=%r action=given_up", row.row_id, str(err))
            self.store.mark_published([row.row_id], -1)
            return True
        uris = self._uris.get(row.row_id)
        if uris is None:
            if time.monotonic() < self._next_upload:
                return False
            uris = self._upload(row, result)
            if uris is None:
                return False
            self._uris[row.row_id] = uris
        payload = result.model_copy(update={"evidence_uris": uris}).model_dump_json()
        info = self.publisher.send(self.topic, payload, qos=1)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            return False  # paho's queue is full: try again later
        self._inflight[row.row_id] = (info, self.publisher.connections)
        return True

    def _upload(self, row: OutboxRow, result: ResultRecord) -> list[str] | None:
        if self.objects is None or row.evidence_dir is None:
            return []
        folder = Path(row.evidence_dir)
        try:
            files = sorted(p for p in folder.iterdir() if p.is_file())
        except OSError:
            log.warning("event=evidence_missing result_id=%s folder=%s (evicted by the evidence quota?)",
                        result.ResultId, folder)  # fmt: skip
            return []
        try:
            uris = [self.objects.put(evidence_key(self.station, result, p.name), p.read_bytes()) for p in files]
        except (S3Error, OSError) as err:
            self.metrics.upload_failures.inc()
            self._next_upload = time.monotonic() + UPLOAD_RETRY_S
            if not self._upload_error:
                log.error("event=evidence_upload_failed result_id=%s error=%r action=results_wait",
                          result.ResultId, str(err))  # fmt: skip
            self._upload_error = str(err)
            return None
        if self._upload_error:
            log.warning("event=evidence_upload_resumed result_id=%s", result.ResultId)
            self._upload_error = ""
        return uris

    def _collect(self) -> None:
        """Mark the results the broker acknowledged."""
        done = [row_id for row_id, (info, _) in self._inflight.items() if info.is_published()]
        for row_id in done:
            del self._inflight[row_id]
            self._uris.pop(row_id, None)
        self._acked.extend(done)
        if not self._acked:
            return
        try:
            self.store.mark_published(self._acked, time.time_ns())
        except StoreError as err:
            log.warning("event=outbox_mark_failed rows=%d error=%r (retried)", len(self._acked), str(err))
            return
        self.sent += len(self._acked)
        self.metrics.sent.inc(len(self._acked))
        self._acked = []

    def _check_limits(self) -> None:
        n, oldest_ns, _newest = self.store.outbox_state()
        if n > self.config.outbox_max:
            given_up = self.store.expire_oldest(n - self.config.outbox_max)
            self.expired += given_up
            self.metrics.expired.inc(given_up)
            log.error("event=outbox_expired count=%d limit=%d (kept in results.db, not sent)", given_up,
                      self.config.outbox_max)  # fmt: skip
            n -= given_up
        age = 0.0 if oldest_ns is None else max(0.0, (time.time_ns() - oldest_ns) / 1e9)
        self.metrics.pending.set(n)
        self.metrics.oldest_age.set(age)
        if n >= self.config.outbox_max:
            reason = f"{n} results waiting, the limit plant.outbox_max"
        elif age > self.config.outbox_alarm_after_s:
            reason = f"oldest result waiting {age:.0f} s (> plant.outbox_alarm_after_s)"
        else:
            reason = ""
        if bool(reason) != bool(self.alarm_reason):
            state = "on" if reason else "off"
            (log.error if reason else log.warning)(
                "event=outbox_alarm state=%s pending=%d reason=%r broker_connected=%s upload_error=%r",
                state, n, reason, self.publisher.connected, self._upload_error,
            )  # fmt: skip
            self.metrics.alarm.set(int(bool(reason)))
        self.alarm_reason = reason
