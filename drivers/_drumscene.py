"""Procedural washing-drum station, ray cast analytically in numpy into a G-buffer, then shaded.

World frame: metres, z up, the line runs along +x, the drum rests on a cradle at the station with its axis
along the line. Arrays are planar (3×H×W) so every step is an elementwise numpy op; every primitive is
intersected only inside its projected screen rectangle, so small clutter costs little. The drum (body,
bracket, attached objects) is its own layer, rendered over the drum's screen rectangle; a defect's mask is
the set of pixels where that layer differs from the same layer rendered without the defect.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edge.core.frame import DefectType, Intrinsics
from edge.core.geometry import ray_table

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Floats = npt.NDArray[np.floating[Any]]  # float32 or float64: box hits are float64 (their half-sizes are float64)
BoolA = npt.NDArray[np.bool_]
Rect = tuple[int, int, int, int]  # local v0, v1, u0, u1 inside a G-buffer

DRUM_RADIUS_M = 0.25
DRUM_LENGTH_M = 0.35
DRUM_CENTER_W = (0.0, 0.0, 0.92)  # nominal centre on the cradle, before per-part jitter
RIM_INNER_M = 0.20  # the open (camera-side) end is a ring from here to the radius
HOLE_PITCH_M = 0.016
HOLE_RADIUS_M = 0.0035
PLAIN_END_M = 0.03  # unperforated band at each end of the shell
BRACKET_HALF_M = (0.035, 0.02, 0.012)  # along axis, along circumference, along normal
BRACKET_AT = (0.10, math.radians(40.0))  # (axial position, angle from the top toward the camera)
CAMERA_DISTANCE_M = 1.25
CAMERA_ELEVATION_DEG = 32.0
CAMERA_AZIMUTH_DEG = 18.0
LIGHT_DIR_W = np.array([0.35, -0.55, 0.76]) / np.linalg.norm([0.35, -0.55, 0.76])
NEAR_M = 0.05
_CUBE = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], dtype=np.float64)


# ---------------------------------------------------------------- camera


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


def intrinsics_for(width: int, height: int) -> Intrinsics:
    """A D435-like color camera: fx = fy = 615 at 640×480, scaled with the width, centre at the middle."""
    f = 615.0 * width / 640.0
    return Intrinsics(width, height, f, f, width / 2.0, height / 2.0)


@functools.lru_cache(maxsize=4)
def rig_for(width: int, height: int) -> Rig:
    """Camera looking down at the station; cached because the ray table is the same for every frame."""
    intr = intrinsics_for(width, height)
    el, az = math.radians(CAMERA_ELEVATION_DEG), math.radians(CAMERA_AZIMUTH_DEG)
    fwd = np.array([math.sin(az) * math.cos(el), math.cos(az) * math.cos(el), -math.sin(el)])
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    r_wc = np.stack([right, down, fwd], axis=1)
    pos = np.asarray(DRUM_CENTER_W) - CAMERA_DISTANCE_M * fwd
    rays = np.einsum("ij,hwj->ihw", r_wc, ray_table(intr).astype(np.float64))
    half = LIGHT_DIR_W[:, None, None] - rays / np.linalg.norm(rays, axis=0, keepdims=True)
    half /= np.linalg.norm(half, axis=0, keepdims=True)
    return Rig(intr, r_wc, pos, np.ascontiguousarray(rays, np.float32), np.ascontiguousarray(half, np.float32))


# ---------------------------------------------------------------- G-buffer


@dataclass
class GBuffer:
    """Nearest hit per pixel of a rectangle of the image: depth, normal, albedo, specular strength, layer.

    Layers: 0 nothing, 1 background, 2 drum (and what is attached to it).
    """

    rig: Rig
    v0: int
    u0: int
    h: int
    w: int
    t: F32 = field(init=False)
    normal: F32 = field(init=False)
    albedo: F32 = field(init=False)
    ks: F32 = field(init=False)
    layer: npt.NDArray[np.uint8] = field(init=False)
    last_idx: npt.NDArray[np.intp] = field(init=False)
    _win: BoolA = field(init=False)

    def __post_init__(self) -> None:
        self.t = np.full((self.h, self.w), np.inf, dtype=np.float32)
        self.normal = np.zeros((3, self.h, self.w), dtype=np.float32)
        self.albedo = np.zeros((3, self.h, self.w), dtype=np.float32)
        self.ks = np.zeros((self.h, self.w), dtype=np.float32)
        self.layer = np.zeros((self.h, self.w), dtype=np.uint8)

    def rect(self, corners_w: F64) -> Rect | None:
        """Local rectangle covering the projection of ``corners_w``; all of it if a corner is behind the camera."""
        proj = self.rig.project(corners_w)
        if proj is None:
            return 0, self.h, 0, self.w
        u, v = proj
        a = max(math.floor(v.min()) - 1 - self.v0, 0)
        b = min(math.ceil(v.max()) + 2 - self.v0, self.h)
        c = max(math.floor(u.min()) - 1 - self.u0, 0)
        d = min(math.ceil(u.max()) + 2 - self.u0, self.w)
        return None if a >= b or c >= d else (a, b, c, d)

    def copy(self) -> GBuffer:
        out = GBuffer(self.rig, self.v0, self.u0, 0, 0)
        out.h, out.w = self.h, self.w
        out.t, out.normal, out.albedo = self.t.copy(), self.normal.copy(), self.albedo.copy()
        out.ks, out.layer = self.ks.copy(), self.layer.copy()
        return out

    def crop(self, v0: int, u0: int, h: int, w: int) -> GBuffer:
        """A read-only view of the image rectangle (v0, u0, h, w) in this buffer (commit needs contiguous arrays)."""
        out = GBuffer(self.rig, v0, u0, 0, 0)
        out.h, out.w = h, w
        sl = np.s_[v0 - self.v0 : v0 - self.v0 + h, u0 - self.u0 : u0 - self.u0 + w]
        out.t, out.ks, out.layer = self.t[sl], self.ks[sl], self.layer[sl]
        out.normal, out.albedo = self.normal[(slice(None), *sl)], self.albedo[(slice(None), *sl)]
        return out

    def local_rays(self, r: Rect, rot: F64, center: F64) -> tuple[tuple[float, float, float], list[F32]]:
        """Camera origin and ray directions of rectangle ``r`` in a primitive's frame (``rot``: local → world)."""
        a, b, c, d = r
        sl = np.s_[self.v0 + a : self.v0 + b, self.u0 + c : self.u0 + d]
        wr = [self.rig.rays[k][sl] for k in range(3)]
        dl = []
        for k in range(3):  # skip zero terms: most primitives are axis-aligned or only yawed
            terms = [float(rot[j, k]) * wr[j] for j in range(3) if abs(rot[j, k]) > 1e-12]
            dl.append(wr[k] if len(terms) == 1 and rot[k, k] == 1.0 else sum(terms[1:], terms[0]))
        o = (self.rig.pos - center) @ rot
        return (float(o[0]), float(o[1]), float(o[2])), dl

    def test(self, r: Rect, t: Floats) -> BoolA:
        """Pixels of ``r`` where ``t`` is nearer than what is there; remembered for :meth:`commit`."""
        a, b, c, d = r
        win = t < self.t[a:b, c:d]
        rows, cols = np.nonzero(win)
        self.last_idx = (rows + a) * self.w + (cols + c)
        self._win = win
        return win

    def commit(self, r: Rect, t: Floats, normal: F32, albedo: F32, *, ks: float | F32, layer: int) -> None:
        """Write the winners of the last :meth:`test`; ``normal``/``albedo`` are 3×N over those winners."""
        idx = self.last_idx
        self.t.reshape(-1)[idx] = t[self._win]
        self.normal.reshape(3, -1)[:, idx] = normal
        self.albedo.reshape(3, -1)[:, idx] = albedo
        self.ks.reshape(-1)[idx] = ks
        self.layer.reshape(-1)[idx] = layer

    def paste(self, other: GBuffer) -> BoolA:
        """Z-composite a drum-layer sub-buffer into this one; returns the sub-rectangle's pixels that won."""
        r = (other.v0 - self.v0, other.v0 - self.v0 + other.h, other.u0 - self.u0, other.u0 - self.u0 + other.w)
        win = self.test(r, other.t)
        self.commit(r, other.t, other.normal[:, win], other.albedo[:, win], ks=other.ks[win], layer=2)
        return win


