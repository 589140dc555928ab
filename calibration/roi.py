"""The calibrated 3D region of interest around the drum, and its versioned YAML file (``roi.yaml``).

The ROI is a shape (a cylinder along its own z axis, or an oriented box) placed in the color camera frame by
``T_camera_roi``. It is bound to the camera it was calibrated with: a file whose serial or intrinsics do
not match the running stream is refused (or only warned about with ``allow_mismatch``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import numpy as np
import numpy.typing as npt
import yaml
from pydantic import Field, ValidationInfo, field_validator

from edge.core.config import EdgeModel, load_versioned_yaml
from edge.core.errors import EdgeError
from edge.core.frame import Extrinsics, Intrinsics, StreamSpec

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
MAX_NOTCHES: Final = 8  # radial notches a cylinder ROI may carry (each one costs the per-frame ROI test a few ops)


class RoiError(EdgeError):
    """An ROI file is missing, malformed, or belongs to another camera."""


class RadialNotch(EdgeModel):
    """Where a support touches the drum: within an angular sector about the ROI z axis and an axial range, the
    ROI's outer radius is this (a small tolerance over the fitted shell) instead of the margin-grown radius.

    Angles run counter-clockwise from the ROI frame's x axis towards its y axis; the sector goes from
    ``angle_from_deg`` counter-clockwise to ``angle_to_deg`` and is at most 180° wide. A point is cut when it lies
    in the sector (on its edges included), within ``z_from_m`` ≤ z ≤ ``z_to_m``, and farther than ``radius_m``
    from the axis.
    """

    angle_from_deg: float = Field(ge=-360, le=360, description="sector start (degrees about ROI z, from ROI x)")
    angle_to_deg: float = Field(ge=-360, le=360, description="sector end, counter-clockwise from the start")
    z_from_m: float = Field(ge=-10, le=10, description="axial start of the notch in the ROI frame (metres)")
    z_to_m: float = Field(ge=-10, le=10, description="axial end of the notch in the ROI frame (metres)")
    radius_m: float = Field(gt=0, le=5, description="outer radius of the ROI inside the notch (metres, no margin)")

    @field_validator("angle_to_deg")
    @classmethod
    def _sector(cls, v: float, info: ValidationInfo) -> float:
        start = info.data.get("angle_from_deg")
        if start is not None and not 0 < (v - start) % 360 <= 180:
            raise ValueError(f"the sector from {start}° to {v}° (counter-clockwise) must be 0–180° wide")
        return v

    @field_validator("z_to_m")
    @classmethod
    def _axial(cls, v: float, info: ValidationInfo) -> float:
        start = info.data.get("z_from_m")
        if start is not None and v < start:
            raise ValueError(f"z_to_m ({v}) must not be below z_from_m ({start})")
        return v

    def edges(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """Unit vectors (x, y) of the sector's start and end edges: a point (x, y) is in the sector when
        ``a_x·y − a_y·x ≥ 0`` and ``x·b_y − y·b_x ≥ 0`` (both cross products, so no angle is computed per point)."""
        a, b = math.radians(self.angle_from_deg), math.radians(self.angle_to_deg)
        return (math.cos(a), math.sin(a)), (math.cos(b), math.sin(b))


class CylinderShape(EdgeModel):
    """A finite cylinder whose axis is the ROI frame's z axis, centred on the ROI origin."""

    type: Literal["cylinder"] = "cylinder"
    radius_m: float = Field(gt=0, le=5, description="cylinder radius in metres")
    length_m: float = Field(gt=0, le=10, description="full length along the axis in metres")
    notches: list[RadialNotch] = Field(
        default_factory=list,
        max_length=MAX_NOTCHES,
        description="sectors where a support touches the drum and the outer radius drops to a tolerance over the "
        "shell (edge-calibrate's support-aware radial margin); none: a plain cylinder (files without the key)",
    )


