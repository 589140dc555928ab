"""The synthetic drum line: determinism, exact defect masks, true poses, sensor artefacts, the FrameSource contract."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pydantic import ValidationError
from scipy.ndimage import binary_dilation, binary_erosion

from drivers.base import FrameBuffers
from drivers.errors import EndOfStreamError, FrameTimeoutError, SourceError
from drivers.synthetic import SyntheticSource, SyntheticSourceConfig, plan, render_arrays, render_frame
from edge.core.frame import DEFECT_TYPES, DefectType
from edge.core.geometry import project_points, ray_table, xyz_from_depth


def cfg(**kw: object) -> SyntheticSourceConfig:
    base: dict[str, object] = {"seed": 5, "width": 160, "height": 120, "clutter": 1.0}
    base.update(kw)
    return SyntheticSourceConfig(**base)  # type: ignore[arg-type]


def changed(a: tuple[np.ndarray, np.ndarray, object], b: tuple[np.ndarray, np.ndarray, object]) -> np.ndarray:
    return (a[0] != b[0]).any(axis=2) | (a[1] != b[1])


def test_same_seed_gives_identical_frames_in_any_read_order() -> None:
    c = cfg()
    with SyntheticSource(c) as src:
        streamed = [src.read(1.0) for _ in range(4)]
    for i in (3, 1, 0, 2):
        f = render_frame(c, i)
        assert np.array_equal(f.color, streamed[i].color) and np.array_equal(f.depth, streamed[i].depth)
        assert f.truth is not None and streamed[i].truth is not None
        assert np.array_equal(f.truth.drum_mask, streamed[i].truth.drum_mask)  # type: ignore[arg-type]
        assert f.truth.drum == streamed[i].truth.drum and f.truth.defect_type == streamed[i].truth.defect_type
    other = render_frame(cfg(seed=6), 3)
    assert not np.array_equal(other.color, streamed[3].color)
    assert not np.array_equal(other.depth, streamed[3].depth)


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_defect_mask_is_exactly_the_pixels_the_defect_changed(kind: DefectType) -> None:
    c = cfg(width=320, height=240, seed=2)
    with_defect = render_arrays(c, 4, defect=kind)
    without = render_arrays(c, 4, defect=None)
    truth = with_defect[2]
    mask, drum = truth.defect_mask, truth.drum_mask
    assert mask is not None and drum is not None
    assert truth.label == "defect" and truth.defect_type == kind and without[2].label == "good"
    assert without[2].defect_mask is not None and not without[2].defect_mask.any()
    diff = changed(with_defect, without)
    assert mask.sum() >= 10, f"{kind}: no visible defect pixels"
    assert not (mask & ~drum).any(), "defect pixels outside the drum"
    assert mask.sum() < 0.08 * drum.sum(), f"{kind}: defect not subtle ({mask.sum()} of {drum.sum()} drum pixels)"
    # changed pixels lie on the mask (sensor holes at depth edges may spill one pixel beyond it) ...
    stray = diff & ~binary_dilation(mask, iterations=1)
    assert stray.sum() <= max(3, 0.01 * mask.sum()), f"{kind}: {stray.sum()} changed pixels off the mask"
    # ... and the mask is mostly changed pixels (a dent's rim moves the surface by less than a grey level)
    assert (diff & mask).sum() >= 0.75 * mask.sum(), f"{kind}: {(diff & mask).sum()} of {mask.sum()} changed"


def test_true_pose_lies_on_the_drum_pixels() -> None:
    c = cfg(width=320, height=240, seed=3, clutter=0.25)
    f = render_frame(c, 0, defect=None)
    assert f.truth is not None and f.truth.drum is not None and f.truth.drum_mask is not None
    pose, drum_mask = f.truth.drum, f.truth.drum_mask
    center, axis = np.asarray(pose.center), np.asarray(pose.axis)
    assert abs(np.linalg.norm(axis) - 1.0) < 1e-9
    e1 = np.cross(axis, [0.0, 0.0, 1.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(axis, e1)
    th, s = np.meshgrid(np.linspace(0, 2 * np.pi, 72), np.linspace(-0.45, 0.45, 15) * pose.length_m)
    normals = np.cos(th.ravel())[:, None] * e1 + np.sin(th.ravel())[:, None] * e2
    pts = center + s.ravel()[:, None] * axis + pose.radius_m * normals
    facing = np.einsum("ij,ij->i", normals, -pts / np.linalg.norm(pts, axis=1, keepdims=True)) > 0.3
    uv = np.rint(project_points(pts[facing], f.spec.color_intrinsics)).astype(int)
    inside = drum_mask[uv[:, 1], uv[:, 0]]
    assert inside.mean() > 0.9, f"only {inside.mean():.2f} of the visible shell projects onto the drum mask"
    # and the drum pixels' depth lies on that cylinder (shell and inner wall) or within it (caps)
    xyz = xyz_from_depth(f.depth, f.spec.depth_scale, ray_table(f.spec.color_intrinsics))[drum_mask & (f.depth > 0)]
    rel = xyz - center
    dist = np.linalg.norm(rel - np.outer(rel @ axis, axis), axis=1)
    assert np.percentile(dist, 95) < pose.radius_m + 0.015
    assert abs(np.median(dist) - pose.radius_m) < 0.02
    assert np.abs(rel @ axis).max() < pose.length_m / 2 + 0.05


def test_depth_noise_grows_with_distance() -> None:
    c = cfg(width=320, height=240, clutter=0.0, frames_per_part=4, defect_rate=0.0)
    a, b = render_arrays(c, 0), render_arrays(c, 1)  # same part, static scene: only sensor noise differs
    ok = (a[1] > 0) & (b[1] > 0)
    z = a[1][ok] * 0.001
    d = (a[1][ok].astype(np.float64) - b[1][ok]) * 0.001
    near, far = (z > 1.0) & (z < 1.3), (z > 2.2) & (z < 2.8)
    assert near.sum() > 1000 and far.sum() > 1000
    sd_near, sd_far = d[near].std() / np.sqrt(2), d[far].std() / np.sqrt(2)
    assert sd_far > 2.5 * sd_near
    assert 0.6 < sd_far / (0.002 * np.median(z[far]) ** 2) < 1.4  # σ_z = 0.002·z², as documented


def test_clutter_changes_the_background_but_not_an_empty_line() -> None:
    busy = cfg(width=320, height=240, frames_per_part=20, defect_rate=0.0)
    quiet = cfg(width=320, height=240, frames_per_part=20, defect_rate=0.0, clutter="none")
    for c, lo, hi in ((busy, 0.05, 1.0), (quiet, 0.0, 0.002)):
        a, b = render_arrays(c, 0), render_arrays(c, 15)
        assert a[2].drum == b[2].drum  # same part, same pose
        bg = ~(a[2].drum_mask | b[2].drum_mask)  # type: ignore[operator]
        moved = (np.abs(a[0].astype(int) - b[0]).max(axis=2) > 25) & bg
        assert lo <= moved.sum() / bg.sum() <= hi, f"clutter {c.clutter}: {moved.mean():.4f} of the background moved"


def test_depth_has_holes_at_edges_specular_spots_and_speckle() -> None:
    c = cfg(width=320, height=240)
    _, depth, truth = render_arrays(c, 0, defect=None)
    holes, drum = depth == 0, truth.drum_mask
    assert drum is not None
    assert 0.005 < holes.mean() < 0.2
    outline = binary_dilation(drum, iterations=2) & ~binary_erosion(drum, iterations=2)
    far = ~binary_dilation(drum, iterations=10)
    assert holes[outline].mean() > 4 * holes[far].mean()  # stereo shadow and dropouts at depth edges
    assert holes[far].mean() > 0.001  # speckle (and clutter edges) everywhere
    assert holes[drum & ~outline].mean() > 0.01  # perforation edges and specular spots on the steel
    assert np.array_equal(render_arrays(c, 0, defect=None)[1] == 0, holes)


def test_line_timing_parts_and_gaps() -> None:
    c = cfg(frames_per_part=2, gap_frames=1, defect_rate=1.0)
    plans = [plan(c, i) for i in range(9)]
    assert [p.part for p in plans] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [p.drum is None for p in plans] == [False, False, True] * 3
    assert plans[0].drum == plans[1].drum and plans[3].drum != plans[0].drum
    f = render_frame(c, 2)
    assert f.truth is not None and f.truth.label == "empty" and f.truth.drum is None
    assert f.truth.drum_mask is not None and not f.truth.drum_mask.any()
    rates = [sum(plan(cfg(defect_rate=r), i).drum.defect is not None for i in range(40)) for r in (0.0, 0.5, 1.0)]
    assert rates[0] == 0 and 8 < rates[1] < 32 and rates[2] == 40


def test_frame_source_contract() -> None:
    c = cfg(n_frames=3, seed=7, fps=15.0)
    src = SyntheticSource(c)
    assert not src.ready
    with pytest.raises(SourceError, match="not open"):
        src.read(1.0)
    with pytest.raises(SourceError):
        _ = src.spec
    spec = src.open()
    assert src.ready and spec.serial == "SYN-7" and spec.depth_aligned_to_color
    assert spec.depth_intrinsics == spec.color_intrinsics and spec.depth_to_color.is_identity()
    assert spec.color_shape == (120, 160, 3) and spec.depth_scale == 0.001
    assert spec.color_intrinsics.fx == pytest.approx(615.0 / 4)
    out = FrameBuffers(np.zeros(spec.color_shape, np.uint8), np.zeros(spec.depth_shape, np.uint16))
    f0 = src.read(1.0, out=out)
    assert f0.color is out.color and f0.depth is out.depth
    assert np.array_equal(out.color, render_frame(c, 0).color) and out.depth.any()
    with pytest.raises(SourceError, match="do not match"):
        src.read(1.0, out=FrameBuffers(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.uint16)))
    rest = list(src.frames())
    assert [f.sequence for f in rest] == [1, 2]
    assert rest[1].device_ts_ns == round(2 / 15.0 * 1e9) and rest[1].color_frame_number == 2
    with pytest.raises(EndOfStreamError):
        src.read(1.0)
    src.close()
    src.close()
    assert not src.ready


def test_realtime_paces_reads_and_times_out_when_the_frame_is_not_due() -> None:
    src = SyntheticSource(cfg(width=64, height=48, fps=5.0, realtime=True))
    src.open()
    t0 = time.perf_counter()
    assert src.read(1.0).sequence == 0  # frame 0 is due at open
    with pytest.raises(FrameTimeoutError, match="timeout"):
        src.read(0.01)  # frame 1 is due 200 ms after open
    assert src.read(1.0).sequence == 1
    assert time.perf_counter() - t0 >= 0.2 - 0.002
    src.close()


def test_config_validation() -> None:
    assert cfg(clutter="high").clutter == 1.0 and cfg(clutter="low").clutter == 0.25
    with pytest.raises(ValidationError, match="clutter"):
        cfg(clutter="medium")
    with pytest.raises(ValidationError):
        cfg(defect_rate=1.5)
    with pytest.raises(ValidationError):
        cfg(colour="red")
