"""The accuracy suite over the station presets: its data plan and cache, its command line, and one whole run."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from drivers.synthetic import STATIONS
from edge.core.frame import DEFECT_TYPES
from engines import _registry
from engines._registry import register_family, suite_families
from engines.export import card_from_onnx
from engines.quantize import quantization_record
from tests.engines._toy import TOY_FAMILY, make_mvtec
from tools import train
from tools.benchmarks import accuracy
from tools.benchmarks.accuracy import main as accuracy_main
from tools.benchmarks.accuracy_suite import (
    Counts,
    family_sections,
    frame_plan,
    image_sections,
    parse,
    precision_sections,
    render_station,
    report,
    result_path,
    training_time_note,
)


def test_every_defect_type_is_forced_and_the_defaults_are_the_issue_counts() -> None:
    counts = Counts()
    plan = frame_plan(counts)
    assert [i for i, _ in plan] == list(range(len(plan)))  # one part per frame, each frame its own part
    kinds = Counter(kind for _, kind in plan)
    assert kinds[None] == 60 + 10 + 30
    assert all(kinds[k] == 30 for k in DEFECT_TYPES) and len(kinds) == len(DEFECT_TYPES) + 1
    # every kind spread over the whole run: a frame's light and clutter are functions of its index (time), so a
    # kind bunched at one end could be told by its time alone; each kind's mean index sits near the run's middle
    middle = (len(plan) - 1) / 2
    for kind in [None, *DEFECT_TYPES]:
        where = [i for i, k in plan if k == kind]
        assert abs(sum(where) / len(where) - middle) < 0.02 * len(plan), kind
        assert where[0] < 0.05 * len(plan) and where[-1] > 0.95 * len(plan), kind
    args, job = parse(["--device", "cpu"])
    assert job.stations == tuple(STATIONS) and job.models == tuple(suite_families())
    assert job.counts == counts and job.split == "tuning" and job.seed == 1 and args.block is None
    _, held = parse(["--device", "cpu", "--split", "heldout"])
    assert held.seed != job.seed  # the held-out split never shares the tuning parts


def test_a_station_is_rendered_once_with_its_counts_and_cached(tmp_path: Path) -> None:
    counts = Counts(train=2, validation=1, test_good=1, per_type=1)
    out = tmp_path / "rail"
    root = render_station("rail", 5, counts, out, workers=2)
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    assert meta["counts"] == counts.expected()
    assert len(list((root / "test").glob("*/gt/*.png"))) == 1 + len(DEFECT_TYPES)
    assert not out.with_name("rail.partial").exists()
    stamp = (root / "dataset.json").stat().st_mtime_ns
    assert render_station("rail", 5, counts, out) == root  # cached: nothing rendered again
    assert (root / "dataset.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--stations", "rail,moon-base"], "unknown station moon-base"),
        (["--models", "ast,patchcore"], "unknown model family patchcore"),
        (["--option", "image_score=mean"], "is not FAMILY:KEY=VALUE"),
        (["--counts", "60,10,30"], "is not 4 integers"),
        (["--dada-epochs", "0"], "--epochs and --dada-epochs must be positive"),
        (["--epochs", "0"], "is not a positive N or FAMILY:N"),
        (["--epochs", "24,baad:"], "is not a positive N or FAMILY:N"),
        (["--models", "ast", "--epochs", "baad:20"], "--epochs names baad, which this run does not train"),
        (["--preset", "tiny"], "is not FAMILY:NAME"),
        (["--models", "ast", "--preset", "baad:tiny"], "--preset names baad, which this run does not train"),
        (["--models", "ast", "--preset", "ast:huge"], "ast has no preset 'huge'"),
    ],
)
def test_bad_arguments_fail_with_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert accuracy_main(["--suite", "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("accuracy --suite: ") and needle in err[0], err


def test_a_missing_precomputed_roi_fails_before_anything_is_rendered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--suite", "--device", "cpu", "--roi-dir", str(tmp_path / "rois"), "--work", str(tmp_path / "w")]
    assert accuracy_main([*argv, "--stations", "rail", "--no-doc"]) == 2
    err = capsys.readouterr().err
    assert "has no rail-seed1.yaml" in err and "--fit-rois" in err
    assert not (tmp_path / "w").exists()


def _row(station: str, fg: float, full: float, scratch: float, p99: float) -> dict[str, Any]:
    def mode(auroc: float, kind: float) -> dict[str, Any]:
        return {
            "image_auroc": auroc, "pixel_auroc": 0.9, "au_pro": 0.8, "f1": 0.9,
            "per_type": {"dent": 1.0, "scratch": kind}, "false_alarms": 1, "misses": 3, "n_good": 30,
            "n_defect": 60, "fit_s": 10.0, "ort_ms": 20.0, "ort_p99_ms": p99,
        }  # fmt: skip

    head = {"station": station, "seed": 1, "family": "ast", "preset": "edge", "epochs": 24, "device": "cpu"}
    return head | {"options": ["mode=rgbd"], "full": mode(full, 0.5), "foreground": mode(fg, scratch)}


def test_the_study_averages_stations_and_checks_every_target_per_station() -> None:
    rows = [_row("a", 0.97, 0.80, 0.95, 30.0), _row("b", 0.93, 0.95, 0.60, 70.0)]
    study, per_type = family_sections("ast", rows)
    mean = study.rows[-1]
    assert mean[0] == "**mean**" and mean[1:3] == ["0.875", "0.950"]  # full, foreground
    assert mean[9:11] == ["6/120 (2/60)", "6/120 (2/60)"] and mean[11] == "70"
    assert per_type.headers == ["station", "dent", "scratch"]
    assert per_type.rows[-1] == ["**mean**", "1.000 (1.000)", "0.775 (0.500)"]

    def met(start: str) -> bool:
        (value,) = [v for k, v in study.targets.items() if k.startswith(start)]
        return value

    assert met("a seed 1: foreground image AUROC ≥ 0.95") and not met("b seed 1: foreground image AUROC ≥ 0.95")
    assert met("a seed 1: foreground image AUROC ≥ 0.9 for every type")
    assert not met("b seed 1: foreground image AUROC ≥ 0.9 for every type")
    assert met("a seed 1: foreground > full") and not met("b seed 1: foreground > full")
    assert met("a seed 1: ONNX Runtime p99 ≤ 50 ms") and not met("b seed 1: ONNX Runtime p99 ≤ 50 ms")


def test_the_training_time_is_reported_with_the_pretraining_apart() -> None:
    plain = [_row("a", 0.97, 0.80, 0.95, 30.0), _row("b", 0.93, 0.95, 0.60, 70.0)]
    plain[1]["foreground"]["fit_s"] = 150.0
    assert training_time_note(plain) == [
        "edge-train wall time per crop mode: 0.2–2.5 min (the run's threads; other jobs on the machine lengthen it)"
    ]
    pretrained = [r | {"pretraining_s": 600.0 + 60 * i, "pretraining_epochs": 200} for i, r in enumerate(plain)]
    (note,) = training_time_note(pretrained)
    assert "; pretraining (200 epochs), once per station: 10.0–11.0 min" in note
    assert training_time_note([{"station": "a", "foreground": {}}]) == []  # saved before fit_s existed


def test_epochs_can_be_set_per_family_and_each_family_keeps_its_own_tag() -> None:
    _, both = parse(["--device", "cpu", "--models", "ast,baad", "--epochs", "24,baad:20"])
    _, ast_alone = parse(["--device", "cpu", "--models", "ast", "--epochs", "24"])
    _, baad_alone = parse(["--device", "cpu", "--models", "baad", "--epochs", "20"])
    assert (both.study("ast").epochs, both.study("baad").epochs) == (24, 20)
    # one report over results trained by separate runs: the tags (the results' file names) are the same
    assert both.tag("ast") == ast_alone.tag("ast") and both.tag("baad") == baad_alone.tag("baad")
    _, only_baad = parse(["--device", "cpu", "--models", "ast,baad", "--epochs", "baad:20"])
    assert only_baad.study("ast").epochs == accuracy.FULL_STUDIES["ast"].epochs and only_baad.study("baad").epochs == 20


def test_a_preset_brings_its_recommended_fit_and_its_own_tag() -> None:
    _, plain = parse(["--device", "cpu", "--models", "ast,shape_guided"])
    _, tiny = parse(["--device", "cpu", "--models", "ast,shape_guided", "--preset", "shape_guided:tiny"])
    recommended = _registry.get_family("shape_guided").presets["tiny"]
    study = tiny.study("shape_guided")
    assert (study.preset, study.epochs, study.batch_size, study.learning_rate) == (
        "tiny",
        recommended["epochs"],
        recommended["batch_size"],
        recommended["learning_rate"],
    )
    assert plain.study("shape_guided").preset == accuracy.FULL_STUDIES["shape_guided"].preset != "tiny"
    assert tiny.tag("shape_guided") != plain.tag("shape_guided")  # its models and results kept apart
    assert tiny.study("ast") == plain.study("ast") and tiny.tag("ast") == plain.tag("ast")
    _, shorter = parse(
        ["--device", "cpu", "--models", "shape_guided", "--preset", "shape_guided:tiny", "--epochs", "5"]
    )
    assert (
        shorter.study("shape_guided").epochs == 5 and shorter.study("shape_guided").learning_rate == study.learning_rate
    )


def test_dada_epochs_reach_the_3dsr_study_and_its_tag() -> None:
    _, job = parse(["--device", "cpu", "--dada-epochs", "200", "--epochs", "50"])
    study = job.study("dsr3d")
    assert (study.epochs, study.dada_epochs) == (50, 200)
    _, default = parse(["--device", "cpu"])
    assert default.study("dsr3d").dada_epochs == accuracy.FULL_STUDIES["dsr3d"].dada_epochs
    assert default.tag("dsr3d") != job.tag("dsr3d")


@pytest.mark.slow
def test_the_suite_trains_every_suite_family_and_writes_its_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ROIs fitted by edge-calibrate (--fit-rois), then a run on them (--roi-dir) with a registered suite family."""
    monkeypatch.setattr(_registry, "_FAMILIES", dict(_registry._FAMILIES))
    monkeypatch.setattr(_registry, "_SUITE", set())  # only the toy: the real families take minutes
    register_family(TOY_FAMILY, replace=True, suite=True)
    rois, work, page = tmp_path / "rois", tmp_path / "work", tmp_path / "accuracy.md"
    page.write_text("# page\n<!-- accuracy:tuning:begin -->\n<!-- accuracy:tuning:end -->\n", encoding="utf-8")
    common = ["--suite", "--stations", "rail,roller-standing", "--device", "cpu", "--counts", "2,2,2,1"]
    assert accuracy_main([*common, "--fit-rois", str(rois)]) == 0
    assert sorted(p.name for p in rois.iterdir()) == ["rail-seed1.yaml", "roller-standing-seed1.yaml"]
    argv = [*common, "--roi-dir", str(rois), "--work", str(work), "--epochs", "1", "--doc", str(page)]
    assert accuracy_main(argv) == 1  # a one-epoch toy meets no target
    (path,) = (work / "results/tuning").glob("roller-standing-seed1-toy-*.json")  # one per variant
    result = json.loads(path.read_text(encoding="utf-8"))
    assert set(result["foreground"]["per_type"]) == set(DEFECT_TYPES)
    assert result["foreground"]["n_defect"] == len(DEFECT_TYPES) and result["full"]["n_good"] == 2
    text = page.read_text(encoding="utf-8")
    assert "| rail (seed 1) |" in text and "| roller-standing (seed 1) |" in text and "| **mean** |" in text
    assert "roller-standing seed 1: foreground image AUROC ≥ 0.95**: NOT met" in text
    assert "--roi-dir" in text and text.startswith("# page\n")
    assert set(result["foreground"]["aggregations"]) == {"max", "top 0.1 % mean", "top 0.5 % mean", "top 2 % mean"}
    assert "by image-score aggregation of the same maps" in text
    (onnx,) = (work / "runs/tuning/rail-seed1").glob("toy-*/toy-foreground/model.onnx")
    stamp = onnx.stat().st_mtime_ns
    capsys.readouterr()
    assert accuracy_main([*argv, "--threads", "1"]) == 1  # the same training (threads aside): reused, rescored
    assert capsys.readouterr().out.count("accuracy: reusing") == 4 and onnx.stat().st_mtime_ns == stamp
    assert accuracy_main([*argv, "--epochs", "2", "--stations", "rail"]) == 1  # another variant: its own folder
    assert len(list((work / "runs/tuning/rail-seed1").glob("toy-*/toy-foreground/model.onnx"))) == 2
    (onnx.parent.parent / "toy-full" / "edge-train.json").write_text('{"key": "other ROI"}', encoding="utf-8")
    assert accuracy_main([*argv, "--stations", "rail"]) == 1  # a stale stamp: that folder trained afresh
    assert capsys.readouterr().out.count("accuracy: reusing") == 1 and onnx.stat().st_mtime_ns == stamp
    # the same command line resolving to another crop rule (a card of before CropSpec.depthless_reach): retrained
    toy_card = TOY_FAMILY.card
    monkeypatch.setattr(TOY_FAMILY, "card", lambda *a, **k: replace(toy_card(*a, **k), depthless_reach=None))
    assert accuracy_main([*argv, "--stations", "rail"]) == 1
    assert "accuracy: reusing" not in capsys.readouterr().out and onnx.stat().st_mtime_ns != stamp
    assert card_from_onnx(onnx).depthless_reach is None


