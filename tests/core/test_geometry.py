"""Ray tables and deprojection agree with the RealSense SDK's own rs2_deproject_pixel_to_point."""

from __future__ import annotations

import numpy as np
import pytest

from edge.core.frame import Intrinsics
from edge.core.geometry import project_points, ray_table, xyz_from_depth

rs = pytest.importorskip("pyrealsense2", reason="pyrealsense2 is a core dependency; install with make test")

COEFFS = (0.1, -0.05, 0.001, 0.002, 0.01)
MODELS = {
    "none": "none",
    "brown_conrady": "brown_conrady",
    "inverse_brown_conrady": "inverse_brown_conrady",
}


@pytest.mark.parametrize("model", list(MODELS))
def test_ray_table_matches_sdk_deprojection(model: str) -> None:
    intr = Intrinsics(640, 480, 600.0, 605.0, 320.5, 240.2, model, COEFFS)  # type: ignore[arg-type]
    ri = rs.intrinsics()
    ri.width, ri.height, ri.fx, ri.fy, ri.ppx, ri.ppy = 640, 480, 600.0, 605.0, 320.5, 240.2
    ri.model = getattr(rs.distortion, model)
    ri.coeffs = list(COEFFS)
    rays = ray_table(intr)
    rng = np.random.default_rng(0)
    for u, v in [(0, 0), (639, 479), (320, 240), *rng.integers(0, [640, 480], size=(20, 2)).tolist()]:
        expected = rs.rs2_deproject_pixel_to_point(ri, [float(u), float(v)], 2.0)
        np.testing.assert_allclose(rays[v, u] * 2.0, expected, atol=2e-6)


def test_xyz_from_depth_zero_depth_is_zero_point_and_projection_round_trips() -> None:
    intr = Intrinsics(64, 48, 50.0, 50.0, 31.5, 23.5)
    depth = np.full((48, 64), 1500, dtype=np.uint16)
    depth[0, 0] = 0
    xyz = xyz_from_depth(depth, 0.001, ray_table(intr))
    assert xyz.dtype == np.float32
    assert np.all(xyz[0, 0] == 0)
    np.testing.assert_allclose(xyz[..., 2][depth > 0], 1.5, atol=1e-6)
    pix = project_points(xyz[10:12, 20:22].reshape(-1, 3), intr)
    np.testing.assert_allclose(pix, [[20, 10], [21, 10], [20, 11], [21, 11]], atol=1e-4)
    with pytest.raises(ValueError, match="does not match"):
        xyz_from_depth(depth[:10], 0.001, ray_table(intr))
