"""ROI fitting: accuracy on the synthetic line, refusal paths, manual adjustment and acceptance stats."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from calibration.errors import CalibrationError, FitOutOfLimitsError, NoClusterError, TooFewPointsError
from calibration.fit import (
    CalibrationResult,
    FitSettings,
    adjust_roi,
    average_depth,
    compare_with_truth,
    parse_set,
    projection_mask,
    radial_notches,
    restat,
    roi_from_frames,
    roi_mask,
)
from calibration.preview import write_preview
from calibration.roi import BoxShape, CameraBinding, CylinderShape, RadialNotch, RoiError, RoiFile
from edge.core.frame import DrumPose, Extrinsics, Frame, Intrinsics, StreamSpec
from edge.core.geometry import ray_table

pytest.importorskip("open3d", reason="open3d is the calibrate extra (pip install -e .[calibrate])")

INTR = Intrinsics(320, 240, 300.0, 300.0, 159.5, 119.5)
SPEC = StreamSpec(
    serial="TEST123",
    color_intrinsics=INTR,
    depth_intrinsics=INTR,
    depth_to_color=Extrinsics(),
    depth_scale=0.001,
    fps=30.0,
    depth_aligned_to_color=True,
    source="test:raycast",
)


@dataclass(frozen=True)
class Box:
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]


def _hit_cylinder(rays: npt.NDArray[np.float64], drum: DrumPose) -> npt.NDArray[np.float64]:
    """Ray parameter (= depth, rays have z=1) of the first hit on an open-ended thin-walled tube; inf if none."""
    c, a = np.asarray(drum.center), np.asarray(drum.axis) / np.linalg.norm(drum.axis)
    dp = rays - np.outer(rays @ a, a)
    cp = -c - (-c @ a) * a
    qa, qb, qc = np.sum(dp * dp, axis=1), 2 * dp @ cp, cp @ cp - drum.radius_m**2
    disc = qb * qb - 4 * qa * qc
    out = np.full(len(rays), np.inf)
    root = np.sqrt(np.where(disc > 0, disc, 0))
    for t in ((-qb - root) / (2 * qa), (-qb + root) / (2 * qa)):
        s = (t[:, None] * rays - c) @ a
        ok = (disc > 0) & (t > 0) & (np.abs(s) <= drum.length_m / 2) & np.isinf(out)
        out[ok] = t[ok]
    return out


def _hit_box(rays: npt.NDArray[np.float64], box: Box) -> npt.NDArray[np.float64]:
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (np.asarray(box.lo) / rays).astype(np.float64)
        t2 = (np.asarray(box.hi) / rays).astype(np.float64)
    tn = np.nanmax(np.minimum(t1, t2), axis=1)
    tf = np.nanmin(np.maximum(t1, t2), axis=1)
    return np.where((tn <= tf) & (tn > 0), tn, np.inf)


def render(
    drum: DrumPose, boxes: list[Box], n: int, seed: int, *, floor_y: float = 0.45, wall_z: float = 1.8
) -> tuple[list[Frame], npt.NDArray[np.bool_]]:
    """Ray-cast frames of a hollow drum, a floor, a back wall and boxes with 1.5 mm depth noise and dropouts."""
    rays = ray_table(INTR).reshape(-1, 3).astype(np.float64)
    with np.errstate(divide="ignore"):
        floor = np.where(rays[:, 1] > 0, floor_y / rays[:, 1], np.inf)
    hits = [floor, np.full(len(rays), wall_z), _hit_cylinder(rays, drum)] + [_hit_box(rays, b) for b in boxes]
    t = np.min(np.stack(hits), axis=0)
    drum_mask = (hits[2] <= t).reshape(INTR.height, INTR.width)
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        z = t + rng.normal(0, 0.0015, t.shape)
        z[rng.random(t.shape) < 0.05] = 0
        depth = np.clip(np.round(z * 1000), 0, 65535).astype(np.uint16).reshape(INTR.height, INTR.width)
        color = np.full((INTR.height, INTR.width, 3), 90, dtype=np.uint8)
        frames.append(Frame(color, depth, SPEC, i, i, i * 33_000_000, i * 33_000_000, i))
    return frames, drum_mask


DRUM = DrumPose(center=(0.03, 0.10, 1.0), axis=(0.96, 0.0, 0.28), radius_m=0.25, length_m=0.35)
CLUTTER = [Box((-0.6, 0.25, 1.3), (-0.35, 0.45, 1.5)), Box((0.40, 0.30, 0.7), (0.55, 0.45, 0.85))]
N_FRAMES = 5


@functools.cache
def raycast() -> tuple[list[Frame], npt.NDArray[np.bool_]]:
    return render(DRUM, CLUTTER, N_FRAMES, seed=1)


@functools.cache
def raycast_result() -> CalibrationResult:
    # a bare cylinder (no mounted parts), so a tight 10 mm margin: the projection bounds below are sized for it
    return roi_from_frames(raycast()[0], FitSettings(margin_m=0.01))


@functools.cache
def synthetic(seed: int, clutter: str) -> list[Frame]:
    """Frames of ONE good part (frames_per_part = N) so the true pose is fixed while averaging."""
    from drivers.synthetic import SyntheticSource, SyntheticSourceConfig

    cfg = SyntheticSourceConfig(
        seed=seed, n_frames=N_FRAMES, clutter=clutter, defect_rate=0.0, frames_per_part=N_FRAMES
    )
    with SyntheticSource(cfg) as src:
        return list(src.frames())


@functools.cache
def calibrated(seed: int, clutter: str) -> CalibrationResult:
    return roi_from_frames(synthetic(seed, clutter), FitSettings())


@pytest.mark.parametrize("clutter", ["low", "high"])
@pytest.mark.parametrize("seed", [0, 1, 7])  # seed 7, high clutter: a larger clutter cluster is tried first
def test_synthetic_line_accuracy(seed: int, clutter: str) -> None:
    """Targets: ROI-mask IoU ≥ 0.95 (see compare_with_truth), axis ≤ 2°, radius ≤ 5 mm against the true drum."""
    frames = synthetic(seed, clutter)
    truth = frames[-1].truth
    assert truth is not None and truth.drum is not None and truth.drum_mask is not None
    assert all(f.truth is not None and f.truth.drum == truth.drum for f in frames), "frames must show one part"
    cmp = compare_with_truth(calibrated(seed, clutter), truth.drum, truth.drum_mask)
    print(f"seed={seed} clutter={clutter} {cmp}")
    assert cmp.iou >= 0.95, cmp
    assert cmp.axis_error_deg <= 2.0, cmp
    assert cmp.radius_error_m <= 0.005, cmp


def test_raycast_scene_fit_and_stats() -> None:
    result = raycast_result()
    cmp = compare_with_truth(result, DRUM, raycast()[1])
    assert cmp.axis_error_deg <= 1.0 and cmp.radius_error_m <= 0.002 and cmp.iou >= 0.97, cmp
    assert abs(result.roi.shape.length_m - DRUM.length_m) < 0.01  # type: ignore[union-attr]
    stats = result.stats
    assert stats.n_frames == N_FRAMES
    assert stats.points_inside == int(np.count_nonzero(roi_mask(result.roi, result.scene)))
    assert 0.0005 < stats.fit_residual_m < 0.003  # 1.5 mm per-frame noise, median of 5 frames
    assert 0.9 < stats.fill_rate <= 1.0  # the drum fills most of its projected outline
    assert result.roi.pose[:3, 2] @ np.asarray(DRUM.axis) > 0.99  # ROI z is the drum axis


def test_average_depth_is_median_of_valid_values() -> None:
    frames, _ = raycast()
    stack = [f.depth.copy() for f in frames]
    for d, v in zip(stack, (0, 1000, 1010, 0, 1020), strict=True):
        d[0, 0] = v  # three valid samples → median 1010
        d[0, 1] = v if v in (0, 1000) else 0  # one valid sample of five → not trusted
    frames2 = [Frame(c.color, d, SPEC, 0, 0, 0, 0) for c, d in zip(frames, stack, strict=True)]
    avg = average_depth(frames2)
    assert avg[0, 0] == pytest.approx(1.010)
    assert avg[0, 1] == 0


def test_empty_depth_is_refused_as_too_few_points() -> None:
    frames, _ = raycast()
    empty = [Frame(f.color, np.zeros_like(f.depth), SPEC, 0, 0, 0, 0) for f in frames]
    with pytest.raises(TooFewPointsError, match="carry depth") as err:
        roi_from_frames(empty, FitSettings())
    assert "move the camera" in str(err.value)
    with pytest.raises(TooFewPointsError, match="no frames"):
        roi_from_frames([], FitSettings())


def test_hint_far_from_everything_is_refused() -> None:
    frames, _ = raycast()
    with pytest.raises(NoClusterError, match="of the hint") as err:
        roi_from_frames(frames, FitSettings(hint=(3.0, -2.0, 0.5)))
    assert "colour camera frame" in str(err.value)


def test_no_cluster_near_centre_suggests_the_hint() -> None:
    frames, _ = raycast()
    with pytest.raises(NoClusterError, match="near the image centre") as err:
        roi_from_frames(frames, FitSettings(centre_window=0.01))
    assert "--hint" in str(err.value)


def test_absurd_radius_limits_are_refused() -> None:
    frames, _ = raycast()
    with pytest.raises(FitOutOfLimitsError, match=r"radius in 0\.70–0\.90 m fits .* has radius 0\.2[45]\d m"):
        roi_from_frames(frames, FitSettings(radius_range_m=(0.7, 0.9)))
    with pytest.raises(FitOutOfLimitsError, match="length"):
        roi_from_frames(frames, FitSettings(length_range_m=(0.5, 1.0)))


def test_candidates_must_be_drum_like() -> None:
    """Every central candidate is tried, largest first; the refusal names the first one's problem."""
    with pytest.raises(NoClusterError, match=r"not drum-like: only \d+% of its points near the fitted cylinder") as err:
        roi_from_frames(synthetic(0, "low"), FitSettings(min_support=0.99))  # the bracket is not on the cylinder
    assert "candidate cluster(s) failed too" in str(err.value) and "--hint" in str(err.value)
    with pytest.raises(FitOutOfLimitsError, match=r"and 2 smaller candidate cluster\(s\) failed too"):
        roi_from_frames(raycast()[0], FitSettings(centre_window=1.0, radius_range_m=(0.7, 0.9)))


