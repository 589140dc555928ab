"""Accuracy study: its command line per family and the page block it rewrites."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from calibration.roi import load_roi, save_roi
from tests.engines._toy import roi_around, synthetic_frames
from tools.benchmarks.accuracy import FULL_STUDIES, given_roi, main, parse, render_dataset, write_into_doc


def test_dsr3d_study_trains_on_a_pretrained_dada_and_writes_its_own_page() -> None:
    args, study = parse(["--model", "dsr3d", "--frames", "60", "--roi-margin", "0.03"])
    assert (study.model, study.frames, study.roi_margin_m) == ("dsr3d", 60, 0.03)
    assert study.dada_epochs == FULL_STUDIES["dsr3d"].dada_epochs > 0
    assert study.doc() == Path("docs/models/dsr3d.md") and args.doc is None
    assert study.options({"dada": Path("/runs/dada/model.safetensors")}) == [
        "mode=rgbd",
        "dada=/runs/dada/model.safetensors",
    ]
    _, edge = parse(["--model", "dsr3d", "--preset", "edge"])
    assert (edge.preset, edge.epochs) == ("edge", FULL_STUDIES["dsr3d"].epochs)
    _, ast = parse(["--image-score", "mean"])
    assert (
        ast.preset == "edge"
        and ast.doc() == Path("docs/models/ast.md")
        and ast.options({}) == ["mode=rgbd", "image_score=mean"]
    )


def test_doc_block_is_replaced_between_its_markers_only(tmp_path: Path) -> None:
    page = tmp_path / "m.md"
    page.write_text("head\n<!-- accuracy:v:begin -->\nold\n<!-- accuracy:v:end -->\ntail\n", encoding="utf-8")
    write_into_doc(page, "new", "v")
    assert page.read_text(encoding="utf-8") == "head\n<!-- accuracy:v:begin -->\nnew\n<!-- accuracy:v:end -->\ntail\n"
    with pytest.raises(Exception, match="lacks the markers") as err:
        write_into_doc(page, "new", "other")
    assert "add them" in str(err.value)


def test_rendering_in_a_pool_writes_the_same_export_as_the_source(tmp_path: Path) -> None:
    """--workers renders frames in other processes; the export (images, xyz, masks, splits) must not change."""
    _, one = parse(["--frames", "6"])
    root_a, counts_a = render_dataset(one, tmp_path / "a")
    root_b, counts_b = render_dataset(replace(one, workers=2), tmp_path / "b")
    assert counts_a == counts_b and sum(sum(c.values()) for c in counts_a.values()) == 6
    files_a = sorted(p.relative_to(root_a) for p in root_a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(root_b) for p in root_b.rglob("*") if p.is_file())
    for rel in files_a:
        if rel.suffix != ".json":  # dataset.json names no process; compared below without its free text
            assert (root_a / rel).read_bytes() == (root_b / rel).read_bytes(), rel
    meta_a, meta_b = (json.loads((r / "dataset.json").read_text()) for r in (root_a, root_b))
    assert meta_a["counts"] == meta_b["counts"] and meta_a["spec"] == meta_b["spec"]


def test_a_given_roi_is_used_as_is(tmp_path: Path) -> None:
    roi = roi_around(synthetic_frames(1)[0])
    save_roi(roi, tmp_path / "given.yaml")
    used, text = given_roi(tmp_path / "given.yaml", tmp_path / "work" / "roi.yaml")
    assert used.version == roi.version == load_roi(tmp_path / "work" / "roi.yaml").version
    assert "--roi given.yaml" in text and roi.version in text
    _, study = parse(["--device", "cpu", "--workers", "3", "--threads", "4", "--batch-size", "16"])
    assert (study.device, study.workers, study.threads, study.batch_size) == ("cpu", 3, 4, 16)


def test_a_missing_roi_file_fails_at_once_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before any frame is rendered: the work folder stays empty of data."""
    assert main(["--roi", str(tmp_path / "missing.yaml"), "--no-doc", "--work", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("accuracy: ") and "missing.yaml" in err[0], err
    assert not (tmp_path / "w" / "mvtec").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a CUDA GPU here, so --device cuda is not refused")
def test_a_gpu_that_torch_cannot_use_is_refused_before_the_study(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--device", "cuda", "--no-doc"]) == 2
    assert "sees no CUDA GPU" in capsys.readouterr().err
