"""Fit the drum's 3D ROI from a few RGB-D frames: average depth, drop planes, cluster, then fit a cylinder (RANSAC
on point normals with the radius range as a prior, robust refinement, length from the shell) or a box.

The library takes plain :class:`Frame` objects so it works with any source (camera, recording, synthetic).
Geometry is in metres in the colour camera frame; open3d is imported lazily (it is the ``calibrate`` extra).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import Field, ValidationError, field_validator

from calibration.errors import CalibrationError, FitOutOfLimitsError, NoClusterError, TooFewPointsError
from calibration.roi import (
    MAX_NOTCHES,
    AcceptanceStats,
    BoxShape,
    CameraBinding,
    CylinderShape,
    RadialNotch,
    RoiError,
    RoiFile,
    notch_cuts,
)
from edge.core.config import EdgeModel
from edge.core.frame import DrumPose, Frame, Intrinsics, StreamSpec
from edge.core.geometry import project_points, ray_table, transform_points

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]

UNLIMITED_RADIUS_M = (0.01, 10.0)
MIN_RANSAC_SCORE = 50  # voxels on a hypothesis' surface with radial normals before it counts as a cylinder
COVER_SHARE = 0.3  # an axial slice belongs to the drum when its points cover this share of the median slice
SETTABLE_KEYS = ("center", "axis", "radius", "length", "extents", "margin")


class FitSettings(EdgeModel):
    """How the drum is found and fitted; defaults suit a washing drum 0.4–2 m in front of the camera."""

    type: Literal["fit"] = "fit"
    shape: Literal["cylinder", "box"] = Field("cylinder", description="ROI shape to fit around the drum cluster")
    hint: tuple[float, float, float] | None = Field(
        None, description="a point on or near the drum (m, colour camera frame); selects the nearest cluster"
    )
    hint_pixel: tuple[int, int] | None = Field(
        None, description="a colour-image pixel (u, v) on the drum; its depth gives the hint (overrides hint)"
    )
    hint_radius_m: float = Field(0.25, gt=0, description="the chosen cluster must come this close to the hint")
    # 30 mm: the fit finds the shell, and mounted components (the drum's bracket stands 24 mm proud) must stay inside
    # the ROI, or a missing or misaligned part is painted background (docs/calibration.md has the measurements).
    margin_m: float = Field(0.03, ge=0, le=0.5, description="ROI margin grown on every side of the fitted shape")
    support_gap_m: float = Field(
        0.012,
        ge=0,
        description="an end of the drum rests on something (rollers, an end stop) when points lie farther than this "
        "beyond it, within the margin and the margin-grown radius; that end gets no margin (the drum's own end "
        "parts, bolt heads on the flange, stand at most ~10 mm beyond the fitted end)",
    )
    support_share: float = Field(
        0.005,
        gt=0,
        le=1,
        description="how many such points make an end supported, as a share of the drum's shell points",
    )
    support_notches: bool = Field(
        True,
        description="support-aware radial margin: where a support (cradle, rail, roller) touches the drum inside the "
        "margin, the ROI's outer radius drops to notch_tolerance_m over the shell in that sector and axial range",
    )
    notch_tolerance_m: float = Field(
        0.005, ge=0, le=0.1, description="outer radius of a notch over the fitted shell (out-of-roundness, noise)"
    )
    notch_reach_m: float = Field(0.03, gt=0, description="a support is seen continuing this far beyond the margin band")
    notch_touch_m: float = Field(
        0.015, gt=0, description="a support comes at least this close to the fitted shell (it touches the drum)"
    )
    notch_link_m: float = Field(0.012, gt=0, description="DBSCAN radius linking a support's points")
    notch_min_mounted: int = Field(
        10, ge=1, description="points a cluster inside the band needs to count as a part mounted on the drum"
    )
    notch_pad_deg: float = Field(2.0, ge=0, le=30, description="a notch's sector is grown by this on each side")
    notch_pad_m: float = Field(0.01, ge=0, description="a notch's axial range is grown by this at each end")
    min_range_m: float = Field(0.15, ge=0, description="points nearer than this are dropped (sensor minimum)")
    max_range_m: float = Field(2.5, gt=0, description="points farther than this are dropped as background")
    voxel_m: float = Field(0.005, gt=0, description="voxel size of the cloud used for planes, clusters and normals")
    min_points: int = Field(2000, ge=10, description="fewest valid in-range depth pixels worth fitting")
    plane_distance_m: float = Field(0.008, gt=0, description="RANSAC inlier distance for floor/rail/wall planes")
    plane_min_share: float = Field(
        0.1, gt=0, le=1, description="a plane is removed only if it holds this share of the whole in-range cloud"
    )
    plane_flatness: float = Field(
        0.8, gt=0, le=1, description="inliers at half the distance / inliers at the distance; lower means curved"
    )
    max_planes: int = Field(6, ge=0, description="most planes removed")
    cluster_eps_m: float = Field(0.02, gt=0, description="DBSCAN neighbourhood radius")
    cluster_min_points: int = Field(10, ge=1, description="DBSCAN core-point neighbour count")
    min_cluster_voxels: int = Field(300, ge=1, description="smallest cluster (in voxels) considered a drum")
    centre_window: float = Field(
        0.5,
        gt=0,
        le=1,
        description="without a hint, the cluster centroid must project within this share of the "
        "image half-diagonal from the image centre",
    )
    min_support: float = Field(
        0.6,
        gt=0,
        le=1,
        description="share of the points within 40 mm of the fitted cylinder (along its length, not facing along "
        "its axis) that must lie on it with a radial normal for the cluster to be the drum",
    )
    max_candidates: int = Field(3, ge=1, description="central clusters tried, largest first, until one fits")
    radius_range_m: tuple[float, float] = Field((0.10, 0.60), description="sane cylinder radius bounds")
    length_range_m: tuple[float, float] = Field((0.05, 1.50), description="sane cylinder length / box edge bounds")
    ransac_iterations: int = Field(
        600, ge=10, description="cylinder hypotheses (from pairs of point normals) tried per candidate cluster"
    )
    seed: int = Field(0, description="seed of open3d's and the cylinder RANSAC so a calibration is reproducible")
    tool_version: str = Field("", description="recorded in the ROI file")

    @field_validator("radius_range_m", "length_range_m")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] < v[1]:
            raise ValueError(f"needs 0 < low < high, got {v[0]}, {v[1]}")
        return v


@dataclass(frozen=True, slots=True)
class Scene:
    """The averaged view the ROI is fitted on: median depth as an organised cloud, plus one colour image."""

    spec: StreamSpec
    color: npt.NDArray[np.uint8]
    xyz: F32  # H×W×3 metres, colour camera frame; (0, 0, 0) where invalid
    valid: Mask  # H×W, depth present in at least half the frames and within range
    n_frames: int


@dataclass(frozen=True, slots=True)
class CalibrationResult:
    """The fitted ROI (acceptance stats inside), and the clouds the preview draws."""

    roi: RoiFile
    scene: Scene
    cloud: F64  # voxel-downsampled in-range scene points (top view background)
    drum_points: F64  # full-resolution points attributed to the drum (residual, top view highlight)
    shell: DrumPose | None = None  # the fitted shell (cylinder fit): the ROI frame sits off its centre by the
    # difference of the two end margins, and its length holds them (see end_margins)

    @property
    def stats(self) -> AcceptanceStats:
        assert self.roi.acceptance is not None  # roi_from_frames always fills it
        return self.roi.acceptance


@dataclass(frozen=True, slots=True)
class Candidate:
    """A point cluster the fit considered, and why it was not taken as the drum."""

    points: F64  # full-resolution points of the cluster (camera frame)
    reason: str


@dataclass(frozen=True, slots=True)
class Diagnostics:
    """What a failed calibration saw: attached to the CalibrationError it raised, drawn by the failure preview."""

    scene: Scene
    candidates: list[Candidate]
    hint: tuple[float, float, float] | None


@dataclass(frozen=True, slots=True)
class TruthComparison:
    """Errors of a calibration against a known drum (synthetic frames)."""

    iou: float
    axis_error_deg: float
    radius_error_m: float
    center_error_m: float
    length_error_m: float = float("nan")  # signed: fitted − true shell length (cylinder ROI only)
    true_roi_iou: float = float("nan")  # the same IoU for the TRUE shell cylinder grown by the same margin


def average_depth(frames: Sequence[Frame]) -> F32:
    """Per-pixel median of the valid (non-zero) depth values in metres; 0 where under half the frames had depth.

    Requiring half the frames suppresses flying pixels that flicker in and out at edges and perforations.
    """
    stack = np.stack([f.depth for f in frames]).astype(np.float32)
    count = np.count_nonzero(stack, axis=0)
    stack[stack == 0] = np.inf  # invalid values sort last
    stack.sort(axis=0)
    k = np.maximum(count, 1)
    lo = np.take_along_axis(stack, ((k - 1) // 2)[None], axis=0)[0]
    hi = np.take_along_axis(stack, (k // 2)[None], axis=0)[0]
    med = (lo + hi) * np.float32(0.5 * frames[0].spec.depth_scale)
    return np.where(count * 2 >= len(frames), med, np.float32(0)).astype(np.float32)


def build_scene(frames: Sequence[Frame], settings: FitSettings) -> Scene:
    """Check the frames share one registered stream and average them into an organised cloud."""
    if not frames:
        raise TooFewPointsError("no frames to calibrate on", "check the source delivers frames (--frames ≥ 1)")
    spec = frames[0].spec
    if not spec.depth_aligned_to_color:
        raise CalibrationError(
            "calibration needs depth aligned to the colour image",
            "open the source with depth aligned to colour (playback/realsense align_to_color=True)",
        )
    if any(f.spec != spec for f in frames):
        raise CalibrationError("calibration frames come from different streams", "calibrate on one camera's frames")
    depth_m = average_depth(frames)
    xyz = ray_table(spec.color_intrinsics) * depth_m[..., None]  # the median keeps sub-unit precision
    valid = (depth_m >= settings.min_range_m) & (depth_m <= settings.max_range_m)
    color = frames[len(frames) // 2].color.copy()
    return Scene(spec=spec, color=color, xyz=xyz, valid=valid, n_frames=len(frames))


def voxel_reduce(points: F64, voxel_m: float) -> tuple[F64, npt.NDArray[np.intp]]:
    """Voxel centroids and, per input point, the index of its voxel (so voxel labels map back to points)."""
    keys = np.floor(points / voxel_m).astype(np.int64)
    keys -= keys.min(axis=0)
    span = keys.max(axis=0) + 1
    flat = (keys[:, 0] * span[1] + keys[:, 1]) * span[2] + keys[:, 2]
    _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    sums = np.zeros((len(counts), 3))
    np.add.at(sums, inverse, points)
    return sums / counts[:, None], inverse


def _o3d() -> Any:
    """open3d, imported on first use: it is the optional ``calibrate`` extra and slow to import."""
    import open3d  # noqa: PLC0415

    return open3d


def _o3d_cloud(points: F64) -> Any:
    o3d = _o3d()
    pcd = o3d.geometry.PointCloud()
    pcd.points = o3d.utility.Vector3dVector(np.ascontiguousarray(points, dtype=np.float64))
    return pcd


def remove_planes(points: F64, voxels: F64, settings: FitSettings) -> Mask:
    """Mask of full-resolution points NOT on a dominant plane (floor, rail top, walls).

    A plane is taken from the voxel cloud while it holds ``plane_min_share`` of the whole cloud (so, once floor
    and walls are gone, a clutter face or the drum does not qualify) and is flat: on a truly flat surface halving
    the inlier distance keeps most inliers, on a curved drum strip it keeps about 70 %.
    """
    o3d = _o3d()
    o3d.utility.random.seed(settings.seed)
    keep_vox = np.ones(len(voxels), dtype=bool)
    keep = np.ones(len(points), dtype=bool)
    d = settings.plane_distance_m
    for _ in range(settings.max_planes):
        idx = np.flatnonzero(keep_vox)
        if len(idx) < 100:
            break
        sample = idx[:: max(1, len(idx) // 20000)]  # RANSAC on an even subsample; inliers counted on all voxels
        model, _ = _o3d_cloud(voxels[sample]).segment_plane(d, 3, 400)
        n, off = np.asarray(model[:3]), float(model[3])
        dist_vox = np.abs(voxels[idx] @ n + off)
        n_in = int(np.count_nonzero(dist_vox < d))
        if n_in < settings.plane_min_share * len(voxels):
            break
        if np.count_nonzero(dist_vox < d / 2) < settings.plane_flatness * n_in:
            break
        keep_vox[idx[dist_vox < d]] = False
        keep &= np.abs(points @ n + off) >= d
    return keep


def cluster_voxels(voxels: F64, settings: FitSettings) -> npt.NDArray[np.int32]:
    """DBSCAN labels of the voxel cloud (−1 is noise)."""
    if len(voxels) == 0:
        return np.zeros(0, dtype=np.int32)
    labels = _o3d_cloud(voxels).cluster_dbscan(settings.cluster_eps_m, settings.cluster_min_points)
    return np.asarray(labels, dtype=np.int32)


def candidate_clusters(
    voxels: F64, labels: npt.NDArray[np.int32], n_points: npt.NDArray[np.intp], intr: Intrinsics, settings: FitSettings
) -> list[int]:
    """Cluster labels that may be the drum, best first: the one nearest the hint, else those whose centroid
    projects near the image centre, largest (in pixels, ``n_points`` per label) first."""
    ids, sizes = np.unique(labels[labels >= 0], return_counts=True)
    big = ids[sizes >= settings.min_cluster_voxels]
    if settings.hint is not None:
        hint = np.asarray(settings.hint)
        dists = [float(np.min(np.linalg.norm(voxels[labels == i] - hint, axis=1))) for i in big]
        if not dists or min(dists) > settings.hint_radius_m:
            nearest = f"{min(dists):.2f} m" if dists else "no cluster at all"
            raise NoClusterError(
                f"no point cluster within {settings.hint_radius_m:.2f} m of the hint {tuple(settings.hint)} "
                f"(nearest: {nearest})",
                "check the hint is in metres in the colour camera frame (x right, y down, z forward) and on the drum",
            )
        return [int(big[int(np.argmin(dists))])]
    centre = np.array([intr.ppx, intr.ppy])
    reach = settings.centre_window * 0.5 * math.hypot(intr.width, intr.height)
    central = [
        int(i)
        for i in big
        if np.linalg.norm(project_points(voxels[labels == i].mean(axis=0, keepdims=True), intr)[0] - centre) <= reach
    ]
    if not central:
        raise NoClusterError(
            f"no plausible drum cluster near the image centre ({len(big)} clusters of ≥ "
            f"{settings.min_cluster_voxels} voxels after removing planes)",
            "centre the drum in view or pass --hint-pixel u,v (a pixel on the drum in the colour image)",
        )
    return sorted(central, key=lambda i: -int(n_points[i]))


def _basis(axis: F64) -> tuple[F64, F64]:
    """Two unit vectors completing ``axis`` to an orthonormal basis."""
    ref = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(axis, ref)
    u /= np.linalg.norm(u)
    return u, np.cross(axis, u)


def frame_from_axis(center: F64, axis: F64) -> F64:
    """4×4 pose with z along ``axis`` (sign made canonical) and x as close to the camera's x as possible."""
    z = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    if z[int(np.argmax(np.abs(z)))] < 0:
        z = -z
    ref = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.95 else np.array([0.0, 1.0, 0.0])
    x = ref - (ref @ z) * z
    x /= np.linalg.norm(x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    T[:3, 3] = center
    return T


def cylinder_distance(points: F64, center: F64, axis: F64, radius: float) -> F64:
    """Signed distance of points to an infinite cylinder's surface (positive outside)."""
    rel = points - center
    radial = rel - np.outer(rel @ axis, axis)
    distance: F64 = np.linalg.norm(radial, axis=1) - radius
    return distance


def _perturbed_distance(points: F64, center: F64, axis: F64, radius: float, p: F64) -> F64:
    """Cylinder distances after tilting the axis by p[0:2], shifting the centre by p[2:4] and the radius by p[4]."""
    u, v = _basis(axis)
    a = axis + p[0] * u + p[1] * v
    return cylinder_distance(points, center + p[2] * u + p[3] * v, a / np.linalg.norm(a), radius + p[4])


def refine_cylinder(points: F64, center: F64, axis: F64, radius: float, iters: int = 20) -> tuple[F64, F64, float]:
    """Robust Gauss–Newton on (axis tilt ×2, centre shift ×2, radius) with Tukey weights (scale from the MAD)."""
    eps = 1e-6
    for _ in range(iters):
        r0 = _perturbed_distance(points, center, axis, radius, np.zeros(5))
        scale = max(1.4826 * float(np.median(np.abs(r0 - np.median(r0)))), 1e-4)
        sw = np.clip(1 - (r0 / (4.685 * scale)) ** 2, 0, None)  # sqrt of the Tukey weight
        J = np.stack(
            [(_perturbed_distance(points, center, axis, radius, eps * np.eye(5)[k]) - r0) / eps for k in range(5)],
            axis=1,
        )
        step, *_ = np.linalg.lstsq(J * sw[:, None], -r0 * sw, rcond=None)
        u, v = _basis(axis)
        a = axis + step[0] * u + step[1] * v
        axis, center, radius = a / np.linalg.norm(a), center + step[2] * u + step[3] * v, radius + float(step[4])
        if np.max(np.abs(step)) < 1e-7:
            break
    return center, axis, radius


@dataclass(frozen=True, slots=True)
class CylinderFit:
    """A fitted finite cylinder (centre mid-length on the axis) and the points that support it."""

    center: F64
    axis: F64
    radius: float
    length: float
    inliers: F64
    support: float  # share of the seed cluster's points on the fitted surface


def voxel_normals(voxels: F64, voxel_m: float) -> F64:
    """Unit surface normals of a voxel cloud (PCA over a 4-voxel neighbourhood; sign arbitrary)."""
    o3d = _o3d()
    pcd = _o3d_cloud(voxels)
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=4 * voxel_m, max_nn=30))
    normals: F64 = np.asarray(pcd.normals)
    return normals


