"""Which runtime runs a model here, and the one function that builds it: :func:`create_runner`.

Every caller that scores an exported model (the daemon, ``edge-bench``, ``edge-train``'s scoring fit and
evaluation, the accuracy study, ``edge-parity``) goes through :func:`create_runner` with a :class:`RuntimeConfig`,
so a GPU box runs the same engine in all of them. The backends:

- ``onnxruntime``: the exported ONNX in ONNX Runtime, on the CPU, or on the CUDA / TensorRT execution providers
  when the installed onnxruntime has them (onnxruntime-gpu) and ``device`` names a GPU;
- ``tensorrt``: a native TensorRT engine built on this machine from the ONNX on first use, cached with a manifest
  keyed by ONNX sha256, TensorRT version, GPU, compute capability, L4T release and precision
  (:func:`engines.build.ensure_engine`), and never loaded when it does not fit;
- ``torch``: the PyTorch checkpoint that edge-train keeps beside the ONNX (``model.safetensors``), on the CPU or a
  CUDA GPU. It is the reference engine: parity checks, and the GPU stand-in on machines where TensorRT cannot be
  installed. ``auto`` never picks it.

``auto`` picks TensorRT when ``tensorrt`` and ``pycuda`` import and a CUDA GPU is visible, else ONNX Runtime (on
its CUDA provider when onnxruntime-gpu is installed and a GPU is visible, else on the CPU). :func:`resolve` says
which it chose and why, in words a log line and a metric label can carry.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from edge.core.config import EdgeModel
from engines.contract import ModelCard
from engines.runtime.base import EngineError, Runner, TensorSpec
from engines.runtime.ort import PROVIDER_NAMES, OrtRunner, OrtRunnerConfig, Provider

Backend = Literal["auto", "tensorrt", "onnxruntime", "torch"]
Precision = Literal["fp32", "fp16", "int8"]
CropDevice = Literal["auto", "cpu", "cuda"]


class RuntimeConfig(EdgeModel):
    """How models run: backend, device, precision, threads, and where the ROI crop runs."""

    type: Literal["runtime"] = Field("runtime", description="discriminator")
    backend: Backend = Field(
        "auto",
        description="auto: TensorRT when tensorrt + pycuda + a GPU are present, else ONNX Runtime; or name one",
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N (the GPU the engine and the CUDA crop use)")
    precision: Precision = Field(
        "fp16", description="TensorRT build precision; torch on CUDA: fp32 is true fp32, fp16/int8 allow TF32; "
        "ONNX Runtime runs the ONNX as exported"
    )  # fmt: skip
    threads: int = Field(1, ge=0, description="CPU threads per model for ONNX Runtime / torch (0: one per core)")
    crop: CropDevice = Field(
        "auto", description="where the ROI crop runs: auto (CUDA when the engine is on a GPU and pycuda imports)"
    )
    cuda_graph: bool = Field(True, description="TensorRT and torch on CUDA: replay the engine as a CUDA graph")
    parity_gate: bool = Field(
        True,
        description="before a TensorRT or torch engine goes live, compare it with ONNX Runtime on the model's golden "
        "crops; on failure fall back to ONNX Runtime and raise the alarm",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("device must be auto, cpu, cuda or cuda:N")


@dataclass(frozen=True, slots=True)
class Probe:
    """What this machine offers a model: installed runtimes and visible GPUs (probed once, cheaply)."""

    tensorrt: str | None  # version, None when it does not import
    tensorrt_why: str  # why not, when None
    pycuda: bool
    pycuda_why: str
    gpus: int  # CUDA devices visible (via pycuda, else torch, else /dev/nvidia*)
    ort_providers: tuple[str, ...]
    torch: str | None  # torch version, None when absent
    torch_cuda: bool

    def describe(self) -> str:
        trt = f"tensorrt {self.tensorrt}" if self.tensorrt else "no tensorrt"
        cu = "pycuda" if self.pycuda else "no pycuda"
        ort = "+".join(p.removesuffix("ExecutionProvider") for p in self.ort_providers) or "none"
        return f"{trt}, {cu}, {self.gpus} GPU(s), onnxruntime providers {ort}"


def _count_gpus(pycuda_ok: bool, torch_cuda: bool) -> int:
    if pycuda_ok:
        import pycuda.driver as cuda  # noqa: PLC0415  (optional GPU dependency)

        try:
            cuda.init()
            return int(cuda.Device.count())
        except cuda.Error:
            return 0
    if torch_cuda:
        import torch  # noqa: PLC0415

        return int(torch.cuda.device_count())
    dev = Path("/dev")  # neither pycuda nor torch: count the driver's device nodes (/dev/nvidia0, …)
    return sum(1 for n in dev.iterdir() if n.name.startswith("nvidia") and n.name[6:].isdigit()) if dev.is_dir() else 0


def probe(*, with_torch: bool = False) -> Probe:
    """Probe the machine cheaply: tensorrt and pycuda only when installed, onnxruntime's providers only when a GPU is
    visible (its CPU provider is always there), torch only when ``with_torch`` (the torch backend asked for): the
    daemon's main process and ``--check-config`` should not pay for importing it."""
    trt_version, trt_why = None, ""
    if importlib.util.find_spec("tensorrt") is None:
        trt_why = "the tensorrt package is not installed"
    else:
        try:
            import tensorrt  # noqa: PLC0415  (optional GPU dependency)

            trt_version = str(tensorrt.__version__)
        except Exception as e:  # a broken install (missing libnvinfer) raises OSError/ImportError
            trt_why = f"tensorrt does not import ({e})"
    pycuda_ok, pycuda_why = False, ""
    if importlib.util.find_spec("pycuda") is None:
        pycuda_why = "the pycuda package is not installed"
    else:
        try:
            import pycuda.driver  # noqa: F401, PLC0415

            pycuda_ok = True
        except Exception as e:  # libcuda missing: ImportError/OSError
            pycuda_why = f"pycuda does not import ({e})"
    torch_version, torch_cuda = None, False
    if with_torch and importlib.util.find_spec("torch") is not None:
        import torch  # noqa: PLC0415

        torch_version, torch_cuda = str(torch.__version__), bool(torch.cuda.is_available())
    gpus = _count_gpus(pycuda_ok, torch_cuda)
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    if gpus:
        import onnxruntime  # noqa: PLC0415

        providers = tuple(onnxruntime.get_available_providers())
    return Probe(
        tensorrt=trt_version,
        tensorrt_why=trt_why,
        pycuda=pycuda_ok,
        pycuda_why=pycuda_why,
        gpus=gpus,
        ort_providers=providers,
        torch=torch_version,
        torch_cuda=torch_cuda,
    )


