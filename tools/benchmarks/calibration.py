"""Calibration accuracy on every synthetic station preset: the fitted ROI vs the true drum, over seeds."""

from __future__ import annotations

import math
import time

import numpy as np

from calibration.errors import CalibrationError
from calibration.fit import (
    FitSettings,
    TruthComparison,
    compare_with_truth,
    roi_end_margins,
    roi_from_frames,
    roi_mask,
)
from calibration.roi import CylinderShape
from drivers.synthetic import STATIONS, SyntheticSource, SyntheticSourceConfig
from tools.benchmarks.report import BenchSection

N_FRAMES = 5
CLUTTER = "high"
TARGETS = {"axis_deg": 1.0, "centre_m": 0.005, "radius_m": 0.003, "iou": 0.97}


def calibrate_station(station: str, seed: int) -> tuple[TruthComparison | None, str, float, list[str]]:
    """One calibration on N frames of one defect-free part: (comparison or None, failure message, fit seconds,
    [the ROI's margins beyond the shell's two ends, its radial notches, true drum pixels left outside it])."""
    cfg = SyntheticSourceConfig(
        seed=seed, n_frames=N_FRAMES, clutter=CLUTTER, defect_rate=0.0, frames_per_part=N_FRAMES, station=station
    )
    with SyntheticSource(cfg) as src:
        frames = list(src.frames())
    t0 = time.perf_counter()
    try:
        result = roi_from_frames(frames, FitSettings())
    except CalibrationError as e:
        return None, e.problem, time.perf_counter() - t0, ["", "", ""]
    fit_s = time.perf_counter() - t0
    ends = notches = ""
    if result.shell is not None:
        lo, hi = roi_end_margins(result.roi, result.shell)
        ends = f"{round(lo * 1000)} / {round(hi * 1000)} mm"
    if isinstance(result.roi.shape, CylinderShape):
        shape = result.roi.shape
        widths = [(n.angle_to_deg - n.angle_from_deg) % 360 for n in shape.notches]
        spans = [(n.z_to_m - n.z_from_m) * 1000 for n in shape.notches]
        clear = [(n.radius_m - shape.radius_m) * 1000 for n in shape.notches]
        notches = (
            f"{len(widths)}: {min(widths):.0f}–{max(widths):.0f}° × {min(spans):.0f}–{max(spans):.0f} mm, "
            f"+{min(clear):.0f} mm"
            if widths
            else "none"
        )
    truth = frames[-1].truth
    assert truth is not None and truth.drum is not None and truth.drum_mask is not None
    outside = int(np.count_nonzero(truth.drum_mask & result.scene.valid & ~roi_mask(result.roi, result.scene)))
    return compare_with_truth(result, truth.drum, truth.drum_mask), "", fit_s, [ends, notches, str(outside)]


def run(quick: bool) -> BenchSection:
    seeds = range(3) if quick else range(5)
    rows: list[list[str]] = []
    results: dict[str, list[TruthComparison]] = {name: [] for name in STATIONS}
    failures = 0
    for name in STATIONS:
        for seed in seeds:
            cmp, failure, fit_s, shape = calibrate_station(name, seed)
            if cmp is None:
                failures += 1
                rows.append([name, str(seed), "FAILED", "", "", "", "", "", *shape, f"{fit_s:.2f} s", failure])
                continue
            results[name].append(cmp)
            rows.append(
                [
                    name,
                    str(seed),
                    f"{cmp.iou:.4f}",
                    f"{cmp.true_roi_iou:.4f}",
                    f"{cmp.axis_error_deg:.3f}°",
                    f"{cmp.center_error_m * 1000:.1f} mm",
                    f"{cmp.radius_error_m * 1000:.2f} mm",
                    f"{cmp.length_error_m * 1000:+.1f} mm",
                    *shape,
                    f"{fit_s:.2f} s",
                    "",
                ]
            )
    everything = [c for cs in results.values() for c in cs]

    def worst(key: str) -> float:
        vals = [float(getattr(c, key)) for c in everything]
        if not vals:
            return math.nan
        return min(vals) if key == "iou" else max(vals)

    shortfall = max((c.true_roi_iou - c.iou for c in everything), default=math.nan)
    per_station_iou = ", ".join(f"{name} {min(c.iou for c in cs):.4f}" for name, cs in results.items() if cs)
    return BenchSection(
        title="ROI calibration accuracy (synthetic station presets, cylinder fit)",
        headers=[
            "station",
            "seed",
            "mask IoU",
            "IoU of the true cylinder",
            "axis error",
            "centre error",
            "radius error",
            "length error",
            "end margins",
            "radial notches",
            "drum px outside",
            "fit time",
            "failure",
        ],
        rows=rows,
        targets={
            f"0 failures ({failures} of {len(rows)})": failures == 0,
            f"axis error ≤ 1° (worst {worst('axis_error_deg'):.3f}°)": worst("axis_error_deg") <= TARGETS["axis_deg"],
            f"centre error ≤ 5 mm (worst {worst('center_error_m') * 1000:.1f} mm)": worst("center_error_m")
            <= TARGETS["centre_m"],
            f"shell radius error ≤ 3 mm (worst {worst('radius_error_m') * 1000:.2f} mm)": worst("radius_error_m")
            <= TARGETS["radius_m"],
            f"mask IoU ≥ 0.97 (worst per station: {per_station_iou})": worst("iou") >= TARGETS["iou"],
        },
        notes=[
            f"{N_FRAMES} frames of one defect-free part per fit (640×480, clutter {CLUTTER}), default FitSettings "
            f"({FitSettings().margin_m * 1000:.0f} mm margin); station presets in docs/synthetic.md",
            "errors of the fitted shell (CalibrationResult.shell) against the drum's shell (the true DrumPose): "
            "centre = mid-length points on the axis; length error is signed (fitted − true)",
            "end margins: how far the ROI reaches beyond the fitted shell's two ends (−axis / +axis); an end the drum "
            "rests on (points of a support beyond it, calibration.fit.end_margins) gets none, and the ROI frame's "
            "origin moves along the axis to hold unequal ends (the ROI file and the crop are unchanged)",
            "radial notches (calibration.fit.radial_notches, the support-aware radial margin): where a support that "
            "continues beyond the margin band touches the drum inside it, the ROI's outer radius drops to "
            f"{FitSettings().notch_tolerance_m * 1000:.0f} mm over the fitted shell in that sector and axial range; "
            "shown as count: sector widths × axial spans, clearance over the shell. 'drum px outside': pixels of the "
            "true drum mask (with depth) the ROI leaves out",
            "IoU over pixels with depth in the median-averaged frame: ROI mask (deprojected point inside the "
            "margin-grown ROI) vs the true drum mask, which includes everything mounted on the drum (flange, bolts, "
            "tab, bracket); see calibration.fit.compare_with_truth. 'IoU of the true cylinder' is the same measure for "
            "the true shell cylinder with the same margins (the same end margins and notches too): what a perfect fit "
            "of this ROI "
            "shape reaches (supports touching the drum inside the margin keep it below 1; where an end has no margin "
            "the fitted end, a few mm beyond the true one, holds more of the drum than the true end does)",
            f"largest shortfall of the fit's IoU from the true cylinder's: {shortfall:.4f}",
            f"mean IoU {np.mean([c.iou for c in everything]):.4f}" if everything else "no successful fit",
        ],
    )
