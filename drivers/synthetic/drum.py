"""The drum: its design (size, perforations, beads, flange, lifters, ribbed back), where a part sits, and its
analytic ray cast (shell, inner wall, back cap, front rim, flange) plus what is mounted on it.

Drum-local frame: x is the axis, from the open front end (x = −L/2) to the closed back (x = +L/2); angles θ on
the shell are measured from local z toward local −y, and a station orients local z so the camera looks at the
shell around θ ≈ 57° (as at the original rail station, where local z is world up).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from drivers.synthetic.camera import Rig
from drivers.synthetic.defects import DefectSpec, albedo_factor, surface_offset
from drivers.synthetic.gbuffer import CUBE, DRUM, F32, F64, NEAR_M, BoolA, GBuffer, sample
from drivers.synthetic.primitives import Ball, Box, _safe_inv, cast_ball, cast_box, frame_rot, yaw_rot

BRACKET_HALF_M = (0.035, 0.02, 0.012)  # along axis, along circumference, along normal


@dataclass(frozen=True)
class DrumDesign:
    """How a drum is made. The default is the original line's drum: Ø 0.50 × 0.35 m, 7 mm holes on 16 mm."""

    radius_m: float = 0.25
    length_m: float = 0.35
    rim_m: float = 0.05  # width of the open end's ring (from radius − rim to the radius)
    hole_pitch_m: float = 0.016  # staggered perforation pitch
    hole_radius_m: float = 0.0035  # 0: a plain shell
    plain_end_m: float = 0.03  # unperforated band at each end of the shell
    beads: tuple[float, ...] = ()  # axial positions of circumferential beads (pressed grooves)
    bead_depth_m: float = 0.003
    bead_half_width_m: float = 0.008
    flange_m: float = 0.0  # radial width of a flange around the open end (0: none)
    flange_thick_m: float = 0.012
    bolts: int = 0  # bolt heads on the flange's front face
    tab_deg: float | None = None  # angle of the flange's asymmetric tab (None: none)
    lifters: int = 0  # ribs along the inner wall
    back_ribs: int = 0  # radial ribs on the inside of the back wall (with a hub)
    bracket_at: tuple[float, float] = (0.10, math.radians(40.0))  # (axial position, θ) of the mounted bracket
    wall_m: float = 0.0  # sheet thickness: the inner wall's radius is radius − wall (0: an ideal thin shell)
    ovality_m: float = 0.0  # out-of-roundness: the shell's radius varies by ± this (2 lobes, phase per part)

    @property
    def outer_radius_m(self) -> float:
        """Radius of everything mounted on the drum (flange, tab), for screen rectangles."""
        return self.radius_m + self.flange_m + (0.016 if self.tab_deg is not None else 0.0)


@dataclass(frozen=True)
class DrumSpec:
    """Where this part's drum sits (its pose), how it is made and what is wrong with it."""

    center_w: tuple[float, float, float]
    yaw: float
    defect: DefectSpec | None = None
    design: DrumDesign = DrumDesign()
    base: tuple[tuple[float, ...], ...] | None = None  # station orientation (3×3) before the yaw (None: legacy)
    ovality_phase: float = 0.0  # where this part's shell is widest (θ, rad)

    @property
    def rot(self) -> F64:
        """Drum-local → world: the yaw about the vertical after the station's orientation."""
        r = yaw_rot(self.yaw)
        return r if self.base is None else r @ np.asarray(self.base)

    def surface_frame(self, s: float, theta: float) -> tuple[F64, F64, F64, F64]:
        """World point and (axis, circumferential, normal) unit vectors on the shell at (s, θ)."""
        n_l = np.array([0.0, -math.sin(theta), math.cos(theta)])
        e_u = np.array([0.0, -math.cos(theta), -math.sin(theta)])
        rot = self.rot
        return (
            np.asarray(self.center_w) + rot @ (np.array([s, 0.0, 0.0]) + self.design.radius_m * n_l),
            rot[:, 0],
            rot @ e_u,
            rot @ n_l,
        )

    def corners(self) -> F64:
        """Corners of a box holding the drum and everything mounted on it (world)."""
        return _drum_corners(self)

    def to_world(self, local: F64) -> F64:
        """Drum-local points (N×3) to world."""
        out: F64 = np.asarray(self.center_w) + local @ self.rot.T
        return out


