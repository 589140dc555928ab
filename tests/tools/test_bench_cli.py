"""``edge-bench`` end to end on genuine recordings and an MVTec export: the study, the gates, and bad inputs.

Models are the test-only ``toy`` family (trained in seconds) and a real tiny AST; frames come from the synthetic
line written by ``edge-record`` through the RealSense SDK. Every metric the report states is recomputed here from
the per-frame scores it lists.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from drivers.labels import labels_dir_for, read_labels
from edge.core.scoring import load_scoring
from engines._registry import register_family
from engines.datasets import recording_splits
from tests.engines._toy import TOY_FAMILY, make_mvtec
from tools import calibrate, quantize, record, train
from tools.bench.cli import main

WIDTH, HEIGHT = 320, 240


@dataclass(frozen=True)
class Assets:
    line: Path  # 24 frames, 2-frame parts with 1-frame gaps, 40 % defects
    good_only: Path  # 6 frames, no defect
    roi: Path


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    register_family(TOY_FAMILY, replace=True)
    d = tmp_path_factory.mktemp("bench-assets")
    common = ["--source", "synthetic", "--seed", "1", "--width", str(WIDTH), "--height", str(HEIGHT), "--overwrite"]
    runs = {
        "clip.db3": ["--frames", "4", "--frames-per-part", "4", "--defect-rate", "0"],
        "line.db3": ["--frames", "24", "--frames-per-part", "2", "--gap-frames", "1", "--defect-rate", "0.4"],
        "good.db3": ["--frames", "6", "--frames-per-part", "2", "--defect-rate", "0"],
    }
    for name, extra in runs.items():
        assert record.main([*common, *extra, "--out", str(d / name)]) == 0
    assert calibrate.main(["--recording", str(d / "clip.db3"), "--frames", "4", "--out", str(d / "roi.yaml")]) == 0
    return Assets(d / "line.db3", d / "good.db3", d / "roi.yaml")


def bench(assets: Assets, out: Path, *extra: str, data: list[Path] | None = None) -> tuple[int, dict[str, Any]]:
    argv = ["--data", *(str(p) for p in (data or [assets.line])), "--roi", str(assets.roi), "--report", str(out)]
    code = main([*argv, "--epochs", "2", "--seed", "0", "--warmup", "1", *extra])
    report = out / "report.json"
    return code, json.loads(report.read_text()) if report.is_file() else {}


def test_study_on_a_recording_trains_both_modes_and_reports_what_it_measured(assets: Assets, tmp_path: Path) -> None:
    out = tmp_path / "report"
    code, report = bench(assets, out, "--models", "toy", "--crop", "both", "--preset", "tiny", "--parity",
                         "--budget-ms", "60000", "--fit-scoring")  # fmt: skip
    assert code == 0, report.get("inputs")
    labels = read_labels(labels_dir_for(assets.line))
    test_numbers = {n for n, s in recording_splits(labels).items() if s == "test"}
    models = {m["card"]["crop_mode"]: m for m in report["models"]}
    assert set(models) == {"full", "foreground"}
    for m in models.values():
        frames = m["frames"]
        # auto split: the models were trained on this recording, so only its test parts are scored
        assert {int(f["source"].split("#")[1]) for f in frames} == test_numbers
        y = [0 if f["type"] == "good" else 1 for f in frames]
        assert m["accuracy"]["image_auroc"] == pytest.approx(roc_auc_score(y, [f["raw"] for f in frames]))
        assert 0.0 <= m["accuracy"]["pixel_auroc"] <= 1.0 and 0.0 <= m["accuracy"]["au_pro"] <= 1.0
        assert m["accuracy"]["false_alarms"] == sum(1 for f in frames if f["type"] == "good" and f["verdict"] == "NG")
        lat = m["latency"]["total"]
        assert lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"] and lat["n"] == len(frames) - 1  # 1 warm-up
    (row,) = report["study"]
    assert row["full"] == models["full"]["accuracy"]["image_auroc"]
    assert row["delta"] == pytest.approx(row["foreground"] - row["full"])
    assert all(g["passed"] for g in report["gates"].values()) and len(report["gates"]) == 4  # 2 latency, 2 parity
    assert "torch" in report["gates"]["parity toy/tiny foreground"]["detail"]
    assert report["machine"]["logical_cpus"] >= 1 and report["machine"]["onnxruntime"]
    for name in ("report.html", "report.md", "score-distributions.png", "heatmaps-0.png", "roc.png", "latency.png"):
        assert (out / name).stat().st_size > 1000, name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "http" not in html.split("<body>")[1]  # self-contained
    assert len(report["scoring_written"]) == 2 and all(Path(p).is_file() for p in report["scoring_written"])

    # A second run reuses the trained models (same data, ROI, preset, mode) and only scores.
    before = (out / "models" / "line" / "toy-tiny-full" / "model.onnx").stat().st_mtime_ns
    code, again = bench(assets, out, "--models", "toy", "--crop", "both", "--preset", "tiny")
    assert code == 0 and (out / "models" / "line" / "toy-tiny-full" / "model.onnx").stat().st_mtime_ns == before
    assert [m["frames"] for m in again["models"]] == [m["frames"] for m in report["models"]]


@pytest.fixture(scope="module")
def ast_model(assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny AST trained on the line (one epoch: a pipeline check; its test parts are data it never saw)."""
    out = tmp_path_factory.mktemp("ast") / "ast-tiny"
    args = ["--model", "ast", "--preset", "tiny", "--data", str(assets.line), "--roi", str(assets.roi)]
    assert train.main([*args, "--out", str(out), "--epochs", "1", "--seed", "0"]) == 0
    return out