def test_unregistered_or_mixed_streams_are_refused() -> None:
    frames, _ = raycast()
    raw = dataclasses.replace(SPEC, depth_aligned_to_color=False)
    with pytest.raises(CalibrationError, match="aligned"):
        roi_from_frames([Frame(f.color, f.depth, raw, 0, 0, 0, 0) for f in frames], FitSettings())
    other = dataclasses.replace(SPEC, serial="OTHER")
    with pytest.raises(CalibrationError, match="different streams"):
        roi_from_frames([frames[0], Frame(frames[1].color, frames[1].depth, other, 0, 0, 0, 0)], FitSettings())


def test_hint_selects_a_box_cluster() -> None:
    frames, _ = raycast()
    box = CLUTTER[0]
    centre = tuple((np.asarray(box.lo) + np.asarray(box.hi)) / 2)
    result = roi_from_frames(frames, FitSettings(shape="box", hint=centre))  # type: ignore[arg-type]
    assert isinstance(result.roi.shape, BoxShape)
    expected = sorted(np.asarray(box.hi) - np.asarray(box.lo))
    np.testing.assert_allclose(sorted(result.roi.shape.extents_m), expected, atol=0.02)
    np.testing.assert_allclose(result.roi.pose[:3, 3], centre, atol=0.02)
    assert result.stats.fit_residual_m < 0.005