# ---------------------------------------------------------------- textures


@functools.lru_cache(maxsize=8)
def value_noise(seed: int, size: int = 256) -> F32:
    """Tileable multi-octave value noise in [0, 1], the base of every procedural texture (static per seed)."""
    rng = np.random.default_rng([seed, 0, 1])
    out = np.zeros((size, size), dtype=np.float32)
    amp, total = 1.0, 0.0
    for cells in (8, 16, 32, 64, 128):
        grid = rng.random((cells, cells), dtype=np.float32)
        x = np.arange(size, dtype=np.float32) * cells / size
        i0 = x.astype(np.int64)
        f = x - i0
        f = f * f * (3 - 2 * f)
        i1 = (i0 + 1) % cells
        rows = grid[i0] * (1 - f)[:, None] + grid[i1] * f[:, None]
        out += amp * (rows[:, i0] * (1 - f)[None, :] + rows[:, i1] * f[None, :])
        total += amp
        amp *= 0.6
    return out / total


def sample(tex: F32, a: Floats, b: Floats, scale: float) -> F32:
    """Nearest-neighbour lookup of a tiled texture at world coordinates (a, b) with ``scale`` texels per metre."""
    n = tex.shape[0]
    texels: F32 = tex[(a * scale).astype(np.int32) & (n - 1), (b * scale).astype(np.int32) & (n - 1)]
    return texels


# ---------------------------------------------------------------- primitives


