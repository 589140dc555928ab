"""The parity gate on real runtimes: ONNX Runtime vs torch within budget, a perturbed ONNX failing with the
output and the verdict flips named, every threshold form, .npz feeds, and `edge-parity` exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from engines.contract import INPUT_NAMES, OUTPUT_NAMES, ModelCard
from engines.export import onnx_from_model
from engines.parity import ParityBudget, compare_runners, feeds_from_npz, random_feeds, verdict_function
from engines.runtime import EngineError, OrtRunner
from engines.runtime.torch_ref import TorchRunner
from tools.parity import main

REPO = Path(__file__).resolve().parents[2]
SIZE = 16
TINY_CARD = ModelCard("tiny", "test", SIZE, INPUT_NAMES, "foreground", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
FACTORY = """
import torch

class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(7, 1, 3, padding=1)

    def forward(self, rgb, xyz, mask):
        m = torch.relu(self.conv(torch.cat([rgb, xyz, mask], 1))) * mask
        return m, m.flatten(1).amax(1)

def build():
    torch.manual_seed(0)
    return TinyNet()
"""


@pytest.fixture(scope="module")
def factory_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A module ``tiny_factory`` with ``build()`` (a seeded TinyNet), importable once its folder is on sys.path."""
    root = tmp_path_factory.mktemp("factory")
    (root / "tiny_factory.py").write_text(textwrap.dedent(FACTORY))
    return root


@pytest.fixture(scope="module")
def models(factory_module: Path) -> tuple[torch.nn.Module, Path, Path]:
    """(torch module, its ONNX, the same ONNX with the conv bias raised by 0.5)."""
    sys.path.insert(0, str(factory_module))
    try:
        import tiny_factory  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(factory_module))
    net = tiny_factory.build().eval()
    path = factory_module / "tiny.onnx"
    onnx_from_model(net, TINY_CARD, path)  # the project's exporter, as every model is exported
    model = onnx.load(str(path))
    bias = next(t for t in model.graph.initializer if t.name.endswith("bias"))
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(0.5), bias.name))
    perturbed = factory_module / "perturbed.onnx"
    onnx.save(model, str(perturbed))
    return net, path, perturbed


def reference_scores(path: Path, n: int, seed: int) -> np.ndarray:
    with OrtRunner(path) as r:
        return np.array([float(r.infer(f)["image_score"][0]) for f in random_feeds(r.input_specs, n, seed)])


def test_ort_vs_torch_within_budget(models: tuple[torch.nn.Module, Path, Path]) -> None:
    net, path, _ = models
    threshold = float(np.median(reference_scores(path, 6, 1)))
    with OrtRunner(path) as onnx_runner, TorchRunner(net, onnx_runner.input_specs) as ref:
        feeds = random_feeds(onnx_runner.input_specs, 6, seed=1)
        report = compare_runners(ref, [onnx_runner], feeds, threshold=threshold)
    assert report.passed and report.samples == 6 and report.threshold == threshold
    pair = report.pairs[0]
    assert (pair.reference, pair.candidate) == ("torch[cpu]", "onnxruntime[tiny.onnx]")
    assert {s.name for s in pair.outputs} == set(OUTPUT_NAMES)
    assert all(s.within and s.max_abs < 1e-5 for s in pair.outputs)
    assert pair.flips == 0 and len(pair.score_deltas) == 6 and max(map(abs, pair.score_deltas)) < 1e-5


def test_perturbed_onnx_fails_with_output_and_flips_named(models: tuple[torch.nn.Module, Path, Path]) -> None:
    net, _, perturbed = models
    threshold = float(np.median(reference_scores(perturbed, 8, 0))) - 0.25
    with OrtRunner(perturbed) as cand, TorchRunner(net, cand.input_specs) as ref:
        report = compare_runners(ref, [cand], random_feeds(cand.input_specs, 8, 0), threshold=threshold)
    pair = report.pairs[0]
    assert not report.passed and pair.flips is not None and pair.flips >= 1
    assert any(f.startswith("anomaly_map: max |Δ|") for f in pair.failures)
    assert any(f.startswith("image_score:") for f in pair.failures)
    assert any("verdict flip(s) at the threshold" in f for f in pair.failures)
    assert all(d > 0.3 for d in pair.score_deltas)  # the raised bias lifts every score
    loose = ParityBudget(map_atol=1.0, score_rtol=10.0, max_flips=8)
    with OrtRunner(perturbed) as cand, TorchRunner(net, cand.input_specs) as ref:
        assert compare_runners(ref, [cand], random_feeds(cand.input_specs, 8, 0), budget=loose).passed


