"""roi.yaml: save/load round trip, a stable version hash, camera mismatch refusals and malformed files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import yaml

from calibration.roi import (
    AcceptanceStats,
    BoxShape,
    CameraBinding,
    CylinderShape,
    RadialNotch,
    RoiError,
    RoiFile,
    load_roi,
    save_roi,
)
from edge.core.frame import Extrinsics, Intrinsics, StreamSpec

INTR = Intrinsics(640, 480, 615.2, 615.9, 322.1, 241.7, "inverse_brown_conrady", (0.01, -0.02, 0.0, 0.0, 0.003))
SPEC = StreamSpec(
    serial="215122250001",
    color_intrinsics=INTR,
    depth_intrinsics=Intrinsics(640, 480, 388.0, 388.0, 320.3, 238.9),
    depth_to_color=Extrinsics(translation=(0.015, 0.0, 0.0)),
    depth_scale=0.001,
    fps=30.0,
    depth_aligned_to_color=True,
)


def _pose(angle_deg: float = 30.0) -> list[list[float]]:
    a = np.radians(angle_deg)
    T = np.eye(4)
    T[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    T[:3, 3] = [0.02, 0.1, 1.05]
    return T.tolist()


def make_roi(**update: object) -> RoiFile:
    roi = RoiFile(
        camera=CameraBinding.from_spec(SPEC),
        T_camera_roi=_pose(),
        shape=CylinderShape(radius_m=0.251, length_m=0.348),
        margin_m=0.012,
        acceptance=AcceptanceStats(n_frames=5, points_inside=40123, fill_rate=0.87, fit_residual_m=0.0011),
        tool_version="edge-calibrate test",
    )
    return roi.model_copy(update=update)


NOTCH = RadialNotch(angle_from_deg=-160, angle_to_deg=-130, z_from_m=-0.12, z_to_m=0.1, radius_m=0.254)
NOTCHED = CylinderShape(radius_m=0.251, length_m=0.348, notches=[NOTCH])


@pytest.mark.parametrize(
    "shape",
    [CylinderShape(radius_m=0.251, length_m=0.348), BoxShape(extents_m=(0.5, 0.5, 0.35)), NOTCHED],
)
def test_save_load_round_trip_is_equal_and_version_stable(tmp_path: Path, shape: CylinderShape | BoxShape) -> None:
    roi = make_roi(shape=shape)
    path = tmp_path / "cfg" / "roi.yaml"
    save_roi(roi, path)
    loaded = load_roi(path)
    assert loaded == roi
    assert loaded.version == roi.version
    assert len(roi.version) == 12 and int(roi.version, 16) >= 0
    save_roi(loaded, path)
    assert load_roi(path) == roi  # a second round trip changes nothing either
    assert not path.with_suffix(".yaml.tmp").exists()


def test_version_ignores_audit_fields_and_follows_geometry() -> None:
    roi = make_roi()
    audit = make_roi(created=datetime(2020, 1, 1, tzinfo=UTC), acceptance=None, tool_version="other")
    assert audit.version == roi.version
    assert make_roi(margin_m=0.02).version != roi.version
    assert make_roi(T_camera_roi=_pose(31.0)).version != roi.version
    assert make_roi(shape=CylinderShape(radius_m=0.252, length_m=0.348)).version != roi.version


def test_a_file_without_notches_loads_hashes_and_saves_as_before(tmp_path: Path) -> None:
    """Backward compatibility: files written before notches existed have no ``notches`` key; they load as a plain
    cylinder, keep their version hash (models trained on them stay valid) and are written back without the key."""
    roi = make_roi()
    old = roi.model_dump(mode="json")
    del old["shape"]["notches"]  # what the previous tool wrote
    path = tmp_path / "roi.yaml"
    path.write_text(yaml.safe_dump(old, sort_keys=False))
    loaded = load_roi(path)
    assert loaded == roi and loaded.shape.notches == []  # type: ignore[union-attr]
    payload = {k: v for k, v in old.items() if k not in ("created", "acceptance", "tool_version")}
    old_hash = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
    assert loaded.version == old_hash
    save_roi(loaded, path)
    assert "notches" not in path.read_text()
    assert make_roi(shape=NOTCHED).version != roi.version
    save_roi(make_roi(shape=NOTCHED), path)
    assert "notches:" in path.read_text()


@pytest.mark.parametrize(
    ("notch", "match"),
    [
        ({"angle_from_deg": 0, "angle_to_deg": 200}, "must be 0–180° wide"),
        ({"angle_from_deg": 10, "angle_to_deg": 10}, "must be 0–180° wide"),
        ({"z_from_m": 0.1, "z_to_m": -0.1}, "must not be below z_from_m"),
        ({"radius_m": 0}, "radius_m"),
    ],
)
def test_bad_notches_name_the_problem(tmp_path: Path, notch: dict[str, float], match: str) -> None:
    d = _valid_dict()
    d["shape"] = {"type": "cylinder", "radius_m": 0.25, "length_m": 0.3,
                  "notches": [{**NOTCH.model_dump(), **notch}]}  # fmt: skip
    with pytest.raises(RoiError, match=match):
        load_roi(_write(tmp_path, d))


def test_notch_cuts_its_sector_and_axial_range_beyond_its_radius() -> None:
    roi = make_roi(shape=NOTCHED)
    T = roi.pose

    def at(deg: float, rho: float, z: float) -> list[float]:
        return [rho * np.cos(np.radians(deg)), rho * np.sin(np.radians(deg)), z]

    local = np.array(
        [
            at(-145, 0.253, 0.0),  # in the notch, within its radius: kept
            at(-145, 0.256, 0.0),  # beyond it: cut
            at(-145, 0.256, 0.11),  # beyond the notch's axial range: the full margin
            at(-145, 0.256, -0.121),
            at(-125, 0.256, 0.0),  # outside the sector
            at(-165, 0.256, 0.0),
            at(-160, 0.256, 0.0),  # on the sector's edges: cut
            at(-130, 0.256, 0.0),
            at(-145, 0.262, 0.0),
            at(35, 0.262, 0.0),  # the opposite side: the full margin
        ]
    )
    inside = roi.contains(local @ T[:3, :3].T + T[:3, 3])
    assert inside.tolist() == [True, False, True, True, True, True, False, False, False, True]


def test_contains_respects_pose_shape_and_margin() -> None:
    roi = make_roi()
    T = roi.pose
    local = np.array([[0, 0, 0], [0.25, 0, 0], [0.26, 0, 0], [0.27, 0, 0], [0, 0, 0.18], [0, 0, 0.19]])
    inside = roi.contains(local @ T[:3, :3].T + T[:3, 3])
    assert inside.tolist() == [True, True, True, False, True, False]  # r 0.251+0.012, half-length 0.174+0.012


def test_matching_camera_passes() -> None:
    make_roi().check_camera(SPEC)
    make_roi().check_camera(dataclasses.replace(SPEC, source="playback:x.bag"))


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (dataclasses.replace(SPEC, serial="999"), "camera serial is '999', ROI was calibrated on '215122250001'"),
        (dataclasses.replace(SPEC, color_intrinsics=dataclasses.replace(INTR, fx=640.0)), "color intrinsics differ"),
        (
            dataclasses.replace(SPEC, color_intrinsics=dataclasses.replace(INTR, width=1280, height=720)),
            "color intrinsics differ",
        ),
        (dataclasses.replace(SPEC, depth_scale=0.0001), "depth scale is 0.0001"),
        (dataclasses.replace(SPEC, depth_to_color=Extrinsics()), "extrinsics differ"),
    ],
)
def test_mismatching_camera_is_refused_or_warned(
    spec: StreamSpec, match: str, caplog: pytest.LogCaptureFixture
) -> None:
    roi = make_roi()
    with pytest.raises(RoiError, match=match) as err:
        roi.check_camera(spec)
    assert "recalibrate with edge-calibrate" in str(err.value) and "--allow-mismatch" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="calibration.roi"):
        roi.check_camera(spec, allow_mismatch=True)
    assert any("mismatch accepted" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "roi.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _valid_dict() -> dict:
    return make_roi().model_dump(mode="json")


def test_missing_file_names_the_remedy(tmp_path: Path) -> None:
    with pytest.raises(RoiError, match="not found — run edge-calibrate"):
        load_roi(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: "camera: [unclosed", "not valid YAML"),
        (lambda d: "", "empty or not a mapping"),
        (lambda d: {**d, "schema_version": 2}, "schema_version 2"),
        (lambda d: {**d, "margn_m": 0.01}, r"margn_m: Extra inputs are not permitted"),
        (lambda d: {**d, "shape": {"type": "cylinder", "radius_m": -1, "length_m": 0.3}}, r"shape\.cylinder\.radius_m"),
        (lambda d: {**d, "shape": {"type": "cone", "radius_m": 1}}, r"shape: .*cone"),
        (lambda d: {**d, "T_camera_roi": [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}, "T_camera_roi"),
        (lambda d: {**d, "camera": {**d["camera"], "serial": None}}, r"camera\.serial"),
        (lambda d: {k: v for k, v in d.items() if k != "shape"}, "shape: Field required"),
    ],
)
def test_malformed_files_name_the_bad_key(tmp_path: Path, mutate: object, match: str) -> None:
    path = _write(tmp_path, mutate(_valid_dict()))  # type: ignore[operator]
    with pytest.raises(RoiError, match=match) as err:
        load_roi(path)
    assert str(path) in str(err.value)
    assert "—" in str(err.value)  # problem — remedy