@dataclass(frozen=True)
class Box:
    """Oriented box; ``style`` picks its albedo pattern."""

    center: F64
    rot: F64  # local → world
    half: F64
    color: tuple[float, float, float]
    ks: float = 0.08
    style: Literal["plain", "carton", "belt", "bracket"] = "plain"
    phase: float = 0.0  # texture offset along local x (a moving belt)

    def corners(self) -> F64:
        return self.center + (_CUBE * self.half) @ self.rot.T


@dataclass(frozen=True)
class Rod:
    """Finite open cylinder (cable, robot link) from ``a`` to ``b``."""

    a: F64
    b: F64
    radius: float
    color: tuple[float, float, float]
    ks: float = 0.15

    def corners(self) -> F64:
        return np.concatenate([self.a + _CUBE * self.radius, self.b + _CUBE * self.radius])


@dataclass(frozen=True)
class Ball:
    """Sphere."""

    center: F64
    radius: float
    color: tuple[float, float, float]
    ks: float = 0.3

    def corners(self) -> F64:
        return self.center + _CUBE * self.radius


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
    """Per-style albedo at local hit points: cartons get tape, the belt moving ribs, the bracket bolt heads."""
    n = sample(tex, pl[0] + box.phase, pl[1] + pl[2], 90.0)
    shade = 0.85 + 0.3 * n
    if box.style == "carton":
        shade = np.where((face == 2) & (np.abs(pl[1]) < 0.025), np.float32(1.25), shade)
    elif box.style == "belt":
        shade = shade * np.where(((pl[0] + box.phase) % 0.12) < 0.02, np.float32(0.55), np.float32(1.0))
    elif box.style == "bracket":
        bolt = (face == 2) & (((np.abs(pl[0]) - box.half[0] * 0.6) ** 2 + pl[1] ** 2) < 0.006**2)
        shade = np.where(bolt, np.float32(1.5), 0.95 + 0.1 * n)
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
    """Concrete floor (z = 0) with tiles and a painted safety line, and a panelled wall (y = ``wall_y``)."""
    r = (0, gb.h, 0, gb.w)
    o, d = gb.local_rays(r, np.eye(3), np.zeros(3))
    with np.errstate(divide="ignore", invalid="ignore"):
        tf = np.where(d[2] < -1e-6, -o[2] / d[2], np.float32(np.inf))
        tw = np.where(d[1] > 1e-6, (wall_y - o[1]) / d[1], np.float32(np.inf))
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
            normal = (0.0, -1.0, 0.0)
        albedo = (color * shade).astype(np.float32)
        gb.commit(r, t, _solid(normal, ti.size), albedo, ks=0.05, layer=1)


# ---------------------------------------------------------------- drum


@dataclass(frozen=True)
class DefectSpec:
    """One defect on the drum. Surface positions are (axial s, angle θ from the top toward the camera)."""

    kind: DefectType
    s: float
    theta: float
    size: tuple[float, float]  # footprint half-sizes along circumference and axis (m)
    amount: float  # inward depth (m) for geometry; albedo factor for colour defects
    angle: float = 0.0  # scratch direction / bolt or bracket rotation (rad)
    variant: int = 0  # foreign object: 0 sphere, 1 bolt


