"""The virtual RealSense-like camera of a station, where it stands, and the light the station is seen under."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from drivers.synthetic.gbuffer import F32, F64, NEAR_M
from edge.core.frame import Intrinsics
from edge.core.geometry import ray_table

LIGHT_DIR_W = np.array([0.35, -0.55, 0.76]) / np.linalg.norm([0.35, -0.55, 0.76])


@dataclass(frozen=True)
class CameraPose:
    """Where the camera stands: ``distance_m`` from ``target`` (the drum's nominal centre, world), looking down
    ``elevation_deg`` below the horizontal; ``azimuth_deg`` turns it about the vertical (0: looking along +y,
    across the line toward the wall; positive: from the −x side)."""

    distance_m: float
    elevation_deg: float
    azimuth_deg: float
    target: tuple[float, float, float]


@dataclass(frozen=True)
class Rig:
    """The virtual camera: intrinsics, pose in the world and its per-pixel world rays (planar 3×H×W)."""

    intr: Intrinsics
    r_wc: F64  # camera → world rotation (columns: camera x, y, z in world)
    pos: F64  # camera centre in the world
    rays: F32  # world directions whose camera-z component is 1, so a ray parameter t is the depth
    halfway: F32  # Blinn half-vector between the fixed light and each pixel's view direction

    def project(self, pts_w: F64) -> tuple[F64, F64] | None:
        """World points → (u, v) pixels, or None if any point is behind or too close to the camera."""
        pc = (pts_w - self.pos) @ self.r_wc
        if np.any(pc[:, 2] < NEAR_M):
            return None
        return pc[:, 0] / pc[:, 2] * self.intr.fx + self.intr.ppx, pc[:, 1] / pc[:, 2] * self.intr.fy + self.intr.ppy

    def depth(self, pts_w: F64) -> F64:
        """Camera-z of world points (the depth the sensor would report)."""
        z: F64 = (pts_w - self.pos) @ self.r_wc[:, 2]
        return z


def intrinsics_for(width: int, height: int) -> Intrinsics:
    """A D435-like color camera: fx = fy = 615 at 640×480, scaled with the width, centre at the middle."""
    f = 615.0 * width / 640.0
    return Intrinsics(width, height, f, f, width / 2.0, height / 2.0)


@functools.lru_cache(maxsize=8)
def rig_for(width: int, height: int, pose: CameraPose) -> Rig:
    """Camera looking down at the station; cached because the ray table is the same for every frame."""
    intr = intrinsics_for(width, height)
    el, az = math.radians(pose.elevation_deg), math.radians(pose.azimuth_deg)
    fwd = np.array([math.sin(az) * math.cos(el), math.cos(az) * math.cos(el), -math.sin(el)])
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    r_wc = np.stack([right, down, fwd], axis=1)
    pos = np.asarray(pose.target) - pose.distance_m * fwd
    rays = np.einsum("ij,hwj->ihw", r_wc, ray_table(intr).astype(np.float64))
    half = LIGHT_DIR_W[:, None, None] - rays / np.linalg.norm(rays, axis=0, keepdims=True)
    half /= np.linalg.norm(half, axis=0, keepdims=True)
    return Rig(intr, r_wc, pos, np.ascontiguousarray(rays, np.float32), np.ascontiguousarray(half, np.float32))


@dataclass(frozen=True)
class Lighting:
    """Per-frame light: a global gain, the station's colour temperature (an RGB tint) and a moving highlight
    (a passing lamp) on background surfaces."""

    gain: float
    spot_w: F64
    spot_amp: float
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)


def lighting(
    seed: int,
    index: int,
    time_s: float,
    clutter: float,
    *,
    level: float = 1.0,
    tint: tuple[float, float, float] = (1, 1, 1),
) -> Lighting:
    """The station's light level and tint, varied per frame with the clutter (a gain wobble and a passing lamp)."""
    r = np.random.default_rng([seed, index, 11])
    gain = 1.0 + clutter * (0.06 * math.sin(2 * math.pi * time_s / 5.0) + 0.03 * float(r.standard_normal()))
    spot = np.array([1.6 * math.sin(2 * math.pi * time_s / 6.0), 1.0, 0.9 + 0.5 * math.cos(2 * math.pi * time_s / 4.3)])
    return Lighting(gain * level, spot, 0.45 * clutter, (float(tint[0]), float(tint[1]), float(tint[2])))
