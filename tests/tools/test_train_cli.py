"""``edge-train`` end to end on the toy family: outputs, scoring, resume after a pause, and argument errors."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from calibration.roi import load_roi
from edge.core.scoring import load_scoring
from engines._registry import register_family
from engines.checkpoint import load_checkpoint, read_checkpoint_meta
from engines.export import card_from_onnx
from tests.engines._toy import TOY_FAMILY, make_mvtec
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
