"""The synthetic drum line: a seeded, deterministic RGB-D stream of a cluttered washing-drum station.

Frame ``i`` is a pure function of ``(config, i)``: every random draw comes from a generator seeded by
``(seed, part or frame index, purpose)``, so reading order, skipping and restarting never change a frame.
Depth is rendered in the color camera itself (registered by construction: ``depth_aligned_to_color`` is
True, the depth intrinsics are the color ones and ``depth_to_color`` is the identity).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, field_validator

from drivers.base import FrameBuffers, FrameSource, require_open, wait_until_due
from drivers.errors import EndOfStreamError, SourceError
from drivers.synthetic import clutter as scenery
from drivers.synthetic.camera import Lighting, Rig, intrinsics_for, lighting, rig_for
from drivers.synthetic.defects import sample_defect
from drivers.synthetic.drum import DrumSpec, as_base, defect_corners, render_drum_layer
from drivers.synthetic.gbuffer import F32, GBuffer, value_noise
from drivers.synthetic.primitives import Box
from drivers.synthetic.render import background, layer_difference, sensor, shade
from drivers.synthetic.stations import DEFAULT_STATION, STATIONS, Station
from drivers.synthetic.supports import carrier
from edge.core.config import EdgeModel
from edge.core.frame import DEFECT_TYPES, DefectType, DrumPose, Extrinsics, Frame, GroundTruth, StreamSpec

DEPTH_SCALE = 0.001
CLUTTER_LEVELS = {"none": 0.0, "low": 0.25, "high": 1.0}


class SyntheticSourceConfig(EdgeModel):
    """Settings of the synthetic line; the same settings and seed always give the same frames."""

    type: Literal["synthetic"] = "synthetic"
    seed: int = Field(0, ge=0, description="seed of everything random: poses, defects, clutter, sensor noise")
    n_frames: int | None = Field(None, ge=1, description="frames before end of stream; None streams forever")
    width: int = Field(640, ge=32, le=1920, description="image width in pixels (intrinsics scale with it)")
    height: int = Field(480, ge=24, le=1080, description="image height in pixels")
    fps: float = Field(30.0, gt=0, le=300, description="frame rate: sets timestamps, motion, and pacing if realtime")
    clutter: float = Field(
        0.5, ge=0.0, le=1.0, description='background activity 0..1, or "none" (0), "low" (0.25), "high" (1)'
    )
    pose_jitter: float = Field(
        1.0, ge=0.0, le=3.0, description="scale of the per-part pose jitter (1: ±1 cm, ±2° yaw; 0: drum never moves)"
    )
    defect_rate: float = Field(0.5, ge=0.0, le=1.0, description="probability that a part carries one defect")
    defect_scale: float | None = Field(
        None,
        gt=0.0,
        le=2.0,
        description="override the station's defect scale (footprints and depths: 1 = 3 mm wide scratches, "
        "Ø 30–50 mm dents; 0.35 = ~1 mm scratches, Ø 10–18 mm dents, down to ~40 pixels); None: the preset's",
    )
    frames_per_part: int = Field(1, ge=1, description="consecutive frames showing the same drum")
    gap_frames: int = Field(0, ge=0, description="empty-station frames between two parts")
    realtime: bool = Field(False, description="pace reads to fps like a camera (False: as fast as rendering)")
    station: str = Field(
        DEFAULT_STATION,
        description=f"station preset: {', '.join(STATIONS)} (drum pose, support, design, camera, light, clutter)",
    )

    camera_distance_m: float | None = Field(
        None, ge=0.5, le=3.0, description="override the station's camera distance to the drum (m)"
    )
    camera_elevation_deg: float | None = Field(
        None, ge=10.0, le=85.0, description="override the station's camera angle below the horizontal (°)"
    )
    camera_azimuth_deg: float | None = Field(
        None, ge=-180.0, le=180.0, description="override the station's camera azimuth about the vertical (°)"
    )

    @field_validator("station")
    @classmethod
    def _known_station(cls, v: str) -> str:
        if v not in STATIONS:
            raise ValueError(f"unknown station {v!r}; the presets are {', '.join(STATIONS)}")
        return v

    @field_validator("clutter", mode="before")
    @classmethod
    def _named_clutter(cls, v: object) -> object:
        if isinstance(v, str):
            if v not in CLUTTER_LEVELS:
                raise ValueError(f"clutter must be a number in 0..1 or one of {sorted(CLUTTER_LEVELS)}, got {v!r}")
            return CLUTTER_LEVELS[v]
        return v


def station_for(config: SyntheticSourceConfig) -> Station:
    """The configured station preset with the camera overrides applied."""
    st = STATIONS[config.station]
    if config.camera_distance_m is None and config.camera_elevation_deg is None and config.camera_azimuth_deg is None:
        return st
    return dataclasses.replace(
        st,
        camera_distance_m=st.camera_distance_m if config.camera_distance_m is None else config.camera_distance_m,
        camera_elevation_deg=st.camera_elevation_deg
        if config.camera_elevation_deg is None
        else config.camera_elevation_deg,
        camera_azimuth_deg=st.camera_azimuth_deg if config.camera_azimuth_deg is None else config.camera_azimuth_deg,
    )


@dataclass(frozen=True, slots=True)
class PartPlan:
    """What frame ``index`` shows: which part, and that part's drum (None on an empty station)."""

    part: int
    drum: DrumSpec | None


