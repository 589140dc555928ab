"""Which runtime runs a model: ``resolve`` on described machines, ``create_runner`` on this one (real ONNX Runtime)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

torch = pytest.importorskip("torch", reason="exporting the test model needs the train extra (torch)")

from edge.inspect import GATE_BUDGETS, GOLDEN_NAME, ModelStage, gate_budget  # noqa: E402
from engines._registry import register_family  # noqa: E402
from engines.checkpoint import TrainInfo, save_checkpoint, utc_now  # noqa: E402
from engines.export import example_feeds, onnx_from_model  # noqa: E402
from engines.runtime.base import EngineError  # noqa: E402
from engines.runtime.ort import OrtRunner  # noqa: E402
from engines.runtime.select import Probe, RunnerPlan, RuntimeConfig, create_runner, probe, resolve  # noqa: E402
from tests.engines._toy import TOY_FAMILY  # noqa: E402

CPU_BOX = Probe(
    tensorrt=None,
    tensorrt_why="the tensorrt package is not installed",
    pycuda=False,
    pycuda_why="the pycuda package is not installed",
    gpus=0,
    ort_providers=("CPUExecutionProvider",),
    torch="2.13.0",
    torch_cuda=False,
)
JETSON = dataclasses.replace(
    CPU_BOX, tensorrt="10.3.0", tensorrt_why="", pycuda=True, pycuda_why="", gpus=1, torch=None
)
GPU_NO_TRT = dataclasses.replace(CPU_BOX, pycuda=True, pycuda_why="", gpus=1, torch_cuda=True)


def cfg(**kw: object) -> RuntimeConfig:
    return RuntimeConfig.model_validate(kw)


def _export(folder: Path, seed: int, checkpoint: bool) -> Path:
    """A toy model exported to ``folder/model.onnx`` (+ its checkpoint and golden crops when ``checkpoint``)."""
    register_family(TOY_FAMILY, replace=True)
    torch.manual_seed(seed)
    card = TOY_FAMILY.card("tiny", "foreground")
    model = TOY_FAMILY.build(card).eval()
    folder.mkdir(parents=True, exist_ok=True)
    onnx = onnx_from_model(model, card, folder / "model.onnx")
    if checkpoint:
        save_checkpoint(folder / "model.safetensors", model, card, TrainInfo(1, seed, "", utc_now(), utc_now()))
        feeds = [example_feeds(card, s) for s in range(3)]
        np.savez(folder / GOLDEN_NAME, **{k: np.concatenate([f[k] for f in feeds]) for k in card.inputs})
    return onnx


@pytest.fixture(scope="module")
def toy_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("bare"), 0, checkpoint=False)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An edge-train-like folder: model.onnx, model.safetensors, golden.npz."""
    return _export(tmp_path_factory.mktemp("run"), 0, checkpoint=True)


def test_auto_on_a_cpu_box_is_onnxruntime_on_the_cpu_and_says_why() -> None:
    c = resolve(cfg(), CPU_BOX)
    assert (c.backend, c.device, c.crop, c.providers) == ("onnxruntime", "cpu", "cpu", ("CPUExecutionProvider",))
    assert "no tensorrt" in c.reason and "0 GPU(s)" in c.reason


def test_auto_with_tensorrt_pycuda_and_a_gpu_is_tensorrt_with_the_cuda_crop() -> None:
    c = resolve(cfg(), JETSON)
    assert (c.backend, c.device, c.crop) == ("tensorrt", "cuda:0", "cuda")
    assert "tensorrt 10.3.0" in c.reason
    assert resolve(cfg(device="cpu"), JETSON).backend == "onnxruntime"  # the user can keep a GPU box on its CPU


def test_auto_never_picks_the_torch_reference_engine() -> None:
    assert resolve(cfg(), GPU_NO_TRT).backend == "onnxruntime"


@pytest.mark.parametrize(
    ("config", "box", "missing"),
    [
        ({"backend": "tensorrt"}, CPU_BOX, "tensorrt is not available here: the tensorrt package is not installed"),
        ({"backend": "tensorrt"}, dataclasses.replace(JETSON, pycuda=False, pycuda_why="pycuda does not import (x)"),
         "runtime tensorrt is not available here: pycuda does not import (x)"),
        ({"backend": "tensorrt"}, dataclasses.replace(JETSON, gpus=0), "no CUDA GPU is visible"),
        ({"backend": "tensorrt", "device": "cuda:3"}, JETSON, "only 1 GPU(s) are visible"),
        ({"backend": "torch", "device": "cuda"}, CPU_BOX, "torch 2.13.0 sees no CUDA GPU"),
        ({"backend": "torch"}, dataclasses.replace(CPU_BOX, torch=None), "torch is not installed"),
        ({"backend": "onnxruntime", "device": "cuda"}, GPU_NO_TRT, "has no CUDAExecutionProvider"),
        ({"backend": "torch", "device": "cuda", "crop": "cuda"}, dataclasses.replace(GPU_NO_TRT, pycuda=False,
         pycuda_why="the pycuda package is not installed"), "crop cuda is not available here"),
        ({"backend": "onnxruntime", "device": "cpu", "crop": "cuda"}, CPU_BOX, "the engine runs on the CPU"),
    ],
)  # fmt: skip
def test_an_unavailable_request_is_refused_naming_the_missing_piece(
    config: dict[str, str], box: Probe, missing: str
) -> None:
    with pytest.raises(EngineError) as err:
        resolve(cfg(**config), box)
    assert missing in str(err.value)
    assert "\n" not in str(err.value)  # one line, for --check-config and the CLIs


