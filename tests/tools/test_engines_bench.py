"""The engines benchmark's helpers: interleaved timing and the convolution/GEMM work counted from a graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engines.runtime.base import Runner, TensorSpec
from tools.benchmarks.engines import _time, gemm_gflop


class Logged(Runner):
    """A runner that appends its name to a shared log on every inference."""

    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__(name)
        self.log = log
        self.spec = TensorSpec("x", (1,), np.dtype(np.float32))

    def _activate_impl(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        return (self.spec,), (self.spec,)

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.log.append(self.name)
        return {"x": feed["x"]}

    def _deactivate_impl(self) -> None:
        self.log.append(f"{self.name} closed")


def test_runners_are_timed_interleaved_in_a_rotating_order() -> None:
    log: list[str] = []
    with Logged("a", log) as a, Logged("b", log) as b, Logged("c", log) as c:
        samples = _time([a, b, c], {"x": np.zeros(1, np.float32)}, 3)
        timed = log[6:]  # after 2 warm-up runs each
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert [len(s) for s in samples] == [3, 3, 3] and all(t > 0 for s in samples for t in s)


def test_gemm_gflop_counts_conv_convtranspose_and_gemm_after_a_resize(tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="onnx is not installed")

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)  # 16² × 8 outputs × 3·9 MACs
            self.up = torch.nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1, groups=2)  # 16² × 8 inputs × 2·16
            self.head = torch.nn.Conv2d(
                4, 2, 1
            )  # after a bilinear Resize (shape inference leaves it open): 64² × 2 × 4
            self.fc = torch.nn.Linear(2, 5)  # Gemm or MatMul over 64² rows: 64² × 2·5

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.up(torch.relu(self.conv(x)))
            y = torch.nn.functional.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=True)
            out: torch.Tensor = self.fc(self.head(y).flatten(2).transpose(1, 2))
            return out

    path = tmp_path / "net.onnx"
    x = torch.randn(1, 3, 16, 16)
    torch.onnx.export(Net().eval(), (x,), str(path), input_names=["x"], opset_version=17, dynamo=False)
    macs = 16 * 16 * 8 * 3 * 9 + 16 * 16 * 8 * 2 * 16 + 64 * 64 * 2 * 4 + 64 * 64 * 2 * 5
    assert gemm_gflop(path, {"x": x.numpy()}, tmp_path) == pytest.approx(2 * macs / 1e9)