def stream_spec(config: SyntheticSourceConfig) -> StreamSpec:
    intr = intrinsics_for(config.width, config.height)
    return StreamSpec(
        serial=f"SYN-{config.seed}",
        color_intrinsics=intr,
        depth_intrinsics=intr,
        depth_to_color=Extrinsics(),
        depth_scale=DEPTH_SCALE,
        fps=config.fps,
        depth_aligned_to_color=True,
        source=f"synthetic:seed={config.seed},clutter={config.clutter:g},{config.width}x{config.height}"
        + ("" if config.station == DEFAULT_STATION else f",station={config.station}")
        + "".join(
            f",{k}={v:g}"
            for k, v in (
                ("distance", config.camera_distance_m),
                ("elevation", config.camera_elevation_deg),
                ("azimuth", config.camera_azimuth_deg),
            )
            if v is not None
        ),
    )


def plan(config: SyntheticSourceConfig, index: int, defect: DefectType | Literal["auto"] | None = "auto") -> PartPlan:
    """The part on the station at frame ``index``; ``defect`` forces the part's defect (None: a good part)."""
    period = config.frames_per_part + config.gap_frames
    part, k = divmod(index, period)
    if k >= config.frames_per_part:
        return PartPlan(part, None)
    st = station_for(config)
    r = np.random.default_rng([config.seed, part, 21])
    jit = config.pose_jitter * r.uniform([-0.01, -0.01, -2.0], [0.01, 0.01, 2.0])
    x, y, z = st.center_w
    center = (x + float(jit[0]), y + float(jit[1]), z)
    yaw = math.radians(jit[2])
    base = st.base()
    if base is not None and st.part_tilt_deg > 0:  # a part sits up to ~1° off its fixture's nominal tilt
        tilt = math.radians(config.pose_jitter * st.part_tilt_deg * float(r.uniform(-1.0, 1.0)))
        c, sn = math.cos(tilt), math.sin(tilt)
        base = np.array([[c, 0.0, sn], [0.0, 1.0, 0.0], [-sn, 0.0, c]]) @ base
    if defect == "auto":
        d = np.random.default_rng([config.seed, part, 22])
        hit = d.random() < config.defect_rate
        defect = DEFECT_TYPES[int(d.integers(len(DEFECT_TYPES)))] if hit else None
    scale = st.defect_scale if config.defect_scale is None else config.defect_scale
    spec = None if defect is None else sample_defect(config.seed, part, defect, st.design.length_m, scale)
    phase = float(np.random.default_rng([config.seed, part, 26]).uniform(0, math.pi)) if st.design.ovality_m else 0.0
    return PartPlan(part, DrumSpec(center, yaw, spec, st.design, as_base(base), phase))


