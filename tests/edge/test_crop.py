"""The CPU ROI crop against an independent per-pixel reference, its geometry, its refusals and its allocations."""

from __future__ import annotations

import tracemalloc
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

import edge.crop
from calibration.roi import BoxShape, CameraBinding, RoiError, RoiFile
from drivers.playback import PlaybackSource, PlaybackSourceConfig
from edge.core.frame import Frame, StreamSpec
from edge.core.geometry import ray_table, xyz_from_depth
from edge.crop import (
    CropError,
    CropLayout,
    CropSpec,
    DepthNotRegisteredError,
    RoiCropper,
    RoiTest,
    apply_depthless_rule,
    depth_runs,
    depthless_rule,
    nearest_window,
    roi_inequality,
    roi_ray_table,
    roi_silhouette,
)
from engines.contract import ModelCard
from tests.edge._crop_data import TEST_NOTCHES, make_frame, make_roi, make_spec

SHARED = Path(__file__).resolve().parents[3] / "shared"
BAG = SHARED / "fixtures" / "realsense" / "single_depth_color_640x480.bag"


def reference_crop(
    frame: Frame,
    roi: RoiFile,
    crop: CropSpec,
    window: tuple[int, int, int],
    silhouette: npt.NDArray[np.bool_],
) -> dict[str, np.ndarray]:
    """Per-pixel loops straight from the documented formula, with exact rational coordinates.

    ``silhouette`` (H×W) decides pixels without depth when ``crop.keep_depthless`` is set: inside it they are
    foreground when ``crop.depthless_reach`` is None, else only when a sample with depth inside the ROI lies within
    the reach on each of their four sides (searched sample by sample here).
    """
    x0, y0, side = window
    spec, n = frame.spec, crop.size
    h, w = frame.depth.shape
    xyz_full = xyz_from_depth(frame.depth, spec.depth_scale, ray_table(spec.color_intrinsics))
    bg = np.asarray(crop.background_rgb)
    mask = np.zeros((n, n), bool)
    depthless = np.zeros((n, n), bool)  # inside the silhouette, without depth
    xyz = np.zeros((n, n, 3), np.float32)
    color = np.zeros((n, n, 3), np.int64)

    def pixel(u: int, v: int) -> np.ndarray:
        return frame.color[v, u].astype(np.int64) if 0 <= u < w and 0 <= v < h else bg

    for i in range(n):
        for j in range(n):
            sx = x0 + (j + Fraction(1, 2)) * Fraction(side, n) - Fraction(1, 2)
            sy = y0 + (i + Fraction(1, 2)) * Fraction(side, n) - Fraction(1, 2)
            u, v = int(np.floor(sx + Fraction(1, 2))), int(np.floor(sy + Fraction(1, 2)))
            if 0 <= u < w and 0 <= v < h and frame.depth[v, u] > 0:
                xyz[i, j] = xyz_full[v, u]
                mask[i, j] = bool(roi.contains(xyz_full[v, u][None])[0])
            elif 0 <= u < w and 0 <= v < h and crop.keep_depthless:
                depthless[i, j] = bool(silhouette[v, u])
            if crop.color_interpolation == "nearest":
                color[i, j] = pixel(u, v)
                continue
            qx, qy = int(np.floor(32 * sx + Fraction(1, 2))), int(np.floor(32 * sy + Fraction(1, 2)))
            u0, ax, v0, ay = qx // 32, qx % 32, qy // 32, qy % 32
            acc = (
                (32 - ax) * (32 - ay) * pixel(u0, v0)
                + ax * (32 - ay) * pixel(u0 + 1, v0)
                + (32 - ax) * ay * pixel(u0, v0 + 1)
                + ax * ay * pixel(u0 + 1, v0 + 1)
            )
            color[i, j] = (acc + 512) // 1024
    reach = crop.depthless_reach
    valid = mask.copy()
    for i, j in zip(*np.nonzero(depthless), strict=True):
        if reach is None:
            mask[i, j] = True
            continue
        sides = (valid[i, max(j - reach, 0) : j], valid[i, j + 1 : j + 1 + reach],
                 valid[max(i - reach, 0) : i, j], valid[i + 1 : i + 1 + reach, j])  # fmt: skip
        mask[i, j] = all(side.any() for side in sides)
    if crop.mode == "foreground":
        xyz[~mask] = 0
        color[~mask] = bg
    rgb = (color / 255.0 - np.asarray(crop.mean)) / np.asarray(crop.std)
    return {"mask": mask, "xyz": xyz, "color": color.astype(np.uint8), "rgb": rgb.transpose(2, 0, 1)[None]}