class BoxShape(EdgeModel):
    """An oriented box centred on the ROI origin, edges along the ROI frame's axes."""

    type: Literal["box"] = "box"
    extents_m: tuple[float, float, float] = Field(description="full edge lengths along ROI x, y, z (metres)")

    @field_validator("extents_m")
    @classmethod
    def _positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0:
            raise ValueError("box extents must all be > 0")
        return v


Shape = Annotated[CylinderShape | BoxShape, Field(discriminator="type")]


class CameraBinding(EdgeModel):
    """The stream the ROI was calibrated on; checked against the running camera at load."""

    serial: str
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    fps: float = Field(gt=0)
    depth_scale: float = Field(gt=0)
    depth_aligned_to_color: bool
    color_intrinsics: dict[str, Any]
    depth_intrinsics: dict[str, Any]
    depth_to_color: dict[str, Any]

    @classmethod
    def from_spec(cls, spec: StreamSpec) -> CameraBinding:
        return cls(
            serial=spec.serial,
            width=spec.color_intrinsics.width,
            height=spec.color_intrinsics.height,
            fps=spec.fps,
            depth_scale=spec.depth_scale,
            depth_aligned_to_color=spec.depth_aligned_to_color,
            color_intrinsics=spec.color_intrinsics.to_dict(),
            depth_intrinsics=spec.depth_intrinsics.to_dict(),
            depth_to_color=spec.depth_to_color.to_dict(),
        )

    def mismatches(self, spec: StreamSpec) -> list[str]:
        """Human-readable differences between this binding and a running stream (empty when they match)."""
        out: list[str] = []
        if spec.serial != self.serial:
            out.append(f"camera serial is {spec.serial!r}, ROI was calibrated on {self.serial!r}")
        if not Intrinsics.from_dict(self.color_intrinsics).close_to(spec.color_intrinsics):
            out.append(
                f"color intrinsics differ (ROI: {self.color_intrinsics}, camera: {spec.color_intrinsics.to_dict()})"
            )
        if not np.allclose(Extrinsics.from_dict(self.depth_to_color).matrix(), spec.depth_to_color.matrix(), atol=1e-3):
            out.append("depth→color extrinsics differ")
        if abs(spec.depth_scale - self.depth_scale) > 1e-9:
            out.append(f"depth scale is {spec.depth_scale}, ROI was calibrated at {self.depth_scale}")
        return out


class AcceptanceStats(EdgeModel):
    """How well the fitted shape explains the calibration frames (printed and stored for audits)."""

    n_frames: int = Field(ge=1)
    points_inside: int = Field(ge=0, description="cloud points inside the ROI (after margin)")
    fill_rate: float = Field(ge=0, le=1, description="share of the ROI's projected pixels that carry depth")
    fit_residual_m: float = Field(ge=0, description="RMS distance of the drum points to the fitted surface")


