"""One model's per-frame stages — ROI crop → engine → scoring — shared by the daemon, the bench and the demo.

The crop settings come from the model's card (input size, crop mode, normalisation) stored in the exported
ONNX, so a model can never be fed differently from how it was trained; the scoring file must belong to that
exact ONNX file (sha256), so a threshold fitted for another model is refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from calibration.roi import RoiFile, check_trained_with
from edge.core.frame import Frame, StreamSpec
from edge.core.scoring import Scorer, ScoringFile, Verdict
from edge.crop import CropOutput, CropSpec, RoiCropper
from engines.contract import ModelCard
from engines.export import card_from_onnx
from engines.runtime.base import Runner
from engines.runtime.ort import OrtRunner, OrtRunnerConfig


@dataclass(frozen=True, slots=True)
class Inspection:
    """The result of one frame for one model. ``anomaly_map`` and ``crop`` are buffers reused by the next call."""

    raw_score: float
    score: float  # normalised (z-score)
    verdict: Verdict
    roi_fill: float  # share of the crop inside the ROI with depth (part gating reads it)
    crop_ms: float
    infer_ms: float
    score_ms: float  # reading the raw score and applying the scoring file
    anomaly_map: npt.NDArray[np.float32]  # S×S raw map
    crop: CropOutput


class Inspector:
    """Crop, infer and score frames of one stream with one exported model."""

    def __init__(
        self,
        spec: StreamSpec,
        roi: RoiFile,
        onnx_path: Path,
        scoring: ScoringFile,
        *,
        runner: Runner | None = None,
        ort_config: OrtRunnerConfig | None = None,
        allow_mismatch: bool = False,
    ) -> None:
        scoring.check_artefact(onnx_path)
        self.card: ModelCard = card_from_onnx(onnx_path)
        check_trained_with(roi, self.card.roi_version, onnx_path)
        crop = CropSpec(mode=self.card.crop_mode, size=self.card.input_size, mean=self.card.mean, std=self.card.std)
        self.cropper = RoiCropper(spec, roi, crop, allow_mismatch=allow_mismatch)
        self.runner = runner or OrtRunner(onnx_path, ort_config)
        self.runner.activate()
        self.scorer = Scorer(scoring)
        n = self.card.input_size
        self._mask = np.zeros((1, 1, n, n), dtype=np.float32)

    def prepare(self, frame: Frame) -> float:
        """Crop ``frame`` into this model's input buffers; returns the crop time in ms.

        The frame's arrays may be ring-slot views: after ``prepare`` the slot is no longer needed, so a slow
        engine never holds it (under backlog the ring's writer would tear it).
        """
        t0 = time.perf_counter_ns()
        out = self.cropper.crop(frame)
        np.copyto(self._mask[0, 0], out.mask)
        return (time.perf_counter_ns() - t0) / 1e6

    def inputs(self) -> dict[str, npt.NDArray[np.float32]]:
        """The engine's inputs as prepared by the last :meth:`prepare` (views of reused buffers)."""
        out = self.cropper.out
        feed = {"rgb": out.rgb, "xyz": out.xyz, "mask": self._mask}
        return {k: feed[k] for k in self.card.inputs}

    def infer_prepared(self, crop_ms: float) -> Inspection:
        """Run the engine on the prepared inputs and score the result."""
        out = self.cropper.out
        feed = self.inputs()
        t1 = time.perf_counter_ns()
        result = self.runner.infer(feed)
        t2 = time.perf_counter_ns()
        raw = float(result["image_score"].reshape(-1)[0])
        z, verdict = self.scorer.score(raw)
        t3 = time.perf_counter_ns()
        return Inspection(
            raw_score=raw,
            score=z,
            verdict=verdict,
            roi_fill=float(out.mask.mean()),
            crop_ms=crop_ms,
            infer_ms=(t2 - t1) / 1e6,
            score_ms=(t3 - t2) / 1e6,
            anomaly_map=result["anomaly_map"][0, 0],
            crop=out,
        )

    def inspect(self, frame: Frame) -> Inspection:
        """Crop, infer and score one frame."""
        return self.infer_prepared(self.prepare(frame))

    def close(self) -> None:
        self.runner.deactivate()