def test_trained_folder_is_scored_on_its_test_split_and_budget_gate_fails(
    assets: Assets, ast_model: Path, tmp_path: Path
) -> None:
    code, report = bench(assets, tmp_path / "r", "--models", str(ast_model), "--budget-ms", "0.001")
    assert code == 1
    (gate,) = report["gates"].values()
    assert not gate["passed"] and "budget 0.001 ms" in gate["detail"]
    assert report["inputs"][0]["split"] == "test"  # its card's data hash is this recording's
    code, report = bench(assets, tmp_path / "all", "--models", str(ast_model), "--split", "all")
    labelled = [
        n for n, lab in read_labels(labels_dir_for(assets.line)).by_frame_number.items() if lab.label != "empty"
    ]
    assert code == 0 and len(report["models"][0]["frames"]) == len(labelled)


def test_bad_inputs_are_reported_per_file_and_the_rest_is_scored(
    assets: Assets, ast_model: Path, tmp_path: Path
) -> None:
    truncated = tmp_path / "truncated.db3"
    truncated.write_bytes(assets.line.read_bytes()[: assets.line.stat().st_size // 3])
    shutil.copytree(labels_dir_for(assets.line), labels_dir_for(truncated))
    mismatched = tmp_path / "mismatched.db3"
    shutil.copy(assets.line, mismatched)
    shutil.copytree(labels_dir_for(assets.line), labels_dir_for(mismatched))
    lines = (labels_dir_for(mismatched) / "labels.jsonl").read_text().splitlines(keepends=True)
    (labels_dir_for(mismatched) / "labels.jsonl").write_text("".join(lines[:5] + lines[6:]))  # one frame unlabelled
    unlabelled = tmp_path / "unlabelled.db3"
    shutil.copy(assets.line, unlabelled)
    data = [truncated, tmp_path / "missing.db3", mismatched, unlabelled, assets.line]
    code, report = bench(assets, tmp_path / "r", "--models", str(ast_model), "--split", "all", data=data)
    assert code == 1
    by_path = {Path(d["path"]).name: d for d in report["inputs"]}
    assert by_path["missing.db3"]["error"].startswith(f"{tmp_path / 'missing.db3'} does not exist")
    assert "no labels sidecar" in by_path["unlabelled.db3"]["error"]
    assert "labels" in by_path["mismatched.db3"]["error"] and by_path["mismatched.db3"]["dropped"]
    assert by_path["truncated.db3"]["error"] and not by_path["truncated.db3"]["dropped"]
    assert by_path["line.db3"]["error"] is None
    sources = {f["source"].split("#")[0] for f in report["models"][0]["frames"]}
    assert "line.db3" in sources and "mismatched.db3" not in sources
    n_line = sum(1 for f in report["models"][0]["frames"] if f["source"].startswith("line.db3#"))
    assert n_line == by_path["line.db3"]["frames"] > 0


def test_a_class_missing_is_reported_not_computed(assets: Assets, ast_model: Path, tmp_path: Path) -> None:
    code, report = bench(assets, tmp_path / "r", "--models", str(ast_model), data=[assets.good_only])
    assert code == 0
    acc = report["models"][0]["accuracy"]
    assert acc["image_auroc"] is None and "needs good and defective samples" in acc["not_computed"]["image_auroc"]
    assert acc["defective"] == 0 and acc["good"] == report["inputs"][0]["frames"] > 0
    assert report["study"] == [] and not (tmp_path / "r" / "roc.png").exists()


def test_mvtec_folder_input(tmp_path: Path) -> None:
    register_family(TOY_FAMILY, replace=True)
    root, roi, _ = make_mvtec(tmp_path)
    out = tmp_path / "r"
    code = main(["--data", str(root), "--roi", str(roi), "--models", "toy", "--preset", "tiny", "--epochs", "2",
                 "--report", str(out), "--warmup", "0"])  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert code == 0 and report["inputs"][0]["kind"] == "mvtec" and report["inputs"][0]["split"] == "test"
    frames = report["models"][0]["frames"]
    assert len(frames) == sum(report["inputs"][0]["counts"].values()) and frames[0]["source"].startswith("mvtec:test/")
    assert np.isfinite([f["raw"] for f in frames]).all()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--models", "no-such-folder"], "no-such-folder has no model.onnx"),
        (["--models", "toy", "--option", "bogus"], "is not FAMILY:KEY=VALUE"),
        (["--models", "toy", "--warmup", "-1"], "--warmup must be ≥ 0"),
        (["--models", "toy", "--backend", "tensorrt"], "the tensorrt package is not installed"),
        (["--models", "toy", "--labels", "x.labels", "--data", "a.db3", "b.db3"], "not exactly one recording"),
    ],
)
def test_argument_errors_exit_2_before_reading_frames(
    assets: Assets, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    if "tensorrt" in extra and importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here: the missing-backend refusal cannot be shown")
    code, report = bench(assets, tmp_path / "r", *extra)
    assert code == 2 and not report
    assert message in capsys.readouterr().err


def test_study_over_two_recordings_has_a_row_per_data_set_and_the_average(assets: Assets, tmp_path: Path) -> None:
    copy = tmp_path / "line-copy.db3"
    shutil.copy(assets.line, copy)
    shutil.copytree(labels_dir_for(assets.line), labels_dir_for(copy))
    code, report = bench(assets, tmp_path / "r", "--models", "toy", "--crop", "both", "--preset", "tiny",
                         data=[assets.line, copy])  # fmt: skip
    assert code == 0 and len(report["models"]) == 4
    *rows, average = report["study"]
    assert len(rows) == 2 and all(" · data " in r["model"] for r in rows) and average["model"] == "average"
    assert average["full"] == pytest.approx((rows[0]["full"] + rows[1]["full"]) / 2)
    assert (tmp_path / "r" / "heatmaps-1.png").is_file()


def test_fit_scoring_with_the_f1_threshold_writes_a_file_the_daemon_loads(
    assets: Assets, ast_model: Path, tmp_path: Path
) -> None:
    code, report = bench(assets, tmp_path / "r", "--models", str(ast_model), "--fit-scoring", "--threshold", "f1")
    assert code == 0
    (written,) = report["scoring_written"]
    scoring = load_scoring(Path(written))
    scoring.check_artefact(ast_model / "model.onnx")  # bound to the same ONNX as the model's own file
    frames = report["models"][0]["frames"]
    assert scoring.threshold.method == "f1_max" and scoring.fitted_on.n_labelled == len(frames)
    good = [f["raw"] for f in frames if f["type"] == "good"]
    assert scoring.normalisation.mean == pytest.approx(np.mean(good))


def test_int8_model_is_benched_beside_its_fp32_model(assets: Assets, ast_model: Path, tmp_path: Path) -> None:
    """edge-quantize's folder scores like an edge-train one; its row and parity (against the fp32 ONNX) sit beside
    the fp32 model's; alone, its parity says what is missing."""
    int8 = tmp_path / "ast-tiny-int8"
    argv = ["--model-dir", str(ast_model), "--data", str(assets.line), "--roi", str(assets.roi), "--out", str(int8)]
    assert quantize.main([*argv, "--frames", "8"]) == 0
    code, report = bench(assets, tmp_path / "r", "--models", f"{ast_model},{int8}", "--parity")
    models = {m["name"]: m for m in report["models"]}
    assert set(models) == {"ast/tiny foreground", "ast/tiny int8 foreground"}, set(models)
    fp32, q = models["ast/tiny foreground"], models["ast/tiny int8 foreground"]
    assert q["card"]["precision"] == "int8" and [f["source"] for f in q["frames"]] == [
        f["source"] for f in fp32["frames"]
    ]
    assert fp32["accuracy"]["image_auroc"] is not None and q["accuracy"]["image_auroc"] is not None
    gate = report["gates"]["parity ast/tiny int8 foreground"]
    assert "rel ≤ 0.05" in gate["detail"] and gate["report"]["threshold"] is None
    assert code == (0 if all(g["passed"] for g in report["gates"].values()) else 1)
    md = (tmp_path / "r" / "report.md").read_text()
    assert "ast/tiny int8 foreground" in md and "ast/tiny foreground" in md
    code, alone = bench(assets, tmp_path / "alone", "--models", str(int8), "--parity")
    assert code == 1 and "not benched beside it" in alone["gates"]["parity ast/tiny int8 foreground"]["detail"]