def as_base(rot: F64 | None) -> tuple[tuple[float, ...], ...] | None:
    """A 3×3 rotation as the hashable nested tuple :class:`DrumSpec` keeps (None stays None)."""
    return None if rot is None else tuple(tuple(float(v) for v in row) for row in rot)


def facing_base(axis_w: F64, toward_camera_w: F64, theta_cam: float = math.radians(56.7)) -> F64:
    """Drum-local → world rotation with local x along ``axis_w`` and the shell normal at θ = ``theta_cam``
    pointing as close to the camera as possible, so defects and the bracket (θ 20–95°) face the camera."""
    x = axis_w / np.linalg.norm(axis_w)
    c = toward_camera_w - (toward_camera_w @ x) * x
    c /= np.linalg.norm(c)
    w = np.cross(x, c)
    for sign in (1.0, -1.0):
        z = math.cos(theta_cam) * c + sign * math.sin(theta_cam) * w
        y = np.cross(z, x)
        if (-math.sin(theta_cam) * y + math.cos(theta_cam) * z) @ c > 0.999:
            return np.stack([x, y, z], axis=1)
    raise AssertionError("no right-handed drum frame faces the camera")  # unreachable: one sign always works


def _on_surface(drum: DrumSpec, s: float, theta: float, turn: float) -> tuple[F64, F64]:
    """Point and frame (axis-ish, circumferential-ish, normal) turned by ``turn`` about the normal at (s, θ)."""
    p, ex, eu, en = drum.surface_frame(s, theta)
    c, sn = math.cos(turn), math.sin(turn)
    return p, np.stack([c * ex + sn * eu, -sn * ex + c * eu, en], axis=1)


def bracket_box(drum: DrumSpec) -> Box | None:
    """The component every good drum carries: a bracket on the shell. Misaligned: shifted and turned; missing: None."""
    s, th, turn = drum.design.bracket_at[0], drum.design.bracket_at[1], 0.0
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


def mounted_parts(drum: DrumSpec) -> list[Box | Ball]:
    """What the design adds to the shell, identical on every part: lifters, back ribs and hub, flange bolts, tab."""
    dz = drum.design
    r, half_l = dz.radius_m, dz.length_m / 2
    rot = drum.rot
    steel, dark = (0.5, 0.51, 0.53), (0.3, 0.3, 0.32)
    parts: list[Box | Ball] = []

    def radial(phi: float) -> F64:
        return np.array([0.0, -math.sin(phi), math.cos(phi)])

    for k in range(dz.lifters):  # ribs along the inner wall, 35 mm high
        n = radial(math.radians(25.0) + 2 * math.pi * k / dz.lifters)
        centre = (r - 0.0185) * n
        box_rot = rot @ frame_rot(-n, np.array([1.0, 0.0, 0.0]))
        half = np.array([half_l - 0.03, 0.015, 0.0175])
        parts.append(Box(drum.to_world(centre[None])[0], box_rot, half, steel, ks=0.4))
    if dz.back_ribs:  # radial stiffening ribs on the inside of the back wall, and the hub
        for k in range(dz.back_ribs):
            n = radial(2 * math.pi * k / dz.back_ribs)
            span = (r - 0.02 - 0.075) / 2
            centre = np.array([half_l - 0.009, 0.0, 0.0]) + (0.075 + span) * n
            box_rot = rot @ frame_rot(np.array([-1.0, 0.0, 0.0]), n)
            parts.append(Box(drum.to_world(centre[None])[0], box_rot, np.array([span, 0.007, 0.009]), steel, ks=0.4))
        hub_rot = rot @ frame_rot(np.array([-1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0]))
        hub = drum.to_world(np.array([[half_l - 0.015, 0.0, 0.0]]))[0]
        parts.append(Box(hub, hub_rot, np.array([0.05, 0.05, 0.015]), dark, ks=0.3))
    rb = r + dz.flange_m / 2 if dz.flange_m > 0 else r - dz.rim_m / 2
    for k in range(dz.bolts):  # bolt heads on the front face
        n = radial(2 * math.pi * (k + 0.5) / dz.bolts)
        centre = np.array([-half_l - 0.002, 0.0, 0.0]) + rb * n
        parts.append(Ball(drum.to_world(centre[None])[0], 0.006, (0.62, 0.6, 0.55), ks=0.5))
    if dz.tab_deg is not None:  # one asymmetric tab on the flange's rim (how an operator orients the drum)
        n = radial(math.radians(dz.tab_deg))
        rf = r + dz.flange_m
        centre = np.array([-half_l + dz.flange_thick_m / 2, 0.0, 0.0]) + (rf + 0.006) * n
        box_rot = rot @ frame_rot(n, np.array([1.0, 0.0, 0.0]))
        half = np.array([dz.flange_thick_m / 2, 0.022, 0.008])
        parts.append(Box(drum.to_world(centre[None])[0], box_rot, half, steel, ks=0.4))
    return parts


