"""The inference process: ring → ROI crop → part gating → every configured model → verdict records on a queue."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from calibration.roi import RoiFile, load_roi
from edge.core.errors import EdgeError
from edge.core.frame import Frame, StreamSpec
from edge.core.ringbuf import FrameRing, RingClosedError, RingReader, RingTimeoutError, TornReadError
from edge.core.scoring import file_sha256, load_scoring
from edge.daemon.channel import Outbox, control_messages
from edge.daemon.config import EdgeConfig, GatingConfig
from edge.daemon.evidence import render_overlay
from edge.daemon.record import Evidence, ModelScore, VerdictRecord
from edge.daemon.supervisor import child_init, configure_logging
from edge.inspect import Inspection, Inspector
from engines.runtime.select import RunnerPlan, resolve

log = logging.getLogger(__name__)

Outcome = Literal["gated", "waiting", "torn"]


@dataclass(frozen=True, slots=True)
class FrameEvent:
    """A frame that produced no verdict record: gated (no drum), waiting (per-part: not its scoring frame), torn.

    ``gap_before`` counts frames missing from the sequence before this one (dropped by the ring or lost).
    """

    sequence: int
    outcome: Outcome
    gap_before: int
    roi_fill: float
    total_ms: float


@dataclass(frozen=True, slots=True)
class Models:
    """The loaded inspectors and the versions of what they were built from (reloaded together on SIGHUP)."""

    roi: RoiFile | None  # None: no ROI file (every model of crop mode 'image')
    inspectors: dict[str, Inspector]
    model_versions: dict[str, str]
    scoring_versions: dict[str, str]

    def runtimes(self) -> dict[str, dict[str, str]]:
        """Per model: backend, device, crop device, why, and the fallback reason if the parity gate failed."""
        return {
            name: {**ins.choice.labels(), "reason": ins.choice.reason, "fallback": ins.choice.fallback}
            for name, ins in self.inspectors.items()
        }

    def close(self) -> None:
        for inspector in self.inspectors.values():
            inspector.close()


def engine_cache(config: EdgeConfig, model: str) -> Path:
    """Where a model's TensorRT engines are built and cached: ``<data_dir>/engines/<model name>/``."""
    return config.storage.data_dir / "engines" / model


WARMUP_RUNS = 2  # inferences on zeros per model before it serves (ONNX Runtime's arena and kernels; measured)


def load_models(config: EdgeConfig, frame_spec: StreamSpec) -> Models:
    """Build one Inspector per configured model on the configured runtime (resolved once for all of them); the
    scoring file must belong to its ONNX (checked by Inspector). Each model runs WARMUP_RUNS times on zeros before it
    is returned, so the first frame after a start or a reload does not pay the runtime's lazy initialisation."""
    roi = load_roi(config.roi) if config.roi is not None else None
    choice = resolve(config.runtime)
    inspectors: dict[str, Inspector] = {}
    try:
        for m in config.models:
            plan = RunnerPlan(config.runtime, engine_dir=engine_cache(config, m.name), choice=choice)
            inspectors[m.name] = Inspector(frame_spec, roi, m.onnx, load_scoring(m.scoring), plan=plan)
            ins = inspectors[m.name]
            t0 = time.perf_counter()
            ins.runner.warmup(WARMUP_RUNS)
            log.info(
                "event=model_runtime model=%s engine=%s runtime=%r warmup_ms=%.0f",
                m.name, ins.runner.name, ins.choice.describe(), (time.perf_counter() - t0) * 1e3,
            )  # fmt: skip
    except BaseException:
        for built in inspectors.values():
            built.close()
        raise
    return Models(
        roi=roi,
        inspectors=inspectors,
        model_versions={m.name: file_sha256(m.onnx)[:12] for m in config.models},
        scoring_versions={m.name: file_sha256(m.scoring)[:12] for m in config.models},
    )


def register_ring(models: Models, ring: FrameRing) -> None:
    """Page-lock the ring's shared memory for every CUDA crop (asynchronous uploads; mapped on a Jetson)."""
    for name, ins in models.inspectors.items():
        register = getattr(ins.cropper, "register_host", None)
        if register is not None:
            log.info("event=ring_registered model=%s how=%r", name, register(ring.memory()))