def ransac_cylinder(voxels: F64, normals: F64, settings: FitSettings) -> tuple[F64, F64, float, int]:
    """Cylinder hypotheses from pairs of points with normals, scored by points on the surface whose normal is radial.

    On a cylinder every normal line meets the axis: the axis is along n₁ × n₂, a point on it is where the two
    normal lines pass closest, the radius the distance to it (both must agree, and lie in ``radius_range_m``).
    A hypothesis scores the voxels within 6 mm of its surface whose normal is within 30° of radial, so a support,
    a neighbour, clutter or the back wall fused with the drum into one cluster do not pull it, and the drum's
    outer shell and inner wall (seen through the open end or perforations) count alike.
    """
    rng = np.random.default_rng(settings.seed)
    rlo, rhi = settings.radius_range_m
    n = len(voxels)
    score_idx = rng.choice(n, size=min(n, 6000), replace=False)
    sp, sn = voxels[score_idx], normals[score_idx]
    k = settings.ransac_iterations
    i, j = rng.integers(0, n, k), rng.integers(0, n, k)
    p1, p2, n1, n2 = voxels[i], voxels[j], normals[i], normals[j]
    axis = np.cross(n1, n2)
    norm = np.linalg.norm(axis, axis=1)
    b = np.einsum("ij,ij->i", n1, n2)
    w0 = p1 - p2
    d, e = np.einsum("ij,ij->i", n1, w0), np.einsum("ij,ij->i", n2, w0)
    denom = np.maximum(1 - b * b, 1e-9)
    s, t = (b * e - d) / denom, (e - b * d) / denom
    r1, r2 = np.abs(s), np.abs(t)
    ok = (norm > 0.3) & (np.abs(r1 - r2) < 0.02) & (r1 >= rlo) & (r1 <= rhi) & (np.linalg.norm(w0, axis=1) < 2 * rhi)
    best = (np.zeros(3), np.array([0.0, 0.0, 1.0]), 0.0, -1)
    hint = None if settings.hint is None else np.asarray(settings.hint)
    for h in np.flatnonzero(ok):
        a = axis[h] / norm[h]
        c = (p1[h] + s[h] * n1[h] + p2[h] + t[h] * n2[h]) / 2
        r = float(r1[h] + r2[h]) / 2
        if hint is not None and float(np.linalg.norm((hint - c) - ((hint - c) @ a) * a)) > r + 0.03:
            continue  # a hint on a drum lies on or inside that drum's cylinder, never outside it
        rel = sp - c
        radial = rel - np.outer(rel @ a, a)
        rho = np.linalg.norm(radial, axis=1)
        cos = np.abs(np.einsum("ij,ij->i", sn, radial)) / np.maximum(rho, 1e-9)
        score = int(np.count_nonzero((np.abs(rho - r) < 0.006) & (cos > 0.866)))
        if score > best[3]:
            best = (c, a, r, score)
    if best[3] < MIN_RANSAC_SCORE:
        best_free = ""
        if settings.radius_range_m != UNLIMITED_RADIUS_M:  # say what radius the cluster does have
            wide = settings.model_copy(update={"radius_range_m": UNLIMITED_RADIUS_M, "hint": None})
            with contextlib.suppress(FitOutOfLimitsError):
                free = ransac_cylinder(voxels, normals, wide)[2]
                best_free = f" (without the limit the best cylinder has radius {free:.3f} m)"
        raise FitOutOfLimitsError(
            f"no cylinder with a radius in {rlo:.2f}–{rhi:.2f} m fits the cluster{best_free}",
            "pass --hint-pixel u,v on the drum's curved surface, check --radius-range, or use --shape box",
        )
    return best


