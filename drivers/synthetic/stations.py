"""Named station presets: how the drum lies, what it rests on, how it is made, where the camera stands, the light,
and what moves around it. ``rail`` is the original line (the default, so older recordings and figures keep their
meaning); the others are the shapes real stations take.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from drivers.synthetic.camera import CameraPose
from drivers.synthetic.drum import DrumDesign, DrumSpec, as_base, facing_base
from drivers.synthetic.gbuffer import F64
from drivers.synthetic.supports import SupportKind, nominal_center

Pose = Literal["lying", "standing", "tilted"]
ClutterKind = Literal["cartons", "robot", "totes", "cables", "hanging-cable", "worker", "neighbours"]


@dataclass(frozen=True)
class Station:
    """One station of the family; every field is fixed per station (per-part jitter and clutter come on top)."""

    name: str
    description: str
    design: DrumDesign
    pose: Pose
    support: SupportKind
    camera_distance_m: float
    camera_elevation_deg: float
    camera_azimuth_deg: float
    tilt_deg: float = 0.0  # axis above the horizontal, for pose "tilted"
    light_level: float = 1.0  # station light relative to the original line (±20 %)
    light_tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # colour temperature as an RGB gain
    clutter_kinds: tuple[ClutterKind, ...] = ("cartons", "robot", "totes", "cables", "hanging-cable")
    robot_at: tuple[float, float] = (0.95, 0.65)
    worker_at: tuple[float, float] = (0.0, 1.2)
    wall_y_m: float = 2.2
    defect_scale: float = 1.0  # footprints and depths of the defects (0.6: 1.8 mm scratches, Ø 18–30 mm dents)
    part_tilt_deg: float = 0.0  # per-part tilt jitter (× pose_jitter), on top of ±1 cm and ±2° yaw
    legacy_frame: bool = False  # the original rail line's drum frame (local z = world up), kept bit for bit
    axis_w: tuple[float, float, float] = field(init=False)

    def __post_init__(self) -> None:
        tilt = {"lying": 0.0, "standing": 90.0, "tilted": self.tilt_deg}[self.pose]
        t = math.radians(tilt)
        object.__setattr__(self, "axis_w", (math.cos(t), 0.0, -math.sin(t)))  # the open end points up and toward −x

    @property
    def center_w(self) -> tuple[float, float, float]:
        """The drum's nominal centre (world) on its support."""
        return nominal_center(self.support, self.design, np.asarray(self.axis_w))

    @property
    def camera(self) -> CameraPose:
        return CameraPose(self.camera_distance_m, self.camera_elevation_deg, self.camera_azimuth_deg, self.center_w)

    @property
    def slot_m(self) -> float:
        """Distance between neighbouring drums along the line (centre to centre)."""
        return 2 * self.design.outer_radius_m + 0.15

    def nominal_drum(self) -> DrumSpec:
        """A good drum at the station's nominal pose (no jitter): where neighbours and empty frames take it from."""
        return DrumSpec(self.center_w, 0.0, None, self.design, as_base(self.base()))

    def base(self) -> F64 | None:
        """Drum-local → world orientation before the per-part yaw (None: the legacy frame, yaw only)."""
        if self.legacy_frame:
            return None
        el, az = math.radians(self.camera_elevation_deg), math.radians(self.camera_azimuth_deg)
        to_camera = -np.array([math.sin(az) * math.cos(el), math.cos(az) * math.cos(el), -math.sin(el)])
        return facing_base(np.asarray(self.axis_w), to_camera)


def _sheet_metal(design: DrumDesign, bracket_axial_m: float) -> DrumDesign:
    """``design`` made as every drum after the original line's is: 0.8 mm sheet, 1.5 mm out of round, the bracket
    40° round the shell at ``bracket_axial_m`` along the axis."""
    return replace(design, wall_m=0.0008, ovality_m=0.0015, bracket_at=(bracket_axial_m, math.radians(40.0)))