@pytest.mark.slow
def test_a_training_stopped_part_way_resumes_from_its_state_and_a_changed_command_starts_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run killed or failed after some saved epochs (e.g. an export error fixed since) loses no training."""
    monkeypatch.setattr(_registry, "_FAMILIES", dict(_registry._FAMILIES))
    monkeypatch.setattr(_registry, "_SUITE", set())
    register_family(TOY_FAMILY, replace=True, suite=True)
    rois, work = tmp_path / "rois", tmp_path / "work"
    common = ["--suite", "--stations", "rail", "--device", "cpu", "--counts", "2,2,2,1", "--modes", "foreground"]
    assert accuracy_main([*common, "--fit-rois", str(rois)]) == 0
    argv = [*common, "--roi-dir", str(rois), "--work", str(work), "--epochs", "3", "--no-doc"]
    real_main = train.main
    monkeypatch.setattr(train, "main", lambda a: real_main([*a, "--stop-after", "1"]))  # stops as a kill would
    assert accuracy_main(argv) == 2
    (out,) = (work / "runs/tuning/rail-seed1").glob("toy-*/toy-foreground")
    assert (out / "state/state.safetensors").is_file() and (out / "edge-train.partial.json").is_file()
    assert not (out / "edge-train.json").exists()
    monkeypatch.setattr(train, "main", real_main)
    capsys.readouterr()
    assert accuracy_main(argv) in (0, 1)  # resumed and finished (met or not: the toy is not judged here; 2 fails)
    assert "accuracy: resuming" in capsys.readouterr().out
    done = json.loads((out / "edge-train.json").read_text(encoding="utf-8"))
    assert done["resumed"] is True and not (out / "edge-train.partial.json").exists()
    # the same folder with an unfinished run of another command (another ROI file): trained afresh, not resumed
    (out / "edge-train.json").unlink()
    (out / "edge-train.partial.json").write_text('{"key": "another command"}', encoding="utf-8")
    assert accuracy_main(argv) in (0, 1)
    assert "accuracy: resuming" not in capsys.readouterr().out
    assert json.loads((out / "edge-train.json").read_text(encoding="utf-8"))["resumed"] is False


def test_a_foreground_only_variant_reports_no_original_and_no_comparison() -> None:
    row = _row("a", 0.97, 0.80, 0.95, 30.0)
    del row["full"]
    study, per_type = family_sections("ast", [row])
    assert study.rows[0][1:3] == ["–", "0.970"] and study.rows[0][9] == "–"
    assert per_type.rows[0][1:] == ["1.000", "0.950"]
    assert not any("foreground > full" in k for k in study.targets)
    assert parse(["--device", "cpu", "--modes", "foreground"])[1].modes == ("foreground",)


def _image_row(station: str, auroc: float, iou_mean: float) -> dict[str, Any]:
    mode = {
        "image_auroc": auroc, "pixel_auroc": 0.8, "au_pro": 0.6, "f1": 0.9, "per_type": {"dent": auroc, "scratch": 0.5},
        "false_alarms": 0, "misses": 5, "n_good": 30, "n_defect": 60, "fit_s": 10.0, "ort_ms": 90.0,
        "ort_p99_ms": 120.0, "aggregations": {}, "mask_iou": {"mean": iou_mean, "min": iou_mean - 0.05},
    }  # fmt: skip
    head = {"station": station, "seed": 1, "family": "baad", "preset": "edge", "epochs": 60, "device": "cpu"}
    return head | {"options": [], "image": mode}


def test_a_family_that_learns_its_foreground_is_trained_whole_frame_and_judged_against_the_best_roi_model() -> None:
    _, job = parse(["--device", "cpu", "--modes", "foreground"])
    assert job.modes_for("baad") == ("image",)  # declared by the family (suite_modes), whatever --modes says
    assert job.modes_for("ast") == ("foreground",) and parse(["--device", "cpu"])[1].modes_for("ast") == (
        "full",
        "foreground",
    )
    assert "baad" in suite_families()
    rows = [_image_row("a", 0.95, 0.93), _image_row("b", 0.80, 0.85)]
    best = {"a": ("ast", 0.96), "b": ("dsr3d", 0.90)}
    study, per_type = image_sections("baad", rows, best)
    assert study.rows[0][1:3] == ["0.950", "0.960 (ast)"] and study.rows[1][2] == "0.900 (dsr3d)"
    assert study.rows[-1][:3] == ["**mean**", "0.875", "0.930"]
    assert study.rows[0][6] == "0.930 (min 0.880)" and study.rows[-1][6] == "0.890 (min 0.800)"
    assert study.rows[-1][7] == "10/120 (0/60)"
    assert per_type.headers == ["station", "dent", "scratch"] and per_type.rows[-1][1:] == ["0.875", "0.500"]

    def met(start: str) -> bool:
        (value,) = [v for k, v in study.targets.items() if k.startswith(start)]
        return value

    assert met("a seed 1: whole-frame image AUROC within 0.02 of the best ROI model (ast Foreground-Only 0.960)")
    assert not met("b seed 1: whole-frame image AUROC within 0.02")
    assert met("a seed 1: mean mask IoU vs the calibrated ROI ≥ 0.9")
    assert not met("b seed 1: mean mask IoU vs the calibrated ROI ≥ 0.9")
    alone, _ = image_sections("baad", rows[:1], {})  # no ROI model run at that station: nothing to compare with
    assert alone.rows[0][2] == "–" and not any("best ROI model" in k for k in alone.targets)


@pytest.mark.slow
def test_the_suite_trains_baad_on_the_whole_frame_and_reports_its_mask_iou(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BAAD tiny, one epoch per phase, on a tiny rail station: crop mode image, the mask IoU on every good test frame
    and the whole-frame block next to a ROI model (the toy) of the same run."""
    monkeypatch.setattr(_registry, "_FAMILIES", dict(_registry._FAMILIES))
    register_family(TOY_FAMILY, replace=True)
    monkeypatch.setitem(
        accuracy.FULL_STUDIES,
        "baad",
        replace(accuracy.FULL_STUDIES["baad"], preset="tiny", batch_size=2, learning_rate=1e-3),
    )
    work, page = tmp_path / "work", tmp_path / "accuracy.md"
    page.write_text("<!-- accuracy:tuning:begin -->\n<!-- accuracy:tuning:end -->\n", encoding="utf-8")
    argv = [
        "--suite", "--stations", "rail", "--models", "toy,baad", "--device", "cpu", "--counts", "2,2,2,1",
        "--work", str(work), "--epochs", "1", "--threads", "1", "--doc", str(page),
    ]  # fmt: skip
    assert accuracy_main(argv) == 1  # one epoch meets no target
    (path,) = (work / "results/tuning").glob("rail-seed1-baad-*.json")
    result = json.loads(path.read_text(encoding="utf-8"))
    assert set(result) >= {"image"} and "foreground" not in result and "full" not in result
    assert result["image"]["n_good"] == 2 and 0.0 <= result["image"]["mask_iou"]["min"] <= 1.0
    (onnx,) = (work / "runs/tuning/rail-seed1").glob("baad-*/baad-image/model.onnx")
    assert card_from_onnx(onnx).crop_mode == "image"
    text = page.read_text(encoding="utf-8")
    assert "baad tiny: the whole frame (crop mode image, no ROI at inference)" in text
    assert "rail seed 1: whole-frame image AUROC within 0.02 of the best ROI model (toy Foreground-Only" in text
    assert "rail seed 1: mean mask IoU vs the calibrated ROI ≥ 0.9" in text