@pytest.mark.parametrize(
    ("kind", "mode", "interp", "size", "z", "keep", "reach"),
    [
        ("cylinder", "foreground", "bilinear", 32, 0.8, True, 8),
        ("cylinder", "foreground", "bilinear", 32, 0.8, True, None),  # cards written before depthless_reach
        ("cylinder", "foreground", "bilinear", 32, 0.8, False, 8),
        ("cylinder", "full", "nearest", 40, 0.8, True, 2),
        ("box", "foreground", "nearest", 24, 0.8, True, 1),
        ("box", "foreground", "nearest", 24, 0.8, True, None),
        ("box", "full", "bilinear", 56, 0.8, False, 8),
        ("cylinder", "full", "bilinear", 36, 0.45, True, None),  # window taller than the image: padded rows
        ("notched", "foreground", "bilinear", 40, 0.8, True, 3),  # radial notches: RoiFile.contains is the reference
        ("notched", "full", "nearest", 36, 0.45, False, 8),
    ],
)
def test_cpu_crop_matches_slow_reference(
    kind: str, mode: str, interp: str, size: int, z: float, keep: bool, reach: int | None
) -> None:
    spec = make_spec()
    roi = make_roi(spec, kind, center=(0.02, -0.01, z))
    crop = CropSpec(
        mode=mode,  # type: ignore[arg-type]
        size=size,
        color_interpolation=interp,  # type: ignore[arg-type]
        background_rgb=(10, 200, 30),
        keep_depthless=keep,
        depthless_reach=reach,
    )
    cropper = RoiCropper(spec, roi, crop)
    frame = make_frame(spec)
    lay = cropper.layout
    silhouette = roi_silhouette(spec.color_intrinsics, roi, crop)
    ref = reference_crop(frame, roi, crop, (lay.x0, lay.y0, lay.side), silhouette)
    out = cropper.crop(frame)
    assert 0 < ref["mask"].sum() < size * size, "the scene must put points both inside and outside the ROI"
    np.testing.assert_array_equal(out.mask, ref["mask"])
    np.testing.assert_allclose(out.xyz_hwc, ref["xyz"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(out.color, ref["color"])
    holes_kept = out.mask & (out.xyz_hwc[..., 2] == 0)
    assert holes_kept.any() == keep, "depthless pixels inside the silhouette are foreground exactly when asked"
    np.testing.assert_allclose(out.rgb, ref["rgb"], atol=1e-5, rtol=0)


def full_res_mask(frame: Frame, roi: RoiFile) -> npt.NDArray[np.bool_]:
    xyz = xyz_from_depth(frame.depth, frame.spec.depth_scale, ray_table(frame.spec.color_intrinsics))
    return roi.contains(xyz) & (frame.depth > 0)


@pytest.mark.parametrize("kind", ["cylinder", "box"])
def test_window_is_square_covers_every_roi_pixel_and_modes_share_geometry(kind: str) -> None:
    spec = make_spec(160, 120)
    roi = make_roi(spec, kind, center=(-0.05, 0.03, 1.1))
    frame = make_frame(spec, seed=3)
    fg = RoiCropper(spec, roi, CropSpec(mode="foreground", size=64, background_rgb=(1, 2, 3)))
    full = RoiCropper(spec, roi, CropSpec(mode="full", size=64, background_rgb=(1, 2, 3)))
    assert fg.layout == full.layout
    lay = fg.layout
    assert lay.x0 >= 0 and lay.x0 + lay.side <= 160 and lay.y0 >= 0 and lay.y0 + lay.side <= 120
    vs, us = np.nonzero(full_res_mask(frame, roi))
    assert len(us) > 100
    assert us.min() >= lay.x0 and us.max() < lay.x0 + lay.side
    assert vs.min() >= lay.y0 and vs.max() < lay.y0 + lay.side
    a, b = fg.crop(frame), full.crop(frame)
    assert a.rgb.shape == b.rgb.shape == a.xyz.shape == (1, 3, 64, 64) and a.mask.shape == (64, 64)
    np.testing.assert_array_equal(a.mask, b.mask)
    bg = ~a.mask
    assert bg.any() and a.mask.any()
    assert np.all(a.color[bg] == (1, 2, 3)) and np.all(a.xyz_hwc[bg] == 0)
    np.testing.assert_array_equal(a.xyz_hwc[a.mask], b.xyz_hwc[a.mask])
    np.testing.assert_array_equal(a.color[a.mask], b.color[a.mask])
    has_depth = b.xyz_hwc[..., 2] > 0
    assert np.count_nonzero(has_depth & bg) > 100, "full mode keeps the background's geometry"
    expected_bg = (np.array([1, 2, 3]) / 255 - np.array(CropSpec().mean)) / np.array(CropSpec().std)
    np.testing.assert_allclose(a.rgb[0].transpose(1, 2, 0)[bg], np.broadcast_to(expected_bg, (bg.sum(), 3)), atol=1e-5)


def test_window_larger_than_the_image_is_padded_with_background() -> None:
    spec = make_spec(64, 48)
    roi = make_roi(spec, "cylinder", center=(0.0, 0.0, 0.45))  # close: projects wider than the image
    crop = CropSpec(mode="full", size=32, background_rgb=(7, 8, 9), color_interpolation="nearest")
    cropper = RoiCropper(spec, roi, crop)
    lay = cropper.layout
    assert lay.side > 48 and lay.y0 < 0, lay
    out = cropper.crop(make_frame(spec))
    _, iy = lay.nearest()
    pad_rows = (iy < 0) | (iy >= 48)
    assert pad_rows.any()
    assert np.all(out.color[pad_rows] == (7, 8, 9))
    assert not out.mask[pad_rows].any() and np.all(out.xyz_hwc[pad_rows] == 0)


def test_foreground_colour_stays_exact_when_the_foreground_shrinks_between_frames() -> None:
    """Only the foreground's bounding box is resampled: what an earlier, larger box left must be repainted."""
    spec = make_spec()
    roi = make_roi(spec, "cylinder")
    crop = CropSpec(size=32, background_rgb=(10, 200, 30), keep_depthless=False)
    cropper = RoiCropper(spec, roi, crop)
    lay = cropper.layout
    silhouette = roi_silhouette(spec.color_intrinsics, roi, crop)
    whole, half, empty = (make_frame(spec, seed) for seed in (5, 6, 7))
    half.depth[:, :32] = 3000  # the left half lies far behind the ROI
    empty.depth[:] = 3000
    kept = []
    for frame in (whole, half, empty, whole):
        out = cropper.crop(frame)
        ref = reference_crop(frame, roi, crop, (lay.x0, lay.y0, lay.side), silhouette)
        np.testing.assert_array_equal(out.mask, ref["mask"])
        np.testing.assert_array_equal(out.color, ref["color"])
        np.testing.assert_allclose(out.rgb, ref["rgb"], atol=1e-5, rtol=0)
        kept.append(int(out.mask.sum()))
    assert kept[0] > kept[1] > kept[2] == 0 and kept[3] == kept[0]


def test_depth_is_gathered_by_resize_only_where_resize_picks_exactly_the_nearest_pixels() -> None:
    depth = np.random.default_rng(2).integers(0, 65535, size=(480, 640), dtype=np.uint16)
    inside = CropLayout(x0=154, y0=86, side=332, size=256, width=640, height=480, bbox=(154, 86, 485, 417))
    window = nearest_window(inside)
    assert window is not None
    ix, iy = inside.nearest()
    resized = cv2.resize(depth[window], (256, 256), interpolation=cv2.INTER_NEAREST_EXACT)
    np.testing.assert_array_equal(resized, depth[iy[:, None], ix[None, :]])
    upscaled = CropLayout(x0=10, y0=10, side=16, size=200, width=640, height=480, bbox=(10, 10, 25, 25))
    ix, iy = upscaled.nearest()
    resized = cv2.resize(depth[10:26, 10:26], (200, 200), interpolation=cv2.INTER_NEAREST_EXACT)
    assert not np.array_equal(resized, depth[iy[:, None], ix[None, :]]), "resize's stepping is off by a pixel here"
    assert nearest_window(upscaled) is None
    overhang = CropLayout(x0=-3, y0=0, side=100, size=64, width=640, height=480, bbox=(0, 0, 96, 99))
    assert nearest_window(overhang) is None


@pytest.mark.parametrize("inside_at_zero", [False, True])
@pytest.mark.parametrize("with_silhouette", [False, True])
def test_depthless_rule_keeps_the_test_where_there_is_depth_and_the_silhouette_where_none(
    inside_at_zero: bool, with_silhouette: bool
) -> None:
    rng = np.random.default_rng(4)
    n = 1000
    z = np.where(rng.random(n) < 0.3, 0.0, rng.uniform(0.001, 65.0, n)).astype(np.float32)
    z[:2] = (0.0, 0.001)  # no depth, and the nearest depth a D4xx reports
    test = rng.random(n) < 0.5
    test[z == 0] = inside_at_zero  # at z = 0 the ROI test reads the same l = b for every pixel
    silhouette = rng.random(n) < 0.5 if with_silhouette else None
    expected = np.where(z > 0, test, False if silhouette is None else silhouette)
    mask = test.copy()
    rule = depthless_rule(inside_at_zero, silhouette)
    assert (rule is None) == (silhouette is None and not inside_at_zero)
    if rule is not None:
        apply_depthless_rule(rule, z, mask, np.empty(n, dtype=np.bool_))
    np.testing.assert_array_equal(mask, expected)


def sampled_roi_rays(spec: StreamSpec, roi: RoiFile, layout: CropLayout) -> npt.NDArray[np.float32]:
    """The ROI-frame rays at the crop's N×N nearest sample pixels, 3×N² (every sample inside the image here)."""
    ix, iy = layout.nearest()
    assert ix.min() >= 0 and iy.min() >= 0 and ix.max() < spec.color_intrinsics.width
    rays = roi_ray_table(ray_table(spec.color_intrinsics), roi)[iy[:, None], ix[None, :]]
    return np.ascontiguousarray(rays.reshape(-1, 3).T)


@pytest.mark.parametrize("kind", ["cylinder", "box", "notched"])
def test_depth_runs_hold_exactly_the_depths_that_pass_the_float32_inequality(kind: str) -> None:
    """Every raw depth 1..65535 at the shortest runs (rays grazing the ROI), random runs and empty pixels."""
    spec = make_spec(640, 480)
    roi = make_roi(spec, kind)
    layout = RoiCropper(spec, roi, CropSpec(size=64)).layout
    a, test = sampled_roi_rays(spec, roi, layout), RoiTest.from_roi(roi)
    runs = depth_runs(a, test, spec.depth_scale, np.ones(a.shape[1], dtype=np.bool_))
    assert runs is not None
    assert (len(runs) > 2) == (kind == "notched")  # a notch splits some rays' passage: further runs
    bounds = [r.astype(np.int64) for r in runs]
    lo, hi = bounds[0], bounds[1]
    hit = np.flatnonzero(hi >= lo)
    assert 100 < len(hit) < a.shape[1], "the window must hold pixels whose rays cross the ROI and pixels whose miss"
    rng = np.random.default_rng(8)
    shortest = hit[np.argsort(hi[hit] - lo[hit])[:24]]
    picked = np.concatenate([shortest, rng.choice(hit, 24), rng.choice(np.flatnonzero(hi < lo), 8)])
    for k in range(2, len(bounds), 2):
        split = np.flatnonzero(bounds[k + 1] >= bounds[k])
        assert len(split) > 0 and np.all(bounds[k][split] > bounds[k - 1][split] + 1)  # a gap before each run
        picked = np.concatenate([picked, rng.choice(split, 12)])
    zs = np.arange(65536, dtype=np.float32) * np.float32(spec.depth_scale)
    for p in picked:
        coords = a[:, p : p + 1] * zs[None, :] + test.offset[:, None]
        passed = np.empty(65536, dtype=np.bool_)
        roi_inequality(coords, test, passed, np.empty_like(passed))
        expected = np.zeros(65536, dtype=np.bool_)
        for k in range(0, len(bounds), 2):
            expected[bounds[k][p] : bounds[k + 1][p] + 1] = True
        np.testing.assert_array_equal(passed[1:], expected[1:], err_msg=f"sample pixel {p}")


@pytest.mark.parametrize("kind", ["cylinder", "notched"])
def test_cylinder_over_the_run_budget_evaluates_the_inequality_every_frame(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec()
    roi = make_roi(spec, kind)
    crop = CropSpec(size=32, background_rgb=(10, 200, 30))
    with_runs = RoiCropper(spec, roi, crop)
    monkeypatch.setattr(edge.crop, "RUN_CHECK_BUDGET", 0)
    per_frame = RoiCropper(spec, roi, crop)
    lay = per_frame.layout
    a, valid = sampled_roi_rays(spec, roi, lay), np.ones(lay.size**2, dtype=np.bool_)
    assert depth_runs(a, RoiTest.from_roi(roi), spec.depth_scale, valid) is None
    silhouette = roi_silhouette(spec.color_intrinsics, roi, crop)
    for seed in range(3):
        frame = make_frame(spec, seed)
        ref = reference_crop(frame, roi, crop, (lay.x0, lay.y0, lay.side), silhouette)
        out = per_frame.crop(frame)
        np.testing.assert_array_equal(out.mask, ref["mask"])
        np.testing.assert_array_equal(out.color, ref["color"])
        fast = with_runs.crop(frame)
        for name in ("mask", "color", "xyz", "rgb"):
            np.testing.assert_array_equal(getattr(fast, name), getattr(out, name))


def test_unregistered_depth_is_refused() -> None:
    spec = make_spec()
    roi = make_roi(spec, "box")
    with pytest.raises(DepthNotRegisteredError, match="align_to_color"):
        RoiCropper(make_spec(aligned=False), roi, allow_mismatch=True)
    cropper = RoiCropper(spec, roi)
    frame = make_frame(make_spec(aligned=False))
    with pytest.raises(DepthNotRegisteredError, match="not aligned"):
        cropper.crop(frame)


def test_roi_of_another_camera_is_refused_unless_allowed() -> None:
    spec = make_spec()
    roi = make_roi(make_spec(serial="OTHER"), "box")
    with pytest.raises(RoiError, match="serial"):
        RoiCropper(spec, roi)
    assert RoiCropper(spec, roi, allow_mismatch=True).layout.side > 0


def test_roi_behind_the_camera_or_out_of_view_is_refused() -> None:
    spec = make_spec()
    with pytest.raises(CropError, match="in front of the camera"):
        RoiCropper(spec, make_roi(spec, "box", center=(0.0, 0.0, 0.05)))
    with pytest.raises(CropError, match="outside the"):
        RoiCropper(spec, make_roi(spec, "box", center=(3.0, 0.0, 1.0)))


def test_frame_of_another_size_is_refused() -> None:
    spec = make_spec()
    cropper = RoiCropper(spec, make_roi(spec, "box"))
    with pytest.raises(CropError, match="built for 64×48"):
        cropper.crop(make_frame(make_spec(80, 60)))


def test_crop_spec_validation() -> None:
    with pytest.raises(ValueError, match="std"):
        CropSpec(std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="background_rgb"):
        CropSpec(background_rgb=(0, 0, 300))
    with pytest.raises(ValueError, match="extra"):
        CropSpec(sise=128)  # type: ignore[call-arg]


@pytest.mark.parametrize("per_frame_test", [False, True])
@pytest.mark.parametrize("kind", ["cylinder", "notched"])
def test_no_per_frame_allocation(kind: str, per_frame_test: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if per_frame_test:  # no depth runs: the float32 inequality (with the notches' terms) runs every frame
        monkeypatch.setattr(edge.crop, "RUN_CHECK_BUDGET", 0)
    spec = make_spec(640, 480)
    cropper = RoiCropper(spec, make_roi(spec, kind), CropSpec(size=256))
    assert (cropper._runs is None) == per_frame_test
    assert cropper._runs is None or (len(cropper._runs) > 2) == (kind == "notched")
    frames = [make_frame(spec, seed=s) for s in range(3)]
    first = cropper.crop(frames[0])
    buffers = (first.rgb, first.xyz, first.mask, first.color)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for f in frames:
            out = cropper.crop(f)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(a is b for a, b in zip((out.rgb, out.xyz, out.mask, out.color), buffers, strict=True))
    assert peak - base < 4096, f"crop allocated {peak - base} bytes per call (a 256² float32 plane is 262144)"


def read_bag_frame(path: Path, *, align: bool = True) -> Frame:
    """The recording's only frameset, through the project's playback source."""
    with PlaybackSource(PlaybackSourceConfig(path=path, align_to_color=align)) as source:
        return source.read(5.0)


@pytest.mark.skipif(not BAG.exists(), reason=f"real D435 recording not found at {BAG} (../shared is absent)")
def test_real_d435_bag_without_alignment_is_refused() -> None:
    frame = read_bag_frame(BAG, align=False)
    with pytest.raises(DepthNotRegisteredError, match="align_to_color=True"):
        RoiCropper(frame.spec, make_roi(frame.spec, "box"))


@pytest.mark.skipif(not BAG.exists(), reason=f"real D435 recording not found at {BAG} (../shared is absent)")
def test_real_d435_bag_box_roi_keeps_exactly_the_points_inside() -> None:
    frame = read_bag_frame(BAG)
    h, w = frame.depth.shape
    centre = frame.depth[h // 2 - 40 : h // 2 + 40, w // 2 - 40 : w // 2 + 40]
    z = float(np.median(centre[centre > 0])) * frame.spec.depth_scale
    T = np.eye(4)
    T[:3, 3] = ray_table(frame.spec.color_intrinsics)[h // 2, w // 2] * z
    roi = RoiFile(
        camera=CameraBinding.from_spec(frame.spec),
        T_camera_roi=T.tolist(),
        shape=BoxShape(extents_m=(0.4, 0.3, 0.3)),
        margin_m=0.0,
    )
    out = RoiCropper(frame.spec, roi, CropSpec(mode="full", size=256)).crop(frame)
    pts, mask = out.xyz_hwc.reshape(-1, 3), out.mask.reshape(-1)
    kept = mask & (pts[:, 2] > 0)  # kept pixels without depth are the silhouette's (keep_depthless): no point
    assert kept.sum() > 1000 and (~mask & (pts[:, 2] > 0)).sum() > 1000, "the box must split the scene"
    loose = roi.model_copy(update={"margin_m": 1e-5})
    tight = roi.model_copy(update={"margin_m": 0.0, "shape": BoxShape(extents_m=(0.4 - 2e-5, 0.3 - 2e-5, 0.3 - 2e-5))})
    assert loose.contains(pts[kept]).all(), "a kept point lies outside the box"
    assert not tight.contains(pts[~mask & (pts[:, 2] > 0)]).any(), "a dropped point lies inside the box"


@pytest.mark.parametrize("kind", ["cylinder", "notched"])
def test_silhouette_covers_the_projected_roi_and_nothing_far_from_it(kind: str) -> None:
    spec = make_spec(320, 240)
    roi = make_roi(spec, kind, center=(0.02, -0.01, 0.8))
    crop = CropSpec()
    sil = roi_silhouette(spec.color_intrinsics, roi, crop)
    full = full_res_mask(make_frame(spec), roi)  # pixels whose deprojected point is inside the ROI
    assert sil[full].all(), "every pixel with a point inside the ROI lies in its silhouette"
    vs, us = np.nonzero(sil)
    assert us.min() > 0 and vs.min() > 0 and us.max() < 319 and vs.max() < 239  # the ROI is inside the view
    assert sil.sum() < 1.3 * (us.max() - us.min() + 1) * (vs.max() - vs.min() + 1)


def test_notches_cut_only_their_sector_and_axial_range_beyond_their_radius() -> None:
    """The notched cylinder keeps exactly the plain cylinder's points minus those each notch cuts (checked in the
    ROI frame from the notch's own angles); the crop's own answers are checked against RoiFile.contains above."""
    spec = make_spec(320, 240)
    plain, notched = make_roi(spec, "cylinder"), make_roi(spec, "notched")
    xyz = xyz_from_depth(make_frame(spec).depth, spec.depth_scale, ray_table(spec.color_intrinsics)).reshape(-1, 3)
    local = (xyz - plain.pose[:3, 3]) @ plain.pose[:3, :3]
    angle = np.degrees(np.arctan2(local[:, 1], local[:, 0]))
    rho = np.hypot(local[:, 0], local[:, 1])
    cut = np.zeros(len(xyz), dtype=np.bool_)
    for n in TEST_NOTCHES:
        in_sector = (angle - n.angle_from_deg) % 360 <= (n.angle_to_deg - n.angle_from_deg) % 360
        cut |= in_sector & (local[:, 2] >= n.z_from_m) & (local[:, 2] <= n.z_to_m) & (rho > n.radius_m)
    inside_plain = plain.contains(xyz)
    assert np.count_nonzero(inside_plain & cut) > 200, "the notches must cut points of the scene"
    assert np.count_nonzero(inside_plain & ~cut) > 1000
    np.testing.assert_array_equal(notched.contains(xyz), inside_plain & ~cut)
    # the crop's window is the notched surface's projection: inside the plain cylinder's
    a, b = RoiCropper(spec, plain, CropSpec(size=64)).layout, RoiCropper(spec, notched, CropSpec(size=64)).layout
    assert a.bbox[0] <= b.bbox[0] and a.bbox[1] <= b.bbox[1] and b.bbox[2] <= a.bbox[2] and b.bbox[3] <= a.bbox[3]


@pytest.mark.parametrize("kind", ["cylinder", "box"])
def test_image_mode_crops_the_whole_image_with_or_without_an_roi(kind: str) -> None:
    """Crop mode ``image`` (BAAD): the window holds the whole image; without an ROI the mask is "has depth", with
    one it is the ROI mask (keep_depthless off: exactly ROI ∧ depth, sampled)."""
    spec = make_spec(160, 120)
    frame = make_frame(spec, seed=4)
    roi = make_roi(spec, kind, center=(-0.05, 0.03, 1.1))
    bare = RoiCropper(spec, None, CropSpec(mode="image", size=64))
    assert bare.layout == edge.crop.image_layout(160, 120, 64)
    assert (bare.layout.x0, bare.layout.y0, bare.layout.side) == (0, -20, 160)
    out = bare.crop(frame)
    np.testing.assert_array_equal(out.mask, out.xyz_hwc[..., 2] > 0)
    assert out.mask.mean() > 0.5
    checked = RoiCropper(spec, roi, CropSpec(mode="image", size=64, keep_depthless=False))
    with_roi = checked.crop(frame)
    ix, iy = checked.layout.nearest()
    inside = ((ix >= 0) & (ix < 160))[None, :] & ((iy >= 0) & (iy < 120))[:, None]
    expected = full_res_mask(frame, roi)[np.clip(iy, 0, 119)[:, None], np.clip(ix, 0, 159)[None, :]] & inside
    np.testing.assert_array_equal(with_roi.mask, expected)
    assert 0 < with_roi.mask.sum() < out.mask.sum()
    np.testing.assert_array_equal(with_roi.xyz, bare.crop(frame).xyz)  # the scene is kept, as in full mode
    with pytest.raises(edge.crop.CropError, match="needs a calibrated ROI"):
        RoiCropper(spec, None, CropSpec(mode="full", size=64))


def drum_frame(spec: StreamSpec, roi: RoiFile) -> tuple[Frame, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """A drum: every pixel whose point at the ROI's centre depth lies inside the ROI has that depth, the rest is
    background 3 m away. Returns the frame, that drum (H×W) and the margin ring: silhouette pixels that are not drum."""
    z_mm = round(float(roi.pose[2, 3]) * 1000)
    depth = np.full(spec.depth_shape, 3000, np.uint16)
    drum = full_res_mask(Frame(make_frame(spec).color, np.full_like(depth, z_mm), spec, 1, 1, 0, 0), roi)
    depth[drum] = z_mm
    ring = roi_silhouette(spec.color_intrinsics, roi, CropSpec()) & ~drum
    color = np.random.default_rng(1).integers(40, 250, size=(*spec.depth_shape, 3)).astype(np.uint8)
    return Frame(color, depth, spec, 1, 1, 0, 0), drum, ring


@pytest.mark.parametrize("kind", ["cylinder", "box"])
def test_depthless_margin_ring_is_background_and_a_hole_in_the_drum_keeps_its_colour(kind: str) -> None:
    """The enclosed rule (CropSpec.depthless_reach): the whole margin ring without depth (stereo shadow, edge dropout,
    speckle around the drum) stays background; a depthless hole inside the drum is foreground with its own colour.
    The rule before (reach None, cards written before it) made the ring foreground."""
    spec = make_spec(160, 120)
    roi = make_roi(spec, kind, center=(0.0, 0.0, 0.8)).model_copy(update={"margin_m": 0.03})
    frame, drum, ring = drum_frame(spec, roi)
    rows, cols = np.nonzero(drum)
    hole = np.zeros_like(drum)
    cy, cx = int(np.median(rows)), int(np.median(cols))
    hole[cy - 2 : cy + 3, cx - 2 : cx + 3] = True
    assert drum[hole].all() and ring.sum() > 200, "the scene must have a hole inside the drum and a wide ring"
    frame.depth[ring | hole] = 0
    crop = CropSpec(size=64, background_rgb=(0, 0, 0))
    assert crop.depthless_reach == edge.crop.DEPTHLESS_REACH, "new crops use the enclosed rule"
    cropper = RoiCropper(spec, roi, crop)
    ix, iy = cropper.layout.nearest()
    sampled = (np.clip(iy, 0, 119)[:, None], np.clip(ix, 0, 159)[None, :])
    in_ring, in_hole = ring[sampled], hole[sampled]
    assert in_ring.sum() > 50 and in_hole.any()
    out = cropper.crop(frame)
    assert not out.mask[in_ring].any(), "depthless samples in the margin ring are background"
    assert out.mask[in_hole].all(), "a depthless hole inside the drum is foreground"
    full = RoiCropper(spec, roi, crop.model_copy(update={"mode": "full"})).crop(frame)
    np.testing.assert_array_equal(out.color[in_hole], full.color[in_hole])  # its own colour, not the background's
    assert (out.color[in_hole] != 0).any()
    old = RoiCropper(spec, roi, crop.model_copy(update={"depthless_reach": None})).crop(frame)
    assert old.mask[in_ring].all() and old.mask[in_hole].all(), "the rule before: the whole silhouette"
    np.testing.assert_array_equal(old.mask & ~in_ring, out.mask)


def test_cards_written_before_the_enclosed_rule_crop_with_the_silhouette_rule() -> None:
    """A card without ``depthless_reach`` (written before it existed) feeds its model the crop it was trained on."""
    new = ModelCard("ast", "edge", 64, ("rgb", "xyz", "mask"), "foreground", (0.5,) * 3, (0.2,) * 3)
    assert new.depthless_reach == edge.crop.DEPTHLESS_REACH
    stored = new.to_dict()
    assert ModelCard.from_dict(stored) == new
    del stored["depthless_reach"]
    old = ModelCard.from_dict(stored)
    assert old.depthless_reach is None and ModelCard.from_dict(old.to_dict()) == old
    assert old.crop_spec().depthless_reach is None and new.crop_spec().depthless_reach == edge.crop.DEPTHLESS_REACH
    assert old.crop_spec("image").mode == "image" and new.crop_spec().size == 64