def drum_pose(drum: DrumSpec, rig: Rig) -> DrumPose:
    """The drum as a cylinder in the color camera frame (metres)."""
    c = (np.asarray(drum.center_w) - rig.pos) @ rig.r_wc
    a = drum.rot[:, 0] @ rig.r_wc
    return DrumPose(
        center=(float(c[0]), float(c[1]), float(c[2])),
        axis=(float(a[0]), float(a[1]), float(a[2])),
        radius_m=drum.design.radius_m,
        length_m=drum.design.length_m,
    )


def _background(
    config: SyntheticSourceConfig, st: Station, part: int, index: int, *, drum: DrumSpec | None, layer: GBuffer | None
) -> GBuffer:
    """Static station plus everything that moves or gets moved: the part's carrier, cartons, robot, totes, cables,
    a worker, neighbouring drums; whatever could occlude the station's drum is left out."""
    t = index / config.fps
    gb = background(config.seed, config.width, config.height, t, config.clutter, station=st)
    tex = value_noise(config.seed)
    c, kinds = config.clutter, st.clutter_kinds
    prims: list[scenery.Occluder] = []
    if "cartons" in kinds:
        prims += scenery.cartons(config.seed, t, c)
    if "robot" in kinds:
        prims += scenery.robot_arm(t, c, st.robot_at)
    if "totes" in kinds or "cables" in kinds:
        loose = scenery.loose_clutter(config.seed, part, index, t, c, hanging="hanging-cable" in kinds)
        prims += [p for p in loose if ("totes" in kinds if isinstance(p, Box) else "cables" in kinds)]
    if "worker" in kinds:
        prims += scenery.worker(t, c, np.array(st.worker_at))
    if "neighbours" in kinds:  # placed from the nominal pose: the station's part jitter does not move them
        prims += scenery.neighbours(st.nominal_drum(), t, c, st.slot_m)
    if layer is not None and st != STATIONS[DEFAULT_STATION]:  # the original line's clutter never nears its drum
        prims = scenery.clear_of(layer, prims, tex)
    if drum is not None:  # what the part rests on touches it, and may hide a little of its underside
        prims += carrier(st.support, drum)
    prims += [q for p in prims if isinstance(p, DrumSpec) for q in carrier(st.support, p)]
    for p in prims:
        scenery.cast_occluder(gb, p, tex)
    return gb


def _defect_pixels(rig: Rig, drum: DrumSpec, layer: GBuffer, tex: F32, light: Lighting) -> npt.NDArray[np.bool_]:
    """Over the drum layer's rectangle: pixels where it differs from the same drum rendered without the defect.

    The defect-free drum is rendered only over the defect's own screen rectangle: nothing outside it can differ.
    """
    mask = np.zeros((layer.h, layer.w), dtype=bool)
    nominal = render_drum_layer(rig, drum, tex, with_defect=False, within=defect_corners(drum))
    v0, u0 = max(nominal.v0, layer.v0), max(nominal.u0, layer.u0)
    v1, u1 = min(nominal.v0 + nominal.h, layer.v0 + layer.h), min(nominal.u0 + nominal.w, layer.u0 + layer.w)
    if v1 > v0 and u1 > u0:
        diff = layer_difference(layer.crop(v0, u0, v1 - v0, u1 - u0), nominal.crop(v0, u0, v1 - v0, u1 - u0), light)
        mask[v0 - layer.v0 : v1 - layer.v0, u0 - layer.u0 : u1 - layer.u0] = diff
    return mask


