"""edge-calibrate end to end: synthetic line → roi.yaml + preview, adjustment of a file, and its refusals."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from _tool import REPO, run_tool

from calibration.roi import CameraBinding, CylinderShape, RoiFile, load_roi, save_roi
from drivers.synthetic import STATIONS
from edge.core.frame import Extrinsics, Intrinsics, StreamSpec
from tools.calibrate import main
from tools.record import main as record

pytest.importorskip("open3d", reason="open3d is the calibrate extra (pip install -e .[calibrate])")

OFFICE_BAG = REPO.parent / "shared" / "fixtures" / "realsense" / "single_depth_color_640x480.bag"


def _roi_file(tmp_path: Path) -> Path:
    intr = Intrinsics(640, 480, 600.0, 600.0, 319.5, 239.5)
    spec = StreamSpec("SN1", intr, intr, Extrinsics(), 0.001, 30.0, True)
    T = np.eye(4)
    T[:3, 3] = (0.0, 0.05, 1.0)
    roi = RoiFile(
        camera=CameraBinding.from_spec(spec),
        T_camera_roi=T.tolist(),
        shape=CylinderShape(radius_m=0.25, length_m=0.35),
    )
    path = tmp_path / "roi.yaml"
    save_roi(roi, path)
    return path


def test_synthetic_calibration_with_adjustment_writes_roi_and_preview(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, preview = tmp_path / "roi.yaml", tmp_path / "roi.png"
    argv = ["--synthetic-seed", "0", "--frames", "5", "--out", str(out), "--preview", str(preview)]
    rc = main([*argv, "--set", "length=0.40", "--grow", "0.005"])
    text = capsys.readouterr().out
    assert rc == 0, text
    roi = load_roi(out)
    assert isinstance(roi.shape, CylinderShape)
    assert roi.shape.length_m == pytest.approx(0.40)  # --set wins over the fitted length
    assert 0.245 < roi.shape.radius_m < 0.255  # the synthetic drum is ≈0.50 m across
    assert roi.margin_m == pytest.approx(0.035)  # default 0.03 + --grow 0.005
    assert roi.acceptance is not None and roi.acceptance.n_frames == 5  # recomputed after the adjustment
    assert roi.acceptance.points_inside > 10_000 and roi.acceptance.fit_residual_m < 0.005
    assert roi.camera.serial and roi.tool_version.startswith("edge-calibrate")
    assert f"ROI version {roi.version}" in text and "acceptance: points inside" in text
    assert "against truth: mask IoU" in text
    img = cv2.imread(str(preview))
    assert img is not None and img.shape == (480, 640 + 480, 3)


def test_from_roi_adjusts_without_frames(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _roi_file(tmp_path)
    before = load_roi(src)
    out = tmp_path / "adjusted.yaml"
    rc = main(
        ["--from-roi", str(src), "--set", "axis=1,0,0", "--set", "radius=0.3", "--grow", "0.01", "--out", str(out)]
    )
    assert rc == 0
    after = load_roi(out)
    np.testing.assert_allclose(after.pose[:3, 2], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(after.pose[:3, 3], before.pose[:3, 3])
    assert after.shape == CylinderShape(radius_m=0.3, length_m=0.35)
    assert after.margin_m == pytest.approx(before.margin_m + 0.01)
    assert after.acceptance is None and "not measured" in capsys.readouterr().out
    assert after.camera == before.camera


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--from-roi", "{tmp}/missing.yaml"], "not found — run edge-calibrate"),
        (["--from-roi", "{roi}", "--set", "diameter=1"], "cannot --set 'diameter=1'"),
        (["--from-roi", "{roi}", "--set", "extents=1,1,1"], "applies to a box ROI"),
        (["--from-roi", "{roi}", "--preview", "{tmp}/p.png"], "--preview needs calibration frames"),
        (["--synthetic-seed", "0", "--radius-range", "0.6,0.1"], "radius_range_m: Value error, needs 0 < low < high"),
        (["--synthetic-seed", "0", "--margin", "0.9"], "margin_m"),
        (["--synthetic-seed", "0", "--frames", "0"], "--frames must be ≥ 1"),
    ],
)
def test_user_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], match: str
) -> None:
    roi = _roi_file(tmp_path)
    args = [a.format(tmp=tmp_path, roi=roi) for a in argv]
    assert main([*args, "--out", str(tmp_path / "o.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edge-calibrate: ") and "\n" not in err
    assert match in err
    assert not (tmp_path / "o.yaml").exists()


def test_bad_argument_syntax_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ex:
        main(["--synthetic-seed", "0", "--hint", "1,2"])
    assert ex.value.code == 2
    assert "expected 3 comma-separated numbers" in capsys.readouterr().err


def test_module_entry_point_exits_2_in_a_real_process(tmp_path: Path) -> None:
    proc = run_tool("calibrate", "--from-roi", tmp_path / "none.yaml", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("edge-calibrate: ROI file")


@pytest.mark.skipif(not OFFICE_BAG.exists(), reason="../shared/fixtures is absent (not part of the repository)")
def test_real_recording_without_a_drum_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A genuine D435 office recording: depth, alignment and the fit run for real, and no drum-sized cylinder exists."""
    pytest.importorskip("drivers.playback", reason="drivers/playback.py is not in this checkout")
    out = tmp_path / "roi.yaml"
    assert main(["--recording", str(OFFICE_BAG), "--frames", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-calibrate: ") and "—" in err
    assert any(s in err for s in ("outside", "no plausible drum cluster", "not a cylinder", "not drum-like")), err
    assert not out.exists()


def test_standing_drum_recording_calibrates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's failing case as a user meets it: a recording of a drum standing on a roller conveyor."""
    pytest.importorskip("drivers.playback", reason="drivers/playback.py is not in this checkout")
    clip, out = tmp_path / "calib.db3", tmp_path / "roi.yaml"
    argv = ["--source", "synthetic", "--station", "roller-standing", "--seed", "2", "--frames", "3"]
    size = ["--width", "424", "--height", "318", "--defect-rate", "0", "--frames-per-part", "3"]
    assert record([*argv, *size, "--out", str(clip)]) == 0
    assert main(["--recording", str(clip), "--frames", "3", "--out", str(out)]) == 0, capsys.readouterr().err
    roi = load_roi(out)
    design = STATIONS["roller-standing"].design
    assert isinstance(roi.shape, CylinderShape)
    assert abs(roi.shape.radius_m - design.radius_m) < 0.003
    # the ROI spans the drum with the margin above its open end and none below its back, which rests on the rollers
    reach = roi.shape.length_m + 2 * roi.margin_m
    assert abs(reach - (design.length_m + roi.margin_m)) < 0.01, (reach, design.length_m, roi.margin_m)