class PartGate:
    """Decides per frame: gated (no drum), score it, or wait (per-part mode scores each drum once when stable)."""

    def __init__(self, gating: GatingConfig) -> None:
        self.gating = gating
        self.streak = 0
        self.part_id = 0
        self._part_scored = False

    def decide(self, roi_fill: float) -> Literal["gated", "score", "waiting"]:
        if roi_fill < self.gating.min_roi_fill:
            self.streak, self._part_scored = 0, False
            return "gated"
        self.streak += 1
        if self.streak == 1:
            self.part_id += 1  # a drum after an empty gap is a new part
        if self.gating.mode == "per_frame":
            return "score"
        if not self._part_scored and self.streak >= self.gating.stable_frames:
            self._part_scored = True
            return "score"
        return "waiting"


@dataclass(slots=True)
class _Claimed:
    """What was taken from a ring slot before releasing it: the frame's metadata, gating, crop times."""

    frame: Frame  # metadata only after the slot is released: its arrays must not be read any more
    gap: int
    fill: float
    decision: Literal["score", "gated", "waiting"]
    publish_ns: int
    stages: dict[str, float]
    crop_ms: list[float] = field(default_factory=list)

    @property
    def sequence(self) -> int:
        return self.frame.sequence


class InferenceLoop:
    """State of one inference process: models, gate, sequence tracking, evidence sampling."""

    def __init__(
        self, config: EdgeConfig, reader: RingReader, frame_spec: StreamSpec, results: Outbox, next_sequence: int = -1
    ) -> None:
        self.config, self.reader, self.spec, self.results = config, reader, frame_spec, results
        self.models = load_models(config, frame_spec)
        self.ring: FrameRing | None = None  # set when the ring's memory is registered for the CUDA crops
        self.gate = PartGate(config.gating)
        self.next_sequence = next_sequence  # a restarted child continues from the daemon's count
        self.ok_seen = 0
        self.budget_ms = config.latency_budget_ms
        self._model_configs = {m.name: m for m in config.models}
        self._alarms: dict[str, bool] = {}  # model → foreground mask alarm raised
        self._streaks: dict[str, int] = {}  # model → consecutive frames disagreeing with the alarm state
        self._color = np.empty(frame_spec.color_shape, dtype=np.uint8)  # the last scored frame, for evidence
        self._depth = np.empty(frame_spec.depth_shape, dtype=np.uint16)

    def reload(self) -> None:
        """SIGHUP: reload ROI and scoring files; a bad file keeps the running models and is logged."""
        try:
            fresh = load_models(self.config, self.spec)
        except EdgeError as err:
            log.error("event=reload_failed error=%r action=keep_previous", str(err))
            return
        self.models.close()  # first: the old CUDA crops unregister the ring's memory before the new ones register it
        self.models = fresh
        if self.ring is not None:
            register_ring(fresh, self.ring)
        log.info(
            "event=reloaded roi_version=%s scoring=%s",
            fresh.roi.version if fresh.roi else "none",
            ",".join(fresh.scoring_versions.values()),
        )

    def _gap(self, sequence: int) -> int:
        gap = sequence - self.next_sequence if self.next_sequence >= 0 else sequence
        if gap < 0:
            log.warning("event=sequence_restart sequence=%d expected=%d", sequence, self.next_sequence)
            gap = 0
        self.next_sequence = sequence + 1
        return gap

    def step(self, timeout_s: float) -> None:
        """Read one frame and send its record or event; RingTimeoutError/RingClosedError propagate.

        Only the crop reads the ring slot (zero-copy); the engines then run on the crops' own buffers, so a
        slow model never holds the slot and a backlog drops whole frames instead of tearing half-read ones.
        """
        t_wait = time.perf_counter_ns()
        claimed: _Claimed | None = None
        try:
            with self.reader.read(timeout_s) as frame:
                t_claim = time.perf_counter_ns()
                claimed = self._claim(frame, (t_claim - t_wait) / 1e6, t_claim)
        except TornReadError as err:
            log.warning("event=torn_read error=%r", str(err))
            if claimed is None:  # torn before the crop finished: _claim raised, nothing to replace
                raise
            self.results.put(("frame", FrameEvent(claimed.sequence, "torn", claimed.gap, 0.0, 0.0), None))
            return
        self.results.put(self._finish(claimed))

    def _claim(self, frame: Frame, wait_ms: float, t_claim: int) -> _Claimed:
        """Everything that needs the slot: gap, gating, every model's crop, and pixels kept for evidence."""
        publish_ns = self.reader.last_publish_ns
        gap = self._gap(frame.sequence)
        inspectors = list(self.models.inspectors.values())
        gate_ms = inspectors[0].prepare(frame)
        fill = float(inspectors[0].cropper.out.mask.mean())
        decision = self.gate.decide(fill)
        claimed = _Claimed(frame, gap, fill, decision, publish_ns, {"ring_wait": wait_ms, "age": 0.0})
        claimed.stages["age"] = (t_claim - publish_ns) / 1e6
        if decision != "score":
            return claimed
        claimed.stages["gate"] = gate_ms
        claimed.crop_ms = [gate_ms] + [ins.prepare(frame) for ins in inspectors[1:]]
        np.copyto(self._color, frame.color)  # NG evidence needs the pixels after the slot is released
        np.copyto(self._depth, frame.depth)
        return claimed

    def _finish(self, c: _Claimed) -> tuple[str, Any, Any]:
        frame = c.frame
        if c.decision != "score":
            total = (time.perf_counter_ns() - c.publish_ns) / 1e6
            return "frame", FrameEvent(c.sequence, c.decision, c.gap, c.fill, total), None
        scores, inspections, error = self._infer_all(c.crop_ms, c.stages)
        verdict: Literal["OK", "NG", "ERROR"] = (
            "ERROR" if error else ("NG" if any(s.verdict == "NG" for s in scores) else "OK")
        )
        c.stages["total"] = (time.perf_counter_ns() - c.publish_ns) / 1e6
        record = VerdictRecord(
            sequence=c.sequence, frame_number=frame.color_frame_number, device_ts_ns=frame.device_ts_ns,
            host_ts_ns=frame.host_ts_ns, kind="part" if self.config.gating.mode == "per_part" else "frame",
            part_id=self.gate.part_id, verdict=verdict, late=c.stages["total"] > self.budget_ms, roi_fill=c.fill,
            scores=tuple(scores), stage_ms=c.stages, roi_version=self.models.roi.version if self.models.roi else "",
            model_versions=self.models.model_versions, scoring_versions=self.models.scoring_versions,
            gap_before=c.gap, error=error,
        )  # fmt: skip
        return "record", record, self._evidence(record, inspections)

    def _infer_all(
        self, crop_ms: list[float], stages: dict[str, float]
    ) -> tuple[list[ModelScore], list[Inspection], str]:
        scores: list[ModelScore] = []
        inspections: list[Inspection] = []
        score_ms = 0.0
        for (name, inspector), c_ms in zip(self.models.inspectors.items(), crop_ms, strict=True):
            t0 = time.perf_counter_ns()
            try:
                ins = inspector.infer_prepared(c_ms)
            except Exception as err:  # a failing model must yield an ERROR verdict, not stop the line
                log.error("event=inspect_failed model=%s error=%r", name, str(err))
                return scores, inspections, f"{name}: {err}"
            spent = (time.perf_counter_ns() - t0) / 1e6
            stages[f"crop:{name}"], stages[f"infer:{name}"] = ins.crop_ms, ins.infer_ms
            score_ms += max(0.0, spent - ins.infer_ms)
            alarm = self._mask_alarm(name, ins.mask_iou)
            scores.append(ModelScore(name, ins.raw_score, ins.score, ins.verdict, ins.infer_ms, ins.mask_iou, alarm))
            inspections.append(ins)
        stages["score"] = score_ms
        return scores, inspections, ""

    def _mask_alarm(self, name: str, iou: float | None) -> bool:
        """The model's mask alarm after this frame: raised after ``mask_iou_frames`` consecutive frames below its
        ``mask_iou_floor``, cleared after as many at or above it (logged when it changes)."""
        if iou is None:
            return False
        cfg = self._model_configs[name]
        below = iou < cfg.mask_iou_floor
        was = self._alarms.get(name, False)
        streak = self._streaks.get(name, 0) + 1 if below != was else 0
        self._streaks[name] = streak
        if streak >= cfg.mask_iou_frames:
            self._alarms[name], self._streaks[name] = below, 0
            log.log(
                logging.ERROR if below else logging.INFO,
                "event=foreground_mask_%s model=%s iou=%.3f floor=%.3f",
                "alarm" if below else "ok", name, iou, cfg.mask_iou_floor,
            )  # fmt: skip
        return self._alarms.get(name, False)

    def _evidence(self, record: VerdictRecord, inspections: list[Inspection]) -> Evidence | None:
        """Pixels for NG records, and every ``sample_ok_every``-th OK one; nothing for the rest (queue traffic)."""
        if record.verdict == "OK":
            self.ok_seen += 1
            every = self.config.storage.sample_ok_every
            if every <= 0 or self.ok_seen % every:
                return None
        if not inspections:
            return None
        worst = max(range(len(inspections)), key=lambda i: inspections[i].score)
        ins = inspections[worst]
        scorer = list(self.models.inspectors.values())[worst].scorer
        norm = scorer.scoring.normalisation
        vmax = norm.mean + scorer.scoring.threshold.value * norm.std  # the raw score at the NG threshold
        return self._pictures(ins.crop.color, ins.anomaly_map, vmax, record.scores[worst].model)

    def _pictures(
        self, crop_color: npt.NDArray[np.uint8], anomaly_map: npt.NDArray[np.float32], vmax: float, model: str
    ) -> Evidence:
        """The last scored frame's pixels (copied: the outbox thread pickles them later) and the model's overlay."""
        overlay = render_overlay(crop_color, anomaly_map, vmax)
        return Evidence(color=self._color.copy(), depth=self._depth.copy(), overlay=overlay, extra={"model": model})

    def warm_evidence(self) -> Evidence:
        """Evidence of a blank frame, built exactly as for a verdict, before the first frame is taken.

        Sent to the daemon (``evidence_warmup``), which encodes it as it would save it: the first evidence allocates
        what every later one reuses (OpenCV's colormap code and worker thread, the pixel copies and their pickling
        in the outbox thread, the allocator's first large blocks). Paid here, with the models' warm-up, it is not
        paid on the first NG part and does not show as growth over a run (docs/daemon.md, "Memory over 10
        minutes").
        """
        name, inspector = next(iter(self.models.inspectors.items()))
        crop = inspector.cropper.out.color  # the cropper's own buffer: blank until the first frame
        return self._pictures(crop, np.zeros(crop.shape[:2], dtype=np.float32), 1.0, name)