def test_set_and_grow_adjust_the_roi() -> None:
    result = raycast_result()
    roi = result.roi
    moved = adjust_roi(roi, {"center": "0.1,0.2,1.5", "radius": "0.3", "length": "0.4"})
    np.testing.assert_allclose(moved.pose[:3, 3], [0.1, 0.2, 1.5])
    np.testing.assert_allclose(moved.pose[:3, :3], roi.pose[:3, :3])
    assert moved.shape == CylinderShape(radius_m=0.3, length_m=0.4)
    assert moved.acceptance is None  # stats of the old ROI would lie
    turned = adjust_roi(roi, {"axis": "0,0,-2"})
    np.testing.assert_allclose(turned.pose[:3, 2], [0, 0, 1])  # sign made canonical
    np.testing.assert_allclose(turned.pose[:3, :3] @ turned.pose[:3, :3].T, np.eye(3), atol=1e-12)
    grown = adjust_roi(roi, {}, grow_m=0.02)
    assert grown.margin_m == pytest.approx(roi.margin_m + 0.02)  # --grow adds to the margin
    assert grown.shape == roi.shape
    assert adjust_roi(roi, {"margin": "0.03"}, grow_m=0.01).margin_m == pytest.approx(0.04)
    assert grown.version != roi.version
    T = roi.pose
    just_outside = T[:3, 3] + T[:3, 0] * (roi.shape.radius_m + roi.margin_m + 0.015)  # type: ignore[union-attr]
    assert not roi.contains(just_outside[None])[0] and grown.contains(just_outside[None])[0]
    restated = restat(result, grown)
    assert restated.stats.points_inside >= result.stats.points_inside
    assert restated.stats.fill_rate != result.stats.fill_rate  # recomputed on the grown outline
    assert restated.stats.fit_residual_m == pytest.approx(result.stats.fit_residual_m)