@dataclass(frozen=True)
class DrumSpec:
    """Where this part's drum sits (its pose) and what is wrong with it."""

    center_w: tuple[float, float, float]
    yaw: float
    defect: DefectSpec | None = None

    @property
    def rot(self) -> F64:
        """Drum-local → world: local x is the axis, local z is world up."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def surface_frame(self, s: float, theta: float) -> tuple[F64, F64, F64, F64]:
        """World point and (axis, circumferential, normal) unit vectors on the shell at (s, θ)."""
        n_l = np.array([0.0, -math.sin(theta), math.cos(theta)])
        e_u = np.array([0.0, -math.cos(theta), -math.sin(theta)])
        rot = self.rot
        return (
            np.asarray(self.center_w) + rot @ (np.array([s, 0.0, 0.0]) + DRUM_RADIUS_M * n_l),
            rot[:, 0],
            rot @ e_u,
            rot @ n_l,
        )


def _on_surface(drum: DrumSpec, s: float, theta: float, turn: float) -> tuple[F64, F64]:
    """Point and frame (axis-ish, circumferential-ish, normal) turned by ``turn`` about the normal at (s, θ)."""
    p, ex, eu, en = drum.surface_frame(s, theta)
    c, sn = math.cos(turn), math.sin(turn)
    return p, np.stack([c * ex + sn * eu, -sn * ex + c * eu, en], axis=1)


def bracket_box(drum: DrumSpec) -> Box | None:
    """The component every good drum carries: a bracket on the shell. Misaligned: shifted and turned; missing: None."""
    s, th, turn = BRACKET_AT[0], BRACKET_AT[1], 0.0
    dfx = drum.defect
    if dfx is not None and dfx.kind == "missing_part":
        return None
    if dfx is not None and dfx.kind == "misaligned_part":
        s, th, turn = s + dfx.s, th + dfx.theta, dfx.angle
    p, rot = _on_surface(drum, s, th, turn)
    half = np.asarray(BRACKET_HALF_M)
    return Box(p + (half[2] - 0.002) * rot[:, 2], rot, half, (0.33, 0.36, 0.42), ks=0.35, style="bracket")


def foreign_object(drum: DrumSpec) -> Box | Ball | None:
    """A small sphere (a rubber ball, a lump) or a bolt lying on the shell."""
    dfx = drum.defect
    if dfx is None or dfx.kind != "foreign_object":
        return None
    p, rot = _on_surface(drum, dfx.s, dfx.theta, dfx.angle)
    if dfx.variant == 0:
        r = dfx.size[0]
        return Ball(p + (r - 0.002) * rot[:, 2], r, (0.08, 0.08, 0.09), ks=0.25)
    half = np.array([dfx.size[1], dfx.size[0], dfx.size[0]])
    return Box(p + (half[2] - 0.001) * rot[:, 2], rot, half, (0.62, 0.55, 0.3), ks=0.4)


def _surface_offset(dfx: DefectSpec | None, u: F32, s: F32) -> tuple[F32, F32, F32] | None:
    """Inward displacement δ(u, s) and its gradient for dents and deformations (compact support: exactly 0 outside)."""
    if dfx is None or dfx.kind not in ("dent", "deformation"):
        return None
    ru, rs = dfx.size
    du = (u - DRUM_RADIUS_M * dfx.theta) / ru
    ds = (s - dfx.s) / rs
    w = np.maximum(1.0 - (du * du + ds * ds), 0.0).astype(np.float32)
    g = -4.0 * dfx.amount * w
    f32 = np.float32  # already float32 (float32 arrays times Python floats): asarray only tells the type checker
    return np.asarray(dfx.amount * w * w, f32), np.asarray(g * du / ru, f32), np.asarray(g * ds / rs, f32)


def _albedo_factor(dfx: DefectSpec | None, u: F32, s: F32, tex: F32) -> F32 | None:
    """Per-channel (3×N) albedo multiplier of the colour-only defects (scratch, discoloration) on the shell."""
    if dfx is None or dfx.kind not in ("scratch", "discoloration"):
        return None
    du, ds = u - DRUM_RADIUS_M * dfx.theta, s - dfx.s
    if dfx.kind == "scratch":
        c, sn = math.cos(dfx.angle), math.sin(dfx.angle)
        on = (np.abs(du * c + ds * sn) < dfx.size[1]) & (np.abs(-du * sn + ds * c) < dfx.size[0])
        factor: F32 = np.repeat(np.where(on, np.float32(dfx.amount), np.float32(1.0))[None], 3, axis=0)
        return factor
    q = (du / dfx.size[0]) ** 2 + (ds / dfx.size[1]) ** 2
    wobble = 0.75 + 0.5 * sample(tex, du + 3.0, ds + 5.0, 40.0)
    w = np.sqrt(np.clip(1.0 - q / wobble, 0.0, 1.0))
    tint = np.array([1.0, 0.93, 0.8], dtype=np.float32)[:, None] * dfx.amount
    blend: F32 = (1.0 + w * (tint - 1.0)).astype(np.float32)
    return blend


def _perforated(u: F32, s: F32) -> BoolA:
    """Staggered round perforations over the shell, leaving plain bands at both ends."""
    p = HOLE_PITCH_M
    js = np.floor(s / p)
    shift = (js % 2) * (p / 2)
    cu = (np.floor((u - shift) / p) + 0.5) * p + shift
    near = (s - (js + 0.5) * p) ** 2 + (u - cu) ** 2 < HOLE_RADIUS_M**2
    holes: BoolA = near & (np.abs(s) < DRUM_LENGTH_M / 2 - PLAIN_END_M)
    return holes


def _drum_hits(o: tuple[float, float, float], d: list[F32]) -> tuple[F32, npt.NDArray[np.intp], F32, F32]:
    """Nearest drum surface per ray: t, kind (0 outer shell, 1 inner wall, 2 back cap, 3 front rim), θ and s."""
    half_l = DRUM_LENGTH_M / 2
    a = d[1] * d[1] + d[2] * d[2]
    b = 2 * (o[1] * d[1] + o[2] * d[2])
    disc = b * b - 4 * a * (o[1] ** 2 + o[2] ** 2 - DRUM_RADIUS_M**2)
    sq, inv2a = np.sqrt(np.maximum(disc, 0)), _safe_inv(2 * a)
    t1, t2 = (-b - sq) * inv2a, (-b + sq) * inv2a
    x1, x2 = o[0] + t1 * d[0], o[0] + t2 * d[0]
    theta = np.arctan2(-(o[1] + t1 * d[1]), o[2] + t1 * d[2])
    outer = (disc > 0) & (np.abs(x1) <= half_l) & ~_perforated(DRUM_RADIUS_M * theta, x1)
    inner = (disc > 0) & (np.abs(x2) <= half_l)
    inv_dx = _safe_inv(d[0])
    tb, tr = (half_l - o[0]) * inv_dx, (-half_l - o[0]) * inv_dx
    rho_b = (o[1] + tb * d[1]) ** 2 + (o[2] + tb * d[2]) ** 2
    rho_r = (o[1] + tr * d[1]) ** 2 + (o[2] + tr * d[2]) ** 2
    rim = (rho_r <= DRUM_RADIUS_M**2) & (rho_r >= RIM_INNER_M**2)
    inf = np.float32(np.inf)
    cand = np.stack(
        [
            np.where(outer, t1, inf),
            np.where(inner, t2, inf),
            np.where(rho_b <= DRUM_RADIUS_M**2, tb, inf),
            np.where(rim, tr, inf),
        ]
    )
    cand = np.where(cand > NEAR_M, cand, inf)
    kind = np.argmin(cand, axis=0)
    return np.take_along_axis(cand, kind[None], 0)[0], kind, theta.astype(np.float32), x1


def cast_drum_body(gb: GBuffer, drum: DrumSpec, tex: F32, with_defect: bool) -> None:
    """Perforated shell, inner wall seen through holes and the open end, solid back cap, front rim; plus the
    shell-surface defects (displacement for dents/deformations, albedo for scratches/discoloration)."""
    r = gb.rect(_drum_corners(drum))
    if r is None:
        return
    o, d = gb.local_rays(r, drum.rot, np.asarray(drum.center_w))
    t, kind, theta, s = _drum_hits(o, d)
    dfx = drum.defect if with_defect else None
    offset = _surface_offset(dfx, DRUM_RADIUS_M * theta, s)
    if offset is not None:  # first-order height field: the ray meets the displaced surface δ/|n·d| later
        ndot = np.minimum(-np.sin(theta) * d[1] + np.cos(theta) * d[2], -0.05)
        t = np.where(kind == 0, t - offset[0] / ndot, t)
    win = gb.test(r, t)
    if not win.any():
        return
    kw, thw, sw = kind[win], theta[win], s[win]
    pl = np.stack([o[k] + t[win] * d[k][win] for k in range(3)])
    normal, albedo = _drum_surface(pl, kw, thw, tex)
    shell = kw == 0
    if offset is not None:  # n' = n + ∇δ: an inward dimple's walls face its centre
        gu, gs = offset[1][win], offset[2][win]
        tilt = np.stack([gs, -np.cos(thw) * gu, -np.sin(thw) * gu])
        normal = normal + np.where(shell, tilt, 0.0)
        normal /= np.linalg.norm(normal, axis=0, keepdims=True)
    factor = _albedo_factor(dfx, DRUM_RADIUS_M * thw, sw, tex)
    if factor is not None:
        albedo = np.where(shell, albedo * factor, albedo)
    ks = np.where(kw == 1, np.float32(0.15), np.float32(0.6))
    gb.commit(r, t, drum.rot.astype(np.float32) @ normal.astype(np.float32), albedo.astype(np.float32), ks=ks, layer=2)


def _drum_surface(pl: F32, kind: npt.NDArray[np.intp], theta: F32, tex: F32) -> tuple[F32, F32]:
    """Local normals and brushed-steel albedo (brushed along the circumference; radially on the caps)."""
    rho = np.sqrt(pl[1] ** 2 + pl[2] ** 2)
    inv_rho = 1.0 / np.maximum(rho, 1e-6)
    zero = np.zeros_like(rho)
    radial = np.stack([zero, -np.sin(theta), np.cos(theta)])
    inner = np.stack([zero, -pl[1] * inv_rho, -pl[2] * inv_rho])
    cap = np.stack([np.where(kind == 2, 1.0, -1.0).astype(np.float32), zero, zero])
    normal = np.where(kind == 0, radial, np.where(kind == 1, inner, cap))
    brush = sample(tex, np.where(kind >= 2, rho, pl[0]) * 7.0, zero + 0.37, 300.0)
    base = np.where(kind == 1, np.float32(0.34), np.float32(0.56))
    base = np.where((kind == 2) & (rho < 0.07), np.float32(0.3), base) * (0.9 + 0.2 * brush)
    return normal.astype(np.float32), (np.array([[0.97], [0.99], [1.03]], dtype=np.float32) * base)


def _drum_corners(drum: DrumSpec) -> F64:
    half = np.array([DRUM_LENGTH_M / 2 + 0.02, DRUM_RADIUS_M + 0.03, DRUM_RADIUS_M + 0.03])
    corners: F64 = np.asarray(drum.center_w) + (_CUBE * half) @ drum.rot.T
    return corners


def defect_corners(drum: DrumSpec) -> F64:
    """Points whose screen rectangle bounds every pixel the drum's defect can change."""
    dfx = drum.defect
    assert dfx is not None
    if dfx.kind in ("misaligned_part", "missing_part"):
        nominal = bracket_box(DrumSpec(drum.center_w, drum.yaw, None))
        moved = bracket_box(drum)
        assert nominal is not None
        return nominal.corners() if moved is None else np.concatenate([nominal.corners(), moved.corners()])
    obj = foreign_object(drum)
    if obj is not None:
        return obj.corners()
    reach = 1.3 * max(dfx.size)  # scratches turn, discoloration edges wobble out by up to √1.25
    pts = []
    for ds in (-reach, 0.0, reach):
        for du in (-reach, 0.0, reach):
            p, _, _, en = drum.surface_frame(dfx.s + ds, dfx.theta + du / DRUM_RADIUS_M)
            pts += [p + 0.01 * en, p - (abs(dfx.amount) + 0.01) * en]
    return np.asarray(pts)


