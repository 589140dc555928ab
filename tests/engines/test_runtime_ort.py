"""OrtRunner on a tiny exported conv model: matches a plain onnxruntime session and torch, reuses its output
buffers, rejects bad feeds and missing execution providers with clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from engines.contract import INPUT_NAMES, OUTPUT_NAMES, ModelCard
from engines.export import onnx_from_model
from engines.runtime import EngineError, FeedError, OrtRunner, OrtRunnerConfig
from engines.runtime.ort import resolve_providers
from engines.runtime.torch_ref import TorchRunner

SIZE = 16


class TinyNet(torch.nn.Module):
    """rgb/xyz/mask → a conv map and its masked max, named as the contract says."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(7, 1, 3, padding=1)

    def forward(self, rgb: torch.Tensor, xyz: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = torch.relu(self.conv(torch.cat([rgb, xyz, mask], 1))) * mask
        return m, m.flatten(1).amax(1)


TINY_CARD = ModelCard("tiny", "test", SIZE, INPUT_NAMES, "foreground", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def export(module: torch.nn.Module, path: Path) -> Path:
    """The project's exporter (fixed shapes, opset 17, contract names), as every model is exported."""
    return onnx_from_model(module, TINY_CARD, path)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyNet, Path]:
    torch.manual_seed(0)
    net = TinyNet().eval()
    return net, export(net, tmp_path_factory.mktemp("ort") / "tiny.onnx")


def feed(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "rgb": rng.standard_normal((1, 3, SIZE, SIZE), dtype=np.float32),
        "xyz": rng.uniform(0.3, 1.5, (1, 3, SIZE, SIZE)).astype(np.float32),
        "mask": (rng.random((1, 1, SIZE, SIZE)) < 0.7).astype(np.float32),
    }


def test_matches_plain_session_and_torch(model: tuple[TinyNet, Path]) -> None:
    net, path = model
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with OrtRunner(path, OrtRunnerConfig(intra_op_threads=1)) as runner:
        assert runner.providers == ["CPUExecutionProvider"]
        for seed in range(3):
            f = feed(seed)
            out = runner.infer(f)
            want = dict(zip(OUTPUT_NAMES, plain.run(None, f), strict=True))
            with torch.inference_mode():
                tm, ts = net(**{k: torch.from_numpy(v) for k, v in f.items()})
            assert out["anomaly_map"].shape == (1, 1, SIZE, SIZE) and out["image_score"].shape == (1,)
            np.testing.assert_array_equal(out["anomaly_map"], want["anomaly_map"])
            np.testing.assert_array_equal(out["image_score"], want["image_score"])
            np.testing.assert_allclose(out["anomaly_map"], tm.numpy(), atol=1e-5)
            np.testing.assert_allclose(out["image_score"], ts.numpy(), atol=1e-5)
            assert runner.last_latency_ns > 0


def test_outputs_are_the_same_buffers_every_call(model: tuple[TinyNet, Path]) -> None:
    _, path = model
    with OrtRunner(path) as runner:
        first = runner.infer(feed(0))
        kept = {k: v.copy() for k, v in first.items()}
        second = runner.infer(feed(1))
        for name in OUTPUT_NAMES:
            assert second[name] is first[name]  # no per-call allocation: the preallocated buffers come back
        assert not np.array_equal(second["anomaly_map"], kept["anomaly_map"])  # …overwritten by the next call


def test_describe_and_warmup(model: tuple[TinyNet, Path]) -> None:
    _, path = model
    runner = OrtRunner(path)
    with pytest.raises(EngineError, match="not active"):
        runner.describe()
    with runner:
        d = runner.describe()
        assert [s["name"] for s in d["inputs"]] == list(INPUT_NAMES)
        assert d["outputs"][0] == {"name": "anomaly_map", "shape": [1, 1, SIZE, SIZE], "dtype": "float32"}
        runner.warmup(2)
    assert not runner.is_active


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.pop("mask"), r"missing \['mask'\]"),
        (lambda f: f.update(depth=f["xyz"]), r"unexpected \['depth'\]"),
        (
            lambda f: f.update(rgb=f["rgb"][:, :, :8]),
            r"rgb has shape \(1, 3, 8, 16\), the model wants \(1, 3, 16, 16\)",
        ),
        (lambda f: f.update(xyz=f["xyz"].astype(np.float64)), "xyz has dtype float64, the model wants float32"),
        (lambda f: f.update(mask=f["mask"].tolist()), "mask is a list, not a numpy array"),
    ],
)
def test_bad_feeds_are_named(model: tuple[TinyNet, Path], change: object, message: str) -> None:
    _, path = model
    f = feed(0)
    change(f)  # type: ignore[operator]
    with OrtRunner(path) as runner, pytest.raises(FeedError, match=message) as err:
        runner.infer(f)
    assert "describe()" in str(err.value)


def test_strided_input_is_accepted(model: tuple[TinyNet, Path]) -> None:
    _, path = model
    f = feed(2)
    wide = np.zeros((1, 3, SIZE, 2 * SIZE), np.float32)
    wide[..., ::2] = f["rgb"]
    with OrtRunner(path) as runner:
        want = runner.infer(f)["anomaly_map"].copy()
        got = runner.infer({**f, "rgb": wide[..., ::2]})["anomaly_map"]
    np.testing.assert_array_equal(got, want)


def test_missing_execution_provider_lists_the_installed_ones(model: tuple[TinyNet, Path]) -> None:
    _, path = model
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        pytest.skip("CUDAExecutionProvider is installed here, so it cannot be missing")
    with pytest.raises(EngineError, match=r"\['CUDAExecutionProvider'\] are not available") as err:
        OrtRunner(path, OrtRunnerConfig(providers=["cuda"])).activate()
    assert "CPUExecutionProvider" in str(err.value) and "onnxruntime-gpu" in str(err.value)
    got = resolve_providers(
        OrtRunnerConfig(providers=["tensorrt", "cuda"], device_id=1),
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    assert got == [
        ("TensorrtExecutionProvider", {"device_id": 1}),
        ("CUDAExecutionProvider", {"device_id": 1}),
        ("CPUExecutionProvider", {}),
    ]


def test_missing_or_unreadable_model(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="does not exist"):
        OrtRunner(tmp_path / "none.onnx").activate()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(EngineError, match="cannot load") as err:
        OrtRunner(bad).activate()
    assert "re-export" in str(err.value)


def test_torch_runner_same_interface(model: tuple[TinyNet, Path]) -> None:
    net, path = model
    with OrtRunner(path) as onnx, TorchRunner(lambda: net, onnx.input_specs) as ref:
        assert ref.describe() == onnx.describe()
        f = feed(3)
        a = ref.infer(f)
        np.testing.assert_allclose(a["anomaly_map"], onnx.infer(f)["anomaly_map"], atol=1e-5)
        assert ref.infer(feed(4))["anomaly_map"] is a["anomaly_map"]
        specs = onnx.input_specs
    with pytest.raises(EngineError, match="returned a int"):
        TorchRunner(lambda: 3, specs).activate()


@pytest.mark.parametrize("spin", [False, True])
def test_pool_threads_spin_only_when_asked(model: tuple[TinyNet, Path], spin: bool) -> None:
    """Idle pool threads sleep by default (they would take the cores capture and the daemon share with them)."""
    _, path = model
    with OrtRunner(path, OrtRunnerConfig(intra_op_threads=2, allow_spinning=spin)) as runner:
        options = runner._session.get_session_options()
        for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
            assert options.get_session_config_entry(key) == ("1" if spin else "0")