def test_adjusting_a_notched_roi_keeps_the_notches_clearance() -> None:
    roi = raycast_result().roi
    assert isinstance(roi.shape, CylinderShape)
    r = roi.shape.radius_m
    notch = RadialNotch(angle_from_deg=-100, angle_to_deg=-80, z_from_m=-0.1, z_to_m=0.1, radius_m=r + 0.005)
    notched = roi.model_copy(update={"shape": roi.shape.model_copy(update={"notches": [notch]})})
    wider = adjust_roi(notched, {"radius": f"{r + 0.01}"}, grow_m=0.002)
    assert isinstance(wider.shape, CylinderShape) and len(wider.shape.notches) == 1
    assert wider.shape.notches[0].radius_m == pytest.approx(r + 0.017)  # 5 mm over the new radius, grown 2 mm
    assert wider.shape.notches[0].angle_from_deg == -100 and wider.shape.notches[0].z_to_m == 0.1


@pytest.mark.parametrize(
    ("sets", "grow", "match"),
    [
        ({"extents": "1,1,1"}, 0.0, "applies to a box"),
        ({"radius": "abc"}, 0.0, "needs 1 comma-separated"),
        ({"center": "1,2"}, 0.0, "needs 3 comma-separated"),
        ({"axis": "0,0,0"}, 0.0, "no direction"),
        ({"radius": "-0.1"}, 0.0, "shape.cylinder.radius_m"),
        ({}, 0.6, "margin_m"),
    ],
)
def test_bad_adjustments_are_refused(sets: dict[str, str], grow: float, match: str) -> None:
    roi = raycast_result().roi
    with pytest.raises(RoiError, match=match):
        adjust_roi(roi, sets, grow)


def test_parse_set_names_known_keys() -> None:
    assert parse_set("radius = 0.3") == ("radius", "0.3")
    with pytest.raises(RoiError, match=r"cannot --set 'diameter=0\.5'") as err:
        parse_set("diameter=0.5")
    assert "center, axis, radius" in str(err.value)
    with pytest.raises(RoiError):
        parse_set("radius")