class Scoring:
    threshold_raw = 1.0


def test_threshold_forms() -> None:
    for t in (1.0, 1, Scoring(), lambda s: s >= 1.0):
        v = verdict_function(t)  # type: ignore[arg-type]
        assert (v(0.99), v(1.0), v(2.0)) == (False, True, True)
    with pytest.raises(EngineError, match="cannot use a str as a threshold"):
        verdict_function("0.5")  # type: ignore[arg-type]


def test_feeds_from_npz(tmp_path: Path, models: tuple[torch.nn.Module, Path, Path]) -> None:
    _, path, _ = models
    with OrtRunner(path) as r:
        specs = r.input_specs
    feeds = random_feeds(specs, 3, seed=5)
    np.savez(tmp_path / "one.npz", **feeds[0])
    np.savez(tmp_path / "many.npz", **{k: np.stack([f[k] for f in feeds]) for k in INPUT_NAMES})
    got = feeds_from_npz([tmp_path / "one.npz", tmp_path / "many.npz"], specs)
    assert len(got) == 4
    np.testing.assert_array_equal(got[3]["xyz"], feeds[2]["xyz"])
    np.savez(tmp_path / "short.npz", rgb=feeds[0]["rgb"])
    with pytest.raises(EngineError, match=r"lacks inputs \['xyz', 'mask'\]"):
        feeds_from_npz([tmp_path / "short.npz"], specs)
    np.savez(tmp_path / "wrong.npz", **{k: v[..., :4] for k, v in feeds[0].items()})
    with pytest.raises(EngineError, match="do not fit the model"):
        feeds_from_npz([tmp_path / "wrong.npz"], specs)


def test_cli_torch_factory_and_report(
    tmp_path: Path, models: tuple[torch.nn.Module, Path, Path], factory_module: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path, _ = models
    monkeypatch.syspath_prepend(str(factory_module))
    report = tmp_path / "parity.json"
    args = ["--onnx", str(path), "--torch-factory", "tiny_factory:build", "--samples", "4", "--threshold", "0.5"]
    assert main([*args, "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["passed"] and data["samples"] == 4 and data["budget"]["map_atol"] == 1e-3
    assert data["pairs"][0]["flips"] == 0 and data["pairs"][0]["outputs"][0]["max_abs"] < 1e-5
    assert main(["--onnx", str(path), "--torch-factory", "tiny_factory:nothing"]) == 2


def test_cli_perturbed_onnx_exits_1(tmp_path: Path, models: tuple[torch.nn.Module, Path, Path]) -> None:
    _, path, perturbed = models
    threshold = float(np.median(reference_scores(path, 8, 0))) + 0.25
    report = tmp_path / "parity.json"
    run = subprocess.run(
        [sys.executable, "-m", "tools.parity", "--onnx", str(perturbed), "--reference-onnx", str(path),
         "--threshold", str(threshold), "--report", str(report)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "FAIL anomaly_map: max |Δ|" in run.stdout and "verdict flip(s)" in run.stdout
    assert json.loads(report.read_text())["pairs"][0]["flips"] >= 1


def test_cli_errors_exit_2(models: tuple[torch.nn.Module, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, path, _ = models
    assert main(["--onnx", str(path)]) == 2
    assert "nothing to compare the ONNX against" in capsys.readouterr().err
    assert main(["--onnx", str(path), "--reference-onnx", str(path), "--feeds", "/nonexistent.npz"]) == 2
    assert "cannot read feeds" in capsys.readouterr().err
