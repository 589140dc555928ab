"""Data from outside: public MVTec 3D-AD / MVTec AD folders (no dataset.json), made here, cropped without an ROI:
``full`` (the whole image) and ``foreground`` (the background plane removed), RGB-only folders, class-id masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _public import BOX, CLASS_ID, HOLE, SPECK, H, W, make_public_2d, make_public_3d, scene

from edge.crop import CropSpec
from engines.datasets import MvtecFolder, crop_mask, load_mvtec
from engines.scene import SceneCropError, SceneCropper, SceneFrame, plane_foreground, scene_layout

SIZE = 40


def test_plane_removal_keeps_the_object_and_drops_the_plane_and_the_speck() -> None:
    _, xyz, _ = scene(1, hole=False)
    fg = plane_foreground(xyz)
    want = np.zeros((H, W), dtype=bool)
    want[BOX] = True
    want[40, 30] = False  # no depth there
    np.testing.assert_array_equal(fg, want)
    assert not fg[SPECK].any()  # raised too, but a separate, smaller region
    np.testing.assert_array_equal(plane_foreground(xyz), fg)  # seeded RANSAC: the same mask every read


def test_plane_removal_needs_the_border() -> None:
    _, xyz, _ = scene(1, hole=False)
    xyz[:, :12] = 0.0
    xyz[:, -12:] = 0.0
    xyz[:12] = 0.0
    xyz[-12:] = 0.0
    with pytest.raises(SceneCropError, match=r"too few to fit the background plane.*--crop full"):
        plane_foreground(xyz)


def test_public_3d_folder_full_and_foreground(tmp_path: Path) -> None:
    root = make_public_3d(tmp_path / "cookie")
    folder = MvtecFolder(root)
    assert folder.public and not (root / "dataset.json").exists()
    layout = scene_layout(W, H, SIZE)
    full = load_mvtec(root, None, CropSpec(mode="full", size=SIZE))
    fg = load_mvtec(root, None, CropSpec(mode="foreground", size=SIZE))
    assert full.kinds == {"train": {"good": 6}, "validation": {"good": 3}, "test": {"good": 3, "hole": 3}}
    assert full.data_hash == fg.data_hash == folder.data_hash()  # one data set, both crop modes: the study pairs
    box = np.zeros((H, W), dtype=bool)
    box[BOX] = True
    box[40, 30] = False
    rows_in_image = crop_mask(np.ones((H, W), np.uint8), layout)[0] > 0  # padding rows of the 80×64 image
    for a, b in zip(full.split("test"), fg.split("test"), strict=True):
        assert a["rgb"].shape == (3, SIZE, SIZE) and a["source"] == b["source"]
        # full: every sampled point with depth; foreground: the box only, xyz zero and colour background elsewhere
        np.testing.assert_array_equal(a["mask"][0] > 0, crop_mask(a["xyz"][2] > 0, _identity(SIZE))[0] > 0)
        assert (a["mask"][0] > 0).sum() > (b["mask"][0] > 0).sum() > 0
        np.testing.assert_array_equal(b["mask"][0] > 0, crop_mask(box, layout)[0] > 0)
        assert not b["xyz"][:, b["mask"][0] == 0].any() and b["xyz"][2, b["mask"][0] > 0].min() > 0.4
        assert not (a["mask"][0] > 0)[~rows_in_image].any()
        np.testing.assert_array_equal(a["gt"], b["gt"])
        if a["defect_type"] == "hole":
            hole = np.zeros((H, W), dtype=bool)
            hole[HOLE] = True  # the mask file holds class id 2: binarised with > 0
            np.testing.assert_array_equal(a["gt"], crop_mask(hole, layout))
            assert a["label"] == 1 and a["gt"].sum() > 0
        else:
            assert a["label"] == 0 and a["gt"].sum() == 0


def _identity(n: int) -> object:
    """A layout that samples an n×n array onto itself."""
    return scene_layout(n, n, n)


def test_rgb_only_folder_trains_in_full_mode_only(tmp_path: Path) -> None:
    root = make_public_3d(tmp_path / "flat", with_xyz=False)
    data = load_mvtec(root, None, CropSpec(mode="full", size=SIZE))
    s = data.split("test")[0]
    assert not s["xyz"].any() and s["mask"][0].sum() == (crop_mask(np.ones((H, W)), scene_layout(W, H, SIZE))).sum()
    fg = load_mvtec(root, None, CropSpec(mode="foreground", size=SIZE))
    with pytest.raises(SceneCropError, match=r"has no point cloud.*use --crop full for RGB-only data"):
        fg.split("train")[0]


def test_mvtec_ad_layout_with_class_id_masks_and_no_validation_split(tmp_path: Path) -> None:
    root = make_public_2d(tmp_path / "bottle")
    data = load_mvtec(root, None, CropSpec(mode="full", size=SIZE))
    assert data.kinds == {"train": {"good": 6}, "validation": {"good": 2}, "test": {"good": 3, "hole": 3}}
    train = {r.rgb for r in MvtecFolder(root).refs("train")}
    assert not train & {r.rgb for r in MvtecFolder(root).refs("validation")}  # held out, never trained on
    hole = np.zeros((H, W), dtype=bool)
    hole[HOLE] = True
    defects = [s for s in data.split("test") if s["label"] == 1]
    assert len(defects) == 3 and CLASS_ID != 255
    for s in defects:
        np.testing.assert_array_equal(s["gt"], crop_mask(hole, scene_layout(W, H, SIZE)))


def test_scene_cropper_refuses_mixed_sizes() -> None:
    rgb, xyz, _ = scene(3, hole=False)
    cropper = SceneCropper(CropSpec(mode="full", size=SIZE))
    cropper.crop(SceneFrame(rgb, xyz))
    with pytest.raises(SceneCropError, match="one image size per data set"):
        cropper.crop(SceneFrame(rgb[:32], xyz[:32]))
    with pytest.raises(SceneCropError, match="does not match the image"):
        cropper.crop(SceneFrame(rgb, xyz[:32]))
