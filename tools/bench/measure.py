"""The bench's run: every frame of every input through every model's Inspector, timed per stage, kept for metrics.

Frames are read once and handed to each model in turn, as the daemon does: per model the product's
:class:`edge.inspect.Inspector` crops (its own crop mode), runs the engine and applies the scoring file. What is
kept per model and frame: the raw and normalised score, the verdict, the S×S anomaly map and the defect mask
sampled like the crop (for pixel metrics), and for defective frames the crop's colour (for the heatmap figure).
The first ``warmup`` frames of each input are scored but left out of the latency statistics (allocation, lazy
initialisation, caches).

A failing input does not stop the run: its error is recorded with the number of frames it delivered. Frames
read before a read error stay in the results (they were decoded and labelled correctly); an input whose labels
turn out not to match its frames is dropped from the metrics entirely (its truth cannot be trusted).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from calibration.roi import RoiFile
from drivers.labels import LabelsError
from edge.core.errors import EdgeError
from edge.core.frame import Frame
from edge.core.scoring import load_scoring
from edge.inspect import Inspector
from engines.datasets import crop_mask
from engines.runtime.select import RunnerPlan
from engines.scene import SceneCropper, SceneFrame
from tools.bench.inputs import BenchInput, BenchInputError, LabelledFrame, Split
from tools.bench.models import BenchModel

STAGES = ("read", "crop", "infer", "score")
PlanFactory = Callable[[BenchModel], RunnerPlan]


@dataclass
class ModelResults:
    """What one model produced over the run (lists in frame order; ``file_index`` says which input)."""

    model: BenchModel
    threshold_z: float | None = None  # the scoring file's threshold on the normalised score
    threshold_raw: float | None = None  # the same threshold on the raw image score
    raw: list[float] = field(default_factory=list)
    z: list[float] = field(default_factory=list)
    ng: list[bool] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    file_index: list[int] = field(default_factory=list)
    maps: list[npt.NDArray[np.float32]] = field(default_factory=list)
    gts: list[npt.NDArray[np.bool_]] = field(default_factory=list)
    rgb: dict[int, npt.NDArray[np.uint8]] = field(default_factory=dict)  # sample index → S×S×3 RGB (defects)
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in (*STAGES[1:], "total")})
    feeds: list[dict[str, npt.NDArray[np.float32]]] = field(default_factory=list)  # first inputs, for --parity

    def drop_file(self, index: int) -> None:
        """Forget every sample of input ``index`` (its labels were found wrong)."""
        keep = [i for i, f in enumerate(self.file_index) if f != index]
        remap = {old: new for new, old in enumerate(keep)}
        for name in ("raw", "z", "ng", "kinds", "sources", "file_index", "maps", "gts"):
            values = getattr(self, name)
            setattr(self, name, [values[i] for i in keep])
        self.rgb = {remap[i]: v for i, v in self.rgb.items() if i in remap}


@dataclass
class InputOutcome:
    """One data path's fate: how many frames it gave, and the problem that stopped it (if any)."""

    path: Path
    kind: str
    split: str
    counts: dict[str, int]
    frames: int = 0
    error: str | None = None
    dropped: bool = False  # its samples were removed from the metrics (labels mismatch)


@dataclass
class BenchRun:
    """Everything measured: per model results, per input outcomes, read times and pipeline throughput."""

    models: list[ModelResults]
    inputs: list[InputOutcome] = field(default_factory=list)
    read_ms: list[float] = field(default_factory=list)
    frames_timed: int = 0
    wall_timed_s: float = 0.0

    @property
    def throughput_fps(self) -> float:
        """Frames per second through the whole pipeline (read + every model) after warm-up."""
        return self.frames_timed / self.wall_timed_s if self.wall_timed_s > 0 else float("nan")