@dataclass(frozen=True, slots=True)
class Choice:
    """The resolved runtime: what runs the engine, on which device, where the crop runs, and why."""

    backend: Literal["tensorrt", "onnxruntime", "torch"]
    device: str  # "cpu" or "cuda:N"
    crop: Literal["cpu", "cuda"]
    reason: str
    providers: tuple[str, ...] = ()  # onnxruntime: execution providers in priority order
    fallback: str = ""  # set when the parity gate sent the model back to ONNX Runtime: why

    @property
    def device_index(self) -> int:
        return int(self.device.split(":")[1]) if self.device.startswith("cuda:") else 0

    def labels(self) -> dict[str, str]:
        return {"backend": self.backend, "device": self.device, "crop": self.crop}

    def describe(self) -> str:
        extra = f" via {'+'.join(self.providers)}" if self.providers else ""
        fb = f"; FELL BACK: {self.fallback}" if self.fallback else ""
        return f"{self.backend}{extra} on {self.device}, crop on {self.crop} ({self.reason}{fb})"


def _gpu_device(config: RuntimeConfig) -> str:
    return "cuda:0" if config.device in ("auto", "cuda") else config.device


def _missing(what: str, why: str, remedy: str) -> EngineError:
    return EngineError(f"runtime {what} is not available here: {why}", remedy)


GPU_REMEDY = "install the gpu extra on a machine with an NVIDIA GPU (pip install 'drumsight-edge[gpu]')"


