"""MVTec 3D-AD export: layout, split, and the files read back (tifffile xyz, OpenCV rgb/gt)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import pytest
import tifffile

from drivers.mvtec import MvtecExportConfig, MvtecExportError, export_mvtec
from edge.core.frame import DefectType, DrumPose, Extrinsics, Frame, GroundTruth, Intrinsics, StreamSpec
from edge.core.geometry import ray_table

W, H = 64, 48
INTR = Intrinsics(W, H, 60.0, 61.0, 31.5, 23.75)
SPEC = StreamSpec("SYN-7", INTR, INTR, Extrinsics(), 0.001, 30.0, True, source="synthetic:test")
Label = Literal["good", "defect", "empty"]
DRUM = DrumPose((0.0, 0.0, 1.2), (1.0, 0.0, 0.0), 0.25, 0.35)


def frame(i: int, label: Label, defect: DefectType | None = None) -> Frame:
    """Frame ``i``: a distinct colour per channel (catches RGB/BGR swaps) and a depth ramp; defects get a mask."""
    color = np.empty((H, W, 3), np.uint8)
    color[..., 0], color[..., 1], color[..., 2] = 200, i, 30
    depth = (1000 + np.arange(W, dtype=np.uint16)[None, :] + 10 * i).repeat(H, 0).astype(np.uint16)
    depth[0, 0] = 0  # a hole: xyz must be (0, 0, 0)
    mask = np.zeros((H, W), bool)
    mask[5 : 10 + i % 5, 7:20] = True
    truth = GroundTruth(
        label,
        defect,
        None if label == "empty" else DRUM,
        mask if label == "defect" else None,
    )
    return Frame(color, depth, SPEC, i, i, i * 33_333_333, 0, i, truth)


def line(frames_per_part: int, labels: list[tuple[Label, DefectType | None]], gap: int = 1) -> list[Frame]:
    """Parts of ``frames_per_part`` frames separated by ``gap`` empty frames, as the synthetic line produces."""
    out: list[Frame] = []
    for label, defect in labels:
        out += [frame(len(out) + k, label, defect) for k in range(frames_per_part)]
        out += [frame(len(out) + k, "empty") for k in range(gap)]
    return out


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_layout_split_and_contents(tmp_path: Path) -> None:
    parts: list[tuple[Label, DefectType | None]] = [("good", None)] * 5
    parts += [("defect", "dent"), ("defect", "scratch"), ("defect", "dent")]
    frames = line(3, parts)
    cfg = MvtecExportConfig(class_name="drum", train_fraction=0.6, validation_fraction=0.2, frames_per_part=3)
    summary = export_mvtec(frames, tmp_path, cfg, seed=7)
    root = tmp_path / "drum"
    assert summary.counts == {
        "train": {"good": 3},
        "validation": {"good": 1},
        "test": {"good": 1, "dent": 2, "scratch": 1},
    }
    assert summary.frames_seen == len(frames) and summary.empty_skipped == 8
    listed = files(root)
    assert "train/good/rgb/002.png" in listed and "train/good/xyz/002.tiff" in listed
    assert not any(p.startswith(("train/good/gt", "validation/good/gt")) for p in listed)
    assert {"test/good/gt/000.png", "test/dent/gt/001.png", "test/scratch/xyz/000.tiff"} <= set(listed)

    meta = json.loads((root / "dataset.json").read_text())
    assert meta["counts"] == summary.counts and meta["seed"] == 7 and meta["source"] == "synthetic:test"
    assert StreamSpec.from_dict(meta["spec"]) == SPEC

    # The middle frame of each part was exported: part 5 (first dent) spans frames 20..22 → frame 21.
    want = frames[21]
    rgb = cv2.imread(str(root / "test/dent/rgb/000.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(rgb[..., ::-1], want.color)  # PNG holds RGB; OpenCV reads it as BGR
    xyz = tifffile.imread(root / "test/dent/xyz/000.tiff")
    assert xyz.shape == (H, W, 3) and xyz.dtype == np.float32
    np.testing.assert_allclose(xyz, ray_table(INTR) * (want.depth.astype(np.float32) * 0.001)[..., None], rtol=1e-6)
    assert (xyz[0, 0] == 0).all() and xyz[10, 10, 2] == pytest.approx((1000 + 10 + 210) * 0.001)
    gt = cv2.imread(str(root / "test/dent/gt/000.png"), cv2.IMREAD_UNCHANGED)
    assert gt.dtype == np.uint8 and gt.ndim == 2 and set(np.unique(gt)) == {0, 255}
    assert want.truth is not None
    np.testing.assert_array_equal(gt > 0, want.truth.defect_mask)
    assert not cv2.imread(str(root / "test/good/gt/000.png"), cv2.IMREAD_UNCHANGED).any()


def test_every_frame_and_runs_without_gaps(tmp_path: Path) -> None:
    """Without empty frames between parts, a run of equal labels is cut into parts of frames_per_part."""
    parts: list[tuple[Label, DefectType | None]] = [("good", None)] * 4 + [("defect", "dent")]
    frames = line(2, parts, gap=0)
    cfg = MvtecExportConfig(frames_per_part=2, train_fraction=0.5, validation_fraction=0.25)
    assert export_mvtec(frames, tmp_path / "a", cfg).counts == {
        "train": {"good": 2},
        "validation": {"good": 1},
        "test": {"good": 1, "dent": 1},
    }
    every = cfg.model_copy(update={"every_frame": True})
    assert export_mvtec(frames, tmp_path / "b", every).counts == {
        "train": {"good": 4},
        "validation": {"good": 2},
        "test": {"good": 2, "dent": 2},
    }


def test_refusals_name_the_problem(tmp_path: Path) -> None:
    unregistered = replace(SPEC, depth_aligned_to_color=False)
    with pytest.raises(MvtecExportError, match=r"not registered to color.*align_to_color=True"):
        export_mvtec([replace(frame(0, "good"), spec=unregistered)], tmp_path, MvtecExportConfig())
    with pytest.raises(MvtecExportError, match=r"has no ground truth.*\.labels sidecar"):
        export_mvtec([replace(frame(0, "good"), truth=None)], tmp_path / "n", MvtecExportConfig())
    no_mask = replace(frame(0, "defect", "dent"), truth=GroundTruth("defect", "dent", DRUM, None))
    with pytest.raises(MvtecExportError, match="has no defect mask"):
        export_mvtec([no_mask], tmp_path / "m", MvtecExportConfig())
    export_mvtec([frame(0, "good")], tmp_path / "o", MvtecExportConfig())
    with pytest.raises(MvtecExportError, match="already exists and is not empty"):
        export_mvtec([frame(0, "good")], tmp_path / "o", MvtecExportConfig())
    with pytest.raises(ValueError, match="must not exceed 1"):
        MvtecExportConfig(train_fraction=0.9, validation_fraction=0.2)