def test_projection_mask_covers_the_drum_pixels() -> None:
    result = raycast_result()
    proj = projection_mask(result.roi, INTR)
    inside = roi_mask(result.roi, result.scene)
    assert np.count_nonzero(inside & ~proj) < 0.005 * np.count_nonzero(inside)
    assert np.count_nonzero(proj) < 1.3 * np.count_nonzero(inside)


def test_preview_png_is_written_and_shows_the_roi(tmp_path: Path) -> None:
    result = calibrated(0, "low")
    out = tmp_path / "sub" / "roi.png"
    write_preview(result, out)
    img = cv2.imread(str(out))
    h, w = result.scene.color.shape[:2]
    assert img.shape == (h, w + h, 3)  # overlay, then a square top view
    left, right = img[:, :w].astype(int), img[:, w:].astype(int)
    tinted = (left[..., 1] - np.maximum(left[..., 0], left[..., 2])) > 40
    assert np.count_nonzero(tinted) > 0.5 * result.stats.points_inside
    fit_red = (right[..., 2] > 200) & (right[..., 1] < 60) & (right[..., 0] < 60)
    assert np.count_nonzero(fit_red) > 100  # the fitted outline is drawn in the top view
    assert len(np.unique(right.reshape(-1, 3), axis=0)) > 5
    with pytest.raises(CalibrationError, match="could not write"):
        write_preview(result, tmp_path / "roi.unknown-extension")


def test_radial_notches_cut_a_support_and_keep_mounted_parts() -> None:
    """A shell (r 0.25 m), a cradle face tangent to it along the middle that runs on beyond the 30 mm margin, and a
    tab wholly inside the margin band: one notch over the face (5 mm over the shell), the tab keeps the margin."""
    r, m = 0.25, 0.03
    g = np.mgrid[0:360:0.5, -0.15:0.15:0.003].reshape(2, -1)
    shell = np.stack([r * np.cos(np.radians(g[0])), r * np.sin(np.radians(g[0])), g[1]], axis=1)
    f = np.mgrid[0.0:0.2:0.002, -0.1:0.1:0.003].reshape(2, -1)
    face = np.stack([f[0], np.full(f.shape[1], -r), f[1]], axis=1)  # the plane y = −r, touching at −90°
    t = np.mgrid[0.256:0.276:0.002, -0.01:0.01:0.002, 0.12:0.14:0.002].reshape(3, -1)
    tab = t.T  # around +x, at the drum's end
    settings = FitSettings()
    shape = CylinderShape(radius_m=r, length_m=0.3)
    notches = radial_notches(np.concatenate([shell, face, tab]), np.eye(4), shape, m, settings)
    assert len(notches) == 1, notches
    n = notches[0]
    assert n.radius_m == pytest.approx(r + settings.notch_tolerance_m)
    # the face beyond 5 mm of the shell: −78.6° … −63.3° (x 0.05 … 0.126 m), ±2°
    assert -81 <= n.angle_from_deg <= -80 and -62 <= n.angle_to_deg <= -61
    assert n.z_from_m == pytest.approx(-0.11, abs=0.004) and n.z_to_m == pytest.approx(0.11, abs=0.004)
    roi = RoiFile(
        camera=CameraBinding.from_spec(raycast()[0][0].spec),
        T_camera_roi=np.eye(4).tolist(),
        shape=shape.model_copy(update={"notches": notches}),
        margin_m=m,
    )
    assert roi.contains(shell).all() and roi.contains(tab).all()
    rho = np.hypot(face[:, 0], face[:, 1])
    assert not roi.contains(face[rho > r + 0.006]).any()
    assert roi.contains(face[rho < r + 0.004]).all()
    assert radial_notches(np.concatenate([shell, tab]), np.eye(4), shape, m, settings) == []