def test_quantised_engines_are_asked_for_with_precision_and_fp32_stays_the_default() -> None:
    _, job = parse(["--device", "cpu"])
    assert job.precisions == ("fp32",)
    _, both = parse(["--device", "cpu", "--precision", "int8,fp32,uint8"])
    assert both.precisions == ("fp32", "uint8", "int8")  # fp32 first: the reference scored before the others
    assert both.tag("ast") == job.tag("ast")  # the engines scored are not a training setting: same models reused


@pytest.mark.parametrize("value", ["uint8", "fp32,fp16", "fp32,int8,int8", ""])
def test_a_precision_list_without_fp32_or_with_an_unknown_form_fails_with_one_line(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert accuracy_main(["--suite", "--device", "cpu", "--precision", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--precision" in err[0] and "fp32,uint8,int8" in err[0], err


def _quantised(row: dict[str, Any], precision: str, auroc: float, ms: float, fp32_ms: float) -> dict[str, Any]:
    """``row`` (an fp32 result) as the saved result of a quantised engine scored beside an fp32 run at ``fp32_ms``."""
    out: dict[str, Any] = row | {"precision": precision}
    for mode in ("full", "foreground"):
        reference = {"image_auroc": row[mode]["image_auroc"], "ort_ms": fp32_ms, "ort_p99_ms": 2 * fp32_ms}
        out[mode] = row[mode] | {"image_auroc": auroc, "ort_ms": ms, "ort_p99_ms": 2 * ms, "fp32": reference}
    return out


def test_quantised_results_are_compared_with_the_fp32_of_their_own_run() -> None:
    fp32 = [_row("a", 0.90, 0.80, 0.9, 30.0), _row("b", 0.80, 0.70, 0.9, 30.0)]
    # b's fp32 file was rescored later at 40 ms: the speed-up is over the 20 ms fp32 of the quantised run
    quantized = {
        "uint8": [_quantised(fp32[0], "uint8", 0.902, 10.0, 20.0), _quantised(fp32[1], "uint8", 0.790, 10.0, 20.0)],
        "int8": [_quantised(fp32[0], "int8", 0.899, 16.0, 20.0)],  # not run at b yet
    }
    full, fg = precision_sections("ast", fp32, quantized)
    assert "(full)" in full.title and "(foreground)" in fg.title
    assert fg.headers[:6] == [
        "station",
        "fp32 image AUROC",
        "uint8 image AUROC",
        "uint8 Δ",
        "int8 image AUROC",
        "int8 Δ",
    ]
    assert fg.rows[0][:6] == ["a (seed 1)", "0.900", "0.902", "+0.0020", "0.899", "-0.0010"]
    assert fg.rows[0][6:] == ["20.0 / 30.0", "10.0 / 20.0", "2.00×", "16.0 / 32.0", "1.25×"]
    assert fg.rows[1][4:6] == ["–", "–"] and fg.rows[1][-2:] == ["–", "–"]
    assert fg.rows[-1][:4] == ["**mean**", "0.850", "0.846", "-0.0040"] and fg.rows[-1][7:9] == ["10.0 / 20.0", "2.00×"]

    def met(start: str) -> bool:
        (value,) = [v for k, v in fg.targets.items() if k.startswith(start)]
        return value

    assert met("a seed 1 foreground: uint8 image AUROC within 0.005 of fp32")
    assert not met("b seed 1 foreground: uint8 image AUROC within 0.005 of fp32")  # −0.010
    assert met("foreground: uint8 model call ≥ 1.8× fp32") and not met("foreground: int8 model call ≥ 1.8× fp32")


def test_a_quantised_result_is_saved_beside_the_fp32_one_and_reported_only_when_asked_for(tmp_path: Path) -> None:
    argv = ["--device", "cpu", "--stations", "rail,roller-standing", "--models", "ast", "--work", str(tmp_path)]
    _, fp32_job = parse(argv)
    _, job = parse([*argv, "--precision", "fp32,int8"])
    fp32_path, int8_path = result_path(job, "rail", "ast"), result_path(job, "rail", "ast", "int8")
    assert fp32_path == result_path(fp32_job, "rail", "ast")  # the fp32 key is the one of a run without --precision
    assert int8_path.parent == fp32_path.parent and int8_path.name == fp32_path.name.replace(".json", "-int8.json")
    assert result_path(job, "rail", "ast", "uint8") != int8_path
    row = _row("rail", 0.90, 0.80, 0.9, 30.0)
    fp32_path.parent.mkdir(parents=True)
    fp32_path.write_text(json.dumps(row), encoding="utf-8")
    int8_path.write_text(json.dumps(_quantised(row, "int8", 0.85, 10.0, 20.0)), encoding="utf-8")
    text, met = report(job, "cmd", 1.0)
    assert "ast edge (foreground): fp32 vs edge-quantize's int8 engines per station" in text
    assert "| rail (seed 1) | 0.900 | 0.850 | -0.0500 |" in text and not met
    assert "not run yet for ast: roller-standing" in text
    plain, _ = report(fp32_job, "cmd", 1.0)  # an fp32-only run reports no quantised table, even when saved
    assert "edge-quantize" not in plain and "| rail (seed 1) |" in plain


@pytest.mark.slow
def test_a_quantised_folder_is_reused_only_when_its_command_settings_model_and_roi_are_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """edge-quantize of a 1-epoch toy, through the suite's helper: kept on the same key, redone on another."""
    register_family(TOY_FAMILY, replace=True)
    root, roi, _ = make_mvtec(tmp_path, n=8)
    fp32 = tmp_path / "fp32"
    argv = ["--model", "toy", "--preset", "tiny", "--data", str(root), "--roi", str(roi), "--out", str(fp32)]
    assert train.main([*argv, "--epochs", "1", "--batch-size", "4", "--seed", "0"]) == 0
    out = tmp_path / "toy-foreground-uint8"
    extra = ["--activations", "uint8", "--frames", "2"]
    accuracy.edge_quantize(fp32, root, roi, out, extra, reuse=True)
    onnx = out / "model.onnx"
    stamp = onnx.stat().st_mtime_ns
    assert card_from_onnx(onnx).precision == "int8" and (out / "scoring.yaml").is_file()
    capsys.readouterr()
    accuracy.edge_quantize(fp32, root, roi, out, extra, reuse=True)
    assert "accuracy: reusing" in capsys.readouterr().out and onnx.stat().st_mtime_ns == stamp
    accuracy.edge_quantize(fp32, root, roi, out, ["--activations", "int8", "--frames", "2"], reuse=True)
    assert "accuracy: reusing" not in capsys.readouterr().out  # another form: quantised afresh
    assert quantization_record(onnx)["activations"] == "int8 symmetric"  # type: ignore[index]
    key = json.loads((out / "edge-quantize.json").read_text(encoding="utf-8"))["key"]
    assert key["settings"]["keep_first"] == 0 and key["settings"]["activations"] == "int8"  # resolved defaults
    (fp32 / "model.onnx").write_bytes((fp32 / "model.onnx").read_bytes())  # the same bytes: still reused
    accuracy.edge_quantize(fp32, root, roi, out, ["--activations", "int8", "--frames", "2"], reuse=True)
    assert "accuracy: reusing" in capsys.readouterr().out
