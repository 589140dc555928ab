"""Ray-cast primitives of the scenery: oriented boxes, rods (cables, rollers, limbs), balls, floor and wall."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from drivers.synthetic.gbuffer import CUBE, F32, F64, NEAR_M, Floats, GBuffer, sample


def yaw_rot(yaw: float) -> F64:
    """Rotation about the world's vertical."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def frame_rot(z_axis: F64, x_hint: F64) -> F64:
    """Local → world rotation whose local z is ``z_axis`` and local x lies as close to ``x_hint`` as possible."""
    z = z_axis / np.linalg.norm(z_axis)
    x = x_hint - (x_hint @ z) * z
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z], axis=1)


@dataclass(frozen=True)
class Box:
    """Oriented box; ``style`` picks its albedo pattern."""

    center: F64
    rot: F64  # local → world
    half: F64
    color: tuple[float, float, float]
    ks: float = 0.08
    style: Literal["plain", "carton", "belt", "bracket", "wood"] = "plain"
    phase: float = 0.0  # texture offset along local x (a moving belt)

    def corners(self) -> F64:
        return self.center + (CUBE * self.half) @ self.rot.T


@dataclass(frozen=True)
class Rod:
    """Finite open cylinder (cable, robot link) from ``a`` to ``b``."""

    a: F64
    b: F64
    radius: float
    color: tuple[float, float, float]
    ks: float = 0.15

    def corners(self) -> F64:
        return np.concatenate([self.a + CUBE * self.radius, self.b + CUBE * self.radius])


@dataclass(frozen=True)
class Ball:
    """Sphere."""

    center: F64
    radius: float
    color: tuple[float, float, float]
    ks: float = 0.3

    def corners(self) -> F64:
        return self.center + CUBE * self.radius


def _safe_inv(d: F32) -> F32:
    """1/d with ±inf for d = 0, which the slab and cylinder tests handle as "parallel, never crossing"."""
    with np.errstate(divide="ignore"):
        return np.float32(1.0) / d


def _solid(color: tuple[float, float, float], n: int) -> F32:
    return np.repeat(np.asarray(color, dtype=np.float32)[:, None], n, axis=1)


def cast_box(gb: GBuffer, box: Box, layer: int, tex: F32) -> tuple[F64, npt.NDArray[np.intp]] | None:
    """Slab-method ray/box test in the box's frame; returns the winners' local hit points and faces."""
    r = gb.rect(box.corners())
    if r is None:
        return None
    o, d = gb.local_rays(r, box.rot, box.center)
    tn, tf = [], []
    with np.errstate(invalid="ignore"):  # 0·inf on a face's plane: NaN, which never wins a comparison
        for k in range(3):
            inv = _safe_inv(d[k])
            ta, tb = (-box.half[k] - o[k]) * inv, (box.half[k] - o[k]) * inv
            tn.append(np.minimum(ta, tb))
            tf.append(np.maximum(ta, tb))
    tmin = np.maximum(np.maximum(tn[0], tn[1]), tn[2])
    tmax = np.minimum(np.minimum(tf[0], tf[1]), tf[2])
    t = np.where((tmax >= tmin) & (tmin > NEAR_M), tmin, np.float32(np.inf))
    win = gb.test(r, t)
    if not win.any():
        return None
    tw = t[win]
    face = np.argmax(np.stack([tn[k][win] for k in range(3)]), axis=0)
    dw = np.stack([d[k][win] for k in range(3)])
    nl = np.zeros_like(dw)
    cols = np.arange(tw.size)
    nl[face, cols] = -np.sign(dw[face, cols])
    pl = np.asarray(o, dtype=np.float32)[:, None] + tw * dw
    gb.commit(r, t, box.rot.astype(np.float32) @ nl, _box_albedo(box, pl, face, tex), ks=box.ks, layer=layer)
    return pl, face


def _box_albedo(box: Box, pl: Floats, face: npt.NDArray[np.intp], tex: F32) -> F32:
    """Per-style albedo at local hit points: cartons get tape, the belt moving ribs, the bracket bolt heads,
    pallet wood its grain."""
    n = sample(tex, pl[0] + box.phase, pl[1] + pl[2], 90.0)
    shade = 0.85 + 0.3 * n
    if box.style == "carton":
        shade = np.where((face == 2) & (np.abs(pl[1]) < 0.025), np.float32(1.25), shade)
    elif box.style == "belt":
        shade = shade * np.where(((pl[0] + box.phase) % 0.12) < 0.02, np.float32(0.55), np.float32(1.0))
    elif box.style == "bracket":
        bolt = (face == 2) & (((np.abs(pl[0]) - box.half[0] * 0.6) ** 2 + pl[1] ** 2) < 0.006**2)
        shade = np.where(bolt, np.float32(1.5), 0.95 + 0.1 * n)
    elif box.style == "wood":  # pallet boards: grain along local x
        shade = 0.8 + 0.4 * sample(tex, pl[0] * 0.1, pl[1] + pl[2], 300.0)
    return np.asarray(box.color, dtype=np.float32)[:, None] * shade.astype(np.float32)


