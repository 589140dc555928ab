"""Everything around the station that changes from frame to frame: cartons on the back belt, a robot, totes and
cables, a worker walking past, and neighbouring drums entering and leaving. None of it may occlude the drum:
:func:`clear_of` drops any primitive that would hide a single pixel of it.
"""

from __future__ import annotations

import math

import numpy as np

from drivers.synthetic.drum import DrumSpec, cast_drum
from drivers.synthetic.gbuffer import BACKGROUND, DRUM, F32, F64, GBuffer
from drivers.synthetic.primitives import Ball, Box, Rod, cast_ball, cast_box, cast_rod, yaw_rot

Prim = Box | Rod | Ball
Occluder = Box | Rod | Ball | DrumSpec

BELT = Box(np.array([0.0, 0.85, 0.75]), np.eye(3), np.array([3.0, 0.25, 0.03]), (0.16, 0.16, 0.17), 0.1, "belt")
BELT_SPEED_M_S = 0.35


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
        prims.append(Box(center, yaw_rot(r.uniform(-0.15, 0.15)), half, color, 0.05, "carton"))
    return prims


def robot_arm(time_s: float, clutter: float, at: tuple[float, float] = (0.95, 0.65)) -> list[Rod | Box]:
    """A handling robot behind the station (at ``at`` on the floor), its two links swinging with the time."""
    if clutter < 0.3:
        return []
    base = np.array([at[0], at[1], 0.0])
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


def loose_clutter(
    seed: int, part: int, index: int, time_s: float, clutter: float, *, hanging: bool = True
) -> list[Box | Rod]:
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
        prims.append(Box(center, yaw_rot(r.uniform(-0.6, 0.6)), half, color, 0.1))  # type: ignore[arg-type]
    wiggle = np.random.default_rng([seed, index, 24])
    for k in range(round(6 * clutter)):
        a = np.array([r.uniform(-1.8, 1.8), r.uniform(-1.0, 0.6), 0.01])
        ang = r.uniform(0, math.pi)
        b = a + r.uniform(0.6, 1.5) * np.array([math.cos(ang), math.sin(ang), 0.0])
        sway = 0.03 * math.sin(2 * math.pi * time_s / (1.5 + k) + k) + wiggle.normal(0, 0.004)
        b = b + np.array([sway, -sway, 0.0])
        color = ((0.05, 0.05, 0.05), (0.85, 0.7, 0.05), (0.1, 0.2, 0.7))[k % 3]
        prims.append(Rod(a, b, float(r.uniform(0.006, 0.012)), color, 0.25))
    if hanging and clutter > 0.5:
        swing = 0.12 * math.sin(2 * math.pi * time_s / 3.1)
        top = np.array([-0.7, 0.45, 2.2])
        prims.append(Rod(top, top + np.array([swing, 0.05, -0.9]), 0.01, (0.05, 0.05, 0.05), 0.3))
    return prims


def worker(time_s: float, clutter: float, at: F64) -> list[Prim]:
    """A person in blue overalls walking slowly to and fro along the line at ``at`` (world, on the floor)."""
    if clutter < 0.2:
        return []
    x = float(at[0]) + 0.6 * math.sin(2 * math.pi * time_s / 9.0)
    hip = np.array([x, float(at[1]), 0.9])
    stride = 0.12 * math.sin(2 * math.pi * time_s / 1.1)
    blue, skin = (0.12, 0.2, 0.45), (0.8, 0.6, 0.48)
    prims: list[Prim] = []
    for side in (-0.1, 0.1):
        foot = np.array([x + (stride if side > 0 else -stride), float(at[1]) + side, 0.05])
        prims.append(Rod(foot, hip + np.array([0.0, side, 0.0]), 0.07, blue, 0.1))
    prims.append(Box(hip + np.array([0.0, 0.0, 0.32]), np.eye(3), np.array([0.12, 0.2, 0.32]), blue, 0.1))
    prims.append(Ball(hip + np.array([0.0, 0.0, 0.78]), 0.11, skin, 0.1))
    for side in (-0.26, 0.26):
        shoulder = hip + np.array([0.0, side, 0.58])
        hand = shoulder + np.array([(-stride if side > 0 else stride) * 1.5, 0.0, -0.6])
        prims.append(Rod(shoulder, hand, 0.045, blue, 0.1))
    return prims


def neighbours(drum: DrumSpec, time_s: float, clutter: float, spacing_m: float) -> list[DrumSpec]:
    """Drums of the same design on the line before and after the station: the downstream ones leave, the upstream
    ones move up one slot every 6 s (parked 60 % of the time), never nearer than one slot to the station."""
    if clutter < 0.2:
        return []
    phase = (time_s / 6.0) % 1.0
    m = 0.0 if phase < 0.6 else (1 - math.cos(math.pi * (phase - 0.6) / 0.4)) / 2
    line = np.array([1.0, 0.0, 0.0])  # the line runs along +x
    out = []
    for slot in (-3.0, -2.0, 1.0, 2.0):
        c = np.asarray(drum.center_w) + spacing_m * (slot + m) * line
        out.append(DrumSpec((float(c[0]), float(c[1]), float(c[2])), drum.yaw, None, drum.design, drum.base))
    return out


def cast_occluder(gb: GBuffer, prim: Occluder, tex: F32) -> None:
    """Cast any background primitive (a neighbouring drum included) into ``gb`` as background."""
    if isinstance(prim, DrumSpec):
        cast_drum(gb, prim, tex, with_defect=False, layer=BACKGROUND)
    elif isinstance(prim, Box):
        cast_box(gb, prim, BACKGROUND, tex)
    elif isinstance(prim, Ball):
        cast_ball(gb, prim, BACKGROUND)
    else:
        cast_rod(gb, prim, BACKGROUND)


def clear_of(drum_layer: GBuffer, prims: list[Occluder], tex: F32) -> list[Occluder]:
    """The primitives that do not occlude the drum: cast each one whose screen rectangle meets the drum layer's
    over a copy of that layer, and drop it if it wins a single drum pixel."""
    rig = drum_layer.rig
    keep = []
    for p in prims:
        pp = rig.project(p.corners())
        v0, u0 = drum_layer.v0, drum_layer.u0
        if pp is not None and (
            pp[0].max() < u0 or pp[0].min() > u0 + drum_layer.w or pp[1].max() < v0 or pp[1].min() > v0 + drum_layer.h
        ):
            keep.append(p)
            continue
        trial = drum_layer.copy()
        cast_occluder(trial, p, tex)
        if not np.any((drum_layer.layer == DRUM) & (trial.layer != DRUM)):
            keep.append(p)
    return keep
