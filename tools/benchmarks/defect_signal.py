"""How much each defect type changes a station's frame: every part rendered twice, with and without the defect.

A diagnostic for the accuracy suite (docs/accuracy.md), not a benchmark with targets. The synthetic line's frames
are pure functions of (station, seed, index, defect), so the same part under the same light and sensor noise is
rendered once good and once with the forced defect; the difference is the defect's whole signal. Per station and
type it prints the median over the parts of: the defect's pixels (the ground-truth mask at 640×480), the 90th
percentile of |Δ colour| (mean over R, G, B, grey levels) over them, and the 90th percentile of |Δ depth| (mm)
over those with depth in both frames.

    python -m tools.benchmarks.defect_signal [--stations a,b] [--seed 1] [--parts 8] [--first 1000]
"""

from __future__ import annotations

import argparse

import numpy as np

from drivers.synthetic import STATIONS, SyntheticSourceConfig, render_frame
from edge.core.frame import DEFECT_TYPES, DefectType


def signal(station: str, seed: int, defect: DefectType, indices: range) -> tuple[float, float, float]:
    """(median defect pixels, median p90 |Δ colour|, median p90 |Δ depth| in mm) over the parts ``indices``."""
    config = SyntheticSourceConfig(seed=seed, station=station, clutter="high", width=640, height=480)
    pixels, colour, depth = [], [], []
    for index in indices:
        good = render_frame(config, index, defect=None)
        bad = render_frame(config, index, defect=defect)
        assert bad.truth is not None and bad.truth.defect_mask is not None
        mask = bad.truth.defect_mask.astype(bool)
        if not mask.any():
            continue
        d_colour = np.abs(good.color.astype(np.float32) - bad.color.astype(np.float32)).mean(-1)
        both = mask & (good.depth > 0) & (bad.depth > 0)
        d_depth = np.abs(good.depth.astype(np.float32) - bad.depth.astype(np.float32)) * good.spec.depth_scale * 1e3
        pixels.append(int(mask.sum()))
        colour.append(float(np.percentile(d_colour[mask], 90)))
        depth.append(float(np.percentile(d_depth[both], 90)) if both.any() else float("nan"))
    return float(np.median(pixels)), float(np.median(colour)), float(np.nanmedian(depth))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", default=",".join(STATIONS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--parts", type=int, default=8)
    parser.add_argument("--first", type=int, default=1000, help="index of the first part rendered")
    args = parser.parse_args(argv)
    indices = range(args.first, args.first + args.parts)
    print("| station | defect | pixels (640×480) | p90 \\|Δ colour\\| (grey levels) | p90 \\|Δ depth\\| (mm) |")
    print("|---|---|---|---|---|")
    for station in args.stations.split(","):
        for defect in DEFECT_TYPES:
            px, colour, depth = signal(station, args.seed, defect, indices)
            print(f"| {station} | {defect} | {px:.0f} | {colour:.1f} | {depth:.1f} |")


if __name__ == "__main__":
    main()