def _perforated(dz: DrumDesign, u: F32, s: F32) -> BoolA:
    """Staggered round perforations over the shell, leaving plain bands at both ends."""
    p = dz.hole_pitch_m
    js = np.floor(s / p)
    shift = (js % 2) * (p / 2)
    cu = (np.floor((u - shift) / p) + 0.5) * p + shift
    near = (s - (js + 0.5) * p) ** 2 + (u - cu) ** 2 < dz.hole_radius_m**2
    holes: BoolA = near & (np.abs(s) < dz.length_m / 2 - dz.plain_end_m)
    return holes


def _bead_offset(dz: DrumDesign, s: F32) -> tuple[F32, F32, F32]:
    """Inward displacement of the circumferential beads and its gradient (u, s): a (1 − x²)² groove profile."""
    delta = np.zeros_like(s)
    grad = np.zeros_like(s)
    for sb in dz.beads:
        x = (s - sb) / dz.bead_half_width_m
        w = np.maximum(1.0 - x * x, 0.0).astype(np.float32)
        delta += dz.bead_depth_m * w * w
        grad += -4.0 * dz.bead_depth_m * w * x / dz.bead_half_width_m
    return delta, np.zeros_like(s), grad


def _ovality_offset(drum: DrumSpec, theta: F32) -> tuple[F32, F32, F32] | None:
    """Out-of-roundness as an inward displacement δ = −e·cos 2(θ − φ) of the outer shell, and its gradient."""
    e = drum.design.ovality_m
    if e <= 0:
        return None
    arg = 2 * (theta - np.float32(drum.ovality_phase))
    delta = (-e * np.cos(arg)).astype(np.float32)
    grad_u = (2 * e / drum.design.radius_m * np.sin(arg)).astype(np.float32)
    return delta, grad_u, np.zeros_like(delta)