def render_arrays(
    config: SyntheticSourceConfig, index: int, defect: DefectType | Literal["auto"] | None = "auto"
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint16], GroundTruth]:
    """Color, depth and ground truth of frame ``index`` (``defect`` overrides the part's own draw)."""
    h, w = config.height, config.width
    st = station_for(config)
    rig = rig_for(w, h, st.camera)
    tex = value_noise(config.seed)
    pp = plan(config, index, defect)
    layer = None if pp.drum is None else render_drum_layer(rig, pp.drum, tex, with_defect=True)
    gb = _background(config, st, pp.part, index, drum=pp.drum, layer=layer)
    drum_mask = np.zeros((h, w), dtype=bool)
    defect_mask = np.zeros((h, w), dtype=bool)
    light = lighting(config.seed, index, index / config.fps, config.clutter, level=st.light_level, tint=st.light_tint)
    if pp.drum is not None and layer is not None:
        sl = np.s_[layer.v0 : layer.v0 + layer.h, layer.u0 : layer.u0 + layer.w]
        drum_mask[sl] = gb.paste(layer)
        if pp.drum.defect is not None:
            defect_mask[sl] = _defect_pixels(rig, pp.drum, layer, tex, light) & drum_mask[sl]
    color, spec = shade(gb, light)
    color_f, depth_f = sensor(gb, color, spec, np.random.default_rng([config.seed, index, 31]), DEPTH_SCALE)
    color_u8 = np.clip(np.rint(color_f), 0, 255).astype(np.uint8)
    depth_u16 = np.clip(depth_f, 0, 65535).astype(np.uint16)
    if pp.drum is None:
        truth = GroundTruth("empty", None, None, defect_mask, drum_mask)
    else:
        kind = None if pp.drum.defect is None else pp.drum.defect.kind
        truth = GroundTruth("good" if kind is None else "defect", kind, drum_pose(pp.drum, rig), defect_mask, drum_mask)
    return color_u8, depth_u16, truth


def render_frame(
    config: SyntheticSourceConfig, index: int, defect: DefectType | Literal["auto"] | None = "auto"
) -> Frame:
    """Frame ``index`` of the line as the source would deliver it (pure: no source state involved)."""
    color, depth, truth = render_arrays(config, index, defect)
    return Frame(
        color=color,
        depth=depth,
        spec=stream_spec(config),
        color_frame_number=index,
        depth_frame_number=index,
        device_ts_ns=round(index * 1e9 / config.fps),
        host_ts_ns=time.time_ns(),
        sequence=index,
        truth=truth,
    )


class SyntheticSource(FrameSource):
    """:class:`FrameSource` over :func:`render_frame`, frame 0 first; optionally paced like a camera."""

    def __init__(self, config: SyntheticSourceConfig) -> None:
        self.config = config
        self._spec: StreamSpec | None = None
        self._index = 0
        self._t0_ns = 0

    def open(self) -> StreamSpec:
        self._spec = stream_spec(self.config)
        self._index = 0
        self._t0_ns = time.perf_counter_ns()
        return self._spec

    def read(self, timeout_s: float, out: FrameBuffers | None = None) -> Frame:
        spec = require_open(self._spec, "synthetic source")
        if self.config.n_frames is not None and self._index >= self.config.n_frames:
            raise EndOfStreamError(f"synthetic source delivered its {self.config.n_frames} frames")
        if self.config.realtime:
            wait_until_due(
                self._t0_ns,
                self._index,
                self.config.fps,
                timeout_s,
                what="next synthetic frame",
                remedy="read with a timeout of at least one frame period (1/fps)",
            )
        if out is not None and (out.color.shape != spec.color_shape or out.depth.shape != spec.depth_shape):
            raise SourceError(
                f"output buffers {out.color.shape}/{out.depth.shape} do not match the stream "
                f"{spec.color_shape}/{spec.depth_shape}",
                "size the buffers from source.spec (color_shape, depth_shape)",
            )
        frame = render_frame(self.config, self._index)
        if out is not None:
            np.copyto(out.color, frame.color)
            np.copyto(out.depth, frame.depth)
            frame.color, frame.depth = out.color, out.depth
        self._index += 1
        return frame

    def close(self) -> None:
        self._spec = None

    @property
    def spec(self) -> StreamSpec:
        return require_open(self._spec, "synthetic source")

    @property
    def ready(self) -> bool:
        return self._spec is not None
