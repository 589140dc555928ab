"""Which runtime scores the frames (``--backend``), and the parity check of that runtime against its reference.

ONNX Runtime runs the exported ONNX directly. TensorRT needs an engine for this GPU and TensorRT version:
:func:`engines.build.ensure_engine` reuses the one in the report's ``engines/`` folder when its manifest fits and
builds it otherwise. ``--parity`` compares, on the first real crops of the run: for ONNX Runtime, the PyTorch
model from the run folder's checkpoint (reference) against ONNX Runtime; for TensorRT, ONNX Runtime (reference)
against the engine. Verdict flips are counted at the scoring file's threshold on the raw score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge.core.errors import EdgeError
from edge.core.scoring import load_scoring
from engines.parity import ParityBudget, ParityReport, compare_runners
from engines.runtime.base import Runner
from engines.runtime.ort import OrtRunner, OrtRunnerConfig
from tools.bench.models import BenchModel

Backend = Literal["onnxruntime", "tensorrt"]
BACKENDS: tuple[str, ...] = ("onnxruntime", "tensorrt")


@dataclass(frozen=True, slots=True)
class BackendSettings:
    """``--backend`` and what it needs: ORT threads, or the engine folder and precision for TensorRT."""

    backend: Backend = "onnxruntime"
    threads: int = 0  # ONNX Runtime intra-op threads (0: its default)
    engines_dir: Path = Path("engines")
    precision: str = "fp16"


def _engine(model: BenchModel, settings: BackendSettings) -> Path:
    from engines.build import BuildSettings, ensure_engine  # noqa: PLC0415  (tensorrt only when asked for)

    card = model.card
    return ensure_engine(
        model.onnx,
        settings.engines_dir,
        model=card.family,
        tag=f"{card.preset}-{card.crop_mode}",
        settings=BuildSettings.model_validate({"precision": settings.precision}),
        allow_rebuild=True,
    )


def check_backend(settings: BackendSettings) -> None:
    """Refuse a backend this machine cannot run before any frame is read (TensorRT needs tensorrt + pycuda)."""
    if settings.backend == "tensorrt":
        from engines._trt_compat import import_cuda, import_trt  # noqa: PLC0415

        import_trt()
        import_cuda()


def runner_factory(settings: BackendSettings) -> Callable[[BenchModel], Runner]:
    """A function that builds the chosen runtime's runner for one model (not yet active)."""

    def make(model: BenchModel) -> Runner:
        if settings.backend == "tensorrt":
            from engines.runtime.trt import TrtRunner  # noqa: PLC0415

            return TrtRunner(_engine(model, settings))
        return OrtRunner(model.onnx, OrtRunnerConfig(intra_op_threads=settings.threads, inter_op_threads=1))

    return make


def _torch_reference(model: BenchModel, ort: OrtRunner) -> Runner:
    checkpoint = model.checkpoint
    if checkpoint is None:
        raise EdgeError(
            f"{model.run_dir} has no model.safetensors, so there is no PyTorch reference",
            "bench the folder edge-train wrote (it keeps the checkpoint beside the ONNX)",
        )
    try:
        from engines.checkpoint import load_checkpoint  # noqa: PLC0415  (training extra: torch, safetensors)
        from engines.runtime.torch_ref import TorchRunner  # noqa: PLC0415
    except ImportError as err:
        raise EdgeError(f"the PyTorch reference needs the train extra ({err})", "pip install '.[train]'") from None

    def build() -> Any:
        return load_checkpoint(checkpoint, {"crop_mode": model.card.crop_mode})[0]

    return TorchRunner(build, ort.input_specs, [s.name for s in ort.output_specs])


def parity(
    model: BenchModel, feeds: Sequence[dict[str, np.ndarray]], settings: BackendSettings, budget: ParityBudget
) -> ParityReport:
    """The backend against its reference on ``feeds`` (real crops), flips at the scoring threshold."""
    scoring = load_scoring(model.scoring)
    raw_threshold = scoring.normalisation.mean + scoring.threshold.value * scoring.normalisation.std
    with OrtRunner(model.onnx, OrtRunnerConfig(intra_op_threads=settings.threads)) as ort:
        reference: Runner = ort
        candidate: Runner = ort
        if settings.backend == "tensorrt":
            candidate = runner_factory(settings)(model)
        else:
            reference = _torch_reference(model, ort)
        other = candidate if reference is ort else reference
        other.activate()
        try:
            return compare_runners(reference, [candidate], feeds, budget=budget, threshold=raw_threshold)
        finally:
            other.deactivate()