def _drum_hits(
    dz: DrumDesign, o: tuple[float, float, float], d: list[F32]
) -> tuple[F32, npt.NDArray[np.intp], F32, F32]:
    """Nearest drum surface per ray: t, kind, θ and s. Kinds: 0 outer shell, 1 inner wall, 2 back cap,
    3 front rim (and the flange's front face), 4 the flange's outer rim, 5 the flange's back face."""
    half_l, radius = dz.length_m / 2, dz.radius_m
    rim_inner = radius - dz.rim_m
    a = d[1] * d[1] + d[2] * d[2]
    b = 2 * (o[1] * d[1] + o[2] * d[2])
    disc = b * b - 4 * a * (o[1] ** 2 + o[2] ** 2 - radius**2)
    sq, inv2a = np.sqrt(np.maximum(disc, 0)), _safe_inv(2 * a)
    t1, t2 = (-b - sq) * inv2a, (-b + sq) * inv2a
    x1, x2 = o[0] + t1 * d[0], o[0] + t2 * d[0]
    theta = np.arctan2(-(o[1] + t1 * d[1]), o[2] + t1 * d[2])
    outer = (disc > 0) & (np.abs(x1) <= half_l)
    if dz.hole_radius_m > 0:
        outer &= ~_perforated(dz, radius * theta, x1)
    if dz.wall_m > 0:  # the inner wall lies one sheet thickness inside the outer surface
        disc_in = b * b - 4 * a * (o[1] ** 2 + o[2] ** 2 - (radius - dz.wall_m) ** 2)
        t2 = (-b + np.sqrt(np.maximum(disc_in, 0))) * inv2a
        x2 = o[0] + t2 * d[0]
    inner = (disc > 0) & (np.abs(x2) <= half_l)
    if dz.wall_m > 0:
        inner &= disc_in > 0
    inv_dx = _safe_inv(d[0])
    tb, tr = (half_l - o[0]) * inv_dx, (-half_l - o[0]) * inv_dx
    rho_b = (o[1] + tb * d[1]) ** 2 + (o[2] + tb * d[2]) ** 2
    rho_r = (o[1] + tr * d[1]) ** 2 + (o[2] + tr * d[2]) ** 2
    rf = radius + dz.flange_m
    rim = (rho_r <= rf**2) & (rho_r >= rim_inner**2)
    inf = np.float32(np.inf)
    cands = [
        np.where(outer, t1, inf),
        np.where(inner, t2, inf),
        np.where(rho_b <= radius**2, tb, inf),
        np.where(rim, tr, inf),
    ]
    if dz.flange_m > 0:
        xf = -half_l + dz.flange_thick_m
        disc_f = b * b - 4 * a * (o[1] ** 2 + o[2] ** 2 - rf**2)
        tf = (-b - np.sqrt(np.maximum(disc_f, 0))) * inv2a
        xff = o[0] + tf * d[0]
        cands.append(np.where((disc_f > 0) & (xff >= -half_l) & (xff <= xf), tf, inf))
        tk = (xf - o[0]) * inv_dx
        rho_k = (o[1] + tk * d[1]) ** 2 + (o[2] + tk * d[2]) ** 2
        cands.append(np.where((rho_k <= rf**2) & (rho_k >= radius**2), tk, inf))
    cand = np.stack(cands)
    cand = np.where(cand > NEAR_M, cand, inf)
    kind = np.argmin(cand, axis=0)
    return np.take_along_axis(cand, kind[None], 0)[0], kind, theta.astype(np.float32), x1


def cast_drum_body(gb: GBuffer, drum: DrumSpec, tex: F32, with_defect: bool, layer: int = DRUM) -> None:
    """Shell (perforated or plain, beaded), inner wall seen through holes and the open end, solid back cap, front
    rim and flange; plus the shell-surface defects (displacement for dents/deformations, albedo for scratches and
    discoloration)."""
    dz = drum.design
    r = gb.rect(_drum_corners(drum))
    if r is None:
        return
    o, d = gb.local_rays(r, drum.rot, np.asarray(drum.center_w))
    t, kind, theta, s = _drum_hits(dz, o, d)
    dfx = drum.defect if with_defect else None
    offset = surface_offset(dfx, dz.radius_m, dz.radius_m * theta, s)
    for extra in (_bead_offset(dz, s) if dz.beads else None, _ovality_offset(drum, theta)):
        if extra is not None:
            offset = extra if offset is None else (offset[0] + extra[0], offset[1] + extra[1], offset[2] + extra[2])
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
    factor = albedo_factor(dfx, dz.radius_m, dz.radius_m * thw, sw, tex)
    if factor is not None:
        albedo = np.where(shell, albedo * factor, albedo)
    ks = np.where(kw == 1, np.float32(0.15), np.float32(0.6))
    gb.commit(
        r, t, drum.rot.astype(np.float32) @ normal.astype(np.float32), albedo.astype(np.float32), ks=ks, layer=layer
    )