def cast_rod(gb: GBuffer, rod: Rod, layer: int) -> None:
    """Ray against the rod's infinite cylinder, clipped to its length (ends left open: rods are thin)."""
    r = gb.rect(rod.corners())
    if r is None:
        return
    axis = rod.b - rod.a
    length = float(np.linalg.norm(axis))
    ez = axis / length
    ex = np.cross(ez, [0.0, 0.0, 1.0] if abs(ez[2]) < 0.9 else [1.0, 0.0, 0.0])
    ex /= np.linalg.norm(ex)
    rot = np.stack([ex, np.cross(ez, ex), ez], axis=1)
    o, d = gb.local_rays(r, rot, rod.a)
    a = d[0] * d[0] + d[1] * d[1]
    b = 2.0 * (o[0] * d[0] + o[1] * d[1])
    c = o[0] ** 2 + o[1] ** 2 - rod.radius**2
    disc = b * b - 4 * a * c
    t = (-b - np.sqrt(np.maximum(disc, 0))) * _safe_inv(2 * a)
    s = o[2] + t * d[2]
    t = np.where((disc > 0) & (t > NEAR_M) & (s >= 0) & (s <= length), t, np.float32(np.inf))
    win = gb.test(r, t)
    if not win.any():
        return
    tw = t[win]
    nl = np.stack([o[0] + tw * d[0][win], o[1] + tw * d[1][win], np.zeros_like(tw)]) / rod.radius
    normal = np.asarray(rot.astype(np.float32) @ nl, dtype=np.float32)
    gb.commit(r, t, normal, _solid(rod.color, tw.size), ks=rod.ks, layer=layer)


def cast_ball(gb: GBuffer, ball: Ball, layer: int) -> None:
    r = gb.rect(ball.corners())
    if r is None:
        return
    o, d = gb.local_rays(r, np.eye(3), ball.center)
    a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    b = 2.0 * (o[0] * d[0] + o[1] * d[1] + o[2] * d[2])
    c = o[0] ** 2 + o[1] ** 2 + o[2] ** 2 - ball.radius**2
    disc = b * b - 4 * a * c
    t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    t = np.where((disc > 0) & (t > NEAR_M), t, np.float32(np.inf))
    win = gb.test(r, t)
    if not win.any():
        return
    tw = t[win]
    n = np.stack([(o[k] + tw * d[k][win]) / ball.radius for k in range(3)]).astype(np.float32)
    gb.commit(r, t, n, _solid(ball.color, tw.size), ks=ball.ks, layer=layer)


def cast_floor_and_wall(gb: GBuffer, tex: F32, wall_y: float) -> None:
    """Concrete floor (z = 0) with tiles and a painted safety line, and a panelled wall at y = ``wall_y``."""
    r = (0, gb.h, 0, gb.w)
    o, d = gb.local_rays(r, np.eye(3), np.zeros(3))
    with np.errstate(divide="ignore", invalid="ignore"):
        tf = np.where(d[2] < -1e-6, -o[2] / d[2], np.float32(np.inf))
        toward = d[1] > 1e-6 if wall_y > 0 else d[1] < -1e-6
        tw = np.where(toward, (wall_y - o[1]) / d[1], np.float32(np.inf))
    for t, is_floor in ((tf, True), (tw, False)):
        win = gb.test(r, t)
        ti = t[win]
        px, py, pz = o[0] + ti * d[0][win], o[1] + ti * d[1][win], o[2] + ti * d[2][win]
        if is_floor:
            tile = (np.abs(((px + 0.5) % 1.0) - 0.5) < 0.006) | (np.abs(((py + 0.5) % 1.0) - 0.5) < 0.006)
            shade = (0.75 + 0.5 * sample(tex, px, py, 60.0)) * np.where(tile, np.float32(0.6), np.float32(1.0))
            yellow = np.abs(py + 0.75) < 0.05
            color = np.where(yellow, [[0.85], [0.72], [0.1]], [[0.46], [0.45], [0.43]])
            normal = (0.0, 0.0, 1.0)
        else:
            seam = np.abs(((px + 0.6) % 1.2) - 0.6) < 0.01
            shade = (0.85 + 0.3 * sample(tex, px, pz, 25.0)) * np.where(seam, np.float32(0.7), np.float32(1.0))
            color = np.where(pz < 1.0, [[0.42], [0.5], [0.55]], [[0.72], [0.74], [0.73]])
            normal = (0.0, -1.0 if wall_y > 0 else 1.0, 0.0)
        albedo = (color * shade).astype(np.float32)
        gb.commit(r, t, _solid(normal, ti.size), albedo, ks=0.05, layer=1)
