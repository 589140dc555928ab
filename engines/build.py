"""ONNX → TensorRT engine with a persistent timing cache, a manifest beside it, and rebuild-or-refuse on load."""

from __future__ import annotations

import datetime as dt
import json
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edge.core.config import EdgeModel
from engines._trt_compat import (
    BuildMode,
    apply_mode,
    build_mode,
    import_cuda,
    import_trt,
    network_flags,
    onnx_precision,
    qdq_uint8,
    trt_major,
)
from engines.manifest import (
    BuildEnvironment,
    EngineManifest,
    EngineMismatchError,
    IoSpec,
    Precision,
    check_engine,
    manifest_path,
    sha256_file,
    write_manifest,
)
from engines.runtime.base import EngineError
from engines.runtime.trt import primary_context

CARD_METADATA_KEY = "drumsight.card"  # ONNX metadata_props entry (engines.export) holding ModelCard.to_dict() JSON


class BuildSettings(EdgeModel):
    """How edge-build turns an ONNX file into an engine."""

    type: Literal["tensorrt-build"] = "tensorrt-build"
    precision: Precision = Field("fp16", description="fp32, fp16, or int8 (int8 needs calibration on TensorRT 10)")
    workspace_mib: int = Field(1024, gt=0, description="builder workspace memory pool limit")
    timing_cache: Path | None = Field(None, description="timing cache file, loaded if present and saved after")
    calibration: Path | None = Field(None, description=".npz of calibration frames, one array per input (N×…)")
    device: int = Field(0, ge=0, description="CUDA device index")


def engine_filename(model: str, tag: str, precision: str, compute_capability: str, trt_version: str) -> str:
    """``<model>.<tag>.<precision>.sm<XX>.trt<major>.engine``: what an engine fits is readable from its name."""
    return f"{model}.{tag}.{precision}.sm{compute_capability.replace('.', '')}.trt{trt_major(trt_version)}.engine"


def probe_environment(device: int = 0) -> BuildEnvironment:
    """The running TensorRT / CUDA / driver versions and GPU (needs tensorrt, pycuda and a GPU)."""
    trt, cuda = import_trt(), import_cuda()
    try:
        cuda.init()
        dev = cuda.Device(device)
    except cuda.Error as e:
        raise EngineError(
            f"CUDA device {device} is not usable ({e})", "check nvidia-smi and the device index"
        ) from None
    cc = dev.compute_capability()
    cuda_v, drv = cuda.get_version(), cuda.get_driver_version()
    return BuildEnvironment(
        tensorrt_version=trt.__version__,
        cuda_version=f"{cuda_v[0]}.{cuda_v[1]}",
        driver_version=f"{drv // 1000}.{drv % 1000 // 10}",
        gpu_name=dev.name(),
        compute_capability=f"{cc[0]}.{cc[1]}",
        platform=_platform(),
    )


def _platform() -> str:
    """The L4T release on Jetson (/etc/nv_tegra_release), else empty."""
    tegra = Path("/etc/nv_tegra_release")
    return tegra.read_text().splitlines()[0].strip() if tegra.is_file() else ""


def card_from_onnx(model: Any) -> dict[str, Any] | None:
    """The ModelCard dict stored in the ONNX metadata by the exporter, if any."""
    for prop in model.metadata_props:
        if prop.key == CARD_METADATA_KEY:
            return dict(json.loads(prop.value))
    return None


def _parse(trt: ModuleType, builder: Any, logger: Any, onnx_path: Path, mode: BuildMode) -> tuple[Any, Any]:
    """The parsed network (and its parser, which must outlive it), with static shapes checked."""
    network = builder.create_network(network_flags(trt, mode))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {onnx_path} ({errors})", "check the export (opset 17, fixed shapes)")
    for i in range(network.num_inputs):
        t = network.get_input(i)
        if any(d < 0 for d in t.shape):
            raise EngineError(
                f"{onnx_path.name}: input {t.name!r} has a dynamic shape {tuple(t.shape)}",
                "export with fixed shapes (batch 1, the card's input size): engines here are static",
            )
    return network, parser


def _io_specs(trt: ModuleType, network: Any) -> tuple[list[IoSpec], list[IoSpec]]:
    def spec(t: Any) -> IoSpec:
        return IoSpec(name=t.name, shape=list(t.shape), dtype=np.dtype(trt.nptype(t.dtype)).name)

    ins = [spec(network.get_input(i)) for i in range(network.num_inputs)]
    return ins, [spec(network.get_output(i)) for i in range(network.num_outputs)]


def _load_cache(config: Any, path: Path | None) -> None:
    """Give the builder the timing cache of ``path`` (empty when absent); TensorRT rejects one from another
    TensorRT/GPU, and so does this (ignore_mismatch=False)."""
    blob = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise EngineError(
            f"timing cache {path} does not fit this TensorRT/GPU", "delete it; the build writes a new one"
        )


