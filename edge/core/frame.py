"""The one frame type of the pipeline, and the stream description it carries.

Units, chosen once for the whole project:
- depth pixels are raw ``uint16`` sensor units; metres = ``depth * depth_scale`` (D4xx default 0.001);
- geometry (poses, radii, translations) is in metres, in the camera's *color* optical frame
  (x right, y down, z forward) unless a name says otherwise;
- timestamps are integer nanoseconds: ``device_ts_ns`` on the camera clock (or the recording's),
  ``host_ts_ns`` from ``time.time_ns()`` when the frame reached this process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

DistortionModel = Literal["none", "brown_conrady", "inverse_brown_conrady", "modified_brown_conrady"]


@dataclass(frozen=True, slots=True)
class Intrinsics:
    """Pinhole intrinsics of one stream, in the RealSense convention (pixel centres at integer + 0.5 is *not* used)."""

    width: int
    height: int
    fx: float
    fy: float
    ppx: float
    ppy: float
    model: DistortionModel = "none"
    coeffs: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)

    def matrix(self) -> npt.NDArray[np.float64]:
        """The 3×3 camera matrix K."""
        return np.array([[self.fx, 0.0, self.ppx], [0.0, self.fy, self.ppy], [0.0, 0.0, 1.0]])

    def to_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "fx": self.fx,
            "fy": self.fy,
            "ppx": self.ppx,
            "ppy": self.ppy,
            "model": self.model,
            "coeffs": list(self.coeffs),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Intrinsics:
        c = tuple(float(x) for x in d.get("coeffs", (0.0,) * 5))
        if len(c) != 5:
            raise ValueError(f"intrinsics need 5 distortion coefficients, got {len(c)}")
        return cls(
            width=int(d["width"]),
            height=int(d["height"]),
            fx=float(d["fx"]),
            fy=float(d["fy"]),
            ppx=float(d["ppx"]),
            ppy=float(d["ppy"]),
            model=d.get("model", "none"),
            coeffs=(c[0], c[1], c[2], c[3], c[4]),
        )

    def close_to(self, other: Intrinsics, tol_px: float = 0.5) -> bool:
        """True when both describe the same calibrated stream (size equal, focal/centre within ``tol_px``)."""
        return (
            self.width == other.width
            and self.height == other.height
            and self.model == other.model
            and max(
                abs(self.fx - other.fx),
                abs(self.fy - other.fy),
                abs(self.ppx - other.ppx),
                abs(self.ppy - other.ppy),
            )
            <= tol_px
        )


@dataclass(frozen=True, slots=True)
class Extrinsics:
    """Rigid transform from one sensor's frame to another's: ``p_to = R @ p_from + t`` (metres)."""

    rotation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)  # row-major 3×3
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def matrix(self) -> npt.NDArray[np.float64]:
        """The 4×4 homogeneous transform."""
        m = np.eye(4)
        m[:3, :3] = np.asarray(self.rotation, dtype=np.float64).reshape(3, 3)
        m[:3, 3] = self.translation
        return m

    def is_identity(self, tol: float = 1e-9) -> bool:
        return bool(np.allclose(self.matrix(), np.eye(4), atol=tol))

    def to_dict(self) -> dict[str, Any]:
        return {"rotation": list(self.rotation), "translation": list(self.translation)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Extrinsics:
        r = tuple(float(x) for x in d["rotation"])
        t = tuple(float(x) for x in d["translation"])
        if len(r) != 9 or len(t) != 3:
            raise ValueError("extrinsics need a 9-element rotation and a 3-element translation")
        return cls(rotation=r, translation=(t[0], t[1], t[2]))


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """What is fixed for a whole stream: sizes, calibration, scale, and whether depth is registered to color.

    ``depth_aligned_to_color`` is the single source of truth for registration: when True the depth image
    has the color image's size and intrinsics (the driver ran ``rs.align`` or rendered it so); when False
    the depth image is in the depth sensor's own frame and ``depth_to_color`` must be applied by whoever
    needs color-registered geometry. Nothing downstream may assume registration without reading it.
    """

    serial: str
    color_intrinsics: Intrinsics
    depth_intrinsics: Intrinsics
    depth_to_color: Extrinsics
    depth_scale: float
    fps: float
    depth_aligned_to_color: bool
    color_format: Literal["rgb8"] = "rgb8"
    source: str = ""  # human-readable origin: "realsense:<serial>", "playback:<file>", "synthetic:seed=…"

    @property
    def color_shape(self) -> tuple[int, int, int]:
        return (self.color_intrinsics.height, self.color_intrinsics.width, 3)

    @property
    def depth_shape(self) -> tuple[int, int]:
        return (self.depth_intrinsics.height, self.depth_intrinsics.width)

    def frame_bytes(self) -> int:
        """Bytes of pixel data in one frame (color + depth), used to size ring-buffer slots."""
        h, w, c = self.color_shape
        dh, dw = self.depth_shape
        return h * w * c + dh * dw * 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "color_intrinsics": self.color_intrinsics.to_dict(),
            "depth_intrinsics": self.depth_intrinsics.to_dict(),
            "depth_to_color": self.depth_to_color.to_dict(),
            "depth_scale": self.depth_scale,
            "fps": self.fps,
            "depth_aligned_to_color": self.depth_aligned_to_color,
            "color_format": self.color_format,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StreamSpec:
        return cls(
            serial=str(d["serial"]),
            color_intrinsics=Intrinsics.from_dict(d["color_intrinsics"]),
            depth_intrinsics=Intrinsics.from_dict(d["depth_intrinsics"]),
            depth_to_color=Extrinsics.from_dict(d["depth_to_color"]),
            depth_scale=float(d["depth_scale"]),
            fps=float(d["fps"]),
            depth_aligned_to_color=bool(d["depth_aligned_to_color"]),
            color_format=d.get("color_format", "rgb8"),
            source=str(d.get("source", "")),
        )


DefectType = Literal[
    "dent", "deformation", "foreign_object", "misaligned_part", "missing_part", "scratch", "discoloration"
]
DEFECT_TYPES: tuple[DefectType, ...] = (
    "dent",
    "deformation",
    "foreign_object",
    "misaligned_part",
    "missing_part",
    "scratch",
    "discoloration",
)


def defect_type_problem(name: object) -> str | None:
    """Why ``name`` cannot be a defect type, or None when it can.

    Defect types are free text (``misaligned``, ``hole``, ``cut``, ``contamination``, ...): any non-empty name
    that can also be a folder name (``test/<type>/`` of an MVTec export) and is not ``good`` (the normal class).
    """
    if not isinstance(name, str) or not name.strip():
        return f"defect type {name!r} is not a non-empty text"
    if name != name.strip() or name in (".", "..", "good") or any(c in name for c in "/\\") or not name.isprintable():
        return (
            f"defect type {name!r} cannot be a folder name (no surrounding spaces, '/', '\\', control characters, "
            "'.', '..') or is 'good' (the normal class)"
        )
    return None


@dataclass(frozen=True, slots=True)
class DrumPose:
    """A drum as a finite cylinder in the color camera frame (metres)."""

    center: tuple[float, float, float]
    axis: tuple[float, float, float]  # unit vector along the drum's axis of symmetry
    radius_m: float
    length_m: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "center": list(self.center),
            "axis": list(self.axis),
            "radius_m": self.radius_m,
            "length_m": self.length_m,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DrumPose:
        c, a = d["center"], d["axis"]
        return cls(
            center=(float(c[0]), float(c[1]), float(c[2])),
            axis=(float(a[0]), float(a[1]), float(a[2])),
            radius_m=float(d["radius_m"]),
            length_m=float(d["length_m"]),
        )


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """Labels known for synthetic (or hand-labelled) frames; never present on a live camera.

    ``defect_mask`` is H×W bool in the color image (True on defective pixels); ``drum_mask`` marks the
    drum's visible pixels. ``drum`` is None when no drum is in view (between parts on the line).
    """

    label: Literal["good", "defect", "empty"]
    defect_type: str | None  # free text (``defect_type_problem`` says which names are refused); the synthetic line
    # uses DEFECT_TYPES
    drum: DrumPose | None
    defect_mask: npt.NDArray[np.bool_] | None = None
    drum_mask: npt.NDArray[np.bool_] | None = None


@dataclass(frozen=True, slots=True)
class FrameBuffers:
    """Caller-owned destination arrays (typically a ring-buffer slot) a source copies a frame into.

    Passing them to :meth:`FrameSource.read` is how the capture process makes exactly one copy out of
    the SDK's buffer: straight into shared memory, releasing the SDK frame at once.
    """

    color: npt.NDArray[np.uint8]
    depth: npt.NDArray[np.uint16]


@dataclass(slots=True)
class Frame:
    """One synchronized RGB-D frame.

    ``color`` is H×W×3 uint8 RGB; ``depth`` is uint16 in ``spec.depth_scale`` metres per unit, in the color
    frame when ``spec.depth_aligned_to_color`` else in the depth sensor's frame. Arrays may be views into a
    ring-buffer slot: copy them before keeping them past the slot's lifetime.
    """

    color: npt.NDArray[np.uint8]
    depth: npt.NDArray[np.uint16]
    spec: StreamSpec
    color_frame_number: int
    depth_frame_number: int
    device_ts_ns: int
    host_ts_ns: int
    sequence: int = 0  # position in this run's stream, assigned by the producer (0, 1, 2, …)
    truth: GroundTruth | None = field(default=None)

    @property
    def depth_m(self) -> npt.NDArray[np.float32]:
        """Depth in metres (allocates; for tools and tests, not the per-frame hot path)."""
        return self.depth.astype(np.float32) * np.float32(self.spec.depth_scale)

    @property
    def serial(self) -> str:
        return self.spec.serial