def _check_gpu(config: RuntimeConfig, p: Probe, what: str) -> str:
    device = _gpu_device(config)
    if p.gpus == 0:
        raise _missing(what, "no CUDA GPU is visible", "check nvidia-smi and the driver, or set runtime.backend: "
                       "onnxruntime and runtime.device: cpu")  # fmt: skip
    if int(device.split(":")[1]) >= p.gpus:
        raise _missing(f"device {device}", f"only {p.gpus} GPU(s) are visible", "pick a lower cuda:N index")
    return device


def _crop(config: RuntimeConfig, device: str, p: Probe) -> tuple[Literal["cpu", "cuda"], str]:
    if config.crop == "cpu" or (config.crop == "auto" and device == "cpu"):
        return "cpu", ""
    if device == "cpu":
        raise _missing("crop cuda", "the engine runs on the CPU", "set runtime.crop: auto or cpu")
    if not p.pycuda:
        if config.crop == "cuda":
            raise _missing("crop cuda", p.pycuda_why, GPU_REMEDY)
        return "cpu", f"; crop on the CPU: {p.pycuda_why}"
    return "cuda", ""


def resolve(config: RuntimeConfig, p: Probe | None = None) -> Choice:
    """The runtime for ``config`` on this machine, or an EngineError naming the missing piece (one line)."""
    p = p or probe(with_torch=config.backend == "torch")
    if config.backend == "auto":
        return _resolve_auto(config, p)
    if config.backend == "tensorrt":
        if p.tensorrt is None:
            raise _missing("tensorrt", p.tensorrt_why, GPU_REMEDY + ", or set runtime.backend: onnxruntime")
        if not p.pycuda:
            raise _missing("tensorrt", p.pycuda_why, GPU_REMEDY)
        device = _check_gpu(config, p, "tensorrt")
        crop, note = _crop(config, device, p)
        return Choice("tensorrt", device, crop, "runtime.backend: tensorrt" + note)
    if config.backend == "torch":
        if p.torch is None:
            raise _missing("torch", "torch is not installed", "install the train extra (pip install '.[train]')")
        device = "cpu"
        if config.device != "cpu" and (config.device != "auto" or p.torch_cuda):
            if not p.torch_cuda:
                raise _missing("torch on " + config.device, f"torch {p.torch} sees no CUDA GPU",
                               "install a CUDA build of torch, or set runtime.device: cpu")  # fmt: skip
            device = _check_gpu(config, p, "torch")
        crop, note = _crop(config, device, p)
        return Choice("torch", device, crop, "runtime.backend: torch (the PyTorch reference engine)" + note)
    return _resolve_ort(config, p, "runtime.backend: onnxruntime")


def _resolve_auto(config: RuntimeConfig, p: Probe) -> Choice:
    if config.device != "cpu" and p.tensorrt is not None and p.pycuda and p.gpus > 0:
        device = _check_gpu(config, p, "tensorrt")
        crop, note = _crop(config, device, p)
        return Choice("tensorrt", device, crop, f"auto: {p.describe()}" + note)
    why = "runtime.device: cpu" if config.device == "cpu" else p.describe()
    return _resolve_ort(config, p, f"auto: {why}")


def _resolve_ort(config: RuntimeConfig, p: Probe, reason: str) -> Choice:
    cuda_ep = PROVIDER_NAMES["cuda"] in p.ort_providers
    if config.device == "cpu" or (config.device == "auto" and not (cuda_ep and p.gpus > 0)):
        _crop(config, "cpu", p)  # refuses crop: cuda for an engine on the CPU
        return Choice("onnxruntime", "cpu", "cpu", reason, ("CPUExecutionProvider",))
    if not cuda_ep:
        raise _missing(f"onnxruntime on {config.device}", "the installed onnxruntime has no CUDAExecutionProvider",
                       "install onnxruntime-gpu (it replaces onnxruntime), or set runtime.device: cpu")  # fmt: skip
    device = _check_gpu(config, p, "onnxruntime on " + config.device)
    crop, note = _crop(config, device, p)
    # the CUDA crop writes device buffers ORT cannot take without its own IO binding to them: ORT gets host arrays
    return Choice("onnxruntime", device, "cpu" if crop == "cuda" else crop, reason + note,
                  ("CUDAExecutionProvider", "CPUExecutionProvider"))  # fmt: skip


