"""Calibration preview PNG: the colour image with the ROI tinted and outlined, beside a top view of the fit.

An operator judges a calibration at a glance from this picture, without a GUI or a 3D viewer.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from calibration.errors import CalibrationError
from calibration.fit import CalibrationResult, Diagnostics, projection_mask, roi_mask, shape_outline
from edge.core.geometry import project_points

ROI_TINT = (0, 200, 0)  # BGR
OUTLINE = (0, 220, 255)
FIT = (0, 0, 255)
Image = npt.NDArray[np.uint8]


def _overlay(result: CalibrationResult) -> Image:
    """Colour image (BGR) with in-ROI pixels tinted and the projected ROI volume outlined."""
    roi, scene = result.roi, result.scene
    img = np.asarray(cv2.cvtColor(scene.color, cv2.COLOR_RGB2BGR), dtype=np.uint8)
    inside = roi_mask(roi, scene)
    img[inside] = (0.55 * img[inside] + 0.45 * np.array(ROI_TINT)).astype(np.uint8)
    outline = projection_mask(roi, scene.spec.color_intrinsics).astype(np.uint8)
    contours, _ = cv2.findContours(outline, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(img, contours, -1, OUTLINE, 2)
    centre = project_points(roi.pose[None, :3, 3], scene.spec.color_intrinsics)[0]
    cv2.drawMarker(img, (int(centre[0]), int(centre[1])), OUTLINE, cv2.MARKER_CROSS, 14, 2)
    return img


def _top_view(result: CalibrationResult, size: int) -> Image:
    """x–z plane seen from above (x right, z up the picture): scene points, drum points, fitted shape."""
    canvas = np.full((size, size, 3), 24, dtype=np.uint8)
    outline = shape_outline(result.roi)
    xz_all = np.concatenate([result.cloud[:, [0, 2]], outline[:, [0, 2]]])
    lo, hi = np.percentile(xz_all, 1, axis=0), np.percentile(xz_all, 99, axis=0)
    lo, hi = np.minimum(lo, outline[:, [0, 2]].min(axis=0)), np.maximum(hi, outline[:, [0, 2]].max(axis=0))
    scale = 0.9 * size / max(float(np.max(hi - lo)), 1e-3)
    mid = (lo + hi) / 2

    def to_px(xz: npt.NDArray[np.float64]) -> npt.NDArray[np.int32]:
        u = size / 2 + (xz[:, 0] - mid[0]) * scale
        v = size / 2 - (xz[:, 1] - mid[1]) * scale
        return np.stack([u, v], axis=1).round().astype(np.int32)

    for pts, colour in ((result.cloud, (110, 110, 110)), (result.drum_points, ROI_TINT)):
        px = to_px(pts[:, [0, 2]])
        ok = np.all((px >= 0) & (px < size), axis=1)
        canvas[px[ok, 1], px[ok, 0]] = colour
    hull = cv2.convexHull(to_px(outline[:, [0, 2]]))
    cv2.polylines(canvas, [hull], True, FIT, 2)
    axis_ends = result.roi.pose[:3, 3] + np.outer([-0.6, 0.6], result.roi.pose[:3, 2]) * _axial_length(result)
    a, b = to_px(axis_ends[:, [0, 2]])
    cv2.line(canvas, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), FIT, 1)
    return canvas


def _axial_length(result: CalibrationResult) -> float:
    shape = result.roi.shape
    return shape.length_m if shape.type == "cylinder" else shape.extents_m[2]


def _caption(img: Image, lines: list[str]) -> None:
    for i, text in enumerate(lines):
        cv2.putText(img, text, (8, 20 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)


def render_preview(result: CalibrationResult) -> Image:
    """The side-by-side preview (BGR): overlay on the left, top view with the stats on the right."""
    left = _overlay(result)
    right = _top_view(result, left.shape[0])
    roi, stats = result.roi, result.stats
    shape = roi.shape
    dims = (
        f"cylinder r={shape.radius_m * 1000:.1f} mm L={shape.length_m * 1000:.1f} mm notches={len(shape.notches)}"
        if shape.type == "cylinder"
        else "box " + "x".join(f"{e * 1000:.0f}" for e in shape.extents_m) + " mm"
    )
    _caption(
        right,
        [
            "top view (x right, z forward)",
            dims + f" margin={roi.margin_m * 1000:.0f} mm",
            f"inside={stats.points_inside} fill={stats.fill_rate:.1%}",
            f"residual={stats.fit_residual_m * 1000:.2f} mm frames={stats.n_frames}",
        ],
    )
    return np.concatenate([left, right], axis=1)


CANDIDATE_COLOURS = [(60, 60, 255), (255, 160, 40), (40, 220, 255), (255, 60, 200), (80, 255, 80), (200, 200, 200)]


def render_failure(diag: Diagnostics) -> Image:
    """Why a calibration failed (BGR): every candidate cluster painted in its own colour over the colour image,
    numbered, with the reason each was rejected listed below the image."""
    scene = diag.scene
    intr = scene.spec.color_intrinsics
    img = np.asarray(cv2.cvtColor(scene.color, cv2.COLOR_RGB2BGR), dtype=np.uint8)
    img = (img * 0.6).astype(np.uint8)
    lines = [f"calibration FAILED: {len(diag.candidates)} candidate cluster(s)"]
    for k, cand in enumerate(diag.candidates):
        colour = CANDIDATE_COLOURS[k % len(CANDIDATE_COLOURS)]
        pts = cand.points[cand.points[:, 2] > 0.01]
        px = np.round(project_points(pts, intr)).astype(np.int64)
        ok = (px[:, 0] >= 0) & (px[:, 0] < intr.width) & (px[:, 1] >= 0) & (px[:, 1] < intr.height)
        img[px[ok, 1], px[ok, 0]] = colour
        if ok.any():
            u, v = np.median(px[ok], axis=0).astype(int)
            cv2.putText(img, str(k + 1), (int(u), int(v)), cv2.FONT_HERSHEY_SIMPLEX, 0.8, colour, 2, cv2.LINE_AA)
    lines += _reason_lines([c.reason for c in diag.candidates])
    if diag.hint is not None:
        uv = project_points(np.asarray([diag.hint]), intr)[0]
        cv2.drawMarker(img, (int(uv[0]), int(uv[1])), (255, 255, 255), cv2.MARKER_TILTED_CROSS, 16, 2)
        lines.append("x: the hint")
    wrapped = [chunk for line in lines for chunk in _wrap(line, max(20, img.shape[1] // 8))]
    panel = np.full((22 + 18 * len(wrapped), img.shape[1], 3), 24, dtype=np.uint8)
    _caption(panel, wrapped)
    return np.concatenate([img, panel], axis=0)


def _reason_lines(reasons: list[str]) -> list[str]:
    """``k: reason`` per candidate, consecutive candidates with the same reason merged (``4–20: …``)."""
    out: list[str] = []
    start = 0
    for k in range(1, len(reasons) + 1):
        if k == len(reasons) or reasons[k] != reasons[start]:
            label = f"{start + 1}" if k - start == 1 else f"{start + 1}–{k}"
            out.append(f"{label}: {reasons[start]}")
            start = k
    return out


def _wrap(text: str, width: int) -> list[str]:
    return [text[i : i + width] for i in range(0, len(text), width)] or [""]


def write_failure_preview(diag: Diagnostics, path: Path) -> None:
    """Write the diagnostic PNG of a failed calibration; refuse loudly when it cannot be written."""
    _write(render_failure(diag), path)


def write_preview(result: CalibrationResult, path: Path) -> None:
    """Write the preview PNG; refuse loudly when it cannot be written."""
    _write(render_preview(result), path)


def _write(image: Image, path: Path) -> None:
    remedy = "use a writable path ending in .png"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ok = cv2.imwrite(str(path), image)
    except cv2.error as e:  # unknown extension, unwritable directory
        raise CalibrationError(f"could not write the preview image {path}: {e.err}", remedy) from None
    if not ok:
        raise CalibrationError(f"could not write the preview image {path}", remedy)
