"""``edge-train`` end to end on the toy family: outputs, scoring, resume after a pause, and argument errors."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from calibration.roi import load_roi
from edge.core.scoring import load_scoring
from edge.inspect import GOLDEN_NAME, ModelStage
from engines._registry import register_family
from engines.checkpoint import load_checkpoint, read_checkpoint_meta
from engines.contract import FitSettings, FitsValidation, ModelCard, TrainContext
from engines.export import card_from_onnx
from engines.runtime.select import RunnerPlan, RuntimeConfig
from tests.engines._toy import PRESETS, TOY_FAMILY, ToyFamily, ToyNet, make_mvtec
from tools.train import CliTrainContext, main


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    register_family(TOY_FAMILY, replace=True)
    root, roi, _ = make_mvtec(tmp_path_factory.mktemp("train"))
    return root, roi


def argv(data: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    root, roi = data
    base = ["--model", "toy", "--preset", "tiny", "--data", str(root), "--roi", str(roi), "--out", str(out)]
    return [*base, "--epochs", "3", "--batch-size", "4", "--lr", "0.01", "--seed", "0", *extra]


def test_train_end_to_end(data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(argv(data, out, "--option", "mode=rgbd")) == 0
    printed = capsys.readouterr()
    assert "test image AUROC 0." in printed.out or "test image AUROC 1." in printed.out
    assert "ORT vs PyTorch OK" in printed.err
    roi = load_roi(data[1])
    model, card, info = load_checkpoint(out, {"family": "toy", "crop_mode": "foreground", "roi_version": roi.version})
    assert card.options == {"mode": "rgbd"} and card.data_hash == info.data_hash and len(card.data_hash) == 64
    assert info.epochs == 3 and info.seed == 0 and 0.0 <= info.metrics["image_auroc"] <= 1.0
    assert info.metrics["test_good"] == 2 and info.metrics["test_defect"] == 6  # the split of make_mvtec's export
    assert card_from_onnx(out / "model.onnx") == card
    scoring = load_scoring(out / "scoring.yaml")
    scoring.check_artefact(out / "model.onnx")
    assert scoring.fitted_on.n_samples == 2 and scoring.model.roi_version == roi.version
    assert scoring.threshold.value == pytest.approx(info.metrics["threshold"])
    assert not model.training


def test_resume_after_pause_matches_an_uninterrupted_run(data: tuple[Path, Path], tmp_path: Path) -> None:
    full, paused = tmp_path / "full", tmp_path / "paused"
    assert main(argv(data, full)) == 0
    assert main(argv(data, paused, "--stop-after", "1")) == 3
    assert (paused / "state" / "state.safetensors").is_file() and not (paused / "model.safetensors").exists()
    assert main(argv(data, paused)) == 2  # stale state without --resume is refused
    assert main(argv(data, paused, "--preset", "edge", "--resume")) == 2  # state of another card
    assert main(argv(data, paused, "--resume")) == 0
    a, b = load_file(str(full / "model.safetensors")), load_file(str(paused / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_checkpoint_meta(full)[0] == read_checkpoint_meta(paused)[0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--model", "nope"], "unknown model family 'nope'"),
        (["--preset", "huge"], "has no preset 'huge'"),
        (["--epochs", "0"], "must be ≥ 1"),
        (["--roi", "missing.yaml"], "ROI file missing.yaml not found"),
        (["--resume"], "does not exist"),
    ],
)
def test_user_errors_exit_2_with_one_line(
    data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], change: list[str], message: str
) -> None:
    assert main([*argv(data, tmp_path / "out"), *change]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edge-train: ") and message in err[0], err


def test_bad_argument_is_an_argparse_error(data: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv(data, tmp_path / "out"), "--option", "no-equals-sign"])
    assert exit_info.value.code == 2


def test_ctrl_c_then_resume(data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after the first saved epoch exits 130 with the state on disk; --resume finishes the run."""
    out = tmp_path / "interrupted"
    original = CliTrainContext.save_state

    def save_then_interrupt(self: CliTrainContext, phase: str, epoch: int, state: Mapping[str, Any]) -> None:
        original(self, phase, epoch, state)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(CliTrainContext, "save_state", save_then_interrupt)
        assert main(argv(data, out)) == 130
    assert (out / "state" / "state.safetensors").is_file() and not (out / "model.onnx").exists()
    assert main(argv(data, out, "--resume")) == 0
    assert read_checkpoint_meta(out)[1].epochs == 3


class ScaledToyNet(ToyNet):
    """The toy net divided by a scale that only the validation fit sets (a stand-in for score alignment)."""

    scale: torch.Tensor

    def __init__(self, hidden: int) -> None:
        super().__init__(hidden)
        self.register_buffer("scale", torch.ones(()))

    def forward(self, rgb: torch.Tensor, xyz: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap, score = super().forward(rgb, xyz, mask)
        return amap / self.scale, score / self.scale


class ValidatedToyFamily(ToyFamily):
    """The toy family plus the contract's optional validation fit: scale = median validation image score."""

    name = "toyval"

    def __init__(self) -> None:
        self.labels_seen: list[int] = []

    def build(self, card: ModelCard) -> nn.Module:
        return ScaledToyNet(int(PRESETS[card.preset]["hidden"]))

    def fit_validation(
        self, model: Any, validation: Iterable[Mapping[str, Any]], settings: FitSettings, context: TrainContext
    ) -> Mapping[str, float]:
        assert not model.training  # after fit
        scores = []
        with torch.no_grad():
            for batch in validation:
                self.labels_seen += [int(v) for v in batch["label"]]
                scores.append(model(rgb=batch["rgb"], xyz=batch["xyz"], mask=batch["mask"])[1])
        median = torch.quantile(torch.cat(scores).double(), 0.5).float()
        model.scale.fill_(median)
        return {"scale": float(median)}


def test_validation_fit_runs_on_normal_validation_frames_before_export(data: tuple[Path, Path], tmp_path: Path) -> None:
    family = ValidatedToyFamily()
    assert isinstance(family, FitsValidation) and not isinstance(TOY_FAMILY, FitsValidation)
    register_family(family, replace=True)
    out = tmp_path / "run"
    assert main([*argv(data, out), "--model", "toyval"]) == 0
    assert family.labels_seen == [0, 0]  # the two validation/good samples of make_mvtec's export, nothing else
    model, _, info = load_checkpoint(out, {"family": "toyval"})
    assert float(model.scale) == pytest.approx(info.metrics["validation_fit_scale"]) and float(model.scale) != 1.0
    stage = ModelStage(out / "model.onnx", RunnerPlan(RuntimeConfig(backend="onnxruntime", device="cpu")))
    try:  # the exported graph carries the fitted scale: the median validation score is now 1
        golden = np.load(out / GOLDEN_NAME)
        raw = stage.raw_scores({k: golden[k][i] for k in ("rgb", "xyz", "mask")} for i in range(2))
    finally:
        stage.close()
    assert float(np.median(raw)) == pytest.approx(1.0, rel=1e-4)
    plain = tmp_path / "plain"
    assert main(argv(data, plain)) == 0
    _, _, plain_info = load_checkpoint(plain, {"family": "toy"})
    assert not any(k.startswith("validation_fit_") for k in plain_info.metrics)
