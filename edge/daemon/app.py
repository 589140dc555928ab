"""EdgeApp, the composition root: owns the ring, starts capture and inference, writes every verdict to the sinks.

Start order: results database → evidence → MQTT (outbox, rollout agent) → metrics → ring → capture → inference.
Stop runs in reverse and drains: capture stops and closes the ring's stream, inference scores every frame already
published and says ``done``, and every record on the queue is written before the database is closed. A bundle the
rollout agent installed stops the daemon the same way, with exit code ``EXIT_ROLLOUT`` (75) instead of 0.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np
from prometheus_client import Gauge
from pydantic import TypeAdapter

from drivers import SourceConfig, create_source
from drivers.base import FrameBuffers, FrameSource
from drivers.errors import EndOfStreamError
from drivers.realsense import RealSenseSourceConfig
from edge.capture import check_fits, pump, wait_for_consumer
from edge.core.errors import EdgeError
from edge.core.frame import Frame, StreamSpec
from edge.core.metrics import Metrics
from edge.core.ringbuf import FrameRing
from edge.daemon.channel import ChildPipes
from edge.daemon.config import EdgeConfig
from edge.daemon.evidence import EvidenceError, EvidenceStore
from edge.daemon.health import SdNotifier, Watchdog, runtime_summary, status_line
from edge.daemon.inference import FrameEvent, inference_main
from edge.daemon.mqtt import MqttPublisher
from edge.daemon.preflight import BundleStart
from edge.daemon.record import Evidence, VerdictRecord
from edge.daemon.release import ReleaseState, ReleaseTracker, verify_release
from edge.daemon.results import ResultWriter
from edge.daemon.store import ResultStore, StoreError
from edge.daemon.supervisor import (
    MonitoredProcess,
    ParentWatch,
    RestartBudget,
    SupervisorError,
    child_init,
    configure_logging,
)
from edge.plant.outbox import Outbox
from edge.plant.record import new_result_id
from edge.plant.rollout import EXIT_ROLLOUT, RolloutAgent, rollout_model
from edge.plant.s3 import ObjectStore
from engines.runtime.select import resolve

if TYPE_CHECKING:
    from collections.abc import Callable

    from edge.plant.opcua import InspectionResult, OpcUaServer

log = logging.getLogger(__name__)

DB_NAME = "results.db"
STATUS_EVERY_S = 2.0
# While an inference child may be building TensorRT engines (first start, or a changed ONNX / TensorRT / GPU /
# precision), systemd is asked for more start-up time in these steps, so TimeoutStartSec does not kill the build.
EXTEND_EVERY_S, EXTEND_BY_S = 10.0, 30
PRUNE_EVERY_S = 60.0


class ResumingSource(FrameSource):
    """The configured source, counting frames read into a shared counter that survives a capture restart.

    A restarted capture of a recording skips the frames earlier captures already read, so no frame is
    published twice; a live camera's sequence numbers continue from the counter, so they never go backwards.
    """

    def __init__(self, inner: FrameSource, progress: Any, live: bool) -> None:
        self.inner, self.progress, self.live = inner, progress, live
        self.offset = 0

    def open(self) -> StreamSpec:
        spec = self.inner.open()
        done = int(self.progress.value)
        if self.live:
            self.offset = done
        else:
            for _ in range(done):  # raises EndOfStreamError if the file ended meanwhile: a clean end
                self.inner.read(self.inner.default_timeout_s())
            if done:
                log.info("event=capture_resumed skipped_frames=%d", done)
        return spec

    def read(self, timeout_s: float, out: FrameBuffers | None = None) -> Frame:
        frame = self.inner.read(timeout_s, out=out)
        self.progress.value += 1  # lock-free: one capture process at a time writes it
        return replace(frame, sequence=frame.sequence + self.offset) if self.offset else frame

    def close(self) -> None:
        self.inner.close()

    @property
    def spec(self) -> StreamSpec:
        return self.inner.spec

    @property
    def ready(self) -> bool:
        return self.inner.ready

    def default_timeout_s(self) -> float:
        return self.inner.default_timeout_s()


def capture_child(  # noqa: PLR0917  (spawn passes a process's arguments by position)
    source_json: dict[str, Any], ring_name: str, stop: Any, progress: Any, parent_pid: int, consumer_ready: Any
) -> None:
    """Entry point of the capture process (spawn): source → ring until stopped or the recording ends.

    The source is opened only once the inference process is ready (models loaded and warmed up): frames published
    while it loads would be overwritten in a ``latest`` ring (counted dropped) for no reason but start-up.
    """
    child_init()
    configure_logging(role="capture")
    config = TypeAdapter(SourceConfig).validate_python(source_json)
    live = isinstance(config, RealSenseSourceConfig)
    watch = ParentWatch(stop, parent_pid)
    with FrameRing.attach(ring_name) as ring:
        if not wait_for_consumer(consumer_ready, watch):
            log.info("event=capture_stopped_before_start")
            return
        source = ResumingSource(create_source(config), progress, live)
        try:
            source.open()
        except EndOfStreamError:
            ring.writer().close_stream()
            return
        log.info("event=capture_open source=%s", source.spec.source)
        try:
            check_fits(source.spec, ring.spec)
            summary = pump(source, ring.writer(), watch)
        finally:
            source.close()
    log.info("event=capture_done published=%d timeouts=%d ended=%s", summary.published, summary.timeouts, summary.ended)


COUNTERS = (
    "scored", "gated", "waiting", "dropped", "capture_lost", "torn", "late", "ok", "ng", "error",
    "evidence_saved", "evidence_skipped", "restarts_capture", "restarts_inference", "verdicts_lost", "published",
)  # fmt: skip


@dataclass
class RunStats:
    """What the supervisor counted; every frame read from the source is scored, gated, waiting (per-part), dropped
    (lost in the ring: overwritten or torn) or capture_lost (read by a capture process killed before publishing it)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    totals_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    frame_times: deque[float] = field(default_factory=lambda: deque(maxlen=120))

    @property
    def accounted(self) -> int:
        c = self.counts
        return c["scored"] + c["gated"] + c["waiting"] + c["dropped"] + c["capture_lost"]

    def fps(self) -> float:
        t = self.frame_times
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0

    def p95(self) -> float:
        return float(np.percentile(list(self.totals_ms), 95)) if self.totals_ms else 0.0


