"""ONNX Runtime backend: CPU by default, CUDA/TensorRT execution providers on request, IO binding without copies."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edge.core.config import EdgeModel
from engines.runtime.base import EngineError, Runner, TensorSpec

Provider = Literal["cpu", "cuda", "tensorrt"]
PROVIDER_NAMES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
ORT_DTYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(bool)": np.dtype(np.bool_),
}


def _cpu_only() -> list[Provider]:
    return ["cpu"]


class OrtRunnerConfig(EdgeModel):
    """How ONNX Runtime runs a model. Thread counts of 0 keep ONNX Runtime's defaults (one per core)."""

    type: Literal["onnxruntime"] = "onnxruntime"
    providers: list[Provider] = Field(
        default_factory=_cpu_only,
        min_length=1,
        description="execution providers in priority order; the CPU provider is always appended as a fallback",
    )
    device_id: int = Field(0, ge=0, description="GPU index for the CUDA / TensorRT providers")
    intra_op_threads: int = Field(0, ge=0, description="threads inside one operator (0: ONNX Runtime default)")
    inter_op_threads: int = Field(0, ge=0, description="threads across independent operators (0: default)")
    allow_spinning: bool = Field(
        False,
        description="let idle intra-/inter-op pool threads spin (busy-wait) for work instead of sleeping: ONNX "
        "Runtime's default, off here — on a small CPU shared with capture and the daemon the spinning takes the cores "
        "they need (AST edge int8, 2 threads, 30 frames/s: 58 vs 32 ms CPU per frame, docs/benchmarks.md); no effect "
        "with one thread",
    )
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="ONNX Runtime graph optimisation level"
    )


def _ort() -> Any:
    import onnxruntime  # noqa: PLC0415  (kept out of import time for tools that never run a model)

    return onnxruntime


def resolve_providers(config: OrtRunnerConfig, available: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """The provider list for InferenceSession, or an EngineError naming what is missing and what is installed."""
    wanted = [PROVIDER_NAMES[p] for p in dict.fromkeys([*config.providers, "cpu"])]
    missing = [p for p in wanted if p not in available]
    if missing:
        raise EngineError(
            f"ONNX Runtime execution provider(s) {missing} are not available (installed: {available})",
            "install onnxruntime-gpu built for your CUDA/TensorRT (it replaces the onnxruntime package), "
            "or ask for providers=['cpu']",
        )
    return [(p, {} if p == "CPUExecutionProvider" else {"device_id": config.device_id}) for p in wanted]


def open_session(model: Path, options: Any = None, providers: list[tuple[str, dict[str, Any]]] | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` (CPU unless ``providers`` say otherwise): the one place a session is built.

    Runners (:class:`OrtRunner`) and readers of the model card use it; unreadable files become an EngineError.
    """
    ort = _ort()
    if not model.is_file():
        raise EngineError(f"ONNX model {model} does not exist", "export the model first, or fix the path")
    try:
        return ort.InferenceSession(str(model), options, providers=providers or [("CPUExecutionProvider", {})])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/… types for unreadable models
        raise EngineError(f"ONNX Runtime cannot load {model} ({e})", "re-export the model") from None


def model_metadata(model: Path) -> dict[str, str]:
    """The ONNX file's custom metadata (the exporter stores the model card there)."""
    return dict(open_session(model).get_modelmeta().custom_metadata_map)


def _spec(node: Any, model: Path) -> TensorSpec:
    """A static TensorSpec from an ONNX Runtime NodeArg; symbolic dimensions are refused (buffers are static)."""
    shape = tuple(node.shape)
    if not all(isinstance(d, int) and d > 0 for d in shape):
        raise EngineError(
            f"{model.name}: tensor {node.name!r} has a dynamic shape {shape}",
            "export the model with fixed shapes (batch 1, the card's input size)",
        )
    if node.type not in ORT_DTYPES:
        raise EngineError(f"{model.name}: tensor {node.name!r} has unsupported type {node.type}", "export float32")
    return TensorSpec(node.name, shape, ORT_DTYPES[node.type])


class OrtRunner(Runner):
    """An ONNX file run by ONNX Runtime with IO binding: inputs are bound from the caller's arrays (no copy) and
    outputs are written into buffers allocated once at activate()."""

    def __init__(self, model: Path | str, config: OrtRunnerConfig | None = None) -> None:
        super().__init__(f"onnxruntime[{Path(model).name}]")
        self.model = Path(model)
        self.config = config or OrtRunnerConfig()
        self._session: Any = None
        self._binding: Any = None
        self._out: dict[str, np.ndarray] = {}

    @property
    def providers(self) -> list[str]:
        """Providers the active session really uses (ONNX Runtime may drop one it cannot initialise)."""
        self._require_active()
        return list(self._session.get_providers())

    def _session_options(self) -> Any:
        ort, c = _ort(), self.config
        so = ort.SessionOptions()
        so.intra_op_num_threads = c.intra_op_threads
        so.inter_op_num_threads = c.inter_op_threads
        spin = "1" if c.allow_spinning else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[c.graph_optimization]
        return so

    def _activate_impl(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        ort = _ort()
        providers = resolve_providers(self.config, ort.get_available_providers())
        session = open_session(self.model, self._session_options(), providers)
        dropped = [p for p, _ in providers if p not in session.get_providers()]
        if dropped:
            raise EngineError(
                f"ONNX Runtime could not initialise {dropped} for {self.model.name} (using {session.get_providers()})",
                "check the CUDA/cuDNN/TensorRT libraries onnxruntime-gpu needs (see its log), or use providers=['cpu']",
            )
        inputs = tuple(_spec(n, self.model) for n in session.get_inputs())
        outputs = tuple(_spec(n, self.model) for n in session.get_outputs())
        binding = session.io_binding()
        self._out = {s.name: s.empty() for s in outputs}
        for name, buf in self._out.items():
            binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(buf))
        self._session, self._binding = session, binding
        return inputs, outputs

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, a in feed.items():
            self._binding.bind_cpu_input(name, a)
        self._session.run_with_iobinding(self._binding)
        return self._out

    def _deactivate_impl(self) -> None:
        self._binding = self._session = None
        self._out = {}