class RoiFile(EdgeModel):
    """Contents of ``roi.yaml``."""

    schema_version: Literal[1] = SCHEMA_VERSION
    camera: CameraBinding
    T_camera_roi: list[list[float]] = Field(description="4×4 pose of the ROI frame in the color camera frame")
    shape: Shape
    margin_m: float = Field(default=0.01, ge=0, le=0.5, description="grown on every side of the shape")
    acceptance: AcceptanceStats | None = None
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    tool_version: str = ""

    @field_validator("T_camera_roi")
    @classmethod
    def _rigid(cls, v: list[list[float]]) -> list[list[float]]:
        m = np.asarray(v, dtype=np.float64)
        if m.shape != (4, 4):
            raise ValueError(f"T_camera_roi must be 4×4, got {m.shape}")
        r = m[:3, :3]
        if not np.allclose(r @ r.T, np.eye(3), atol=1e-4) or np.linalg.det(r) < 0:
            raise ValueError("T_camera_roi rotation is not a proper rotation matrix")
        if not np.allclose(m[3], [0, 0, 0, 1]):
            raise ValueError("T_camera_roi last row must be 0 0 0 1")
        return v

    @property
    def pose(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.T_camera_roi, dtype=np.float64)

    @property
    def version(self) -> str:
        """Content hash (12 hex) recorded with every verdict so results name the ROI they used."""
        payload = self.to_yaml_dict()
        for key in ("created", "acceptance", "tool_version"):
            payload.pop(key)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def to_yaml_dict(self) -> dict[str, Any]:
        """The file's contents as plain data; a cylinder without notches has no ``notches`` key, so files (and the
        version hash) of plain cylinders are exactly what they were before notches existed."""
        data = self.model_dump(mode="json")
        if data["shape"].get("notches") == []:
            del data["shape"]["notches"]
        return data

    def contains(self, points: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.bool_]:
        """Which camera-frame points (…×3) lie inside the shape grown by the margin."""
        T = self.pose
        p = np.asarray(points, dtype=np.float64)
        local = (p - T[:3, 3]) @ T[:3, :3]  # R^T (p - t), row-vector form
        m = self.margin_m
        if isinstance(self.shape, CylinderShape):
            r = self.shape.radius_m + m
            half = self.shape.length_m / 2 + m
            rho2 = local[..., 0] ** 2 + local[..., 1] ** 2
            inside: npt.NDArray[np.bool_] = (rho2 <= r * r) & (np.abs(local[..., 2]) <= half)
            for notch in self.shape.notches:
                inside &= ~notch_cuts(notch, local, rho2)
            return inside
        half_ext = np.asarray(self.shape.extents_m) / 2 + m
        in_box: npt.NDArray[np.bool_] = np.all(np.abs(local) <= half_ext, axis=-1)
        return in_box

    def check_camera(self, spec: StreamSpec, *, allow_mismatch: bool = False) -> None:
        """Refuse (or warn, with ``allow_mismatch``) when the running stream is not the calibrated one."""
        problems = self.camera.mismatches(spec)
        if not problems:
            return
        text = "; ".join(problems)
        if allow_mismatch:
            log.warning("ROI camera mismatch accepted by --allow-mismatch: %s", text)
            return
        raise RoiError(
            f"ROI file does not fit the running camera: {text}",
            "recalibrate with edge-calibrate on this camera, or pass --allow-mismatch to use it anyway",
        )


def notch_cuts(
    notch: RadialNotch, local: npt.NDArray[np.float64], rho2: npt.NDArray[np.float64]
) -> npt.NDArray[np.bool_]:
    """Which ROI-frame points (…×3, with their squared distances from the axis) a notch cuts out."""
    (ax, ay), (bx, by) = notch.edges()
    x, y, z = local[..., 0], local[..., 1], local[..., 2]
    cut: npt.NDArray[np.bool_] = (
        (ax * y - ay * x >= 0)
        & (x * by - y * bx >= 0)
        & (z >= notch.z_from_m)
        & (z <= notch.z_to_m)
        & (rho2 > notch.radius_m**2)
    )
    return cut


def check_trained_with(roi: RoiFile, trained_roi_version: str, model: Path) -> None:
    """Refuse a model trained on crops of another ROI (``trained_roi_version`` from its card; empty: not recorded)."""
    if trained_roi_version and trained_roi_version != roi.version:
        raise RoiError(
            f"{model} was trained with ROI version {trained_roi_version}, the loaded roi.yaml is version {roi.version}",
            "retrain the model on data cropped with this ROI, or load the ROI it was trained with",
        )


def save_roi(roi: RoiFile, path: Path) -> None:
    """Write ``roi.yaml`` atomically (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(roi.to_yaml_dict(), sort_keys=False))
    tmp.replace(path)


def load_roi(path: Path) -> RoiFile:
    """Read and validate ``roi.yaml``; every failure names the file and the bad key."""
    return load_versioned_yaml(
        Path(path),
        RoiFile,
        what="ROI file",
        version=SCHEMA_VERSION,
        error=RoiError,
        create="run edge-calibrate to create it",
        recreate="recalibrate with edge-calibrate",
    )
