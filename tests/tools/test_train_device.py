"""``edge-train --device``: AST and 3DSR trained on a CUDA GPU export and score on the CPU; refusals elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engines.checkpoint import load_checkpoint, read_checkpoint_meta
from tests.engines._toy import make_mvtec
from tools.train import main


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root, roi, _ = make_mvtec(tmp_path_factory.mktemp("device"))
    return root, roi


def argv(data: tuple[Path, Path], out: Path, model: str, *extra: str) -> list[str]:
    root, roi = data
    return [
        "--model", model, "--preset", "tiny", "--data", str(root), "--roi", str(roi), "--out", str(out),
        "--epochs", "2", "--batch-size", "4", "--lr", "1e-3", "--seed", "0", *extra,
    ]  # fmt: skip


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="torch sees no CUDA GPU here: training on cuda is checked on a GPU machine"
)
def test_ast_and_3dsr_train_on_cuda_and_come_back_on_the_cpu(data: tuple[Path, Path], tmp_path: Path) -> None:
    """Training runs on the GPU; the ONNX export, its parity check and the scoring fit run on the CPU as always."""
    assert main(argv(data, tmp_path / "ast", "ast", "--device", "cuda")) == 0
    assert main(argv(data, tmp_path / "dada", "dada", "--device", "cuda", "--crop", "full")) == 0
    dada = tmp_path / "dada" / "model.safetensors"
    assert main(argv(data, tmp_path / "dsr3d", "dsr3d", "--device", "cuda", "--option", f"dada={dada}")) == 0
    for run, family in (("ast", "ast"), ("dada", "dada"), ("dsr3d", "dsr3d")):
        _, info = read_checkpoint_meta(tmp_path / run)
        assert info.settings["device"] == "cuda", run
        model, _, _ = load_checkpoint(tmp_path / run, {"family": family})
        params = list(model.parameters())
        assert all(p.device.type == "cpu" and bool(torch.isfinite(p).all()) for p in params), run
        assert "parity_max_abs_image_score" in info.metrics and (tmp_path / run / "scoring.yaml").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a CUDA GPU here, so --device cuda is not refused")
def test_cuda_without_a_gpu_is_refused_before_training(
    data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv(data, tmp_path / "out", "ast", "--device", "cuda")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sees no CUDA GPU" in err[0] and "--device cpu" in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("device", "message"), [("tpu", "is not a torch device"), ("meta", "only cpu and cuda")])
def test_unknown_devices_are_refused(
    data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str, message: str
) -> None:
    assert main(argv(data, tmp_path / "out", "ast", "--device", device)) == 2
    assert message in capsys.readouterr().err


def test_auto_trains_on_the_device_torch_sees(data: tuple[Path, Path], tmp_path: Path) -> None:
    assert main(argv(data, tmp_path / "auto", "ast", "--epochs", "1")) == 0
    _, info = read_checkpoint_meta(tmp_path / "auto")
    assert info.settings["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