STATIONS: dict[str, Station] = {
    s.name: s
    for s in (
        Station(
            name="rail",
            description="the original line: a perforated drum lying on a cradle between two rails, cartons on a belt "
            "behind, a robot; camera 1.25 m, 32° down, 18° azimuth",
            design=DrumDesign(),
            pose="lying",
            support="rail",
            camera_distance_m=1.25,
            camera_elevation_deg=32.0,
            camera_azimuth_deg=18.0,
            legacy_frame=True,
        ),
        Station(
            name="roller-standing",
            description="a drum standing on its back (open end up) on a roller conveyor with legs; fine perforation "
            "(Ø 4 mm, 12 mm pitch), two beads, a flange with 8 bolts and a tab, three lifters; fine defects (1.8 mm "
            "scratches, Ø 18–30 mm dents); neighbouring drums on "
            "the conveyor, a worker; warm, dimmer light; camera 1.2 m, 48° down, −35° azimuth",
            design=_sheet_metal(
                DrumDesign(
                    radius_m=0.24,
                    length_m=0.36,
                    hole_pitch_m=0.012,
                    hole_radius_m=0.002,
                    plain_end_m=0.035,
                    beads=(-0.06, 0.03),
                    flange_m=0.012,
                    bolts=8,
                    tab_deg=110.0,
                    lifters=3,
                ),
                bracket_axial_m=0.105,
            ),
            pose="standing",
            support="rollers",
            camera_distance_m=1.2,
            camera_elevation_deg=48.0,
            camera_azimuth_deg=-35.0,
            light_level=0.85,
            light_tint=(1.06, 1.0, 0.88),
            clutter_kinds=("worker", "neighbours", "totes", "cables"),
            worker_at=(0.3, 1.3),
            defect_scale=0.6,
            part_tilt_deg=1.0,
        ),
        Station(
            name="cradle-pallet",
            description="a plain drum with two beads, a bolted flange with a tab and a ribbed back, lying in a "
            "V-cradle on a pallet that rides a belt; neighbouring pallets come and go, a robot; bright cool light; "
            "camera 1.1 m, 57° down, from the other side (150° azimuth)",
            design=_sheet_metal(
                DrumDesign(
                    radius_m=0.28,
                    length_m=0.32,
                    hole_radius_m=0.0,
                    beads=(-0.05, 0.135),
                    flange_m=0.014,
                    bolts=8,
                    tab_deg=70.0,
                    back_ribs=6,
                ),
                bracket_axial_m=0.09,
            ),
            pose="lying",
            support="cradle",
            camera_distance_m=1.1,
            camera_elevation_deg=57.0,
            camera_azimuth_deg=150.0,
            light_level=1.15,
            light_tint=(0.92, 0.98, 1.08),
            clutter_kinds=("robot", "neighbours", "totes", "cables"),
            robot_at=(0.9, -0.85),
            wall_y_m=-2.2,
            part_tilt_deg=1.0,
        ),
        Station(
            name="tilted-fixture",
            description="a slim perforated drum tilted 30° in a V-cradle with an end stop on a pedestal; lifters, a "
            "ribbed back, one bead; a worker and a robot; "
            "camera 1.4 m, 40° down, 60° azimuth",
            design=_sheet_metal(
                DrumDesign(
                    radius_m=0.22,
                    length_m=0.40,
                    hole_pitch_m=0.012,
                    hole_radius_m=0.002,
                    beads=(0.17,),
                    lifters=3,
                    back_ribs=5,
                ),
                bracket_axial_m=0.12,
            ),
            pose="tilted",
            tilt_deg=30.0,
            support="tilted-cradle",
            camera_distance_m=1.4,
            camera_elevation_deg=40.0,
            camera_azimuth_deg=60.0,
            light_level=0.95,
            light_tint=(1.03, 1.0, 0.95),
            clutter_kinds=("worker", "robot", "totes", "cables", "hanging-cable"),
            robot_at=(1.0, 0.9),
            worker_at=(0.6, 1.4),
            part_tilt_deg=1.0,
        ),
    )
}
DEFAULT_STATION = "rail"
