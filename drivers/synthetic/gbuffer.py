"""The G-buffer every primitive is ray cast into, and the procedural textures their albedos sample.

Arrays are planar (3×H×W) so every step is an elementwise numpy op; every primitive is intersected only inside
its projected screen rectangle, so small clutter costs little.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from drivers.synthetic.camera import Rig

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Floats = npt.NDArray[np.floating[Any]]  # float32 or float64: box hits are float64 (their half-sizes are float64)
BoolA = npt.NDArray[np.bool_]
Rect = tuple[int, int, int, int]  # local v0, v1, u0, u1 inside a G-buffer

NEAR_M = 0.05
CUBE = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], dtype=np.float64)

# Layers of the G-buffer.
NOTHING, BACKGROUND, DRUM = 0, 1, 2


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
        self.commit(r, other.t, other.normal[:, win], other.albedo[:, win], ks=other.ks[win], layer=DRUM)
        return win


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