def render_drum_layer(rig: Rig, drum: DrumSpec, tex: F32, with_defect: bool, within: F64 | None = None) -> GBuffer:
    """The drum and what it carries, over the drum's screen rectangle (or that of the points ``within``)."""
    full = GBuffer(rig, 0, 0, rig.intr.height, rig.intr.width)
    r = full.rect(_drum_corners(drum) if within is None else within)
    if r is None:
        return GBuffer(rig, 0, 0, 0, 0)
    gb = GBuffer(rig, r[0], r[2], r[1] - r[0], r[3] - r[2])
    cast_drum_body(gb, drum, tex, with_defect)
    spec = drum if with_defect else DrumSpec(drum.center_w, drum.yaw, None)
    bracket = bracket_box(spec)
    if bracket is not None:
        cast_box(gb, bracket, 2, tex)
    obj = foreign_object(spec)
    if isinstance(obj, Ball):
        cast_ball(gb, obj, 2)
    elif isinstance(obj, Box):
        cast_box(gb, obj, 2, tex)
    return gb


def layer_difference(a: GBuffer, b: GBuffer, light: Lighting) -> BoolA:
    """Pixels whose noiseless rendering differs: another surface, ≥ 0.5 mm of depth or ≥ 0.5 grey level of colour.

    The thresholds sit at half a quantisation step, where the 8-bit colour and 1 mm depth start to show it.
    """
    hit_a, hit_b = np.isfinite(a.t), np.isfinite(b.t)
    both = hit_a & hit_b
    dt = np.abs(np.where(both, a.t, 0.0) - np.where(both, b.t, 0.0)) >= 5e-4
    dc = np.abs(shade(a, light)[0] - shade(b, light)[0]).max(axis=0) * (255.0 * EXPOSURE) >= 0.5
    differs: BoolA = (hit_a != hit_b) | (both & (dt | dc)) | (a.layer != b.layer)
    return differs


