"""TensorRT 10 vs 11 differences in one place, behind explicit version checks (no try/except shims).

TensorRT 10 (JetPack 6 on Orin) builds weakly typed networks: precision comes from builder flags (FP16, INT8 with a
calibrator). TensorRT 11 removed those flags and the calibrator API: every network is strongly typed, so precision
comes from the ONNX tensor types (fp16 tensors for FP16, Q/DQ nodes for INT8).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal, cast

from engines.runtime.base import EngineError

GPU_EXTRA = (
    "install the GPU extra on a machine with an NVIDIA GPU: pip install 'drumsight-edge[gpu]' (tensorrt, pycuda)"
)
OnnxFloat = Literal["fp32", "fp16", "mixed"]


def import_trt() -> ModuleType:
    """The tensorrt module, or an EngineError saying what to install."""
    try:
        import tensorrt  # noqa: PLC0415  (optional GPU dependency)
    except ImportError as e:
        raise EngineError(f"TensorRT is not installed ({e})", GPU_EXTRA) from None
    return cast(ModuleType, tensorrt)  # untyped module: imported as Any


def import_cuda() -> ModuleType:
    """pycuda.driver (buffers, streams, graphs), or an EngineError saying what to install."""
    try:
        import pycuda.driver as cuda  # noqa: PLC0415  (optional GPU dependency)
    except ImportError as e:
        raise EngineError(f"pycuda is not installed ({e})", GPU_EXTRA) from None
    return cast(ModuleType, cuda)  # untyped module: imported as Any


def trt_major(version: str) -> int:
    return int(version.split(".", maxsplit=1)[0])


@dataclass(frozen=True, slots=True)
class BuildMode:
    """How to ask the installed TensorRT for a precision."""

    strongly_typed: bool
    flags: tuple[str, ...]  # BuilderFlag member names
    calibrate: bool  # needs INT8 calibration frames (TensorRT 10 without Q/DQ)


def build_mode(trt_version: str, precision: str, onnx_float: OnnxFloat, has_qdq: bool) -> BuildMode:
    """The network/builder settings for ``precision`` on this TensorRT, or an EngineError explaining the refusal."""
    major = trt_major(trt_version)
    if has_qdq and precision != "int8":
        raise EngineError(
            f"the ONNX holds Q/DQ nodes (an INT8 model, edge-quantize), so it cannot be built as {precision}",
            "build it with --precision int8 (the daemon does so by itself), or build the fp32 ONNX it came from",
        )
    if major < 10:
        raise EngineError(
            f"TensorRT {trt_version} is too old (the runtime uses the name-based I/O API of TensorRT 10)",
            "install TensorRT 10 (JetPack 6) or 11",
        )
    if major == 10:
        if onnx_float != "fp32" or has_qdq:  # typed or quantised ONNX: honour its types as TensorRT 11 would
            return _strongly_typed_mode(trt_version, precision, onnx_float, has_qdq)
        flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}[precision]
        return BuildMode(strongly_typed=False, flags=flags, calibrate=precision == "int8")
    return _strongly_typed_mode(trt_version, precision, onnx_float, has_qdq)


def _strongly_typed_mode(trt_version: str, precision: str, onnx_float: OnnxFloat, has_qdq: bool) -> BuildMode:
    """TensorRT ≥ 11: the ONNX types must already say the precision asked for."""
    if precision == "int8" and not has_qdq:
        raise EngineError(
            f"TensorRT {trt_version} builds INT8 only from Q/DQ nodes here, and the ONNX has none",
            "quantise the ONNX with Q/DQ nodes first (edge-quantize), or build fp16/fp32",
        )
    if precision == "fp16" and onnx_float == "fp32":
        raise EngineError(
            f"TensorRT {trt_version} takes precision from the ONNX types and this ONNX is fp32",
            "convert it to fp16 first (onnxconverter-common float16.convert_float_to_float16 with keep_io_types, "
            "or ModelOpt AutoCast), or build --precision fp32",
        )
    if precision == "fp32" and onnx_float != "fp32":
        raise EngineError(
            f"the ONNX holds {onnx_float} tensors, so TensorRT {trt_version} cannot build it as fp32",
            "build it with --precision fp16, or export an fp32 ONNX",
        )
    return BuildMode(strongly_typed=True, flags=(), calibrate=False)


def onnx_precision(model: Any) -> tuple[OnnxFloat, bool]:
    """(float type of the ONNX's weights, whether it holds QuantizeLinear/DequantizeLinear nodes)."""
    from onnx import TensorProto  # noqa: PLC0415

    kinds = {t.data_type for t in model.graph.initializer} & {TensorProto.FLOAT, TensorProto.FLOAT16}
    has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    if kinds == {TensorProto.FLOAT16}:
        return "fp16", has_qdq
    return ("mixed" if len(kinds) == 2 else "fp32"), has_qdq


def qdq_uint8(model: Any) -> bool:
    """Whether the ONNX quantises activations to uint8 (ONNX Runtime's x86 form): TensorRT takes int8 Q/DQ only."""
    from onnx import TensorProto  # noqa: PLC0415

    init = {t.name: t.data_type for t in model.graph.initializer}
    return any(
        n.op_type == "QuantizeLinear" and len(n.input) > 2 and init.get(n.input[2]) == TensorProto.UINT8
        for n in model.graph.node
    )


def network_flags(trt: ModuleType, mode: BuildMode) -> int:
    """Flags for ``builder.create_network``: explicit batch is implicit since TensorRT 10."""
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if mode.strongly_typed else 0


def apply_mode(trt: ModuleType, config: Any, mode: BuildMode, calibrator: Any | None) -> None:
    """Set the precision flags (TensorRT 10 weakly typed path) and the INT8 calibrator."""
    for flag in mode.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if mode.calibrate:
        if calibrator is None:
            raise EngineError("INT8 on TensorRT 10 needs calibration frames", "pass --calibration FRAMES.npz")
        config.int8_calibrator = calibrator
