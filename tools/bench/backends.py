"""Which runtime scores the frames (``--backend``/``--device``), and the parity check of that runtime against its
reference.

The bench runs models exactly as the daemon does: a :class:`engines.runtime.select.RuntimeConfig` resolved once,
and each model's Inspector builds its engine with ``create_runner`` (TensorRT engines are cached in the report's
``engines/`` folder, reused when their manifest fits, built otherwise). ``--parity`` compares, on the first real
crops of the run: for ONNX Runtime, the PyTorch model from the run folder's checkpoint (reference) against ONNX
Runtime (an INT8 model: its fp32 ONNX benched beside it against the INT8 ONNX); for TensorRT or torch, ONNX Runtime
(reference) against the engine. Verdict flips are counted at the scoring file's threshold on the raw score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.errors import EdgeError
from edge.core.scoring import load_scoring
from edge.inspect import gate_budget
from engines.parity import ParityBudget, ParityReport, compare_runners
from engines.runtime.base import Runner
from engines.runtime.ort import OrtRunner, OrtRunnerConfig
from engines.runtime.select import Choice, RunnerPlan, RuntimeConfig, create_runner, resolve
from tools.bench.models import BenchModel

BACKENDS: tuple[str, ...] = ("auto", "onnxruntime", "tensorrt", "torch")


@dataclass(frozen=True, slots=True)
class BackendSettings:
    """``--backend``/``--device``/``--precision``/``--threads`` as the runtime config every model is run with."""

    runtime: RuntimeConfig
    engines_dir: Path = Path("engines")

    @property
    def backend(self) -> str:
        return self.runtime.backend

    @property
    def threads(self) -> int:
        return self.runtime.threads

    @property
    def precision(self) -> str:
        return self.runtime.precision


def check_backend(settings: BackendSettings) -> Choice:
    """Resolve the runtime before any frame is read; an unavailable backend is an EngineError naming what is
    missing."""
    return resolve(settings.runtime)


def runner_factory(settings: BackendSettings) -> Callable[[BenchModel], RunnerPlan]:
    """How each model is run: the runtime plan the Inspector hands to ``create_runner`` (engines cached per model)."""
    choice = resolve(settings.runtime)

    def make(model: BenchModel) -> RunnerPlan:
        card = model.card
        return RunnerPlan(
            settings.runtime,
            engine_dir=settings.engines_dir / f"{card.family}-{card.preset}-{card.crop_mode}-{card.precision}",
            choice=choice,
        )

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
    model: BenchModel,
    feeds: Sequence[dict[str, np.ndarray]],
    settings: BackendSettings,
    budget: ParityBudget,
    fp32_onnx: Path | None = None,
) -> ParityReport:
    """The backend against its reference on ``feeds`` (real crops), flips at the scoring threshold.

    An INT8 model on ONNX Runtime has no PyTorch checkpoint: its reference is ``fp32_onnx``, the fp32 model it was
    quantised from (benched beside it), judged by the runtime gate's INT8 budget; flips are not counted (each
    model has its own scoring file: the accuracy table compares their verdicts)."""
    scoring = load_scoring(model.scoring)
    raw_threshold: float | None = scoring.normalisation.mean + scoring.threshold.value * scoring.normalisation.std
    with OrtRunner(model.onnx, OrtRunnerConfig(intra_op_threads=settings.threads)) as ort:
        reference: Runner = ort
        candidate: Runner = ort
        if resolve(settings.runtime).backend == "onnxruntime" and model.card.precision != "fp32":
            if fp32_onnx is None:
                raise EdgeError(
                    f"{model.run_dir} is an {model.card.precision} model and its fp32 model is not benched beside it",
                    "pass the fp32 edge-train folder it was quantised from in --models too",
                )
            reference, raw_threshold = OrtRunner(fp32_onnx, OrtRunnerConfig(intra_op_threads=settings.threads)), None
            reference.activate()
            budget = gate_budget(reference, feeds, model.card.precision, model.card.map_tolerance)
            reference.deactivate()
        elif resolve(settings.runtime).backend == "onnxruntime":
            reference = _torch_reference(model, ort)
        else:
            candidate = create_runner(model.onnx, runner_factory(settings)(model))[0]
        other = candidate if reference is ort else reference
        other.activate()
        try:
            return compare_runners(reference, [candidate], feeds, budget=budget, threshold=raw_threshold)
        finally:
            other.deactivate()
