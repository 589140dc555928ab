"""What the drum rests on: the original rail and cradle blocks, a roller conveyor with legs, and a V-cradle on a
pallet riding a belt (also used tilted, on a pedestal with an end stop).

``fixture`` is the static part of a station (cast once per station, size and seed); ``carrier`` is what arrives
with each part (a pallet and its cradle) and follows the part's pose.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from drivers.synthetic.drum import DrumDesign, DrumSpec
from drivers.synthetic.gbuffer import F64
from drivers.synthetic.primitives import Box, Rod

SupportKind = Literal["rail", "rollers", "cradle", "tilted-cradle"]

STEEL, DARK, BLUE = (0.55, 0.56, 0.58), (0.3, 0.31, 0.33), (0.15, 0.3, 0.55)
WOOD = (0.72, 0.58, 0.4)
ROLLER_TOP_M = 0.72  # top of the roller conveyor's rollers
BELT_TOP_M = 0.40  # top of the belt that carries pallets
PALLET_M = (0.40, 0.32, 0.122)  # EUR-style pallet: half length, half width, height
TABLE_TOP_M = 0.6
CRADLE_SLOPE = math.radians(45.0)  # each V-cradle face is inclined this much from the horizontal
SLAB_HALF_M = (0.09, 0.015)  # half length along the slope, half thickness
BASE_PLATE_M = 0.02  # half thickness of the cradle's base plate
_EYE = np.eye(3)


def nominal_center(kind: SupportKind, design: DrumDesign, axis_w: F64) -> tuple[float, float, float]:
    """Where the drum's centre sits on this support (before the per-part jitter)."""
    r, half_l = design.radius_m, design.length_m / 2
    if kind == "rail":
        return (0.0, 0.0, 0.67 + r)
    if kind == "rollers":  # standing on its back: the back cap rests on the rollers
        return (0.0, 0.0, ROLLER_TOP_M + half_l + 0.001)
    if kind == "cradle":
        return (0.0, 0.0, BELT_TOP_M + PALLET_M[2] + _cradle_drop(r))
    # tilted cradle: the drum's lowest point clears a 0.1 m pedestal on the table
    low = half_l * abs(float(axis_w[2])) + r * math.hypot(float(axis_w[0]), float(axis_w[1]))
    return (0.0, 0.0, TABLE_TOP_M + 0.1 + low)


def _cradle_drop(radius: float) -> float:
    """Height of the drum centre above the cradle's base plate bottom."""
    return radius * math.cos(CRADLE_SLOPE) + SLAB_HALF_M[0] * math.sin(CRADLE_SLOPE) + 2 * BASE_PLATE_M + 0.01


def fixture(kind: SupportKind) -> list[Box | Rod]:
    """The static station: always present, never moving."""
    if kind == "rail":  # table, the line's two rails and the cradle blocks the drum rests on
        return [
            Box(np.array([0.0, 0.0, 0.3]), _EYE, np.array([0.6, 0.42, 0.3]), (0.38, 0.4, 0.44), 0.1),
            Box(np.array([0.0, -0.14, 0.62]), _EYE, np.array([1.6, 0.02, 0.02]), STEEL, 0.5),
            Box(np.array([0.0, 0.14, 0.62]), _EYE, np.array([1.6, 0.02, 0.02]), STEEL, 0.5),
            Box(np.array([-0.12, 0.0, 0.6575]), _EYE, np.array([0.03, 0.2, 0.0175]), DARK, 0.2),
            Box(np.array([0.12, 0.0, 0.6575]), _EYE, np.array([0.03, 0.2, 0.0175]), DARK, 0.2),
        ]
    if kind == "rollers":
        return roller_conveyor()
    if kind == "cradle":  # the belt the pallets ride on, and its frame
        prims: list[Box | Rod] = [
            Box(
                np.array([0.0, 0.0, BELT_TOP_M - 0.03]),
                _EYE,
                np.array([3.0, 0.45, 0.03]),
                (0.16, 0.16, 0.17),
                0.1,
                "belt",
            ),
            Box(np.array([0.0, -0.47, BELT_TOP_M - 0.05]), _EYE, np.array([3.0, 0.02, 0.06]), BLUE, 0.3),
            Box(np.array([0.0, 0.47, BELT_TOP_M - 0.05]), _EYE, np.array([3.0, 0.02, 0.06]), BLUE, 0.3),
        ]
        for x in (-2.0, -0.9, 0.9, 2.0):
            for y in (-0.47, 0.47):
                prims.append(Box(np.array([x, y, 0.17]), _EYE, np.array([0.03, 0.03, 0.17]), BLUE, 0.2))
        return prims
    # tilted cradle: a steel table the fixture stands on
    return [
        Box(np.array([0.0, 0.0, TABLE_TOP_M / 2]), _EYE, np.array([0.5, 0.45, TABLE_TOP_M / 2]), (0.4, 0.42, 0.4), 0.1)
    ]


