"""Every Prometheus metric of the daemon, named ``edge_<subject>_<unit>[_total]``, in one registry per instance.

One :class:`Metrics` object owns its ``CollectorRegistry`` (not the process-global one), so tests and tools can
create several without "duplicated timeseries" errors.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from edge.daemon.record import VerdictRecord

# Pipeline stages take 0.1 ms (ring hand-over) to a few hundred ms (a cold engine); web-oriented defaults
# (5 ms … 10 s) would put every stage in two buckets.
STAGE_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02,
    0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0,
)  # fmt: skip

FRAME_OUTCOMES = ("scored", "gated", "dropped", "error")
RESULTS = ("OK", "NG", "ERROR")


class MetricsServer:
    """The running ``/metrics`` HTTP endpoint; :meth:`close` stops it and joins its thread."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class Metrics:
    """The daemon's metrics; the app updates the gauges and counters directly or through the helpers."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.stage_latency = Histogram(
            "edge_stage_latency_seconds",
            "Time spent per pipeline stage.",
            ["stage"],
            registry=r,
            buckets=STAGE_BUCKETS_S,
        )
        self.fps = Gauge("edge_frames_per_second", "Frames scored per second over the app's rate window.", registry=r)
        self.frames = Counter(
            "edge_frames_total", "Frames taken from the ring, by what became of them.", ["outcome"], registry=r
        )
        self.frames_dropped = Counter(
            "edge_frames_dropped_total", "Frames not scored, by reason.", ["reason"], registry=r
        )
        self.camera_reconnects = Counter("edge_camera_reconnects_total", "Camera reconnects.", registry=r)
        self.verdicts = Counter("edge_verdicts_total", "Verdicts, by result.", ["result"], registry=r)
        self.late_frames = Counter("edge_late_frames_total", "Verdicts later than the latency budget.", registry=r)
        self.child_restarts = Counter("edge_child_restarts_total", "Child process restarts.", ["process"], registry=r)
        self.evidence_alarm = Gauge(
            "edge_evidence_alarm", "1 while evidence is not being saved (disk full).", registry=r
        )
        self.results_alarm = Gauge(
            "edge_results_alarm", "1 while verdicts cannot be written to the results database.", registry=r
        )
        self.verdicts_pending = Gauge(
            "edge_verdicts_pending", "Verdicts held in memory until the results database can be written.", registry=r
        )
        self.verdicts_lost = Counter(
            "edge_verdicts_lost_total", "Verdicts never written to the results database (queue full or exit).",
            registry=r,
        )  # fmt: skip
        self.results_pruned = Counter(
            "edge_results_pruned_total", "Verdict rows deleted by retention (storage.retention_days/max_db_mb).",
            registry=r,
        )  # fmt: skip
        self.ring_slots_pending = Gauge("edge_ring_slots_pending", "Ring slots written but not yet scored.", registry=r)
        self.model_runtime = Gauge(
            "edge_model_runtime_info",
            "1 for the runtime each model runs on: backend, device, where its crop runs.",
            ["model", "backend", "device", "crop"],
            registry=r,
        )
        self.runtime_fallback = Gauge(
            "edge_runtime_fallback_alarm",
            "1 while a model runs on ONNX Runtime (CPU) because its GPU engine failed the parity gate.",
            ["model"],
            registry=r,
        )
        self.mask_iou = Gauge(
            "edge_foreground_mask_iou",
            "IoU of a model's predicted foreground (BAAD) against the calibrated ROI mask, last scored frame.",
            ["model"],
            registry=r,
        )
        self.mask_alarm = Gauge(
            "edge_foreground_mask_alarm",
            "1 while a model's predicted foreground disagrees with the ROI (IoU below its mask_iou_floor).",
            ["model"],
            registry=r,
        )
        for outcome in FRAME_OUTCOMES:  # export zeros from the start, so rate() has a baseline
            self.frames.labels(outcome=outcome)
        for result in RESULTS:
            self.verdicts.labels(result=result)

    def observe(self, record: VerdictRecord) -> None:
        """Count one verdict and its per-stage latencies (``stage_ms`` keys become the ``stage`` label)."""
        for stage, ms in record.stage_ms.items():
            self.stage_latency.labels(stage=stage).observe(ms / 1000.0)
        self.frames.labels(outcome="error" if record.verdict == "ERROR" else "scored").inc()
        self.verdicts.labels(result=record.verdict).inc()
        if record.late:
            self.late_frames.inc()
        for s in record.scores:
            if s.mask_iou is not None:
                self.mask_iou.labels(model=s.model).set(s.mask_iou)
                self.mask_alarm.labels(model=s.model).set(int(s.mask_alarm))

    def set_runtimes(self, runtimes: dict[str, dict[str, str]]) -> None:
        """Export what each model runs on (a fresh inference child may resolve differently: old labels go)."""
        self.model_runtime.clear()
        for model, r in runtimes.items():
            self.model_runtime.labels(model=model, backend=r["backend"], device=r["device"], crop=r["crop"]).set(1)
            self.runtime_fallback.labels(model=model).set(int(bool(r.get("fallback"))))

    def observe_gated(self) -> None:
        """A frame the ROI gate skipped (no part in view)."""
        self.frames.labels(outcome="gated").inc()

    def observe_dropped(self, reason: str, count: int = 1) -> None:
        """Frames dropped before scoring; counted in both the outcome and the per-reason counter."""
        self.frames.labels(outcome="dropped").inc(count)
        self.frames_dropped.labels(reason=reason).inc(count)

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> MetricsServer:
        """Start ``/metrics`` on ``host:port`` (port 0: any free port, see ``.port``) in a daemon thread."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        return MetricsServer(server, thread)
