"""Accuracy study: its command line per family and the page block it rewrites."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.benchmarks.accuracy import FULL_STUDIES, parse, write_into_doc


def test_dsr3d_study_trains_on_a_pretrained_dada_and_writes_its_own_page() -> None:
    args, study = parse(["--model", "dsr3d", "--frames", "60", "--roi-margin", "0.03"])
    assert (study.model, study.frames, study.roi_margin_m) == ("dsr3d", 60, 0.03)
    assert study.dada_epochs == FULL_STUDIES["dsr3d"].dada_epochs > 0
    assert study.doc() == Path("docs/models/dsr3d.md") and args.doc is None
    assert study.options(Path("/runs/dada/model.safetensors")) == ["mode=rgbd", "dada=/runs/dada/model.safetensors"]
    _, edge = parse(["--model", "dsr3d", "--preset", "edge"])
    assert (edge.preset, edge.epochs) == ("edge", FULL_STUDIES["dsr3d"].epochs)
    _, ast = parse(["--image-score", "mean"])
    assert (
        ast.preset == "edge"
        and ast.doc() == Path("docs/models/ast.md")
        and ast.options(None) == ["mode=rgbd", "image_score=mean"]
    )


def test_doc_block_is_replaced_between_its_markers_only(tmp_path: Path) -> None:
    page = tmp_path / "m.md"
    page.write_text("head\n<!-- accuracy:v:begin -->\nold\n<!-- accuracy:v:end -->\ntail\n", encoding="utf-8")
    write_into_doc(page, "new", "v")
    assert page.read_text(encoding="utf-8") == "head\n<!-- accuracy:v:begin -->\nnew\n<!-- accuracy:v:end -->\ntail\n"
    with pytest.raises(Exception, match="lacks the markers") as err:
        write_into_doc(page, "new", "other")
    assert "add them" in str(err.value)