def inference_main(  # noqa: PLR0917  (spawn passes a process's arguments by position)
    config_json: dict[str, Any],
    ring_name: str,
    results_conn: Connection,
    control: Connection,
    parent_pid: int,
    next_sequence: int = -1,
) -> None:
    """Entry point of the inference process (spawn): runs until the ring's stream closes, then says ``done``.

    It has no stop event on purpose: the supervisor stops capture and closes the stream, and this process
    drains every frame published before that, so a shutdown never loses a verdict. Its pipes are its own
    (``edge.daemon.channel``): if it is killed, the daemon reads what it sent and then end of file.
    """
    child_init()
    configure_logging(role="inference")
    config = EdgeConfig.model_validate(config_json)
    results = Outbox(results_conn)
    try:
        _serve(config, ring_name, results, control, parent_pid=parent_pid, next_sequence=next_sequence)
        results.put(("done", {"pid": os.getpid()}, None))
    finally:
        results.close()


def _serve(
    config: EdgeConfig, ring_name: str, results: Outbox, control: Connection, *, parent_pid: int, next_sequence: int
) -> None:
    """Score frames until the ring's stream closes (or the daemon is gone)."""
    with FrameRing.attach(ring_name) as ring:
        loop = InferenceLoop(config, ring.reader(), ring.spec, results, next_sequence)
        register_ring(loop.models, ring)
        loop.ring = ring
        results.put(("evidence_warmup", {"pid": os.getpid()}, loop.warm_evidence()))  # before ready: capture waits
        ready = {"pid": os.getpid(), "models": loop.models.model_versions, "runtimes": loop.models.runtimes()}
        results.put(("ready", ready, None))
        try:
            while os.getppid() == parent_pid:  # an orphan (supervisor SIGKILLed) exits
                _handle_control(control, loop)
                try:
                    loop.step(0.5)
                except RingTimeoutError:
                    continue
                except RingClosedError:
                    break
        finally:
            loop.models.close()


def _handle_control(control: Connection, loop: InferenceLoop) -> None:
    for message in control_messages(control):
        if message == "reload":
            loop.reload()
