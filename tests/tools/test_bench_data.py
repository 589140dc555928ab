"""``edge-bench`` and ``edge-train`` on data from outside and on what a new user hits first: the foreground study on
MVTec folders (ours and public ones), RGB-only folders, free-text defect types from a labels sidecar, and a family
with a pretraining dependency (3DSR on its DADA) trained by the bench like any other.

Models are the test-only ``toy`` family (trained in seconds) and 3DSR's ``tiny`` preset for one epoch.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from drivers.labels import labels_dir_for, read_labels
from engines._registry import pretrained_from, register_family
from engines.export import card_from_onnx
from tests.engines._public import make_public_2d, make_public_3d
from tests.engines._toy import TOY_FAMILY, make_mvtec
from tools import calibrate, record, train
from tools.bench.cli import main


def bench(out: Path, *argv: str) -> tuple[int, dict[str, Any]]:
    code = main([*argv, "--report", str(out), "--epochs", "1", "--seed", "0", "--warmup", "0"])
    report = out / "report.json"
    return code, json.loads(report.read_text()) if report.is_file() else {}


def assert_study(report: dict[str, Any], out: Path, name: str) -> None:
    """One study row with both crop modes' AUROC, and the study's two figures (Fig. 2 and Fig. 3)."""
    (row,) = report["study"]
    models = {m["card"]["crop_mode"]: m for m in report["models"]}
    assert row["model"] == name and set(models) == {"full", "foreground"}
    assert models["full"]["card"]["data_hash"] == models["foreground"]["card"]["data_hash"]
    assert row["full"] == models["full"]["accuracy"]["image_auroc"] is not None
    assert row["foreground"] == models["foreground"]["accuracy"]["image_auroc"] is not None
    figures = set(report["figures"].values())
    assert {"score-distributions.png", "heatmaps-0.png"} <= figures
    for fig in ("score-distributions.png", "heatmaps-0.png"):
        assert (out / fig).stat().st_size > 1000


def test_mvtec_study_pairs_the_crop_modes_even_with_the_report_inside_the_folder(tmp_path: Path) -> None:
    register_family(TOY_FAMILY, replace=True)
    root, roi, _ = make_mvtec(tmp_path)
    out = root / "bench"  # models written here must not change the data's hash between the two trainings
    code, report = bench(out, "--data", str(root), "--roi", str(roi), "--models", "toy", "--preset", "tiny",
                         "--crop", "both")  # fmt: skip
    assert code == 0
    assert_study(report, out, "toy/tiny")


def test_public_3d_folder_without_dataset_json_trains_and_scores_in_both_modes(tmp_path: Path) -> None:
    register_family(TOY_FAMILY, replace=True)
    root = make_public_3d(tmp_path / "cookie")
    out = tmp_path / "r"
    code, report = bench(out, "--data", str(root), "--models", "toy", "--preset", "tiny", "--crop", "both")
    assert code == 0, report.get("inputs")
    assert_study(report, out, "toy/tiny")
    for m in report["models"]:
        assert m["card"]["roi_version"] == "" and set(m["accuracy"]["per_type_auroc"]) == {"hole"}
        assert {f["type"] for f in m["frames"]} == {"good", "hole"} and len(m["frames"]) == 6
    # edge-train says why an ROI has no place on data from outside (one line, exit 2)
    argv = ["--model", "toy", "--preset", "tiny", "--data", str(root), "--out", str(tmp_path / "t"), "--epochs", "1"]
    roi = tmp_path / "roi.yaml"
    _, roi_path, _ = make_mvtec(tmp_path / "ours", n=8)
    shutil.copy(roi_path, roi)
    assert train.main([*argv, "--roi", str(roi)]) == 2
    assert train.main([*argv, "--crop", "foreground"]) == 0
    assert card_from_onnx(tmp_path / "t" / "model.onnx").roi_version == ""


def test_rgb_only_folders_work_for_full_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """MVTec AD's layout with a real AST in RGB mode, and an rgb/-only MVTec 3D-AD layout with the toy model."""
    register_family(TOY_FAMILY, replace=True)
    runs = [
        (make_public_2d(tmp_path / "bottle"), ["--models", "ast", "--option", "ast:mode=rgb"]),
        (make_public_3d(tmp_path / "flat", with_xyz=False), ["--models", "toy"]),
    ]
    for root, model in runs:
        out = tmp_path / f"r-{root.name}"
        code, report = bench(out, "--data", str(root), *model, "--preset", "tiny", "--crop", "full")
        assert code == 0, report.get("inputs")
        (m,) = report["models"]
        assert m["accuracy"]["defective"] == 3 and m["accuracy"]["image_auroc"] is not None
    code, report = bench(tmp_path / "fg", "--data", str(tmp_path / "flat"), "--models", "toy", "--preset", "tiny")
    assert code == 2 and "use --crop full for RGB-only data" in capsys.readouterr().err