def build_engine(
    onnx_path: Path,
    out_dir: Path,
    *,
    model: str,
    tag: str,
    settings: BuildSettings,
    env: BuildEnvironment | None = None,
    card: dict[str, Any] | None = None,
) -> Path:
    """Build ``onnx_path`` into ``out_dir/<engine_filename>`` and write its manifest. Returns the engine path."""
    import onnx  # noqa: PLC0415

    proto = onnx.load(str(onnx_path), load_external_data=False)
    if qdq_uint8(proto):  # before anything TensorRT: refused the same on every machine
        raise EngineError(
            f"{onnx_path} quantises activations to uint8 (edge-quantize --activations uint8), TensorRT takes int8 Q/DQ",
            "quantise it for TensorRT with edge-quantize --activations int8 (the default)",
        )
    trt = import_trt()
    env = env or probe_environment(settings.device)
    mode = build_mode(trt.__version__, settings.precision, *onnx_precision(proto))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, onnx_path, mode)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    _load_cache(config, settings.timing_cache)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine = out_dir / engine_filename(model, tag, settings.precision, env.compute_capability, env.tensorrt_version)
    with ExitStack() as stack:
        calibrator = None
        if mode.calibrate:  # the calibrator's pycuda buffers need a current context: TensorRT's primary one
            stack.enter_context(primary_context(import_cuda(), settings.device))
            calibrator = _calibrator(trt, settings, engine.with_suffix(".calibration.cache"))
            stack.callback(calibrator.free)
        apply_mode(trt, config, mode, calibrator)
        plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"TensorRT failed to build {onnx_path.name} (see the log above)", "fix the model or settings")
    if settings.timing_cache is not None:
        settings.timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
    # manifest first out, engine atomically in, manifest last: a crash leaves "manifest missing" (→ rebuild),
    # never an old manifest beside a new engine (→ refused as altered)
    manifest_path(engine).unlink(missing_ok=True)
    partial = engine.with_name(engine.name + ".partial")
    partial.write_bytes(memoryview(plan))
    partial.replace(engine)
    ins, outs = _io_specs(trt, network)
    manifest = EngineManifest(
        model=model,
        tag=tag,
        precision=settings.precision,
        environment=env,
        onnx_file=onnx_path.name,
        onnx_sha256=sha256_file(onnx_path),
        engine_file=engine.name,
        engine_sha256=sha256_file(engine),
        strongly_typed=mode.strongly_typed,
        flags=list(mode.flags),
        inputs=ins,
        outputs=outs,
        card=card if card is not None else card_from_onnx(proto),
        built_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    write_manifest(engine, manifest)
    return engine


def ensure_engine(
    onnx_path: Path,
    out_dir: Path,
    *,
    model: str,
    tag: str,
    settings: BuildSettings,
    allow_rebuild: bool,
    expected_onnx_sha256: str | None = None,
) -> Path:
    """The engine for ``onnx_path`` in this environment: reused when its manifest fits, rebuilt when allowed,
    else an EngineMismatchError saying why and the edge-build command that fixes it."""
    env = probe_environment(settings.device)
    engine = out_dir / engine_filename(model, tag, settings.precision, env.compute_capability, env.tensorrt_version)
    check = check_engine(
        engine,
        onnx_path,
        env,
        allow_rebuild=allow_rebuild,
        precision=settings.precision,
        expected_onnx_sha256=expected_onnx_sha256,
    )
    check.raise_if_refused(rebuild_command(onnx_path, out_dir, model, tag, settings.precision))
    if check.action == "rebuild":
        return build_engine(onnx_path, out_dir, model=model, tag=tag, settings=settings, env=env)
    return engine


def rebuild_command(onnx_path: Path, out_dir: Path, model: str, tag: str, precision: str) -> str:
    return (
        f"rebuild it: edge-build --onnx {onnx_path} --out-dir {out_dir} --model {model} --tag {tag} "
        f"--precision {precision} --force"
    )


def _calibrator(trt: ModuleType, settings: BuildSettings, cache: Path) -> Any:
    """An INT8 entropy calibrator (TensorRT 10) over the frames of ``settings.calibration``."""
    if settings.calibration is None:
        raise EngineError("INT8 on TensorRT 10 needs calibration frames", "pass --calibration FRAMES.npz")
    with np.load(settings.calibration) as z:
        frames = {k: np.ascontiguousarray(z[k], dtype=np.float32) for k in z.files}
    return make_calibrator(trt, import_cuda(), frames, cache)


def make_calibrator(trt: ModuleType, cuda: ModuleType, frames: dict[str, np.ndarray], cache: Path) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding one frame (batch 1) per get_batch from device buffers made once."""
    n = min(len(a) for a in frames.values())

    class Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            self.device = {k: cuda.mem_alloc(a[0:1].nbytes) for k, a in frames.items()}

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index >= n:
                return None
            for name in names:
                cuda.memcpy_htod(self.device[name], frames[name][self.index : self.index + 1])
            self.index += 1
            return [int(self.device[name]) for name in names]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, blob: Any) -> None:
            cache.write_bytes(bytes(blob))

        def free(self) -> None:
            for buf in self.device.values():
                buf.free()

    return Calibrator()


__all__ = [
    "BuildSettings",
    "EngineMismatchError",
    "build_engine",
    "card_from_onnx",
    "engine_filename",
    "ensure_engine",
    "probe_environment",
    "rebuild_command",
]