@dataclass(slots=True)
class RunnerPlan:
    """Everything :func:`create_runner` needs besides the ONNX file."""

    config: RuntimeConfig = field(default_factory=RuntimeConfig)
    engine_dir: Path | None = None  # TensorRT engine cache (the daemon: <data_dir>/engines/<model>)
    choice: Choice | None = None  # resolved once by the caller (else here)


def checkpoint_beside(onnx: Path) -> Path:
    """The PyTorch checkpoint edge-train writes beside ``model.onnx`` (the torch backend's engine)."""
    return onnx.with_name("model.safetensors")


def _torch_runner(onnx: Path, choice: Choice, config: RuntimeConfig) -> Runner:
    from engines.checkpoint import load_checkpoint  # noqa: PLC0415  (train extra: torch, safetensors)
    from engines.export import card_from_onnx, input_shapes  # noqa: PLC0415
    from engines.runtime.torch_ref import TorchRunner  # noqa: PLC0415

    card = card_from_onnx(onnx)
    if card.precision != "fp32":
        raise EngineError(
            f"runtime torch runs the fp32 checkpoint, and {onnx} is a {card.precision} model",
            "run an INT8 model with runtime.backend onnxruntime or tensorrt, or point torch at the fp32 model folder",
        )
    ckpt = checkpoint_beside(onnx)
    if not ckpt.is_file():
        raise EngineError(
            f"runtime torch needs the checkpoint {ckpt} beside {onnx.name}",
            "use the folder edge-train wrote (it keeps model.safetensors beside model.onnx)",
        )

    def build() -> Any:
        expect = {"family": card.family, "preset": card.preset, "crop_mode": card.crop_mode}
        return load_checkpoint(ckpt, expect)[0]

    specs = [TensorSpec(k, input_shapes(card)[k], np.dtype(np.float32)) for k in card.inputs]
    return TorchRunner(
        build, specs, card.outputs, threads=config.threads, device=choice.device, cuda_graph=config.cuda_graph,
        tf32=config.precision != "fp32",
    )  # fmt: skip


def engine_precision(card: ModelCard, config: RuntimeConfig) -> Precision:
    """The precision a TensorRT engine is built in: an INT8 Q/DQ ONNX (``edge-quantize``) is always built as INT8
    from its own scales (explicit quantization), whatever ``runtime.precision`` says; other ONNX files as asked."""
    return "int8" if card.precision == "int8" else config.precision


def create_runner(onnx: Path, plan: RunnerPlan | None = None) -> tuple[Runner, Choice]:
    """The runner for ``onnx`` (not yet active) and the resolved choice. The one place a model's engine is built."""
    plan = plan or RunnerPlan()
    config = plan.config
    choice = plan.choice or resolve(config)
    if choice.backend == "onnxruntime":
        providers: list[Provider] = ["cuda", "cpu"] if choice.device != "cpu" else ["cpu"]
        ort = OrtRunnerConfig(
            providers=providers,
            device_id=choice.device_index,
            intra_op_threads=config.threads,
            inter_op_threads=1,
        )
        return OrtRunner(onnx, ort), choice
    if choice.backend == "torch":
        return _torch_runner(onnx, choice, config), choice
    from engines.build import BuildSettings, ensure_engine  # noqa: PLC0415  (tensorrt only when chosen)
    from engines.export import card_from_onnx  # noqa: PLC0415
    from engines.runtime.trt import TrtRunner  # noqa: PLC0415

    card = card_from_onnx(onnx)
    engine = ensure_engine(
        onnx,
        plan.engine_dir or onnx.parent / "engines",
        model=card.family,
        tag=f"{card.preset}-{card.crop_mode}",
        settings=BuildSettings(precision=engine_precision(card, config), device=choice.device_index),
        allow_rebuild=True,
    )
    return TrtRunner(engine, device=choice.device_index, cuda_graph=config.cuda_graph), choice


__all__ = [
    "Choice",
    "Probe",
    "RunnerPlan",
    "RuntimeConfig",
    "checkpoint_beside",
    "create_runner",
    "engine_precision",
    "probe",
    "resolve",
]