def test_free_text_defect_types_go_from_the_sidecar_to_the_report(tmp_path: Path) -> None:
    register_family(TOY_FAMILY, replace=True)
    rec = tmp_path / "line.db3"
    common = ["--source", "synthetic", "--seed", "1", "--width", "160", "--height", "120", "--overwrite"]
    assert record.main([*common, "--frames", "4", "--frames-per-part", "4", "--defect-rate", "0",
                        "--out", str(tmp_path / "clip.db3")]) == 0  # fmt: skip
    assert record.main([*common, "--frames", "20", "--frames-per-part", "2", "--defect-rate", "0.5",
                        "--out", str(rec)]) == 0  # fmt: skip
    roi = tmp_path / "roi.yaml"
    assert calibrate.main(["--recording", str(tmp_path / "clip.db3"), "--frames", "4", "--out", str(roi)]) == 0
    # A user's own names, outside the synthetic line's list: the sidecar takes them as they are.
    path = labels_dir_for(rec) / "labels.jsonl"
    names = ["misaligned", "hole", "cut", "contamination"]
    lines, k = [], 0
    for line in path.read_text().splitlines():
        d = json.loads(line)
        if d["defect_type"] is not None:
            d["defect_type"] = names[k // 2 % len(names)]  # both frames of a part keep one name
            k += 1
        lines.append(json.dumps(d))
    path.write_text("\n".join(lines) + "\n")
    used = {lab.defect_type for lab in read_labels(labels_dir_for(rec)).by_frame_number.values()} - {None}
    assert used and used <= set(names)
    out = tmp_path / "r"
    code, report = bench(out, "--data", str(rec), "--roi", str(roi), "--models", "toy", "--preset", "tiny",
                         "--split", "all")  # fmt: skip
    assert code == 0, report.get("inputs")
    (m,) = report["models"]
    assert {f["type"] for f in m["frames"]} - {"good"} == used
    assert set(m["accuracy"]["per_type_auroc"]) == used
    assert set(report["inputs"][0]["counts"]) - {"good"} == used
    assert all(name in (out / "report.md").read_text() for name in used)


@pytest.mark.parametrize("name", ["good", "a/b", "", " hole"])
def test_defect_types_that_cannot_be_folder_names_are_refused(tmp_path: Path, name: str) -> None:
    from drivers.labels import LabelsError

    d = tmp_path / "x.labels"
    d.mkdir()
    line = {"sequence": 0, "color_frame_number": 1, "device_ts_ns": 0, "label": "defect", "defect_type": name,
            "drum": None, "defect_mask": None, "drum_mask": None}  # fmt: skip
    (d / "labels.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(LabelsError, match="line 1 is not a frame label: defect type"):
        read_labels(d)


def test_bench_trains_3dsr_with_its_dada_first(tmp_path: Path) -> None:
    assert pretrained_from("dsr3d") == {"dada": "dada"} and pretrained_from("ast") == {}
    root, roi, _ = make_mvtec(tmp_path)
    out = tmp_path / "r"
    argv = ["--data", str(root), "--roi", str(roi), "--models", "dsr3d", "--preset", "tiny", "--batch-size", "4",
            "--crop", "both"]  # fmt: skip
    code, report = bench(out, *argv)
    assert code == 0, report.get("inputs")
    dada = out / "models" / "drum" / "dada-tiny"
    assert card_from_onnx(dada / "model.onnx").crop_mode == "full"  # one DADA, shared by both modes
    for m in report["models"]:
        assert m["card"]["family"] == "dsr3d" and m["card"]["options"]["dada"] == str(dada / "model.safetensors")
    assert_study(report, out, "dsr3d/tiny (mode=rgbd)")
    # A second run reuses DADA and both 3DSR models: it only scores.
    dsr = out / "models" / "drum" / "dsr3d-tiny-full" / "model.safetensors"
    stamps = (dada / "model.onnx").stat().st_mtime_ns, dsr.stat().st_mtime_ns
    code, _ = bench(out, *argv)
    assert code == 0 and ((dada / "model.onnx").stat().st_mtime_ns, dsr.stat().st_mtime_ns) == stamps
    # A DADA checkpoint newer than a 3DSR model (DADA was trained again): that model is trained again too.
    newer = dsr.stat().st_mtime_ns + 1_000_000_000
    os.utime(dada / "model.safetensors", ns=(newer, newer))
    code, _ = bench(out, "--crop", "full", *argv[:-2])
    assert code == 0 and dsr.stat().st_mtime_ns > stamps[1]


def test_camera_data_without_roi_is_refused_before_reading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    register_family(TOY_FAMILY, replace=True)
    code, report = bench(tmp_path / "r", "--data", str(tmp_path / "a.db3"), "--models", "toy")
    assert code == 2 and not report
    assert (
        "a.db3 comes from a calibrated camera but no --roi was given — pass --roi roi.yaml" in capsys.readouterr().err
    )
