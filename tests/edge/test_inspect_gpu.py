"""The GPU path of the per-frame stage: the CUDA crop writes the engine's device inputs (no host round trip), the
engine runs on the crop's stream, and the ring's memory is page-locked (or mapped) for the uploads.

On a machine without an NVIDIA GPU, pycuda and a CUDA build of torch every test skips with the reason; the GPU check
(``python -m tools.gpu_check run``) runs them on a GPU machine.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from edge.core.ringbuf import FrameRing, RingPolicy
from edge.core.scoring import ModelIdentity, fit_scoring
from engines.runtime.base import EngineError
from engines.runtime.select import RunnerPlan, RuntimeConfig
from tests.edge._crop_data import make_frame, make_roi, make_spec


def gpu_unavailable() -> str | None:
    """Why the zero-copy path cannot run here, or None."""
    if importlib.util.find_spec("pycuda") is None:
        return "pycuda is not installed (GPU extra): no CUDA crop"
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (train extra): no torch CUDA engine"
    import torch

    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA GPU"
    return None


pytestmark = pytest.mark.skipif(gpu_unavailable() is not None, reason=str(gpu_unavailable()))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A toy model folder as edge-train writes it (ONNX, checkpoint) and its scoring file."""
    import torch

    from engines._registry import register_family
    from engines.checkpoint import TrainInfo, save_checkpoint, utc_now
    from engines.export import onnx_from_model
    from tests.engines._toy import TOY_FAMILY

    register_family(TOY_FAMILY, replace=True)
    torch.manual_seed(0)
    card = TOY_FAMILY.card("tiny", "foreground")
    net = TOY_FAMILY.build(card).eval()
    folder = tmp_path_factory.mktemp("gpu-model")
    onnx = onnx_from_model(net, card, folder / "model.onnx")
    save_checkpoint(folder / "model.safetensors", net, card, TrainInfo(1, 0, "", utc_now(), utc_now()))
    return onnx, fit_scoring([0.01, 0.02, 0.03, 0.04], ModelIdentity.of(card, onnx))


def _inspector(model: tuple[Path, object], **runtime: object):  # type: ignore[no-untyped-def]
    from edge.inspect import Inspector

    onnx, scoring = model
    spec = make_spec(64, 48)
    return Inspector(spec, make_roi(spec, "cylinder"), onnx, scoring, plan=RunnerPlan(RuntimeConfig(**runtime)))  # type: ignore[arg-type]


def test_zero_copy_gpu_path_matches_the_cpu_path(model: tuple[Path, object]) -> None:
    gpu = _inspector(model, backend="torch", device="cuda:0", crop="cuda", precision="fp32")
    cpu = _inspector(model, backend="onnxruntime", device="cpu")
    try:
        assert gpu.choice.crop == "cuda" and gpu.stage.device_runner is not None and not gpu.choice.fallback
        for seed in range(4):
            frame = make_frame(gpu.cropper.spec, seed)
            a, b = gpu.inspect(frame), cpu.inspect(frame)
            assert np.array_equal(a.crop.mask, b.crop.mask)
            assert a.raw_score == pytest.approx(b.raw_score, rel=1e-3, abs=1e-6)
            assert a.verdict == b.verdict
            fed = gpu.inputs()  # what the kernel wrote into the engine's device buffers, read back
            np.testing.assert_array_equal(fed["rgb"], cpu.inputs()["rgb"])
            np.testing.assert_array_equal(fed["xyz"], cpu.inputs()["xyz"])
    finally:
        gpu.close()
        cpu.close()


def test_the_torch_engine_is_replayed_as_a_cuda_graph(model: tuple[Path, object]) -> None:
    ins = _inspector(model, backend="torch", device="cuda:0", crop="cuda", cuda_graph=True)
    try:
        assert "cuda-graph" in ins.runner.name, getattr(ins.runner, "graph_note", "")
    finally:
        ins.close()


def test_device_inputs_must_be_the_engines_own_buffers(model: tuple[Path, object]) -> None:
    ins = _inspector(model, backend="torch", device="cuda:0", crop="cuda")
    try:
        runner = ins.stage.device_runner
        assert runner is not None
        with pytest.raises(EngineError, match="not this runner's device buffers"):
            runner.infer_device({"rgb": 12345})
    finally:
        ins.close()


@pytest.mark.parametrize("mapped", [False, True])
def test_crops_from_page_locked_or_mapped_ring_memory_are_identical(model: tuple[Path, object], mapped: bool) -> None:
    from edge.crop import CropSpec
    from edge.crop_cuda import CudaRoiCropper

    spec = make_spec(64, 48)
    roi = make_roi(spec, "cylinder")
    frames = [make_frame(spec, seed) for seed in range(3)]
    plain = CudaRoiCropper(spec, roi, CropSpec(size=32))
    with FrameRing.create(spec, slots=4, policy=RingPolicy.LOSSLESS) as ring:
        pinned = CudaRoiCropper(spec, roi, CropSpec(size=32))
        try:
            how = pinned.register_host(ring.memory(), mapped=mapped)
            assert how.startswith("mapped" if mapped else "pinned")
            writer, reader = ring.writer(), ring.reader()
            for f in frames:
                writer.write(f)
            for f in frames:
                with reader.read(1.0) as slot:
                    got = pinned.crop(slot)
                    rgb, mask = got.rgb.copy(), got.mask.copy()
                want = plain.crop(f)
                np.testing.assert_array_equal(rgb, want.rgb)
                np.testing.assert_array_equal(mask, want.mask)
        finally:
            pinned.close()  # unregisters before the ring's memory goes away
            plain.close()