# ---------------------------------------------------------------- background and lighting


@dataclass(frozen=True)
class Lighting:
    """Per-frame light: a global gain and a moving highlight (a passing lamp) on background surfaces."""

    gain: float
    spot_w: F64
    spot_amp: float


def _yaw_rot(yaw: float) -> F64:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def station_fixture() -> list[Box]:
    """Table, the line's two rails and the cradle the drum rests on: always present, never moving."""
    eye = np.eye(3)
    steel, dark = (0.55, 0.56, 0.58), (0.3, 0.31, 0.33)
    return [
        Box(np.array([0.0, 0.0, 0.3]), eye, np.array([0.6, 0.42, 0.3]), (0.38, 0.4, 0.44), 0.1),
        Box(np.array([0.0, -0.14, 0.62]), eye, np.array([1.6, 0.02, 0.02]), steel, 0.5),
        Box(np.array([0.0, 0.14, 0.62]), eye, np.array([1.6, 0.02, 0.02]), steel, 0.5),
        Box(np.array([-0.12, 0.0, 0.6575]), eye, np.array([0.03, 0.2, 0.0175]), dark, 0.2),
        Box(np.array([0.12, 0.0, 0.6575]), eye, np.array([0.03, 0.2, 0.0175]), dark, 0.2),
    ]


BELT = Box(np.array([0.0, 0.85, 0.75]), np.eye(3), np.array([3.0, 0.25, 0.03]), (0.16, 0.16, 0.17), 0.1, "belt")
BELT_SPEED_M_S = 0.35
WALL_Y_M = 2.2


@dataclass(frozen=True)
class StaticBackground:
    """What never moves (floor, wall, station fixture, the belt's body), cast once per size and seed."""

    gb: GBuffer
    belt_idx: npt.NDArray[np.intp]  # flat pixel indices where the belt is visible
    belt_pl: Floats  # the belt's local hit points there, to redraw its moving ribs
    belt_face: npt.NDArray[np.intp]


@functools.lru_cache(maxsize=2)
def static_background(width: int, height: int, seed: int) -> StaticBackground:
    """Cast once: a third of a frame's ray casting is scenery that never changes."""
    tex = value_noise(seed)
    gb = GBuffer(rig_for(width, height), 0, 0, height, width)
    cast_floor_and_wall(gb, tex, WALL_Y_M)
    for box in station_fixture():
        cast_box(gb, box, 1, tex)
    hit = cast_box(gb, BELT, 1, tex)  # last, so its winners are final
    if hit is None:
        return StaticBackground(gb, np.zeros(0, np.intp), np.zeros((3, 0), np.float32), np.zeros(0, np.intp))
    return StaticBackground(gb, gb.last_idx.copy(), hit[0], hit[1])