class EdgeApp:
    """The daemon: ``run()`` returns the process exit code (0 after an orderly stop or the end of a recording)."""

    def __init__(
        self,
        config: EdgeConfig,
        release: ReleaseState | None = None,
        spec: StreamSpec | None = None,
        bundle: BundleStart | None = None,
    ) -> None:
        """``config`` is what runs (with plant.rollout: the current bundle's files, edge.daemon.preflight)."""
        self.config = config
        self.bundle = bundle or BundleStart()
        self._release = release  # verified by the caller (edge-daemon does it before anything starts), else in run()
        self.spec = spec  # the source's stream as preflight read it (None: probe the source at start)
        self.data_dir = config.storage.data_dir
        self.db_path = self.data_dir / DB_NAME
        self.stats = RunStats()
        self.notifier = SdNotifier()
        self.watchdog = Watchdog(self.notifier)
        self.metrics = Metrics()
        self._stop_reason = ""
        self._stop_signals = 0
        self._reload = False
        self._ready = False
        self._done = False
        self._next_sequence = -1  # one past the newest frame sequence accounted (-1: none yet)
        self.runtime = ""  # what the models run on, as the inference child reported it
        self._builds_engines = resolve(config.runtime).backend == "tensorrt"  # checked by main() already
        self._inference_ready = False
        self.run_id = 0
        self._capture_lost_known = 0  # frames read by dead capture processes and never published (see _account)
        self._next_prune = 0.0
        self.opcua: OpcUaServer | None = None
        self._opcua_result: Callable[[VerdictRecord], InspectionResult] | None = None
        self.rollout: RolloutAgent | None = None
        self._installed = ""  # the bundle the rollout agent installed: stop in order, exit EXIT_ROLLOUT

    # -- signals ---------------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop_signals += 1
            self._stop_reason = signal.Signals(signum).name

    def install_signals(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    # -- lifecycle -------------------------------------------------------------------------------
    def run(self) -> int:
        self.install_signals()
        release = self._release if self._release is not None else verify_release(self.config)
        if (spec := self.spec) is None:
            with create_source(self.config.source) as probe:
                spec = probe.spec
        plant = self.config.plant
        self.store = ResultStore(self.db_path, outbox=plant.enabled)
        self.store.open()  # a full disk here is an error naming the disk (exit 1: systemd retries)
        self.run_id = self.store.start_run({
            "source": spec.source, "config": self.config.model_dump(mode="json"), "versions": {"ring": "1"},
            "camera_serial": spec.serial,
        })  # fmt: skip
        self.release = ReleaseTracker(self.metrics.registry, self.store, self.run_id)
        self.release.accept(release, "start")
        if unfinished := self.store.unfinished_runs():
            log.warning("event=unfinished_runs count=%d latest=%d cause='a daemon stopped without its final count "
                        "(killed or power lost)' see='edge-daemon --summary %s --run-id %d'", len(unfinished),
                        unfinished[-1], self.db_path, unfinished[-1])  # fmt: skip
        s = self.config.storage
        self.results = ResultWriter(
            self.store, self.metrics, pending_max=s.pending_max, outage_limit_s=s.outage_limit_s
        )
        if s.retention_days is not None or s.max_db_mb is not None:
            self.store.enable_incremental_vacuum()
            self._prune()
        self.evidence = self._open_evidence()
        self.mqtt = None
        if self.config.mqtt.enabled:  # with the plant on: MQTT v5, the station's …/status, results via the outbox
            status = plant.station_id().topic("status") if plant.enabled else None
            self.mqtt = MqttPublisher(self.config.mqtt, serial=spec.serial, status_topic=status, v5=plant.enabled)
        self.outbox, self.rollout = self._open_outbox(), self._open_rollout()  # after MQTT: they use its connection
        self.opcua = self._open_opcua(spec.serial)
        server = None
        if self.config.metrics.enabled:
            server = self.metrics.serve(self.config.metrics.host, self.config.metrics.port)
            log.info("event=metrics_serving url=http://%s:%d/metrics", self.config.metrics.host, server.port)
        policy = self.config.ring_policy()
        code = 0
        with FrameRing.create(spec, slots=self.config.ring.slots, policy=policy) as ring:
            self.ring = ring
            log.info("event=start source=%s ring=%s policy=%s slots=%d db=%s", spec.source, ring.name, policy,
                     ring.slots, self.db_path)  # fmt: skip
            self._start_children(ring)
            try:
                self._loop(spec.source, ring)
            except EdgeError as err:  # a spent restart budget, a results outage past its limit
                log.error("event=fatal error=%r", str(err))
                self._station_state("Error")
                code = 1
            finally:  # whatever happened, the children are stopped and what can be written is written
                if self._shutdown(ring):
                    code = code or 1
        if server is not None:
            server.close()
        if self.opcua is not None:
            self.opcua.close()
        return self._exit_code(code)

    def _exit_code(self, code: int) -> int:
        """``code``, or EXIT_ROLLOUT after an orderly stop for an installed bundle (the service manager restarts)."""
        if self._installed and code == 0:
            log.warning("event=exit_for_rollout bundle=%s exit_code=%d", self._installed, EXIT_ROLLOUT)
            return EXIT_ROLLOUT
        return code

    def _open_opcua(self, serial: str) -> OpcUaServer | None:
        """The OPC UA server (``opcua.enabled``), serving until run() returns; its results come from _on_record."""
        if not self.config.opcua.enabled:
            return None
        try:
            from edge.plant.opcua import OpcUaServer, VerdictResult  # noqa: PLC0415 - asyncua: the 'opcua' extra
        except ImportError as err:
            raise EdgeError(
                f"opcua.enabled is set but the OPC UA server cannot be loaded ({err})",
                "install the 'opcua' extra (pip install 'drumsight-edge[opcua]') or set opcua.enabled: false",
            ) from None
        self._opcua_result = lambda record: VerdictResult.of(record, serial)
        opcua = OpcUaServer(self.config.opcua)
        opcua.start()
        return opcua

    def _station_state(self, state: Literal["Operational", "Halted", "Error"]) -> None:
        """The OPC UA vision state (an Error stays until the server closes)."""
        if self.opcua is not None and self.opcua.state != "Error":
            self.opcua.set_state(state)

    def _open_evidence(self) -> EvidenceStore | None:
        s = self.config.storage
        # The inference process already samples OK frames (it sends pixels for every Nth OK only), so the store
        # keeps every OK record that arrives with evidence (1), or none when sampling is off (0).
        keep_ok = min(s.sample_ok_every, 1)
        try:
            return EvidenceStore(
                self.data_dir / "evidence", int(s.evidence_quota_mb * 1e6), keep_ok, ng_reserve=s.evidence_ng_reserve
            )
        except EvidenceError as err:  # verdicts never depend on evidence: run on, with the alarm raised
            log.error("event=evidence_unavailable error=%r", str(err))
            self.metrics.evidence_alarm.set(1)
            return None

    def _open_outbox(self) -> Outbox | None:
        plant = self.config.plant
        if not plant.enabled or self.mqtt is None:
            return None
        objects = ObjectStore(plant.s3) if plant.s3 is not None else None
        outbox = Outbox(self.store, self.mqtt, plant, objects, self.metrics.registry)
        outbox.start()
        log.info("event=plant_outbox topic=%s evidence=%s", outbox.topic,
                 f"s3://{plant.s3.bucket}" if plant.s3 is not None else "none")  # fmt: skip
        return outbox

    def _open_rollout(self) -> RolloutAgent | None:
        """The rollout agent (``plant.rollout.enabled``; preflight checked MQTT and S3), following …/config/desired."""
        plant = self.config.plant
        if not plant.rollout.enabled or self.mqtt is None or plant.s3 is None:
            return None
        b = self.bundle
        running = b.bundle or "configured files"
        if b.rolled_back is not None:
            log.error("event=rollout_rolled_back bundle=%s running=%r error=%r", b.rolled_back[0], running,
                      b.rolled_back[1])  # fmt: skip
        model = self.config.models[rollout_model(self.config)]
        log.info("event=rollout_bundle bundle=%r model=%s onnx=%s", running, model.name, model.onnx)
        Gauge(
            "edge_rollout_bundle_info", "1 for the rollout bundle the station runs ('' : its configured files).",
            ["bundle"], registry=self.metrics.registry,
        ).labels(bundle=b.bundle).set(1)  # fmt: skip
        agent = RolloutAgent(
            self.mqtt, plant.station_id().prefix, ObjectStore(plant.s3), self.data_dir, self.config.runtime,
            golden=plant.rollout.golden, on_installed=self._on_installed,
        )  # fmt: skip
        agent.start()
        return agent

    def _on_installed(self, folder: Path) -> None:
        """The agent swapped ``bundles/current`` to ``folder`` (its thread): stop in order, as on SIGTERM."""
        self._installed = folder.name
        self._stop_reason = "rollout"

    def _start_children(self, ring: FrameRing) -> None:
        ctx = mp.get_context("spawn")
        self.pipes = ChildPipes(ctx)  # fresh pipes per inference start: a killed child can leave nothing locked
        self.capture_stop = ctx.Value("b", 0, lock=False)
        # Lock-free shared values: a capture child SIGKILLed while holding a lock (an mp.Value's or an mp.Event's)
        # would leave it held forever and hang the restarted child. One writer each: capture / the supervisor.
        progress = self.progress = ctx.Value("q", 0, lock=False)
        ready = self.consumer_ready = ctx.Value("b", 0, lock=False)  # set once, at the first inference 'ready'
        source_json = self.config.source.model_dump(mode="json")
        config_json = self.config.model_dump(mode="json")
        me = os.getpid()
        sup = self.config.supervision
        self.capture = MonitoredProcess(
            ctx, "capture", target=capture_child,
            args=lambda _n: (source_json, ring.name, self.capture_stop, progress, me, ready),
            budget=RestartBudget(sup.max_restarts, sup.window_s), on_restart=self._count_restart,
        )  # fmt: skip
        self.inference = MonitoredProcess(
            ctx, "inference", target=inference_main,
            args=lambda n: self._inference_args(n, config_json, ring.name, me),
            budget=RestartBudget(sup.max_restarts, sup.window_s), on_restart=self._count_restart,
            after_start=self.pipes.started,
        )  # fmt: skip
        self.inference.start()
        self.capture.start()

    def _inference_args(self, restarts: int, config_json: dict[str, Any], ring: str, me: int) -> tuple[Any, ...]:
        """Arguments of one inference start. A restart first reads everything the dead child sent (its pipe ends in
        EOF), so the successor counts only the frames lost with it as dropped, from the newest accounted one."""
        if restarts:
            self._pump_results(0.0)
        return (config_json, ring, *self.pipes.for_child(), me, self._next_sequence)

    def _count_restart(self, name: str) -> None:
        self.stats.counts[f"restarts_{name}"] += 1
        if name == "capture":
            self._note_capture_lost()
        self.metrics.child_restarts.labels(process=name).inc()

    def _loop(self, source: str, ring: FrameRing) -> None:
        next_status = next_extend = time.monotonic()
        while not self._stop_reason and not self._done:
            if self._builds_engines and not self._inference_ready and time.monotonic() >= next_extend:
                next_extend = time.monotonic() + EXTEND_EVERY_S
                self.notifier.notify(f"EXTEND_TIMEOUT_USEC={EXTEND_BY_S * 1_000_000}")
                self.notifier.notify("STATUS=building or checking TensorRT engines")
            if self._reload:
                self._reload = False
                log.info("event=reload_requested signal=SIGHUP")
                if self.release.reload(self.config):  # an unsigned or altered bundle is refused: the running one stays
                    self.pipes.send_control("reload")
            self._pump_results(0.2)
            self.results.retry()
            self.capture.check()
            self.inference.check()
            self.watchdog.feed(self.stats.accounted)
            if time.monotonic() >= self._next_prune and not self.results.alarm:
                self._prune()
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + STATUS_EVERY_S
                self._status(source, ring)
        if self._installed:
            log.info("event=stop_requested reason=rollout bundle=%s", self._installed)
        elif self._stop_reason:
            log.info("event=stop_requested signal=%s", self._stop_reason)

    def _status(self, source: str, ring: FrameRing) -> None:
        self.metrics.ring_slots_pending.set(ring.stats().pending)
        self.metrics.fps.set(self.stats.fps())
        bundle = self.bundle.bundle if self.rollout is not None else ""
        line = status_line(source, self.stats.fps(), self.stats.p95(), self.stats.counts, runtime=self.runtime,
                           bundle=bundle)  # fmt: skip
        self.notifier.notify(f"STATUS={line}")
        self.results.store_counters(self.run_id, self.counters())

    def _shutdown(self, ring: FrameRing) -> int:
        """Stop capture, close the stream, let inference drain the ring, write every record, close the sinks.

        Bounded in time whatever fails (drain timeout, then each child is killed), and a sink that fails here is
        logged, not raised. Returns the number of verdicts lost (not written to the database).
        """
        self.notifier.notify("STOPPING=1")
        self._station_state("Halted")
        self.capture_stop.value = 1
        try:
            self.capture.stop(10.0)
            ring.writer().close_stream()
            self._note_capture_lost()
            deadline = time.monotonic() + self.config.supervision.drain_timeout_s
            while not self._done and time.monotonic() < deadline and not self._stop_twice():
                self._pump_results(0.2)
                if not self.inference.alive and not self._done:
                    try:
                        self.inference.check()
                    except SupervisorError as err:
                        log.error("event=drain_aborted error=%r", str(err))
                        break
        finally:
            self.inference.stop(5.0)
            self.capture.stop(0.0)
        self._pump_results(0.0)
        c = self.stats.counts
        c["capture_lost"] += self._capture_lost_known - c["capture_lost"]  # never followed by a published frame
        stats = ring.stats()
        log.info("event=ring_final written=%d delivered=%d dropped=%d torn=%d capture_lost=%d", stats.written,
                 stats.delivered, stats.dropped, stats.torn, c["capture_lost"])  # fmt: skip
        lost = c["verdicts_lost"] = self.results.close()
        if lost:
            log.error("event=verdicts_lost total=%d (counted in the summary; not in the database)", lost)
        if self.outbox is not None:
            self.outbox.stop()
        if self.rollout is not None:  # before MQTT closes: an install under way still reports its outcome
            self.rollout.stop(10.0)
        log.info("event=run_final run_id=%d counters=%s", self.run_id, json.dumps(self.counters(), sort_keys=True))
        try:
            self.store.finish_run(self.run_id, self.counters())
        except StoreError as err:
            log.error("event=final_counters_not_stored error=%r counters=%s", str(err), self.counters())
        try:
            self.store.close()
        except StoreError as err:
            log.error("event=db_close_failed error=%r", str(err))
        if self.mqtt is not None:
            self.mqtt.close()
        self.pipes.close()
        return lost

    def _stop_twice(self) -> bool:
        """A second SIGTERM/SIGINT during the drain: stop draining now (frames still in the ring become dropped)."""
        return self._stop_signals >= 2

    def _note_capture_lost(self) -> None:
        """After a capture process died: frames it read but never published (read count − ring's written count)."""
        self._capture_lost_known = max(self._capture_lost_known, int(self.progress.value) - self.ring.stats().written)

    def _prune(self) -> None:
        """Retention (``storage.retention_days`` / ``storage.max_db_mb``), every PRUNE_EVERY_S while writes work."""
        self._next_prune = time.monotonic() + PRUNE_EVERY_S
        s = self.config.storage
        if s.retention_days is None and s.max_db_mb is None:
            return
        max_age = None if s.retention_days is None else s.retention_days * 86400.0
        max_bytes = None if s.max_db_mb is None else int(s.max_db_mb * 1e6)
        try:
            done = self.store.prune(max_age_s=max_age, max_bytes=max_bytes)
        except StoreError as err:
            log.warning("event=prune_failed error=%r", str(err))
            return
        if done.deleted:
            self.metrics.results_pruned.inc(done.deleted)
            log.info("event=pruned verdicts=%d bytes_before=%d bytes_after=%d", done.deleted, done.bytes_before,
                     done.bytes_after)  # fmt: skip

    # -- results ---------------------------------------------------------------------------------
    def _pump_results(self, timeout_s: float) -> None:
        """Handle every message the inference child (and a dead predecessor) sent; wait up to ``timeout_s``."""
        for kind, payload, extra in self.pipes.inbox.messages(timeout_s):
            if kind == "record":
                self._on_record(payload, extra)
            elif kind == "frame":
                self._on_frame_event(payload)
            elif kind == "done":
                self._done = True
            elif kind == "evidence_warmup":
                self._warm_evidence(payload["pid"], extra)
            elif kind == "ready":
                if self.rollout is not None and not self._inference_ready:  # scoring with its bundle now
                    self.rollout.started(self.bundle.rolled_back)
                self._inference_ready = True
                self._station_state("Operational")
                runtimes = payload.get("runtimes", {})
                self.runtime = runtime_summary(runtimes)
                self.metrics.set_runtimes(runtimes)
                log.info("event=inference_ready pid=%s models=%s runtime=%s", payload["pid"], payload["models"],
                         self.runtime)  # fmt: skip
                self.consumer_ready.value = 1  # after the log line: capture opens its source (stays set on restarts)
                for name, r in runtimes.items():
                    if r.get("fallback"):
                        log.error("event=runtime_fallback model=%s reason=%r", name, r["fallback"])

    def _warm_evidence(self, pid: int, evidence: Evidence) -> None:
        """Encode the inference child's blank-frame evidence as a save would (nothing written), before the first
        frame: the first evidence's one-time allocations happen at start-up, not on the first NG part."""
        if self.evidence is None:  # evidence unavailable (alarm raised at start): nothing to warm
            return
        t0 = time.perf_counter()
        try:
            size = self.evidence.warm(evidence)
        except (ValueError, cv2.error) as err:  # best effort, like every evidence write: verdicts do not wait on it
            log.warning("event=evidence_warmup_failed pid=%d error=%r", pid, str(err))
            return
        log.info("event=evidence_warmed pid=%d bytes=%d ms=%.1f", pid, size, (time.perf_counter() - t0) * 1e3)

    def _account(self, sequence: int, gap: int) -> None:
        self._next_sequence = max(self._next_sequence, sequence + 1)
        c = self.stats.counts
        # The first missing sequence numbers after a capture death are the frames the dead process had read but not
        # published: capture_lost. The rest of a gap was lost in the ring (overwritten): dropped, as the ring counts.
        in_capture = min(gap, self._capture_lost_known - c["capture_lost"])
        c["capture_lost"] += in_capture
        c["dropped"] += gap - in_capture
        if gap:
            self.metrics.observe_dropped("sequence_gap", gap)
        self.stats.frame_times.append(time.monotonic())
        if not self._ready:
            self._ready = True
            self.notifier.notify("READY=1")
            log.info("event=ready")

    def _on_frame_event(self, event: FrameEvent) -> None:
        outcome = "dropped" if event.outcome == "torn" else event.outcome
        self.stats.counts[outcome] += 1
        if event.outcome == "torn":
            self.stats.counts["torn"] += 1
            self.metrics.observe_dropped("torn")
        elif event.outcome == "gated":
            self.metrics.observe_gated()
        else:
            self.metrics.frames.labels(outcome=event.outcome).inc()
        self._account(event.sequence, event.gap_before)

    def _on_record(self, record: VerdictRecord, evidence: Evidence | None) -> None:
        record = replace(record, result_id=new_result_id())
        self.results.write(record)  # first: the verdict is durable (or queued, during an outage) before the rest
        c = self.stats.counts
        c["scored"] += 1
        c[record.verdict.lower()] += 1
        self.stats.totals_ms.append(record.stage_ms.get("total", 0.0))
        c["late"] += int(record.late)
        self.metrics.observe(record)
        self._account(record.sequence, record.gap_before)
        if self.mqtt is not None and self.outbox is None:
            self.mqtt.publish(record)
        if self.opcua is not None and self._opcua_result is not None:
            self.opcua.publish(self._opcua_result(record))
        if evidence is not None and self.evidence is not None:
            was_alarm = self.evidence.alarm
            saved = self.evidence.save(record, evidence)
            c["evidence_saved" if saved else "evidence_skipped"] += 1
            if saved is not None and self.outbox is not None:
                self.results.attach_evidence(record.result_id, saved)
            self.metrics.evidence_alarm.set(int(self.evidence.alarm))
            if self.evidence.alarm != was_alarm:
                log.warning("event=evidence_alarm state=%s reason=%r", "on" if self.evidence.alarm else "off",
                            self.evidence.alarm_reason)  # fmt: skip
        if self.outbox is not None:
            self.outbox.ready(record.result_id)
        if record.verdict != "OK" or record.late or record.gap_before:
            log.info("event=verdict sequence=%d part=%s verdict=%s late=%s gap_before=%d total_ms=%.1f",
                     record.sequence, record.part_id, record.verdict, record.late, record.gap_before,
                     record.stage_ms.get("total", 0.0))  # fmt: skip

    def counters(self) -> dict[str, int]:
        c = self.stats.counts
        c["published"] = self.ring.stats().written  # frames capture put into the ring (kept if the daemon is killed)
        c["verdicts_lost"] = self.results.lost
        return dict(c)

    @property
    def evidence_dir(self) -> Path:
        return self.data_dir / "evidence"
