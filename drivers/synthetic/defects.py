"""What can be wrong with a drum: the seven defect types, how a part's defect is drawn, and how it changes the
shell (a displacement field for dents and deformations, an albedo factor for scratches and discoloration).

Surface positions are (axial s, angle θ from the drum frame's top toward the camera), u = R·θ along the
circumference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from drivers.synthetic.gbuffer import F32, sample
from edge.core.frame import DEFECT_TYPES, DefectType


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


def sample_defect(seed: int, part: int, kind: DefectType, length_m: float = 0.35, scale: float = 1.0) -> DefectSpec:
    """Subtle defect parameters for a part, on the shell's camera-facing side, clear of the bracket.

    Axial positions are drawn for a 0.35 m drum and scaled to ``length_m``; ``scale`` shrinks or grows every
    footprint and depth (0.5: 1.5 mm wide scratches, 15–25 mm dents); the draws themselves never change.
    """
    r = np.random.default_rng([seed, part, 25, DEFECT_TYPES.index(kind)])
    theta = math.radians(r.uniform(20.0, 95.0))
    s = r.uniform(-0.12, 0.04)
    sign = float(r.choice([-1.0, 1.0]))
    match kind:
        case "dent":  # a local inward push: 15-25 mm radius, 4-7 mm deep
            radius = r.uniform(0.015, 0.025)
            spec = DefectSpec(kind, s, theta, (radius, radius), r.uniform(0.004, 0.007))
        case "deformation":  # a broad, shallow flattening or bulge of the shell
            size = (r.uniform(0.045, 0.07), r.uniform(0.06, 0.09))
            spec = DefectSpec(kind, r.uniform(-0.08, 0.0), theta, size, sign * r.uniform(0.005, 0.008))
        case "foreign_object":  # a 16-26 mm ball or a 24-40 mm bolt
            variant = int(r.integers(2))
            size = (r.uniform(0.008, 0.013), 0.0) if variant == 0 else (0.005, r.uniform(0.012, 0.02))
            spec = DefectSpec(kind, s, theta, size, 0.0, r.uniform(0, math.pi), variant)
        case "misaligned_part":  # bracket 15-25 mm off along the axis, turned 6-11°
            shift, turn = sign * r.uniform(0.015, 0.025), float(r.choice([-1, 1])) * r.uniform(0.1, 0.2)
            spec = DefectSpec(kind, shift, r.uniform(-0.03, 0.03), (0.0, 0.0), 0.0, turn)
        case "missing_part":
            spec = DefectSpec(kind, 0.0, 0.0, (0.0, 0.0), 0.0)
        case "scratch":  # 3 mm wide, 50-90 mm long, brighter or darker than the brushed steel
            length = r.uniform(0.025, 0.045)
            spec = DefectSpec(kind, s, theta, (0.0015, length), 1.45 if sign > 0 else 0.6, r.uniform(0, math.pi))
        case _:  # discoloration: a 40-80 mm heat-tint blotch, 10-20 % darker and yellower
            size = (r.uniform(0.02, 0.04), r.uniform(0.02, 0.04))
            spec = DefectSpec(kind, s, theta, size, r.uniform(0.8, 0.9))
    if length_m == 0.35 and scale == 1.0:
        return spec
    geometric = kind in ("dent", "deformation")
    return DefectSpec(
        kind,
        spec.s * length_m / 0.35 if kind != "misaligned_part" else spec.s,
        spec.theta,
        (spec.size[0] * scale, spec.size[1] * scale),
        spec.amount * scale if geometric else spec.amount,
        spec.angle,
        spec.variant,
    )


def surface_offset(dfx: DefectSpec | None, radius: float, u: F32, s: F32) -> tuple[F32, F32, F32] | None:
    """Inward displacement δ(u, s) and its gradient for dents and deformations (compact support: exactly 0 outside)."""
    if dfx is None or dfx.kind not in ("dent", "deformation"):
        return None
    ru, rs = dfx.size
    du = (u - radius * dfx.theta) / ru
    ds = (s - dfx.s) / rs
    w = np.maximum(1.0 - (du * du + ds * ds), 0.0).astype(np.float32)
    g = -4.0 * dfx.amount * w
    f32 = np.float32  # already float32 (float32 arrays times Python floats): asarray only tells the type checker
    return np.asarray(dfx.amount * w * w, f32), np.asarray(g * du / ru, f32), np.asarray(g * ds / rs, f32)


def albedo_factor(dfx: DefectSpec | None, radius: float, u: F32, s: F32, tex: F32) -> F32 | None:
    """Per-channel (3×N) albedo multiplier of the colour-only defects (scratch, discoloration) on the shell."""
    if dfx is None or dfx.kind not in ("scratch", "discoloration"):
        return None
    du, ds = u - radius * dfx.theta, s - dfx.s
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