def test_torch_on_a_gpu_without_pycuda_crops_on_the_cpu_and_says_so() -> None:
    c = resolve(cfg(backend="torch"), dataclasses.replace(GPU_NO_TRT, pycuda=False, pycuda_why="no pycuda here"))
    assert (c.backend, c.device, c.crop) == ("torch", "cuda:0", "cpu")
    assert "crop on the CPU: no pycuda here" in c.reason


def test_onnxruntime_gpu_uses_the_cuda_provider_when_asked() -> None:
    box = dataclasses.replace(GPU_NO_TRT, ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    c = resolve(cfg(backend="onnxruntime"), box)
    assert (c.backend, c.device, c.providers) == (
        "onnxruntime",
        "cuda:0",
        ("CUDAExecutionProvider", "CPUExecutionProvider"),
    )
    assert c.crop == "cpu"  # ONNX Runtime takes host arrays: the crop stays on the CPU


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda:-1", ""])
def test_device_names_are_validated(device: str) -> None:
    with pytest.raises(ValidationError):
        cfg(device=device)


def test_this_machine_probes_and_auto_resolves_to_onnxruntime_cpu() -> None:
    p = probe()
    assert "CPUExecutionProvider" in p.ort_providers
    if p.gpus == 0:
        c = resolve(cfg(), p)
        assert (c.backend, c.device, c.crop) == ("onnxruntime", "cpu", "cpu")


def test_create_runner_builds_onnxruntime_with_the_configured_threads(toy_onnx: Path) -> None:
    runner, choice = create_runner(toy_onnx, RunnerPlan(cfg(backend="onnxruntime", device="cpu", threads=2)))
    assert isinstance(runner, OrtRunner) and choice.backend == "onnxruntime"
    assert runner.config.intra_op_threads == 2 and runner.config.providers == ["cpu"]
    with runner:
        out = runner.infer({s.name: np.zeros(s.shape, s.dtype) for s in runner.input_specs})
    assert set(out) == {"anomaly_map", "image_score"}


def test_torch_backend_without_a_checkpoint_beside_the_onnx_is_refused(toy_onnx: Path) -> None:
    with pytest.raises(EngineError, match=r"needs the checkpoint .*model\.safetensors"):
        create_runner(toy_onnx, RunnerPlan(cfg(backend="torch", device="cpu")))


def test_the_torch_engine_passes_the_parity_gate_and_runs_like_onnxruntime(toy_run: Path) -> None:
    stage = ModelStage(toy_run, RunnerPlan(cfg(backend="torch", device="cpu", precision="fp32")))
    try:
        assert stage.choice.backend == "torch" and not stage.choice.fallback
        assert stage.gate is not None and stage.gate.passed and stage.gate.samples == 3  # the golden crops
        feed = example_feeds(stage.card, 7)
        raw, amap, _ = stage.run(feed)
        amap = amap.copy()
    finally:
        stage.close()
    with OrtRunner(toy_run) as ort:
        ref = ort.infer(feed)
    assert raw == pytest.approx(float(ref["image_score"][0]), rel=1e-4)
    np.testing.assert_allclose(amap, ref["anomaly_map"][0, 0], atol=1e-5)


def test_an_engine_that_fails_the_parity_gate_falls_back_to_onnxruntime_and_says_why(
    toy_run: Path, tmp_path: Path
) -> None:
    other = _export(tmp_path / "other", 1, checkpoint=True)  # another model's weights …
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("model.onnx", GOLDEN_NAME):
        (bad / name).write_bytes((toy_run.parent / name).read_bytes())
    (bad / "model.safetensors").write_bytes((other.parent / "model.safetensors").read_bytes())  # … beside this ONNX
    stage = ModelStage(bad / "model.onnx", RunnerPlan(cfg(backend="torch", device="cpu")))
    try:
        assert isinstance(stage.runner, OrtRunner)
        c = stage.choice
        assert (c.backend, c.device, c.crop) == ("onnxruntime", "cpu", "cpu")
        assert c.fallback.startswith("parity gate failed against ONNX Runtime") and "exceeds" in c.fallback
        assert "FELL BACK" in c.describe()
    finally:
        stage.close()


def test_without_golden_crops_the_gate_uses_seeded_example_feeds(toy_run: Path, tmp_path: Path) -> None:
    bare = tmp_path / "nogolden"
    bare.mkdir()
    for name in ("model.onnx", "model.safetensors"):
        (bare / name).write_bytes((toy_run.parent / name).read_bytes())
    stage = ModelStage(bare / "model.onnx", RunnerPlan(cfg(backend="torch", device="cpu")))
    try:
        assert stage.gate is not None and stage.gate.passed and stage.gate.samples == 4
    finally:
        stage.close()


def test_the_gate_widens_its_map_limit_to_the_card_map_tolerance_and_keeps_the_score_limit(toy_onnx: Path) -> None:
    card = TOY_FAMILY.card("tiny", "foreground")
    feeds = [example_feeds(card, s) for s in range(2)]
    with OrtRunner(toy_onnx) as ort:
        scale = max(float(np.abs(ort.infer(f)["anomaly_map"]).max()) for f in feeds)
        plain = gate_budget(ort, feeds, "fp32")
        wide = gate_budget(ort, feeds, "fp32", map_tolerance=1e-2)
        int8 = gate_budget(ort, feeds, "int8", map_tolerance=1e-2)
    assert plain.map_atol == pytest.approx(GATE_BUDGETS["fp32"][0] * scale)
    assert wide.map_atol == pytest.approx(1e-2 * scale) and wide.score_rtol == plain.score_rtol
    assert int8.map_atol == pytest.approx(GATE_BUDGETS["int8"][0] * scale)  # already wider: kept
