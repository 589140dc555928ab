"""The daemon runs BAAD (crop mode ``image``: the whole frame) without an ROI file; with one it checks BAAD's
predicted foreground against the ROI mask and raises the mask alarm when the ROI no longer matches (moved).

The model is the tiny BAAD trained by ``edge-train`` on the session's recording (20 epochs per phase, 6 training
frames): on that line its mask IoU against the calibrated ROI measured 0.76–0.91 on drum frames, and 0.51–0.59 with
the ROI moved 15 cm sideways; the floor here (0.7) lies between.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from calibration.fit import adjust_roi
from calibration.roi import load_roi, save_roi
from edge.core.metrics import Metrics
from edge.daemon.record import ModelScore, VerdictRecord
from engines.export import card_from_onnx
from tests.daemon.conftest import LINE_FRAMES, DaemonAssets, daemon_config
from tests.daemon.test_daemon import _accounted, _check_db, daemon
from tools import calibrate, train

ROOT = Path(__file__).resolve().parents[2]
FLOOR = 0.7


@pytest.fixture(scope="module")
def baad_model(daemon_assets: DaemonAssets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("baad") / "model"
    argv = ["--model", "baad", "--preset", "tiny", "--crop", "image", "--epochs", "20", "--batch-size", "4"]
    argv += ["--lr", "2e-3", "--threads", "1", "--data", str(daemon_assets.line), "--roi", str(daemon_assets.roi)]
    assert train.main([*argv, "--out", str(out)]) == 0
    card = card_from_onnx(out / "model.onnx")
    assert card.crop_mode == "image" and "foreground" in card.outputs
    return out


def _config(assets: DaemonAssets, tmp_path: Path, model: Path, roi: Path | None) -> Path:
    config: dict[str, Any] = daemon_config(assets, tmp_path / "data")
    config["models"] = [
        {"name": "baad-tiny", "onnx": str(model / "model.onnx"), "scoring": str(model / "scoring.yaml"),
         "mask_iou_floor": FLOOR, "mask_iou_frames": 3},
    ]  # fmt: skip
    if roi is None:
        del config["roi"]
    else:
        config["roi"] = str(roi)
        config["gating"]["min_roi_fill"] = 0.05  # the ROI covers 14 % of the whole image (moved: 9 %); empty: 2 %
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def test_daemon_runs_baad_without_an_roi_file(daemon_assets: DaemonAssets, baad_model: Path, tmp_path: Path) -> None:
    config = _config(daemon_assets, tmp_path, baad_model, None)
    check = subprocess.run(
        [sys.executable, "-m", "edge.daemon.main", "--config", str(config), "--check-config"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    with daemon(config) as d:
        assert d.finish() == 0, "\n".join(d.lines[-30:])
    summary = _check_db(tmp_path / "data" / "results.db")
    counters = summary["counters"]
    assert _accounted(counters) == LINE_FRAMES and counters["dropped"] == 0, counters
    # without an ROI the fill is the share of the image with depth: every frame of this line is scored
    assert counters["scored"] == LINE_FRAMES, counters
    with sqlite3.connect(tmp_path / "data" / "results.db") as conn:
        versions = {row[0] for row in conn.execute("SELECT roi_version FROM verdicts")}
    assert versions == {""}, "no ROI decided these verdicts"
    assert not any("foreground_mask" in line for line in d.lines), "no ROI: no mask check"


def test_a_model_that_needs_an_roi_is_refused_without_one(daemon_assets: DaemonAssets, tmp_path: Path) -> None:
    config = daemon_config(daemon_assets, tmp_path / "data")
    del config["roi"]
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-m", "edge.daemon.main", "--config", str(path), "--check-config"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 2
    assert "crop mode 'foreground' and needs an ROI" in run.stdout + run.stderr


@pytest.mark.parametrize(("shift_m", "alarm"), [(0.0, False), (0.15, True)])
def test_the_mask_alarm_fires_when_the_roi_is_moved(
    daemon_assets: DaemonAssets, baad_model: Path, tmp_path: Path, shift_m: float, alarm: bool
) -> None:
    roi = load_roi(daemon_assets.roi)
    c = roi.pose[:3, 3]
    moved = tmp_path / "roi.yaml"
    save_roi(adjust_roi(roi, {"center": f"{c[0] + shift_m},{c[1]},{c[2]}"}), moved)
    config = _config(daemon_assets, tmp_path, baad_model, moved)
    with daemon(config) as d:
        assert d.finish() == 0, "\n".join(d.lines[-30:])
    counters = _check_db(tmp_path / "data" / "results.db")["counters"]
    assert counters["scored"] > 0, counters
    raised = [line for line in d.lines if "event=foreground_mask_alarm model=baad-tiny" in line]
    assert bool(raised) == alarm, "\n".join(d.lines[-30:])


def test_the_mask_iou_and_alarm_are_prometheus_gauges() -> None:
    metrics = Metrics()

    def record(iou: float, alarm: bool) -> VerdictRecord:
        score = ModelScore("baad-tiny", 0.1, 0.0, "OK", 5.0, mask_iou=iou, mask_alarm=alarm)
        return VerdictRecord(
            sequence=0, frame_number=0, device_ts_ns=0, host_ts_ns=0, kind="frame", part_id=0, verdict="OK",
            late=False, roi_fill=0.5, scores=(score,), stage_ms={}, roi_version="v", model_versions={},
            scoring_versions={},
        )  # fmt: skip

    metrics.observe(record(0.91, False))
    labels = {"model": "baad-tiny"}
    assert metrics.registry.get_sample_value("edge_foreground_mask_iou", labels) == pytest.approx(0.91)
    assert metrics.registry.get_sample_value("edge_foreground_mask_alarm", labels) == 0
    metrics.observe(record(0.4, True))
    assert metrics.registry.get_sample_value("edge_foreground_mask_iou", labels) == pytest.approx(0.4)
    assert metrics.registry.get_sample_value("edge_foreground_mask_alarm", labels) == 1


def test_edge_calibrate_proposes_the_roi_from_baads_mask(
    daemon_assets: DaemonAssets, baad_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = daemon_assets.line.parent / "clip.db3"  # the calibration clip the session's ROI was fitted on
    out = tmp_path / "proposed.yaml"
    assert calibrate.main(["--recording", str(clip), "--frames", "5", "--propose-from", str(baad_model),
                           "--out", str(out)]) == 0  # fmt: skip
    assert "BAAD proposes the drum at pixel" in capsys.readouterr().out
    proposed, calibrated = load_roi(out), load_roi(daemon_assets.roi)
    assert float(np.linalg.norm(proposed.pose[:3, 3] - calibrated.pose[:3, 3])) < 0.02  # the same drum
    # a model without a foreground output is refused with the remedy, one line, exit 2
    assert calibrate.main(["--recording", str(clip), "--frames", "5", "--propose-from",
                           str(daemon_assets.onnx.parent), "--out", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "without a foreground output" in err and "--model baad --crop image" in err
