"""Pinhole geometry in the RealSense convention: per-pixel ray tables, deprojection and projection.

The ray table is computed once per stream (distortion included) so deprojecting a frame is one
multiply per pixel: ``xyz = rays * depth_m``. Formulas follow librealsense's ``rsutil.h``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edge.core.frame import Intrinsics

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


def _undistort(x: F64, y: F64, intr: Intrinsics) -> tuple[F64, F64]:
    """Normalised distorted coordinates → normalised undistorted ones, as rs2_deproject_pixel_to_point does."""
    k1, k2, p1, p2, k3 = intr.coeffs
    if intr.model == "none" or not any(intr.coeffs):
        return x, y
    xo, yo = x.copy(), y.copy()
    for _ in range(10):  # fixed-point inversion, 10 steps as the SDK
        r2 = x * x + y * y
        icdist = 1.0 / (1 + ((k3 * r2 + k2) * r2 + k1) * r2)
        if intr.model == "inverse_brown_conrady":
            # As pyrealsense2 2.59: tangential terms at the radially distorted point (tests compare with the SDK).
            xq, yq = x / icdist, y / icdist
            dx = 2 * p1 * xq * yq + p2 * (r2 + 2 * xq * xq)
            dy = 2 * p2 * xq * yq + p1 * (r2 + 2 * yq * yq)
        else:
            dx = 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
            dy = 2 * p2 * x * y + p1 * (r2 + 2 * y * y)
        x = (xo - dx) * icdist
        y = (yo - dy) * icdist
    return x, y


def ray_table(intr: Intrinsics) -> F32:
    """H×W×3 float32 rays ``(x/z, y/z, 1)`` for every pixel (pixel centres at integer coordinates, as the SDK)."""
    u = np.arange(intr.width, dtype=np.float64)
    v = np.arange(intr.height, dtype=np.float64)
    uu, vv = np.meshgrid(u, v)
    x, y = _undistort((uu - intr.ppx) / intr.fx, (vv - intr.ppy) / intr.fy, intr)
    rays = np.empty((intr.height, intr.width, 3), dtype=np.float32)
    rays[..., 0] = x
    rays[..., 1] = y
    rays[..., 2] = 1.0
    return rays


def xyz_from_depth(depth: npt.NDArray[np.uint16], depth_scale: float, rays: F32, out: F32 | None = None) -> F32:
    """Organised point cloud H×W×3 float32 metres; pixels without depth come out as (0, 0, 0)."""
    if depth.shape != rays.shape[:2]:
        raise ValueError(f"depth {depth.shape} does not match the ray table {rays.shape[:2]}")
    if out is None:
        out = np.empty(rays.shape, dtype=np.float32)
    np.multiply(rays, (depth.astype(np.float32) * np.float32(depth_scale))[..., None], out=out)
    return out


def project_points(points: F64 | F32, intr: Intrinsics) -> F64:
    """N×3 camera-frame points → N×2 pixel coordinates (distortion ignored: the synthetic and aligned streams
    have none, and the ROI outline drawn with this is a preview, not a measurement)."""
    p = np.asarray(points, dtype=np.float64)
    z = np.where(np.abs(p[:, 2]) < 1e-9, 1e-9, p[:, 2])
    return np.stack([p[:, 0] / z * intr.fx + intr.ppx, p[:, 1] / z * intr.fy + intr.ppy], axis=1)


def transform_points(T: F64, points: F64 | F32) -> F64:
    """Apply a 4×4 rigid transform to N×3 points."""
    p = np.asarray(points, dtype=np.float64)
    return p @ T[:3, :3].T + T[:3, 3]