def _drum_surface(pl: F32, kind: npt.NDArray[np.intp], theta: F32, tex: F32) -> tuple[F32, F32]:
    """Local normals and brushed-steel albedo (brushed along the circumference; radially on the caps)."""
    rho = np.sqrt(pl[1] ** 2 + pl[2] ** 2)
    inv_rho = 1.0 / np.maximum(rho, 1e-6)
    zero = np.zeros_like(rho)
    radial = np.stack([zero, -np.sin(theta), np.cos(theta)])
    inner = np.stack([zero, -pl[1] * inv_rho, -pl[2] * inv_rho])
    facing_back = (kind == 2) | (kind == 5)
    cap = np.stack([np.where(facing_back, 1.0, -1.0).astype(np.float32), zero, zero])
    normal = np.where(kind == 0, radial, np.where(kind == 1, inner, np.where(kind == 4, -inner, cap)))
    brush = sample(tex, np.where((kind == 2) | (kind == 3) | (kind == 5), rho, pl[0]) * 7.0, zero + 0.37, 300.0)
    base = np.where(kind == 1, np.float32(0.34), np.float32(0.56))
    base = np.where((kind == 2) & (rho < 0.07), np.float32(0.3), base) * (0.9 + 0.2 * brush)
    return normal.astype(np.float32), (np.array([[0.97], [0.99], [1.03]], dtype=np.float32) * base)


def _drum_corners(drum: DrumSpec) -> F64:
    dz = drum.design
    reach = dz.outer_radius_m + 0.03
    half = np.array([dz.length_m / 2 + 0.02, reach, reach])
    corners: F64 = np.asarray(drum.center_w) + (CUBE * half) @ drum.rot.T
    return corners


def defect_corners(drum: DrumSpec) -> F64:
    """Points whose screen rectangle bounds every pixel the drum's defect can change."""
    dfx = drum.defect
    assert dfx is not None
    if dfx.kind in ("misaligned_part", "missing_part"):
        nominal = bracket_box(dataclasses.replace(drum, defect=None))
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
            p, _, _, en = drum.surface_frame(dfx.s + ds, dfx.theta + du / drum.design.radius_m)
            pts += [p + 0.01 * en, p - (abs(dfx.amount) + 0.01) * en]
    return np.asarray(pts)


def cast_drum(gb: GBuffer, drum: DrumSpec, tex: F32, with_defect: bool, layer: int = DRUM) -> None:
    """The drum and everything mounted on it (design parts, bracket, a foreign object) into ``gb``."""
    cast_drum_body(gb, drum, tex, with_defect, layer)
    for part in mounted_parts(drum):
        if isinstance(part, Ball):
            cast_ball(gb, part, layer)
        else:
            cast_box(gb, part, layer, tex)
    spec = drum if with_defect else dataclasses.replace(drum, defect=None)
    bracket = bracket_box(spec)
    if bracket is not None:
        cast_box(gb, bracket, layer, tex)
    obj = foreign_object(spec)
    if isinstance(obj, Ball):
        cast_ball(gb, obj, layer)
    elif isinstance(obj, Box):
        cast_box(gb, obj, layer, tex)


def render_drum_layer(rig: Rig, drum: DrumSpec, tex: F32, with_defect: bool, within: F64 | None = None) -> GBuffer:
    """The drum and what it carries, over the drum's screen rectangle (or that of the points ``within``)."""
    full = GBuffer(rig, 0, 0, rig.intr.height, rig.intr.width)
    r = full.rect(_drum_corners(drum) if within is None else within)
    if r is None:
        return GBuffer(rig, 0, 0, 0, 0)
    gb = GBuffer(rig, r[0], r[2], r[1] - r[0], r[3] - r[2])
    cast_drum(gb, drum, tex, with_defect)
    return gb