def background(seed: int, width: int, height: int, time_s: float, clutter: float) -> GBuffer:
    """A fresh copy of the static background with the belt advanced to ``time_s``."""
    st = static_background(width, height, seed)
    gb = st.gb.copy()
    if clutter > 0 and st.belt_idx.size:
        moving = Box(BELT.center, BELT.rot, BELT.half, BELT.color, BELT.ks, "belt", phase=-BELT_SPEED_M_S * time_s)
        gb.albedo.reshape(3, -1)[:, st.belt_idx] = _box_albedo(moving, st.belt_pl, st.belt_face, value_noise(seed))
    return gb


def cartons(seed: int, time_s: float, clutter: float) -> list[Box]:
    """Cartons riding the belt past the station; more of them with more clutter."""
    prims = []
    n = round(8 * clutter)
    span = 5.0
    for k in range(n):
        r = np.random.default_rng([seed, 7, k])
        half = np.array([r.uniform(0.1, 0.22), r.uniform(0.1, 0.2), r.uniform(0.06, 0.18)])
        x = (k * span / max(n, 1) + BELT_SPEED_M_S * time_s + r.uniform(0, 0.2)) % span - span / 2
        color = (0.62, 0.47, 0.3) if r.random() < 0.7 else (0.7, 0.7, 0.68)
        center = np.array([x, 0.85 + r.uniform(-0.08, 0.08), 0.78 + half[2]])
        prims.append(Box(center, _yaw_rot(r.uniform(-0.15, 0.15)), half, color, 0.05, "carton"))
    return prims


def robot_arm(time_s: float, clutter: float) -> list[Rod | Box]:
    """A handling robot behind the station on the right, its two links swinging with the time."""
    if clutter < 0.3:
        return []
    base = np.array([0.95, 0.65, 0.0])
    shoulder = base + np.array([0.0, 0.0, 1.05])
    yaw = math.pi + 0.7 * math.sin(2 * math.pi * time_s / 4.0)
    pitch = 0.35 + 0.25 * math.sin(2 * math.pi * time_s / 2.7)
    elbow = shoulder + 0.55 * np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), 0.0])
    elbow[2] += 0.55 * math.sin(pitch)
    wrist = elbow + 0.45 * np.array([math.cos(yaw + 0.6), math.sin(yaw + 0.6), -0.9]) / math.hypot(1.0, 0.9)
    orange = (0.9, 0.45, 0.08)
    return [
        Box(base + np.array([0.0, 0.0, 0.5]), np.eye(3), np.array([0.12, 0.12, 0.5]), (0.25, 0.25, 0.27), 0.1),
        Rod(shoulder, elbow, 0.07, orange, 0.3),
        Rod(elbow, wrist, 0.05, orange, 0.3),
    ]


def loose_clutter(seed: int, part: int, index: int, time_s: float, clutter: float) -> list[Box | Rod]:
    """Totes and boxes left around (re-placed every part) and cables on the floor and hanging, swaying per frame."""
    r = np.random.default_rng([seed, part, 23])
    prims: list[Box | Rod] = []
    for _ in range(round(7 * clutter)):
        half = r.uniform([0.08, 0.08, 0.06], [0.25, 0.2, 0.25])
        side = r.choice([-1.0, 1.0])
        center = np.array([side * r.uniform(0.75, 1.6), r.uniform(-0.9, 0.5), half[2]])
        color = tuple(
            float(x) for x in r.choice([[0.15, 0.3, 0.6], [0.6, 0.12, 0.1], [0.5, 0.5, 0.5], [0.2, 0.45, 0.2]])
        )
        prims.append(Box(center, _yaw_rot(r.uniform(-0.6, 0.6)), half, color, 0.1))  # type: ignore[arg-type]
    wiggle = np.random.default_rng([seed, index, 24])
    for k in range(round(6 * clutter)):
        a = np.array([r.uniform(-1.8, 1.8), r.uniform(-1.0, 0.6), 0.01])
        ang = r.uniform(0, math.pi)
        b = a + r.uniform(0.6, 1.5) * np.array([math.cos(ang), math.sin(ang), 0.0])
        sway = 0.03 * math.sin(2 * math.pi * time_s / (1.5 + k) + k) + wiggle.normal(0, 0.004)
        b = b + np.array([sway, -sway, 0.0])
        color = ((0.05, 0.05, 0.05), (0.85, 0.7, 0.05), (0.1, 0.2, 0.7))[k % 3]
        prims.append(Rod(a, b, float(r.uniform(0.006, 0.012)), color, 0.25))
    if clutter > 0.5:
        swing = 0.12 * math.sin(2 * math.pi * time_s / 3.1)
        top = np.array([-0.7, 0.45, 2.2])
        prims.append(Rod(top, top + np.array([swing, 0.05, -0.9]), 0.01, (0.05, 0.05, 0.05), 0.3))
    return prims


