"""Shading, the sensor model and the station's static background: what turns a G-buffer into RealSense-like
colour and depth."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from drivers.synthetic.camera import LIGHT_DIR_W, Lighting, rig_for
from drivers.synthetic.clutter import BELT, BELT_SPEED_M_S
from drivers.synthetic.gbuffer import BACKGROUND, DRUM, F32, BoolA, Floats, GBuffer, value_noise
from drivers.synthetic.primitives import Box, _box_albedo, cast_box, cast_floor_and_wall, cast_rod
from drivers.synthetic.stations import STATIONS, Station
from drivers.synthetic.supports import fixture


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


@dataclass(frozen=True)
class StaticBackground:
    """What never moves (floor, wall, station fixture, the belt's body), cast once per size and seed."""

    gb: GBuffer
    belt_idx: npt.NDArray[np.intp]  # flat pixel indices where the belt is visible
    belt_pl: Floats  # the belt's local hit points there, to redraw its moving ribs
    belt_face: npt.NDArray[np.intp]


@functools.lru_cache(maxsize=4)
def static_background(width: int, height: int, seed: int, station: Station = STATIONS["rail"]) -> StaticBackground:
    """Cast once per station, size and seed: a third of a frame's ray casting is scenery that never changes."""
    st = station
    tex = value_noise(seed)
    gb = GBuffer(rig_for(width, height, st.camera), 0, 0, height, width)
    cast_floor_and_wall(gb, tex, st.wall_y_m)
    for prim in fixture(st.support):
        if isinstance(prim, Box):
            cast_box(gb, prim, BACKGROUND, tex)
        else:
            cast_rod(gb, prim, BACKGROUND)
    hit = cast_box(gb, BELT, BACKGROUND, tex) if "cartons" in st.clutter_kinds else None  # last: winners are final
    if hit is None:
        return StaticBackground(gb, np.zeros(0, np.intp), np.zeros((3, 0), np.float32), np.zeros(0, np.intp))
    return StaticBackground(gb, gb.last_idx.copy(), hit[0], hit[1])


def background(
    seed: int, width: int, height: int, time_s: float, clutter: float, *, station: Station = STATIONS["rail"]
) -> GBuffer:
    """A fresh copy of the station's static background with the back belt (if any) advanced to ``time_s``."""
    st = static_background(width, height, seed, station)
    gb = st.gb.copy()
    if clutter > 0 and st.belt_idx.size:
        moving = Box(BELT.center, BELT.rot, BELT.half, BELT.color, BELT.ks, "belt", phase=-BELT_SPEED_M_S * time_s)
        gb.albedo.reshape(3, -1)[:, st.belt_idx] = _box_albedo(moving, st.belt_pl, st.belt_face, value_noise(seed))
    return gb


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
    spec = gb.ks * np.where(gb.layer == DRUM, ndh64, ndh)
    color = gb.albedo * lit
    color += spec
    if light.spot_amp > 0:
        bg = gb.layer == BACKGROUND
        t = gb.t[bg]
        rays = gb.rig.rays[sl]
        dist2 = sum((gb.rig.pos[k] + t * rays[k][bg] - light.spot_w[k]) ** 2 for k in range(3))
        glow = light.spot_amp * np.exp(-dist2 / (2 * 0.35**2))
        for k, tint in enumerate((1.0, 0.95, 0.85)):
            color[k][bg] += glow * tint
    color *= np.float32(light.gain)
    if light.tint != (1.0, 1.0, 1.0):
        color *= np.asarray(light.tint, dtype=np.float32)[:, None, None]
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
    invalid |= (gb.layer == DRUM) & (spec > SPECULAR_DROPOUT) & (u < 0.8)
    invalid |= u > 1.0 - SPECKLE_RATE
    zn = z + DEPTH_NOISE_K * z * z * noise
    depth = np.where(invalid, np.float32(0.0), np.rint(zn / depth_scale))
    out = np.empty((h, w, 3), dtype=np.float32)
    for k, gain in enumerate((1.5, 1.0, 1.8)):  # luminance-correlated read noise, blue noisiest
        out[..., k] = color[k] * (255.0 * EXPOSURE) + gain * cnoise
    return out, depth.astype(np.float32)