def roller_conveyor() -> list[Box | Rod]:
    """Rollers (Ø 60 mm, 90 mm pitch) between two side frames, on legs with cross braces."""
    prims: list[Box | Rod] = []
    half_w = 0.36
    for k in range(-20, 21):
        x = 0.09 * k
        prims.append(
            Rod(
                np.array([x, -half_w, ROLLER_TOP_M - 0.03]),
                np.array([x, half_w, ROLLER_TOP_M - 0.03]),
                0.03,
                (0.62, 0.63, 0.65),
                0.5,
            )
        )
    for y in (-half_w - 0.02, half_w + 0.02):
        prims.append(Box(np.array([0.0, y, ROLLER_TOP_M - 0.04]), _EYE, np.array([1.9, 0.02, 0.06]), BLUE, 0.3))
        for x in (-1.6, -0.55, 0.55, 1.6):
            prims.append(
                Box(
                    np.array([x, y, (ROLLER_TOP_M - 0.1) / 2]),
                    _EYE,
                    np.array([0.025, 0.025, (ROLLER_TOP_M - 0.1) / 2]),
                    BLUE,
                    0.2,
                )
            )
    for x in (-1.6, -0.55, 0.55, 1.6):
        prims.append(Box(np.array([x, 0.0, 0.15]), _EYE, np.array([0.02, half_w, 0.02]), BLUE, 0.2))
    return prims


def _axis_frame(drum: DrumSpec) -> tuple[F64, F64, F64]:
    """Axis, sideways and up-ish unit vectors of a drum (up-ish: world up made orthogonal to the axis)."""
    ex = drum.rot[:, 0]
    up = np.array([0.0, 0.0, 1.0]) - ex[2] * ex
    ez = up / np.linalg.norm(up)
    return ex, np.cross(ez, ex), ez


def v_cradle(drum: DrumSpec) -> list[Box | Rod]:
    """Two faces inclined ±45° touching the shell, their blocks and a base plate, all in the drum's axis frame."""
    ex, ey, ez = _axis_frame(drum)
    r = drum.design.radius_m
    c = np.asarray(drum.center_w)
    rot = np.stack([ex, ey, ez], axis=1)
    prims: list[Box | Rod] = []
    s, co = math.sin(CRADLE_SLOPE), math.cos(CRADLE_SLOPE)
    drop = _cradle_drop(r)
    for side in (-1.0, 1.0):
        n = side * s * ey - co * ez  # from the centre to the contact line
        slope = side * co * ey + s * ez
        centre = c + (r + 0.001 + SLAB_HALF_M[1]) * n
        slab_rot = np.stack([ex, np.cross(-n, ex), -n], axis=1)
        if np.linalg.det(slab_rot) < 0:
            slab_rot[:, 1] = -slab_rot[:, 1]
        prims.append(Box(centre, slab_rot, np.array([0.1, SLAB_HALF_M[0], SLAB_HALF_M[1]]), (0.2, 0.22, 0.25), 0.15))
        low = centre - SLAB_HALF_M[0] * slope
        foot = c - (drop - 2 * BASE_PLATE_M) * ez
        h = max(float((low - foot) @ ez), 0.01)
        block = foot + (low - foot) @ ey * ey + (h / 2) * ez
        prims.append(Box(block, rot, np.array([0.08, 0.035, h / 2]), DARK, 0.2))
    plate = c - (drop - BASE_PLATE_M) * ez
    prims.append(Box(plate, rot, np.array([0.12, r * s + 0.1, BASE_PLATE_M]), DARK, 0.2))
    return prims


def carrier(kind: SupportKind, drum: DrumSpec) -> list[Box | Rod]:
    """What arrives with the part and follows its pose: a pallet with a V-cradle, or a tilted cradle with an end stop
    on a pedestal. The rail and the roller conveyor carry nothing per part."""
    if kind in ("rail", "rollers"):
        return []
    prims = v_cradle(drum)
    c = np.asarray(drum.center_w)
    if kind == "cradle":
        px, py, ph = PALLET_M
        along = drum.rot[:, 0] * np.array([1.0, 1.0, 0.0])
        along /= np.linalg.norm(along)
        yaw = np.stack([along, np.cross([0.0, 0.0, 1.0], along), [0.0, 0.0, 1.0]], axis=1)
        base = np.array([c[0], c[1], BELT_TOP_M])
        for y in (-py + 0.05, 0.0, py - 0.05):  # bottom boards, blocks, deck boards
            prims.append(
                Box(base + yaw @ np.array([0.0, y, 0.011]), yaw, np.array([px, 0.05, 0.011]), WOOD, 0.05, "wood")
            )
            for x in (-px + 0.05, 0.0, px - 0.05):
                prims.append(
                    Box(
                        base + yaw @ np.array([x, y, 0.022 + 0.039]),
                        yaw,
                        np.array([0.05, 0.05, 0.039]),
                        WOOD,
                        0.05,
                        "wood",
                    )
                )
        for x in np.linspace(-px + 0.05, px - 0.05, 5):
            prims.append(
                Box(base + yaw @ np.array([x, 0.0, ph - 0.011]), yaw, np.array([0.05, py, 0.011]), WOOD, 0.05, "wood")
            )
        return prims
    ex, ey, ez = _axis_frame(drum)
    rot = np.stack([ex, ey, ez], axis=1)
    half_l = drum.design.length_m / 2
    stop = c + (half_l + 0.014) * ex  # the end stop the back of the drum leans on
    prims.append(Box(stop, rot, np.array([0.012, 0.16, drum.design.radius_m * 0.8]), (0.2, 0.22, 0.25), 0.15))
    low = min(float(np.min(p.corners()[:, 2])) for p in prims if isinstance(p, Box))
    h = max(low - TABLE_TOP_M, 0.02)
    prims.append(Box(np.array([c[0], c[1], TABLE_TOP_M + h / 2]), _EYE, np.array([0.14, 0.14, h / 2]), DARK, 0.2))
    return prims
