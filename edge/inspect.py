"""One model's per-frame stages — ROI crop → engine → scoring — shared by the daemon, the bench, edge-train and the
accuracy study.

:class:`ModelStage` is a model behind its runtime: the runner comes from :func:`engines.runtime.select.create_runner`
(the one place an engine is built), the card from the ONNX, and a TensorRT or torch engine passes a parity gate
against ONNX Runtime before it goes live (on failure the stage falls back to ONNX Runtime on the CPU and says why).
:class:`Inspector` puts the ROI crop in front of it and the scoring file behind it. The crop settings come from the
model's card (input size, crop mode, normalisation), so a model can never be fed differently from how it was
trained; the scoring file must belong to that exact ONNX file (sha256), so a threshold fitted for another model is
refused. On a GPU (``crop: cuda``) with an engine that takes device inputs (TensorRT, torch on CUDA), the CUDA
crop kernel writes straight into the engine's input buffers and the engine runs on the crop's stream: no host round
trip between crop and engine.

A model trained with crop mode ``image`` (BAAD) sees the whole camera image and needs no ROI; when one is given
anyway, and the model has the ``foreground`` output (its own foreground estimate), every inspection carries the IoU
of that predicted mask against the ROI mask (:func:`mask_iou`): a live check that the calibration still matches
what the camera sees. Crop mode ``image`` is cropped on the CPU (the CUDA kernel crops the ROI's window only).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from calibration.roi import RoiFile, check_trained_with
from edge.core.frame import Frame, StreamSpec
from edge.core.scoring import Scorer, ScoringFile, Verdict
from edge.crop import CropOutput, RoiCropper
from engines.contract import ModelCard
from engines.export import card_from_onnx, example_feeds
from engines.parity import ParityBudget, ParityReport, compare_runners
from engines.runtime.base import EngineError, Runner
from engines.runtime.ort import OrtRunner, OrtRunnerConfig
from engines.runtime.select import Choice, RunnerPlan, create_runner, engine_precision
from engines.scene import SceneFrame

log = logging.getLogger(__name__)

GOLDEN_NAME = "golden.npz"  # real crops edge-train stores beside model.onnx for the parity gate
# How far a GPU engine may drift from ONNX Runtime (fp32 CPU) on the golden crops before the gate sends the model
# back to ONNX Runtime, as (anomaly-map |Δ| relative to the largest reference map value, image-score relative |Δ|);
# never a verdict flip. fp16/int8 engines get wider budgets than fp32 ones.
GATE_BUDGETS: dict[str, tuple[float, float]] = {"fp32": (1e-4, 1e-3), "fp16": (2e-2, 2e-2), "int8": (5e-2, 5e-2)}


@runtime_checkable
class DeviceRunner(Protocol):
    """A runner whose inputs can be written on the GPU by a producer (TensorRT, torch on CUDA)."""

    def device_buffers(self) -> dict[str, int]: ...

    def infer_device(self, device_inputs: Mapping[str, int], stream: Any = None) -> dict[str, np.ndarray]: ...


def golden_feeds(onnx_path: Path, card: ModelCard) -> tuple[list[dict[str, npt.NDArray[np.float32]]], str]:
    """The parity gate's inputs: ``golden.npz`` beside the ONNX (real crops, N×… per input), else seeded example
    feeds (weaker: not real crops), and which of the two it is."""
    path = onnx_path.with_name(GOLDEN_NAME)
    if path.is_file():
        try:
            with np.load(path) as z:
                arrays = {k: np.asarray(z[k], np.float32) for k in card.inputs}
        except (OSError, ValueError, KeyError) as err:
            raise EngineError(
                f"golden crops {path} are unreadable ({err})", "re-run edge-train, or delete it"
            ) from None
        n = min(len(a) for a in arrays.values())
        return [{k: a[i : i + 1] for k, a in arrays.items()} for i in range(n)], f"{n} golden crops ({path.name})"
    return [example_feeds(card, seed) for seed in range(4)], "4 seeded example feeds (no golden.npz beside the ONNX)"


def parity_gate(
    onnx_path: Path, card: ModelCard, candidate: Runner, precision: str, threshold: float | None
) -> ParityReport:
    """``candidate`` (active) against ONNX Runtime on the CPU on the golden crops, judged by :data:`GATE_BUDGETS`."""
    feeds, _ = golden_feeds(onnx_path, card)
    with OrtRunner(onnx_path, OrtRunnerConfig(intra_op_threads=1)) as reference:
        budget = gate_budget(reference, feeds, precision, card.map_tolerance)
        return compare_runners(reference, [candidate], feeds, budget=budget, threshold=threshold)


def gate_budget(
    reference: Runner, feeds: Sequence[Mapping[str, np.ndarray]], precision: str, map_tolerance: float | None = None
) -> ParityBudget:
    """:data:`GATE_BUDGETS` for ``precision`` as a ParityBudget: the map limit scaled by the largest anomaly-map
    value of the (active) ``reference`` on ``feeds``, widened to the card's ``map_tolerance`` when it declares a
    larger one (a family whose maps jump at near ties: Shape-Guided). Also judges an INT8 model against its fp32
    ONNX (edge-parity, edge-bench)."""
    map_rel, score_rtol = GATE_BUDGETS.get(precision, GATE_BUDGETS["fp32"])
    map_rel = max(map_rel, map_tolerance or 0.0)
    scale = max(float(np.abs(reference.infer(f)["anomaly_map"]).max()) for f in feeds)
    return ParityBudget(map_atol=map_rel * max(scale, 1e-6), score_rtol=score_rtol)


FOREGROUND_THRESHOLD = 0.5  # a pixel belongs to the predicted foreground when its probability exceeds this


def mask_iou(foreground: npt.NDArray[np.floating[Any]], reference: npt.NDArray[np.bool_]) -> float:
    """IoU of a predicted foreground probability map (thresholded at ``FOREGROUND_THRESHOLD``) and a reference mask
    of the same shape (the ROI mask); 1.0 when both are empty."""
    pred = foreground > FOREGROUND_THRESHOLD
    union = int(np.count_nonzero(pred | reference))
    return 1.0 if union == 0 else int(np.count_nonzero(pred & reference)) / union


class ModelStage:
    """One exported model behind its runtime: engine outputs for prepared inputs, timed.

    ``runner`` overrides the runtime choice (tests, parity tools); otherwise ``plan`` decides it. ``threshold`` (a raw
    image score) lets the parity gate count verdict flips.
    """

    def __init__(
        self,
        onnx_path: Path,
        plan: RunnerPlan | None = None,
        *,
        runner: Runner | None = None,
        threshold: float | None = None,
    ) -> None:
        self.onnx_path = onnx_path
        self.card: ModelCard = card_from_onnx(onnx_path)
        plan = plan or RunnerPlan()
        if runner is None:
            runner, self.choice = create_runner(onnx_path, plan)
        else:
            self.choice = Choice("onnxruntime" if isinstance(runner, OrtRunner) else "torch", "cpu", "cpu",
                                 f"runner given by the caller ({runner.name})")  # fmt: skip
        self.runner = runner.activate()
        self.outputs: Mapping[str, npt.NDArray[np.float32]] = {}  # every output of the last run (reused buffers)
        self.gate: ParityReport | None = None
        if self.choice.backend != "onnxruntime" and plan.config.parity_gate:
            self._gate(engine_precision(self.card, plan.config), threshold)

    def _gate(self, precision: str, threshold: float | None) -> None:
        """Compare the engine with ONNX Runtime before it goes live; a failure falls back to ONNX Runtime."""
        try:
            self.gate = parity_gate(self.onnx_path, self.card, self.runner, precision, threshold)
            failures = [f for p in self.gate.pairs for f in p.failures]
        except EngineError as err:
            failures = [str(err)]
        if not failures:
            return
        reason = f"parity gate failed against ONNX Runtime ({'; '.join(failures)})"
        log.error("event=parity_gate_failed model=%s backend=%s action=fallback_onnxruntime reason=%r",
                  self.onnx_path, self.choice.backend, reason)  # fmt: skip
        self.runner.deactivate()
        self.runner = OrtRunner(self.onnx_path, OrtRunnerConfig(intra_op_threads=1, inter_op_threads=1)).activate()
        self.choice = dataclasses.replace(
            self.choice, backend="onnxruntime", device="cpu", crop="cpu", providers=("CPUExecutionProvider",),
            fallback=reason,
        )  # fmt: skip

    @property
    def device_runner(self) -> DeviceRunner | None:
        """The runner when it takes device inputs on a GPU (the zero-copy path), else None."""
        r = self.runner
        if self.choice.device == "cpu" or not isinstance(r, DeviceRunner):
            return None
        return r

    def run(self, feed: Mapping[str, npt.NDArray[np.float32]]) -> tuple[float, npt.NDArray[np.float32], float]:
        """(raw image score, S×S anomaly map — a reused buffer, inference ms) for host inputs."""
        t0 = time.perf_counter_ns()
        result = self.outputs = self.runner.infer({k: feed[k] for k in self.card.inputs})
        return (
            float(result["image_score"].reshape(-1)[0]),
            result["anomaly_map"][0, 0],
            (time.perf_counter_ns() - t0) / 1e6,
        )

    def raw_scores(self, feeds: Any) -> npt.NDArray[np.float64]:
        """Raw image scores of an iterable of samples (dicts holding at least the card's inputs, batch-less)."""
        return np.array([self.run({k: s[k][None] for k in self.card.inputs})[0] for s in feeds], dtype=np.float64)

    def close(self) -> None:
        self.runner.deactivate()


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
    crop: CropOutput  # mask and colour always on the host; rgb/xyz on the GPU path only after Inspector.host_crop()
    foreground: npt.NDArray[np.float32] | None = None  # S×S predicted foreground (models with that output)
    mask_iou: float | None = None  # IoU of ``foreground`` vs the ROI mask (a model with it, run with an ROI)


class Inspector:
    """Crop, infer and score frames of one stream with one exported model."""

    def __init__(
        self,
        spec: StreamSpec | None,
        roi: RoiFile | None,
        onnx_path: Path,
        scoring: ScoringFile,
        *,
        plan: RunnerPlan | None = None,
        runner: Runner | None = None,
        allow_mismatch: bool = False,
        cropper: Any = None,
    ) -> None:
        """``cropper``: a crop built by the caller for data without a camera stream (the bench's
        ``engines.scene.SceneCropper``: ``crop(sample)``, ``out``, ``layout``); then ``spec`` and ``roi`` are unused.
        Otherwise the ROI crop of ``spec`` and ``roi`` (``roi`` may be None for a model of crop mode ``image``)."""
        scoring.check_artefact(onnx_path)
        card = card_from_onnx(onnx_path)
        if cropper is None and (spec is None or (roi is None and card.crop_mode != "image")):
            raise ValueError("Inspector needs the stream spec and ROI (none for crop mode 'image'), or a cropper")
        if roi is not None and card.crop_mode != "image":  # 'image': the ROI is a check of the model's mask, not input
            check_trained_with(roi, card.roi_version, onnx_path)
        norm = scoring.normalisation
        self.stage = ModelStage(
            onnx_path, plan, runner=runner, threshold=norm.mean + scoring.threshold.value * norm.std
        )
        self.card = self.stage.card
        self.choice = self.stage.choice
        self.runner = self.stage.runner
        crop = card.crop_spec()
        cuda_crop = self.choice.crop == "cuda" and card.crop_mode != "image"
        if self.choice.crop == "cuda" and not cuda_crop:  # the kernel crops the ROI's window only: say where it runs
            self.choice = dataclasses.replace(self.choice, crop="cpu")
        self._device = self.stage.device_runner if cuda_crop else None
        self.cropper: Any
        self.check_mask = roi is not None and cropper is None and "foreground" in card.outputs
        if cropper is not None:
            self._device = None  # the caller's crop runs on the host
            self.cropper = cropper
        elif cuda_crop:
            from edge.crop_cuda import CudaRoiCropper  # noqa: PLC0415  (pycuda only on a GPU box)

            assert spec is not None and roi is not None  # checked above
            self.cropper = CudaRoiCropper(
                spec, roi, crop, allow_mismatch=allow_mismatch, device=self.choice.device_index
            )
        else:
            assert spec is not None  # checked above
            self.cropper = RoiCropper(spec, roi, crop, allow_mismatch=allow_mismatch)
        # the engine's input buffers are allocated once at activation: their addresses are read once, here
        self._device_inputs = self._device.device_buffers() if self._device is not None else {}
        self.scorer = Scorer(scoring)
        n = card.input_size
        self._mask = np.zeros((1, 1, n, n), dtype=np.float32)

    def prepare(self, frame: Frame | SceneFrame) -> float:
        """Crop ``frame`` into this model's input buffers; returns the crop time in ms (a ``SceneFrame`` only with
        the caller's scene cropper).

        The frame's arrays may be ring-slot views: after ``prepare`` the slot is no longer needed, so a slow
        engine never holds it (under backlog the ring's writer would tear it). On the zero-copy GPU path the kernel
        writes the engine's device inputs; the mask and colour crop come back to the host (gating and evidence).
        """
        t0 = time.perf_counter_ns()
        if self._device is not None:
            bufs = self._device_inputs
            self.cropper.crop_into(frame, rgb=bufs.get("rgb"), xyz=bufs.get("xyz"), mask=bufs.get("mask"))
        else:
            out = self.cropper.crop(frame)
            np.copyto(self._mask[0, 0], out.mask)
        return (time.perf_counter_ns() - t0) / 1e6

    def host_crop(self) -> CropOutput:
        """The last crop with every tensor on the host. On the zero-copy GPU path ``rgb``/``xyz`` stay on the device
        (only mask and colour come back per frame): this copies them back first, for the bench's figures and parity
        checks. On the CPU path it costs nothing."""
        if self._device is not None:
            self.cropper.download_inputs()
            np.copyto(self._mask[0, 0], self.cropper.out.mask)
        out: CropOutput = self.cropper.out
        return out

    def inputs(self) -> dict[str, npt.NDArray[np.float32]]:
        """The engine's inputs as prepared by the last :meth:`prepare` (host views of reused buffers)."""
        out = self.host_crop()
        feed = {"rgb": out.rgb, "xyz": out.xyz, "mask": self._mask}
        return {k: feed[k] for k in self.card.inputs}

    def infer_prepared(self, crop_ms: float) -> Inspection:
        """Run the engine on the prepared inputs and score the result."""
        out = self.cropper.out
        t1 = time.perf_counter_ns()
        result: Mapping[str, npt.NDArray[Any]]
        if self._device is not None:
            result = self._device.infer_device({}, stream=self.cropper.stream)
            raw, amap = float(result["image_score"].reshape(-1)[0]), result["anomaly_map"][0, 0]
        else:
            raw, amap, _ = self.stage.run(self.inputs())
            result = self.stage.outputs
        t2 = time.perf_counter_ns()
        z, verdict = self.scorer.score(raw)
        t3 = time.perf_counter_ns()
        fg = result["foreground"][0, 0] if "foreground" in result else None
        iou = mask_iou(fg, out.mask) if fg is not None and self.check_mask else None
        return Inspection(
            raw_score=raw,
            score=z,
            verdict=verdict,
            roi_fill=float(out.mask.mean()),
            crop_ms=crop_ms,
            infer_ms=(t2 - t1) / 1e6,
            score_ms=(t3 - t2) / 1e6,
            anomaly_map=amap,
            crop=out,
            foreground=fg,
            mask_iou=iou,
        )

    def inspect(self, frame: Frame) -> Inspection:
        """Crop, infer and score one frame."""
        return self.infer_prepared(self.prepare(frame))

    def close(self) -> None:
        self.stage.close()
        close = getattr(self.cropper, "close", None)
        if close is not None:
            close()
