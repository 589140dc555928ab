"""Verdicts to the results database without ever blocking the line: a failing disk degrades, then stops, in bounds.

While the database cannot be written (disk full, I/O error), verdicts wait in memory, in order, at most
``storage.pending_max`` of them, and every ``retry_every_s`` the oldest is tried again: when space returns they are
all written. A verdict that does not fit the queue is counted lost (``edge_verdicts_lost_total``), never dropped
silently. An outage longer than ``storage.outage_limit_s`` raises :class:`ResultsOutageError`: the daemon stops in
order (children stopped, exit 1) so the service manager acts. At exit, what is still queued is counted lost.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path

from edge.core.errors import EdgeError
from edge.core.metrics import Metrics
from edge.daemon.record import VerdictRecord
from edge.daemon.store import ResultStore, StoreError

log = logging.getLogger(__name__)


class ResultsOutageError(EdgeError):
    """The results database stayed unwritable longer than ``storage.outage_limit_s``."""


class ResultWriter:
    """In-order verdict writer with a bounded in-memory queue for outages of the results database."""

    def __init__(
        self,
        store: ResultStore,
        metrics: Metrics,
        *,
        pending_max: int,
        outage_limit_s: float,
        retry_every_s: float = 1.0,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.pending: deque[VerdictRecord] = deque()
        self.pending_max = pending_max
        self.outage_limit_s = outage_limit_s
        self.retry_every_s = retry_every_s
        self.lost = 0
        self.error = ""  # the failure of the current outage ("" while the database is written)
        self._since = 0.0
        self._next_try = 0.0
        self._evidence: dict[str, Path] = {}  # result_id → evidence folder of a verdict still queued in memory

    @property
    def alarm(self) -> bool:
        return bool(self.error)

    def write(self, record: VerdictRecord) -> None:
        """Write ``record`` now, or queue it behind earlier ones while the database is failing."""
        if not self.pending:
            try:
                self.store.write(record)
                return
            except StoreError as err:
                self._fail(err)
        if len(self.pending) >= self.pending_max:
            self._lose(1, "queue_full")
        else:
            self.pending.append(record)
        self.metrics.verdicts_pending.set(len(self.pending))
        self._flush()

    def retry(self) -> None:
        """Write the queued verdicts if a retry is due; raise ResultsOutageError past the outage limit."""
        self._flush()
        if self.pending and time.monotonic() - self._since > self.outage_limit_s:
            raise ResultsOutageError(
                f"results database unwritable for more than {self.outage_limit_s:g} s "
                f"({len(self.pending)} verdicts queued): {self.error}",
                "free space on the results disk; the daemon stops so the service manager restarts it",
            )

    def _flush(self) -> None:
        """Write the queued verdicts, oldest first, if a retry is due (never raises)."""
        if not self.pending or time.monotonic() < self._next_try:
            return
        try:
            while self.pending:
                self.store.write(self.pending[0])
                record = self.pending.popleft()
                if (folder := self._evidence.pop(record.result_id, None)) is not None:
                    self.store.set_evidence(record.result_id, folder)
        except StoreError as err:
            self._fail(err)
        finally:
            self.metrics.verdicts_pending.set(len(self.pending))
        if not self.pending:
            self._clear()

    def attach_evidence(self, result_id: str, folder: Path) -> None:
        """Note where a verdict's evidence was saved (the plant outbox uploads it): in its row once written, or
        with the verdict while it waits in memory. Never raises: a failure is logged and the verdict goes out
        without that evidence."""
        if any(r.result_id == result_id for r in self.pending):
            self._evidence[result_id] = folder
            return
        try:
            self.store.set_evidence(result_id, folder)
        except StoreError as err:
            log.error("event=evidence_not_linked result_id=%s folder=%s error=%r", result_id, folder, str(err))

    def store_counters(self, run_id: int, counters: Mapping[str, int]) -> None:
        """Store the run's counters (after the queued verdicts: skipped while any wait). A failure raises the alarm
        like a verdict's; a success clears it."""
        if self.pending:
            return
        try:
            self.store.update_counters(run_id, counters)
        except StoreError as err:
            self._fail(err)
            return
        self._clear()

    def _clear(self) -> None:
        """The database took a write again: the outage (if any) is over."""
        if self.alarm:
            log.warning("event=results_alarm state=off outage_s=%.1f", time.monotonic() - self._since)
            self.error = ""
            self.metrics.results_alarm.set(0)

    def _fail(self, err: StoreError) -> None:
        now = time.monotonic()
        self._next_try = now + self.retry_every_s
        if not self.alarm:
            self._since = now
            self.error = str(err)
            self.metrics.results_alarm.set(1)
            log.error("event=results_alarm state=on action=queue pending_max=%d error=%r", self.pending_max, str(err))

    def _lose(self, n: int, reason: str) -> None:
        if self.lost == 0 or reason != "queue_full":
            log.error("event=verdicts_lost count=%d reason=%s error=%r", n, reason, self.error)
        self.lost += n
        self.metrics.verdicts_lost.inc(n)

    def close(self) -> int:
        """Last try to write what is queued (no wait); what stays is counted lost. Returns the total lost."""
        self._next_try = 0.0
        self._flush()
        if self.pending:
            self._lose(len(self.pending), "exit")
            self.pending.clear()
            self._evidence.clear()
            self.metrics.verdicts_pending.set(0)
        return self.lost
