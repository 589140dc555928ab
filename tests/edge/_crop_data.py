"""Synthetic inputs shared by the CPU and CUDA crop tests (no camera libraries, so a GPU box without
pyrealsense2 can run the CUDA comparison)."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from calibration.roi import BoxShape, CameraBinding, CylinderShape, RadialNotch, RoiFile
from edge.core.frame import Extrinsics, Frame, Intrinsics, StreamSpec


def make_spec(w: int = 64, h: int = 48, *, aligned: bool = True, serial: str = "TEST1") -> StreamSpec:
    intr = Intrinsics(w, h, 0.9 * w, 0.9 * w, w / 2 - 0.3, h / 2 + 0.2)
    return StreamSpec(serial, intr, intr, Extrinsics(), 0.001, 30.0, aligned, source="test")


def rotation(rvec: tuple[float, float, float]) -> npt.NDArray[np.float64]:
    R, _ = cv2.Rodrigues(np.asarray(rvec, dtype=np.float64))
    return R


# Two radial notches (support-aware radial margin) for the "notched" cylinder: a narrow one over part of the length,
# and a wide one (150°) over the whole length reaching well inside the margin.
TEST_NOTCHES = (
    RadialNotch(angle_from_deg=0, angle_to_deg=120, z_from_m=-0.1, z_to_m=0.05, radius_m=0.115),
    RadialNotch(angle_from_deg=-170, angle_to_deg=-20, z_from_m=-0.2, z_to_m=0.2, radius_m=0.1),
)


def make_roi(spec: StreamSpec, kind: str, center: tuple[float, float, float] = (0.02, -0.01, 0.8)) -> RoiFile:
    """A cylinder, a box, or (``notched``) the cylinder with TEST_NOTCHES."""
    T = np.eye(4)
    T[:3, :3] = rotation((0.1, 1.4, 0.05))  # a drum lying roughly along camera x, slightly tilted
    T[:3, 3] = center
    notches = list(TEST_NOTCHES) if kind == "notched" else []
    shape = (
        CylinderShape(radius_m=0.12, length_m=0.3, notches=notches)
        if kind in ("cylinder", "notched")
        else BoxShape(extents_m=(0.2, 0.15, 0.3))
    )
    return RoiFile(camera=CameraBinding.from_spec(spec), T_camera_roi=T.tolist(), shape=shape, margin_m=0.01)


def make_frame(spec: StreamSpec, seed: int = 0) -> Frame:
    rng = np.random.default_rng(seed)
    h, w = spec.depth_shape
    depth = rng.integers(550, 1050, size=(h, w)).astype(np.uint16)
    depth[rng.random((h, w)) < 0.1] = 0  # holes, as a real sensor has
    color = rng.integers(0, 256, size=(h, w, 3)).astype(np.uint8)
    return Frame(color, depth, spec, 1, 1, 0, 0)