def axial_extent(
    points: F64, center: F64, axis: F64, bin_m: float = 0.005, max_gap_m: float = 0.03
) -> tuple[float, float]:
    """The drum's extent along its axis from its surface points: the longest run of axial slices where the points
    cover a good part of the circumference (≥ 30 % of the median covered slice), bridging gaps up to
    ``max_gap_m``. Stray
    surface points (a roller or cradle face crossing the cylinder beyond the drum's end) cover a narrow angle only.
    """
    u, v = _basis(axis)
    rel = points - center
    t = rel @ axis
    ang = np.floor((np.arctan2(rel @ v, rel @ u) + np.pi) / (2 * np.pi) * 72).astype(np.int64) % 72
    lo = float(np.min(t))
    slot = np.floor((t - lo) / bin_m).astype(np.int64)
    cover = np.zeros(int(slot.max()) + 1, dtype=np.int64)
    np.add.at(cover, np.unique(slot * 72 + ang) // 72, 1)
    good = cover >= max(2, COVER_SHARE * float(np.median(cover[cover > 0])))
    idx = np.flatnonzero(good)
    # bridge gaps up to 30 mm: a flange or rim hides the shell just below an open end, whose flat face is still seen
    breaks = np.flatnonzero(np.diff(idx) > max_gap_m / bin_m) if len(idx) else np.zeros(0, np.int64)
    starts, ends = np.r_[idx[:1], idx[breaks + 1]], np.r_[idx[breaks], idx[-1:]]
    k = int(np.argmax(ends - starts))
    best = (int(starts[k]), int(ends[k]) + 1)
    t_lo, t_hi = lo + best[0] * bin_m, lo + best[1] * bin_m
    inside = t[(t >= t_lo) & (t <= t_hi)]
    return float(np.min(inside)), float(np.max(inside))


def _end_face(t: F64, rel: F64, axis: F64, end: float, *, side: float, reach_m: float = 0.035) -> float:
    """Move a shell end out to the drum's end face when one is seen: a ring of points facing along the axis just
    beyond the end (an open end's rim, the shell hidden under a flange) that covers ≥ 90° of the circumference in
    one 6 mm slice (the median depth's noise). A support's faces beyond the end (roller tops, an end stop) cover a
    narrow angle or lie outside the ring."""
    beyond = side * (t - end)
    sel = (beyond > -0.005) & (beyond < reach_m)
    if np.count_nonzero(sel) < 20:
        return end
    u, v = _basis(axis)
    ang = np.floor((np.arctan2(rel[sel] @ v, rel[sel] @ u) + np.pi) / (2 * np.pi) * 72).astype(np.int64) % 72
    slot = np.floor(t[sel] / 0.006).astype(np.int64)
    best_slot, best_cover = 0, 0
    for k in np.unique(slot):
        cover = len(np.unique(ang[slot == k]))
        if cover > best_cover:
            best_slot, best_cover = int(k), cover
    if best_cover < 18:
        return end
    plane = float(np.median(t[sel][slot == best_slot]))
    return min(end, plane) if side < 0 else max(end, plane)


def fit_cylinder(cluster: F64, candidates: F64, settings: FitSettings) -> CylinderFit:
    """Robust cylinder on one candidate cluster: RANSAC on point normals with the radius range as a prior, robust
    refinement, then re-gathering surface points from every in-range point (plane removal may have taken some of
    the drum, e.g. the flat ring of an open end) in shrinking bands, and the length from the axial coverage."""
    voxel_m = settings.voxel_m
    seeds, _ = voxel_reduce(cluster, voxel_m)
    center, axis, radius, _score = ransac_cylinder(seeds, voxel_normals(seeds, voxel_m), settings)
    near = np.abs(cylinder_distance(seeds, center, axis, radius)) < 0.01
    center, axis, radius = refine_cylinder(seeds[near], center, axis, radius)
    t_seed = (seeds[near] - center) @ axis
    t_lo, t_hi = float(np.min(t_seed)) - 0.05, float(np.max(t_seed)) + 0.05
    for band in (0.02, 0.01, 0.006):
        t = (candidates - center) @ axis
        sel = np.flatnonzero(
            (np.abs(cylinder_distance(candidates, center, axis, radius)) < band) & (t > t_lo) & (t < t_hi)
        )
        if len(sel) < 50:
            raise NoClusterError(
                "the chosen cluster is not a cylinder (too few points near the fitted surface)",
                "pass --hint-pixel u,v on the drum's curved surface, or use --shape box",
            )
        sel = sel[:: max(1, len(sel) // 20000)]  # an even subsample bounds the cost; 20k points fix 5 parameters
        center, axis, radius = refine_cylinder(candidates[sel], center, axis, radius, iters=10)
    res = cylinder_distance(candidates, center, axis, radius)
    t = (candidates - center) @ axis
    window = (t > t_lo) & (t < t_hi)
    sigma = 1.4826 * float(np.median(np.abs(res[window & (np.abs(res) < 0.006)])))
    band = max(3 * sigma, 0.004)
    # normals of everything within 40 mm of the surface: a roller, cradle or end stop crossing the cylinder there
    # has its own (non-radial) normal; the shell's are radial, the end faces' axial
    shell_zone = np.flatnonzero(window & (np.abs(res) < 0.04))
    zone_vox, zone_of = voxel_reduce(candidates[shell_zone], voxel_m)
    normals = voxel_normals(zone_vox, voxel_m)[zone_of]
    rel = candidates[shell_zone] - center
    radial = rel - np.outer(rel @ axis, axis)
    rho = np.linalg.norm(radial, axis=1)
    cos_radial = np.abs(np.einsum("ij,ij->i", normals, radial)) / np.maximum(rho, 1e-9)
    cos_axial = np.abs(normals @ axis)
    on_shell = (np.abs(res[shell_zone]) < band) & (cos_radial > 0.8)
    if np.count_nonzero(on_shell) < MIN_RANSAC_SCORE:
        raise NoClusterError(
            f"the chosen cluster is not a cylinder (only {np.count_nonzero(on_shell)} points on the fitted surface "
            "face away from its axis)",
            "pass --hint-pixel u,v on the drum's curved surface, or use --shape box",
        )
    lo, hi = axial_extent(candidates[shell_zone[on_shell]], center, axis)
    tz = t[shell_zone]
    face = (cos_axial > 0.9) & (rho > radius - 0.06) & (rho < radius + 0.02)
    lo = _end_face(tz[face], rel[face], axis, lo, side=-1.0)
    hi = _end_face(tz[face], rel[face], axis, hi, side=1.0)
    inl = np.zeros(len(candidates), dtype=bool)
    inl[shell_zone[on_shell]] = True
    inl &= (t >= lo) & (t <= hi)
    # support: of the points within 40 mm of the surface along the fitted length that do not face along the axis
    # (end faces, the back wall), the share on the surface with a radial normal. A drum scores high even with its
    # lifters, beads and a support touching it; a box, a wall corner or a heap of clutter scores low.
    zone = (tz >= lo) & (tz <= hi) & (cos_axial < 0.9)
    support = float(np.mean(on_shell[zone])) if np.any(zone) else 0.0
    return CylinderFit(center + axis * (lo + hi) / 2, axis, radius, float(hi - lo), candidates[inl], support)


def fit_box(points: F64, voxel_m: float) -> tuple[F64, tuple[float, float, float]]:
    """Minimal oriented box of the drum cluster, edges sorted so the ROI z axis is the longest."""
    voxels, _ = voxel_reduce(points, voxel_m)
    obb = _o3d_cloud(voxels).get_minimal_oriented_bounding_box(robust=True)
    R, ext = np.asarray(obb.R), np.asarray(obb.extent)
    order = np.argsort(ext)[[1, 0, 2]]  # z longest; x, y the other two (right-handed fix below)
    R, ext = R[:, order], ext[order]
    if np.linalg.det(R) < 0:
        R[:, 0] = -R[:, 0]
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, np.asarray(obb.center)
    return T, (float(ext[0]), float(ext[1]), float(ext[2]))


def surface_distance(roi: RoiFile, points: F64) -> F64:
    """Unsigned distance of camera-frame points to the ROI shape's surface (margin excluded).

    For a cylinder this is the distance to its curved surface: drum points are seen on that surface.
    """
    T = roi.pose
    local = (np.asarray(points, dtype=np.float64) - T[:3, 3]) @ T[:3, :3]
    if isinstance(roi.shape, CylinderShape):
        return np.abs(np.hypot(local[:, 0], local[:, 1]) - roi.shape.radius_m)
    q = np.abs(local) - np.asarray(roi.shape.extents_m) / 2
    outside = np.linalg.norm(np.maximum(q, 0), axis=1)
    distance: F64 = np.where(np.all(q <= 0, axis=1), -np.max(q, axis=1), outside)
    return distance


def shape_outline(roi: RoiFile, n: int = 72) -> F64:
    """Camera-frame points on the boundary of the margin-grown shape (end circles, or box corners)."""
    m = roi.margin_m
    if isinstance(roi.shape, CylinderShape):
        r, h = roi.shape.radius_m + m, roi.shape.length_m / 2 + m
        ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
        ring = np.stack([r * np.cos(ang), r * np.sin(ang), np.zeros(n)], axis=1)
        local = np.concatenate([ring - np.array([0, 0, h]), ring + np.array([0, 0, h])])
    else:
        half = np.asarray(roi.shape.extents_m) / 2 + m
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
        local = signs * half
    return transform_points(roi.pose, local)


def projection_mask(roi: RoiFile, intr: Intrinsics) -> Mask:
    """Image pixels the ROI volume projects onto: both shapes are convex, so it is the hull of the outline."""
    pts = shape_outline(roi)
    pts = pts[pts[:, 2] > 0.01]
    mask = np.zeros((intr.height, intr.width), dtype=np.uint8)
    if len(pts) >= 3:
        hull = cv2.convexHull(np.round(project_points(pts, intr)).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 1)
    return mask.astype(bool)


def roi_mask(roi: RoiFile, scene: Scene) -> Mask:
    """Pixels with depth whose deprojected point lies inside the ROI (margin included)."""
    return scene.valid & roi.contains(scene.xyz)


def acceptance_stats(roi: RoiFile, scene: Scene, drum_points: F64) -> AcceptanceStats:
    """Points inside, fill rate of the projected ROI, RMS distance of the drum points to the fitted surface."""
    proj = projection_mask(roi, scene.spec.color_intrinsics)
    n_proj = int(np.count_nonzero(proj))
    fill = float(np.count_nonzero(proj & scene.valid)) / n_proj if n_proj else 0.0
    dist = surface_distance(roi, drum_points)
    return AcceptanceStats(
        n_frames=scene.n_frames,
        points_inside=int(np.count_nonzero(roi_mask(roi, scene))),
        fill_rate=fill,
        fit_residual_m=float(np.sqrt(np.mean(dist**2))) if len(dist) else 0.0,
    )


def check_limits(kind: Literal["cylinder", "box"], dims: Sequence[float], settings: FitSettings) -> None:
    """Refuse fits whose size no washing drum has (usually a wall, the rail, or clutter was fitted).

    ``dims`` is (radius, length) for a cylinder and the three edge lengths for a box.
    """
    rlo, rhi = settings.radius_range_m
    llo, lhi = settings.length_range_m
    remedy = "check the drum is in view and unobstructed, pass --hint-pixel u,v on the drum, or widen the limits"
    if kind == "cylinder":
        radius, length = dims
        if not rlo <= radius <= rhi:
            raise FitOutOfLimitsError(
                f"fitted radius {radius:.3f} m is outside {rlo:.2f}–{rhi:.2f} m", remedy + " (--radius-range)"
            )
        if not llo <= length <= lhi:
            raise FitOutOfLimitsError(
                f"fitted length {length:.3f} m is outside {llo:.2f}–{lhi:.2f} m", remedy + " (--length-range)"
            )
        return
    lo, hi = min(2 * rlo, llo), max(2 * rhi, lhi)
    if not (lo <= max(dims) <= hi and min(dims) > 0):
        raise FitOutOfLimitsError(
            f"fitted box edges {', '.join(f'{d:.3f}' for d in dims)} m: the longest must lie in {lo:.2f}–{hi:.2f} m",
            remedy + " (--radius-range / --length-range)",
        )


def _in_range_points(scene: Scene, settings: FitSettings) -> F64:
    pts = scene.xyz[scene.valid].astype(np.float64)
    if len(pts) < settings.min_points:
        raise TooFewPointsError(
            f"only {len(pts)} pixels carry depth within {settings.min_range_m:.2f}–{settings.max_range_m:.2f} m "
            f"(need {settings.min_points})",
            "move the camera to 0.4–2 m from the drum, check the depth stream and lighting, or raise --max-range",
        )
    return pts


def end_margins(points: F64, cyl: CylinderFit, settings: FitSettings) -> tuple[float, float]:
    """The margins of the drum's two ends (the −axis end, the +axis end): the ROI margin, or none where the drum
    rests on something at that end.

    An end is supported when the scene holds points more than ``support_gap_m`` and at most the margin beyond it,
    within the margin-grown radius, at least ``support_share`` of the drum's shell points: the rollers under a
    standing drum's back, an end stop. The drum's own parts beyond an end (bolt heads on a flange) stand closer
    than the gap, and a free end has nothing there at all (measured in docs/calibration.md).
    """
    m = settings.margin_m
    rel = points - cyl.center
    t = rel @ cyl.axis
    rho = np.linalg.norm(rel - np.outer(t, cyl.axis), axis=1)
    near = rho <= cyl.radius + m
    need = settings.support_share * len(cyl.inliers)
    lo_hi = []
    for side in (-1.0, 1.0):
        beyond = side * t - cyl.length / 2
        n = int(np.count_nonzero(near & (beyond > settings.support_gap_m) & (beyond <= m)))
        lo_hi.append(0.0 if n >= need else m)
    # the ROI cylinder keeps a positive length: a drum shorter than twice the margin keeps some at its ends
    short = max(0.0, 2 * m - cyl.length - sum(lo_hi) + 0.001) / 2
    return lo_hi[0] + short, lo_hi[1] + short


def radial_notches(
    points: F64, T: F64, shape: CylinderShape, margin: float, settings: FitSettings
) -> list[RadialNotch]:
    """Where a support touches the drum inside the radial margin: notches that bring the ROI's outer radius down to
    ``notch_tolerance_m`` over the fitted shell there (ROI frame ``T``, shell radius ``shape.radius_m``).

    The scene's points beyond that tolerance, within the margin and up to ``notch_reach_m`` beyond it, along the
    ROI's length, are clustered (DBSCAN, ``notch_link_m``). A cluster that reaches beyond the margin band and comes
    within ``notch_touch_m`` of the shell is a support (a cradle's faces down to the pallet, a rail, a roller): its
    points in the band give a notch's sector (±``notch_pad_deg``) and axial range (±``notch_pad_m``). A cluster
    wholly inside the band is mounted on the drum (flange, bolts, tab, bracket) and keeps the full margin: a notch
    whose region holds such points keeps its radius beyond them, and is dropped when that leaves nothing to cut.
    """
    r, tol = shape.radius_m, settings.notch_tolerance_m
    outer, half = r + margin, shape.length_m / 2 + margin
    local = (points - T[:3, 3]) @ T[:3, :3]
    rho = np.hypot(local[:, 0], local[:, 1])
    near = (rho > r + tol) & (rho <= outer + settings.notch_reach_m) & (np.abs(local[:, 2]) <= half)
    local, rho = local[near], rho[near]
    if len(local) == 0:
        return []
    voxels, voxel_of = voxel_reduce(local, settings.voxel_m)
    labels = np.asarray(_o3d_cloud(voxels).cluster_dbscan(settings.notch_link_m, 1), dtype=np.int32)[voxel_of]
    band = rho <= outer
    supports, mounted = [], np.zeros(len(local), dtype=np.bool_)
    for label in np.unique(labels[labels >= 0]):
        member = labels == label
        if not np.any(member & band):
            continue
        if np.any(member & ~band) and float(rho[member].min()) <= r + settings.notch_touch_m:
            supports.append(member & band)
        elif np.count_nonzero(member) >= settings.notch_min_mounted:
            mounted |= member & band
    angle = np.degrees(np.arctan2(local[:, 1], local[:, 0]))
    notches: list[RadialNotch] = []
    for member in sorted(supports, key=lambda m: -int(np.count_nonzero(m))):  # the largest first, MAX_NOTCHES kept
        a = angle[member]
        mid = math.degrees(math.atan2(np.sin(np.radians(a)).mean(), np.cos(np.radians(a)).mean()))
        off = (a - mid + 180) % 360 - 180
        lo, hi = float(off.min()) - settings.notch_pad_deg, float(off.max()) + settings.notch_pad_deg
        if not 0 < hi - lo <= 180:
            continue  # a support wrapped half round the drum is not a notch; it keeps the full margin
        z = local[member, 2]
        notch = RadialNotch(
            angle_from_deg=round(mid + lo, 3),
            angle_to_deg=round(mid + hi, 3),
            z_from_m=round(float(z.min()) - settings.notch_pad_m, 4),
            z_to_m=round(float(z.max()) + settings.notch_pad_m, 4),
            radius_m=round(r + tol, 5),
        )
        held = mounted & notch_cuts(notch, local, rho * rho)
        if held.any():  # a mounted part in the notch's region: the notch stops short of it
            notch = notch.model_copy(update={"radius_m": round(float(rho[held].max()) + 0.001, 5)})
        if notch.radius_m < outer:
            notches.append(notch)
    return notches[:MAX_NOTCHES]


def cylinder_roi_frame(shell: DrumPose, ends: tuple[float, float], margin: float) -> tuple[F64, CylinderShape]:
    """Pose and shape of a cylinder ROI that, grown by ``margin`` on every side, spans the shell with these end
    margins (at its −axis end, at its +axis end): the ROI file and the crop keep one margin and a shape symmetric
    about its frame's origin, so unequal ends move the origin along the axis and shorten the cylinder."""
    axis = np.asarray(shell.axis, dtype=np.float64)
    center = np.asarray(shell.center, dtype=np.float64) + axis * (ends[1] - ends[0]) / 2
    length = shell.length_m + ends[0] + ends[1] - 2 * margin
    return frame_from_axis(center, axis), CylinderShape(radius_m=shell.radius_m, length_m=length)


def roi_end_margins(roi: RoiFile, shell: DrumPose) -> tuple[float, float]:
    """The margins a cylinder ROI leaves beyond a shell's two ends (−axis end, +axis end of ``shell.axis``)."""
    assert isinstance(roi.shape, CylinderShape)
    axis = np.asarray(shell.axis, dtype=np.float64)
    t0 = float((roi.pose[:3, 3] - np.asarray(shell.center)) @ axis)
    half = roi.shape.length_m / 2 + roi.margin_m
    return -(t0 - half) - shell.length_m / 2, t0 + half - shell.length_m / 2


def fit_shape(
    cluster: F64, scene_points: F64, settings: FitSettings
) -> tuple[F64, CylinderShape | BoxShape, F64, DrumPose | None]:
    """Pose, shape, supporting points and (cylinder) fitted shell for one candidate cluster; refuses clusters that
    are not drum-like."""
    if settings.shape == "box":
        T, extents = fit_box(cluster, settings.voxel_m)
        check_limits("box", extents, settings)
        return T, BoxShape(extents_m=extents), cluster, None
    cyl = fit_cylinder(cluster, scene_points, settings)
    check_limits("cylinder", (cyl.radius, cyl.length), settings)
    if cyl.support < settings.min_support:
        raise NoClusterError(
            f"the central cluster is not drum-like: only {cyl.support:.0%} of its points near the fitted cylinder "
            f"(radius {cyl.radius:.3f} m, length {cyl.length:.3f} m) lie on it with a radial normal",
            "pass --hint-pixel u,v (a pixel on the drum) or --hint x,y,z, or clear the view",
        )
    shell = DrumPose(
        center=(float(cyl.center[0]), float(cyl.center[1]), float(cyl.center[2])),
        axis=(float(cyl.axis[0]), float(cyl.axis[1]), float(cyl.axis[2])),
        radius_m=cyl.radius,
        length_m=cyl.length,
    )
    T, shape = cylinder_roi_frame(shell, end_margins(scene_points, cyl, settings), settings.margin_m)
    if settings.support_notches:
        notches = radial_notches(scene_points, T, shape, settings.margin_m, settings)
        shape = shape.model_copy(update={"notches": notches})
    return T, shape, cyl.inliers, shell


def hint_from_pixel(scene: Scene, pixel: tuple[int, int], window: int = 4) -> tuple[float, float, float]:
    """The 3D point under a colour-image pixel: the median of the valid points in a small window around it."""
    u, v = pixel
    intr = scene.spec.color_intrinsics
    if not (0 <= u < intr.width and 0 <= v < intr.height):
        raise CalibrationError(
            f"--hint-pixel {u},{v} lies outside the {intr.width}×{intr.height} image",
            "give the column,row of a pixel on the drum in the colour image (0-based, from the top left)",
        )
    sl = np.s_[max(v - window, 0) : v + window + 1, max(u - window, 0) : u + window + 1]
    pts = scene.xyz[sl][scene.valid[sl]]
    if len(pts) == 0:
        raise NoClusterError(
            f"no depth within {window} px of --hint-pixel {u},{v}",
            "pick a pixel on the drum's shell that has depth (not a hole, a specular spot or the open end)",
        )
    p = np.median(pts, axis=0)
    return float(p[0]), float(p[1]), float(p[2])


def roi_from_frames(frames: Sequence[Frame], settings: FitSettings) -> CalibrationResult:
    """Fit the drum ROI on a few frames of one part; raises a CalibrationError saying what to try on failure
    (with :class:`Diagnostics` attached once the scene is built, so a preview can show every candidate)."""
    scene = build_scene(frames, settings)
    candidates: list[Candidate] = []
    try:
        if settings.hint_pixel is not None:
            settings = settings.model_copy(update={"hint": hint_from_pixel(scene, settings.hint_pixel)})
        return _fit_scene(scene, settings, candidates)
    except CalibrationError as e:
        e.diagnostics = Diagnostics(scene, candidates, settings.hint)
        raise


def _fit_scene(scene: Scene, settings: FitSettings, candidates: list[Candidate]) -> CalibrationResult:
    """Planes out, clusters, candidates tried in order; ``candidates`` collects every rejected one and why."""
    pts = _in_range_points(scene, settings)
    voxels, _ = voxel_reduce(pts, settings.voxel_m)
    keep = remove_planes(pts, voxels, settings)
    objects = pts[keep]
    if len(objects) < settings.min_cluster_voxels:
        raise NoClusterError(
            f"only {len(objects)} points are left after removing floor and wall planes",
            "point the camera at the drum from 0.4–2 m, or pass --hint-pixel u,v (a pixel on the drum)",
        )
    obj_voxels, obj_voxel_of = voxel_reduce(objects, settings.voxel_m)
    labels = cluster_voxels(obj_voxels, settings)
    point_labels = labels[obj_voxel_of]
    n_points = np.bincount(point_labels[point_labels >= 0], minlength=max(int(labels.max()) + 1, 0))
    ids, sizes = np.unique(labels[labels >= 0], return_counts=True)
    big = [int(i) for i in ids[sizes >= settings.min_cluster_voxels]]
    try:
        order = candidate_clusters(obj_voxels, labels, n_points, scene.spec.color_intrinsics, settings)
    except NoClusterError:
        candidates += [Candidate(objects[point_labels == i], "not near the image centre / the hint") for i in big]
        raise
    tried = order[: settings.max_candidates]
    errors: list[CalibrationError] = []
    for label in tried:
        try:
            T, shape, drum, shell = fit_shape(objects[point_labels == label], pts, settings)
            break
        except (FitOutOfLimitsError, NoClusterError) as e:
            errors.append(e)
            candidates.append(Candidate(objects[point_labels == label], e.problem))
    else:
        why = "not tried (off-centre, smaller, or not the hinted cluster)"
        candidates += [Candidate(objects[point_labels == i], why) for i in big if i not in tried]
        first = errors[0]
        others = f" (and {len(errors) - 1} smaller candidate cluster(s) failed too)" if len(errors) > 1 else ""
        raise type(first)(first.problem + others, first.remedy)
    roi = RoiFile(
        camera=CameraBinding.from_spec(scene.spec),
        T_camera_roi=T.tolist(),
        shape=shape,
        margin_m=settings.margin_m,
        tool_version=settings.tool_version,
    )
    roi = roi.model_copy(update={"acceptance": acceptance_stats(roi, scene, drum)})
    return CalibrationResult(roi=roi, scene=scene, cloud=voxels, drum_points=drum, shell=shell)


def restat(result: CalibrationResult, roi: RoiFile) -> CalibrationResult:
    """The same calibration with an adjusted ROI, its acceptance stats recomputed on the same frames."""
    roi = roi.model_copy(update={"acceptance": acceptance_stats(roi, result.scene, result.drum_points)})
    # the fitted shell no longer describes an adjusted ROI: truth comparisons then measure the ROI frame itself
    return CalibrationResult(roi=roi, scene=result.scene, cloud=result.cloud, drum_points=result.drum_points)


def _floats(key: str, text: str, n: int) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) != n or not all(math.isfinite(v) for v in vals):
        raise RoiError(
            f"--set {key}={text} needs {n} comma-separated number(s)", f"e.g. --set {key}=" + ",".join(["0.1"] * n)
        )
    return vals


def parse_set(item: str) -> tuple[str, str]:
    """Split one ``--set key=value`` item, refusing unknown keys with the list of known ones."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or key not in SETTABLE_KEYS:
        raise RoiError(f"cannot --set {item!r}", f"use key=value with key one of {', '.join(SETTABLE_KEYS)}")
    return key, value.strip()


def adjust_roi(roi: RoiFile, sets: Mapping[str, str], grow_m: float = 0.0) -> RoiFile:
    """Numeric manual adjustment: ``center``/``axis`` move the ROI frame, ``radius``/``length`` (cylinder) or
    ``extents`` (box) resize it, ``margin`` replaces the margin, and ``grow_m`` is ADDED to the margin (so it
    grows every side of either shape alike). A cylinder's radial notches move with the frame, keep their clearance
    over a changed radius and grow by ``grow_m`` too. Acceptance stats are cleared: they described the old ROI."""
    data = roi.model_dump()
    T = roi.pose.copy()
    for key, text in sets.items():
        if key == "center":
            T[:3, 3] = _floats(key, text, 3)
        elif key == "axis":
            axis = np.asarray(_floats(key, text, 3))
            if np.linalg.norm(axis) < 1e-9:
                raise RoiError("--set axis=0,0,0 has no direction", "give a non-zero vector, e.g. --set axis=1,0,0")
            T = frame_from_axis(T[:3, 3], axis)
        elif key in ("radius", "length"):
            if not isinstance(roi.shape, CylinderShape):
                raise RoiError(f"--set {key} applies to a cylinder ROI, this one is a box", "use --set extents=x,y,z")
            data["shape"][f"{key}_m"] = _floats(key, text, 1)[0]
        elif key == "extents":
            if not isinstance(roi.shape, BoxShape):
                raise RoiError("--set extents applies to a box ROI, this one is a cylinder", "use --set radius/length")
            data["shape"]["extents_m"] = tuple(_floats(key, text, 3))
        else:
            data["margin_m"] = _floats(key, text, 1)[0]
    data["margin_m"] += grow_m
    if isinstance(roi.shape, CylinderShape):  # notches keep their clearance over the shell, and grow with --grow
        dr = data["shape"]["radius_m"] - roi.shape.radius_m + grow_m
        for notch in data["shape"]["notches"]:
            notch["radius_m"] += dr
    data["T_camera_roi"] = T.tolist()
    data["acceptance"] = None
    try:
        return RoiFile.model_validate(data)
    except ValidationError as e:
        details = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        raise RoiError(f"adjusted ROI is invalid: {details}", "choose values within the named limits") from None


def compare_with_truth(result: CalibrationResult, drum: DrumPose, drum_mask: Mask) -> TruthComparison:
    """IoU of the ROI mask with the true drum mask over pixels with depth, and the axis/radius/centre/length errors
    of the fitted shell (``result.shell``; without one, e.g. after a manual adjustment or for a box, of the ROI frame
    and shape: the radius is then NaN for a box).

    IoU = |R ∩ D| / |R ∪ D| where R = :func:`roi_mask` (valid pixels whose point is inside the margin-grown ROI)
    and D = true drum pixels that have depth in the averaged frame (``scene.valid``). ``true_roi_iou`` is the IoU
    a perfect fit would reach: the true shell cylinder with the same margins (the same end margins and radial
    notches too, for a cylinder fitted with a shell); supports touching the drum within the margin and parts mounted
    beyond it bound it below 1.
    """
    roi = result.roi
    truth = drum_mask & result.scene.valid

    def iou_of(r: RoiFile) -> float:
        ours = roi_mask(r, result.scene)
        union = int(np.count_nonzero(ours | truth))
        return float(np.count_nonzero(ours & truth)) / union if union else 0.0

    true_axis = np.asarray(drum.axis) / np.linalg.norm(drum.axis)
    if result.shell is not None and isinstance(roi.shape, CylinderShape):
        shell = result.shell
        fitted_axis = np.asarray(shell.axis)
        if float(true_axis @ fitted_axis) < 0:  # the same sense along the axis, so the end margins match up
            true_axis = -true_axis
        true_shell = DrumPose(drum.center, (float(true_axis[0]), float(true_axis[1]), float(true_axis[2])),
                              drum.radius_m, drum.length_m)  # fmt: skip
        T, shape = cylinder_roi_frame(true_shell, roi_end_margins(roi, shell), roi.margin_m)
        dr = drum.radius_m - shell.radius_m  # the same notches, as far over the true shell as over the fitted one
        notches = [n.model_copy(update={"radius_m": n.radius_m + dr}) for n in roi.shape.notches]
        ideal = roi.model_copy(
            update={"T_camera_roi": T.tolist(), "shape": shape.model_copy(update={"notches": notches})}
        )
        center, radius, length = np.asarray(shell.center), shell.radius_m, shell.length_m
    else:
        ideal = roi.model_copy(
            update={
                "T_camera_roi": frame_from_axis(np.asarray(drum.center), true_axis).tolist(),
                "shape": CylinderShape(radius_m=drum.radius_m, length_m=drum.length_m),
            }
        )
        fitted_axis, center = roi.pose[:3, 2], roi.pose[:3, 3]
        radius = roi.shape.radius_m if isinstance(roi.shape, CylinderShape) else float("nan")
        length = roi.shape.length_m if isinstance(roi.shape, CylinderShape) else float("nan")
    angle = math.degrees(math.acos(min(1.0, abs(float(fitted_axis @ true_axis)))))
    return TruthComparison(
        iou=iou_of(roi),
        axis_error_deg=angle,
        radius_error_m=abs(radius - drum.radius_m),
        center_error_m=float(np.linalg.norm(center - np.asarray(drum.center))),
        length_error_m=length - drum.length_m,
        true_roi_iou=iou_of(ideal),
    )
