"""TrtRunner on a real GPU: an engine built by edge-build matches ONNX Runtime, reuses its buffers, replays a
CUDA graph, and takes device pointers as inputs. Skips with the reason where TensorRT, pycuda or a GPU is missing."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest

from engines.contract import INPUT_NAMES, OUTPUT_NAMES
from engines.parity import compare_runners, random_feeds
from engines.runtime import OrtRunner

SIZE = 32


def _gpu_reason() -> str | None:
    """Why the GPU tests cannot run here, or None."""
    if importlib.util.find_spec("tensorrt") is None or importlib.util.find_spec("pycuda") is None:
        return "tensorrt/pycuda not installed"
    import pycuda.driver as cuda

    try:
        cuda.init()
        if cuda.Device.count() == 0:
            return "no CUDA device"
    except cuda.Error as e:
        return f"no CUDA device ({e})"
    return None


REASON = _gpu_reason()
requires_gpu = pytest.mark.skipif(REASON is not None, reason=REASON or "")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_activate_without_tensorrt_says_what_to_install(tmp_path: Path) -> None:
    from engines.runtime import EngineError
    from engines.runtime.trt import TrtRunner

    runner = TrtRunner(tmp_path / "x.engine", cuda_graph=True)  # construction touches nothing
    with pytest.raises(EngineError, match="TensorRT is not installed") as err:
        runner.activate()
    assert "drumsight-edge[gpu]" in str(err.value) and not runner.is_active


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(ONNX, fp32 engine) of a small conv net, built through engines.build with a timing cache."""
    import torch

    from engines.build import BuildSettings, build_engine

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(7, 1, 3, padding=1)

        def forward(self, rgb: torch.Tensor, xyz: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
            m = torch.relu(self.conv(torch.cat([rgb, xyz, mask], 1))) * mask
            return m, m.flatten(1).amax(1)

    root = tmp_path_factory.mktemp("trt")
    torch.manual_seed(0)
    args = tuple(torch.zeros(1, c, SIZE, SIZE) for c in (3, 3, 1))
    onnx_path = root / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Net().eval(), args, str(onnx_path), input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
            opset_version=17, dynamo=False,
        )  # fmt: skip
    settings = BuildSettings(precision="fp32", timing_cache=root / "timing.cache")
    engine = build_engine(onnx_path, root, model="net", tag="test", settings=settings)
    assert (root / "timing.cache").stat().st_size > 0
    return onnx_path, engine


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.gpu
@requires_gpu
def test_engine_matches_onnxruntime(built: tuple[Path, Path], graph: bool) -> None:
    from engines.runtime.trt import TrtRunner

    onnx_path, engine = built
    with OrtRunner(onnx_path) as ref, TrtRunner(engine, cuda_graph=graph) as trt:
        assert trt.describe() == ref.describe()
        report = compare_runners(ref, [trt], random_feeds(ref.input_specs, 4, seed=0), threshold=0.5)
        assert report.passed, report.pairs[0].failures
        f = random_feeds(ref.input_specs, 2, seed=1)
        first = trt.infer(f[0])
        assert trt.infer(f[1])["anomaly_map"] is first["anomaly_map"]


@pytest.mark.gpu
@requires_gpu
def test_device_inputs_feed_the_engine(built: tuple[Path, Path]) -> None:
    import pycuda.driver as cuda

    from engines.runtime.trt import TrtRunner

    onnx_path, engine = built
    with OrtRunner(onnx_path) as ref, TrtRunner(engine) as trt:
        feed = random_feeds(ref.input_specs, 1, seed=2)[0]
        want = {k: v.copy() for k, v in ref.infer(feed).items()}
        with trt.active():
            producer = cuda.Stream()
            bufs = {k: cuda.mem_alloc(v.nbytes) for k, v in feed.items()}
            for k, v in feed.items():
                cuda.memcpy_htod_async(bufs[k], v, producer)
            got = trt.infer_device({k: int(b) for k, b in bufs.items()}, stream=producer)
            np.testing.assert_allclose(got["anomaly_map"], want["anomaly_map"], atol=1e-4)
            for b in bufs.values():
                b.free()


@pytest.mark.gpu
@requires_gpu
def test_manifest_written_and_checked(built: tuple[Path, Path]) -> None:
    from engines.build import probe_environment
    from engines.manifest import check_engine, read_manifest

    onnx_path, engine = built
    m = read_manifest(engine)
    env = probe_environment()
    assert m.environment == env and engine.name.endswith(f".trt{env.tensorrt_version.split('.')[0]}.engine")
    assert check_engine(engine, onnx_path, env, allow_rebuild=False, precision="fp32").action == "use"