def _rgb_uint8(x: npt.NDArray[np.float32], mean: Sequence[float], std: Sequence[float]) -> npt.NDArray[np.uint8]:
    """The crop's normalised NCHW colour back to S×S×3 RGB bytes (for the figures)."""
    chw = x[0] * np.asarray(std, np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]
    rgb: npt.NDArray[np.uint8] = np.clip(chw.transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return rgb


class Bench:
    """Runs inputs through models; construct once, call :meth:`run_input` per data path."""

    def __init__(
        self,
        roi: RoiFile | None,
        make_plan: PlanFactory,
        *,
        warmup: int = 5,
        parity_samples: int = 0,
        allow_mismatch: bool = False,
    ) -> None:
        self.roi, self.make_plan, self.warmup = roi, make_plan, warmup
        self.parity_samples, self.allow_mismatch = parity_samples, allow_mismatch
        self.run = BenchRun([])

    def results_of(self, model: BenchModel) -> ModelResults:
        """The results collected for ``model`` so far (a model may be scored on several inputs)."""
        for r in self.run.models:
            if r.model.run_dir == model.run_dir:
                return r
        self.run.models.append(ModelResults(model))
        return self.run.models[-1]

    def _inspectors(self, sample: Frame | SceneFrame, results: Sequence[ModelResults]) -> list[Inspector]:
        """One Inspector per model: the ROI crop for camera frames, the scene crop for data from outside."""
        if isinstance(sample, Frame) and self.roi is None:
            raise BenchInputError("camera data needs the ROI it was recorded with", "pass --roi roi.yaml")
        out: list[Inspector] = []
        try:
            for r in results:
                scoring = load_scoring(r.model.scoring)
                r.threshold_z = scoring.threshold.value
                r.threshold_raw = scoring.normalisation.mean + scoring.threshold.value * scoring.normalisation.std
                plan = self.make_plan(r.model)
                if isinstance(sample, SceneFrame):
                    card = r.model.card
                    crop = card.crop_spec()
                    insp = Inspector(None, None, r.model.onnx, scoring, plan=plan, cropper=SceneCropper(crop))
                else:
                    insp = Inspector(
                        sample.spec, self.roi, r.model.onnx, scoring, plan=plan, allow_mismatch=self.allow_mismatch
                    )
                out.append(insp)
        except BaseException:
            for inspector in out:
                inspector.close()
            raise
        return out

    def _score(self, index: int, results: ModelResults, lf: LabelledFrame, timed: bool, insp: Inspector) -> None:
        """One model on one frame: crop, infer, score; keep what the metrics and figures need."""
        ins = insp.infer_prepared(insp.prepare(lf.frame))
        i = len(results.raw)
        results.raw.append(ins.raw_score)
        results.z.append(ins.score)
        results.ng.append(ins.verdict == "NG")
        results.kinds.append(lf.defect_type)
        results.sources.append(lf.source)
        results.file_index.append(index)
        results.maps.append(ins.anomaly_map.copy())
        layout = insp.cropper.layout
        n = layout.size
        results.gts.append(crop_mask(lf.gt, layout)[0] > 0 if lf.gt is not None else np.zeros((n, n), np.bool_))
        if lf.defect_type != "good":
            results.rgb[i] = _rgb_uint8(insp.host_crop().rgb, insp.card.mean, insp.card.std)
        if len(results.feeds) < self.parity_samples:
            results.feeds.append({name: a.copy() for name, a in insp.inputs().items()})
        if timed:
            lat = results.latency_ms
            lat["crop"].append(ins.crop_ms)
            lat["infer"].append(ins.infer_ms)
            lat["score"].append(ins.score_ms)
            lat["total"].append(ins.crop_ms + ins.infer_ms + ins.score_ms)

    def run_input(
        self,
        index: int,
        data: BenchInput,
        split: Split,
        models: Sequence[BenchModel],
        on_frame: Callable[[], None],
    ) -> InputOutcome:
        """Score every frame of ``split`` with ``models``; errors end this input only and go into its outcome."""
        results = [self.results_of(m) for m in models]
        outcome = InputOutcome(data.path, data.kind, split, data.count(split))
        inspectors: list[Inspector] = []
        timed_from: int | None = None
        try:
            for n, lf in enumerate(data.frames(split)):
                if not inspectors:
                    inspectors = self._inspectors(lf.frame, results)
                if n == self.warmup:
                    timed_from = time.perf_counter_ns()
                warm = n >= self.warmup
                if warm:
                    self.run.read_ms.append(lf.read_ms)
                for r, insp in zip(results, inspectors, strict=True):
                    self._score(index, r, lf, warm, insp)
                outcome.frames += 1
                on_frame()
        except EdgeError as err:
            outcome.error = str(err)
            if isinstance(err, LabelsError):
                outcome.dropped = True
                for r in results:
                    r.drop_file(index)
        finally:
            if timed_from is not None:
                self.run.wall_timed_s += (time.perf_counter_ns() - timed_from) / 1e9
                self.run.frames_timed += max(outcome.frames - self.warmup, 0)
            for insp in inspectors:
                insp.close()
        self.run.inputs.append(outcome)
        return outcome
