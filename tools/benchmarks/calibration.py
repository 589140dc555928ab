"""Calibration accuracy on the synthetic line: fitted ROI vs the true drum, over seeds and clutter levels."""

from __future__ import annotations

import time

import numpy as np

from calibration.fit import FitSettings, compare_with_truth, roi_from_frames
from drivers.synthetic import SyntheticSource, SyntheticSourceConfig
from tools.benchmarks.report import BenchSection

N_FRAMES = 5


def run(quick: bool) -> BenchSection:
    seeds = range(3) if quick else range(6)
    rows: list[list[str]] = []
    worst = {"iou": 1.0, "axis": 0.0, "radius": 0.0}
    for clutter in ("low", "high"):
        for seed in seeds:
            cfg = SyntheticSourceConfig(
                seed=seed, n_frames=N_FRAMES, clutter=clutter, defect_rate=0.0, frames_per_part=N_FRAMES
            )
            with SyntheticSource(cfg) as src:
                frames = list(src.frames())
            t0 = time.perf_counter()
            result = roi_from_frames(frames, FitSettings())
            fit_s = time.perf_counter() - t0
            truth = frames[-1].truth
            assert truth is not None and truth.drum is not None and truth.drum_mask is not None
            cmp = compare_with_truth(result, truth.drum, truth.drum_mask)
            worst["iou"] = min(worst["iou"], cmp.iou)
            worst["axis"] = max(worst["axis"], cmp.axis_error_deg)
            worst["radius"] = max(worst["radius"], cmp.radius_error_m)
            rows.append(
                [
                    clutter,
                    str(seed),
                    f"{cmp.iou:.4f}",
                    f"{cmp.axis_error_deg:.3f}°",
                    f"{cmp.radius_error_m * 1000:.2f} mm",
                    f"{cmp.center_error_m * 1000:.2f} mm",
                    f"{fit_s:.2f} s",
                ]
            )
    return BenchSection(
        title="ROI calibration accuracy (synthetic line, cylinder fit)",
        headers=["clutter", "seed", "mask IoU", "axis error", "radius error", "centre error", "fit time"],
        rows=rows,
        targets={
            f"mask IoU ≥ 0.95 (worst {worst['iou']:.4f})": worst["iou"] >= 0.95,
            f"axis error ≤ 2° (worst {worst['axis']:.3f}°)": worst["axis"] <= 2.0,
            f"radius error ≤ 5 mm (worst {worst['radius'] * 1000:.2f} mm)": worst["radius"] <= 0.005,
        },
        notes=[
            f"{N_FRAMES} frames of one defect-free part per fit (640×480), default FitSettings "
            f"({FitSettings().margin_m * 1000:.0f} mm margin)",
            "IoU over pixels with depth in the median-averaged frame: ROI mask (deprojected point inside the ROI) "
            "vs the true drum mask; see calibration.fit.compare_with_truth",
            f"mean IoU {np.mean([float(r[2]) for r in rows]):.4f}",
        ],
    )