def lighting(seed: int, index: int, time_s: float, clutter: float) -> Lighting:
    r = np.random.default_rng([seed, index, 11])
    gain = 1.0 + clutter * (0.06 * math.sin(2 * math.pi * time_s / 5.0) + 0.03 * float(r.standard_normal()))
    spot = np.array([1.6 * math.sin(2 * math.pi * time_s / 6.0), 1.0, 0.9 + 0.5 * math.cos(2 * math.pi * time_s / 4.3)])
    return Lighting(gain, spot, 0.45 * clutter)


# ---------------------------------------------------------------- shading and sensor


def shade(gb: GBuffer, light: Lighting) -> tuple[F32, F32]:
    """Lambert + Blinn-Phong under one directional light, times the gain, plus the highlight on the background.

    Returns the 3×H×W colour (0..1 nominal) and the H×W specular term (the sensor drops depth where it is high).
    """
    n = gb.normal
    sl = np.s_[:, gb.v0 : gb.v0 + gb.h, gb.u0 : gb.u0 + gb.w]
    hw = gb.rig.halfway[sl]
    lx, ly, lz = (float(x) for x in LIGHT_DIR_W)
    lit = np.maximum(n[0] * lx + n[1] * ly + n[2] * lz, 0.0)
    lit *= 0.75
    lit += 0.3
    ndh = np.maximum(n[0] * hw[0] + n[1] * hw[1] + n[2] * hw[2], 0.0)
    ndh *= ndh
    ndh *= ndh
    ndh *= ndh  # ⁸: matte surfaces
    ndh64 = ndh * ndh
    ndh64 *= ndh64
    ndh64 *= ndh64  # ⁶⁴: the drum's steel
    spec = gb.ks * np.where(gb.layer == 2, ndh64, ndh)
    color = gb.albedo * lit
    color += spec
    if light.spot_amp > 0:
        bg = gb.layer == 1
        t = gb.t[bg]
        rays = gb.rig.rays[sl]
        dist2 = sum((gb.rig.pos[k] + t * rays[k][bg] - light.spot_w[k]) ** 2 for k in range(3))
        glow = light.spot_amp * np.exp(-dist2 / (2 * 0.35**2))
        for k, tint in enumerate((1.0, 0.95, 0.85)):
            color[k][bg] += glow * tint
    color *= np.float32(light.gain)
    return color.astype(np.float32), spec.astype(np.float32)


DEPTH_NOISE_K = 0.002  # σ_z = K·z² (metres): D435-like at the default preset, 2.9 mm at 1.2 m
EDGE_JUMP_M = 0.03  # a pixel farther than its left neighbour by this lies in the stereo shadow
SPECULAR_DROPOUT = 0.45  # specular term above which the metal saturates the IR pattern
SPECKLE_RATE = 0.002
MAX_RANGE_M = 6.0
EXPOSURE = 0.85  # nominal white (albedo 1, fully lit) maps to 0.85·255: highlights keep headroom


def sensor(gb: GBuffer, color: F32, spec: F32, rng: np.random.Generator, depth_scale: float) -> tuple[F32, F32]:
    """RealSense-like artefacts: σ ∝ z² noise, shadow/edge holes, specular holes, speckle; colour read noise.

    Returns (H×W×3 colour in 0..255, H×W depth in sensor units, 0 = invalid), both float32.
    """
    h, w = gb.t.shape
    z = np.where(gb.t < MAX_RANGE_M, gb.t, np.float32(0.0))
    noise = rng.standard_normal((h, w), dtype=np.float32)
    u = rng.random((h, w), dtype=np.float32)
    cnoise = rng.standard_normal((h, w), dtype=np.float32)
    jump = z[:, 1:] - z[:, :-1]
    invalid = z <= 0
    invalid[:, 1:] |= jump > EDGE_JUMP_M
    invalid[:, 2:] |= (jump[:, :-1] > EDGE_JUMP_M) & (u[:, 2:] < 0.5)
    invalid[1:] |= (np.abs(z[1:] - z[:-1]) > EDGE_JUMP_M) & (u[1:] < 0.3)
    invalid |= (gb.layer == 2) & (spec > SPECULAR_DROPOUT) & (u < 0.8)
    invalid |= u > 1.0 - SPECKLE_RATE
    zn = z + DEPTH_NOISE_K * z * z * noise
    depth = np.where(invalid, np.float32(0.0), np.rint(zn / depth_scale))
    out = np.empty((h, w, 3), dtype=np.float32)
    for k, gain in enumerate((1.5, 1.0, 1.8)):  # luminance-correlated read noise, blue noisiest
        out[..., k] = color[k] * (255.0 * EXPOSURE) + gain * cnoise
    return out, depth.astype(np.float32)
