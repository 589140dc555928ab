"""How big the synthetic line's defects are on screen: visible pixels of the defect mask, per station and type.

``python -m tools.defect_sizes`` renders every defect type on the first parts of every station preset, at the
preset's own defect scale and at the fine scale (``--fine``, default 0.35: ~1 mm wide scratches, Ø 10–18 mm dents),
and prints a Markdown table of the smallest–largest mask areas (docs/synthetic.md keeps one).

``--signal`` prints instead how much each defect changes the frame, as the accuracy suite renders it (clutter high):
every part rendered twice, good and with the forced defect (the frames are pure functions of their index: the same
part, light and sensor noise), per station and type the median over the parts of the defect's pixels, the 90th
percentile of |Δ colour| (mean over R, G, B, grey levels) over them and of |Δ depth| (mm) over those with depth in
both frames (docs/accuracy.md: ``--signal --seed 1 --first 1000 --parts 8``).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from drivers.synthetic import STATIONS, SyntheticSourceConfig, render_frame
from edge.core.frame import DEFECT_TYPES, DefectType


def defect_areas(
    station: str, kind: DefectType, *, scale: float | None, parts: int, seed: int, size: tuple[int, int]
) -> list[int]:
    """Pixels of the defect mask of ``kind`` on parts 0 … parts−1 (one frame each, clutter 0.25)."""
    cfg = SyntheticSourceConfig(
        seed=seed, width=size[0], height=size[1], clutter="low", station=station, defect_scale=scale
    )
    areas = []
    for part in range(parts):
        truth = render_frame(cfg, part, defect=kind).truth
        assert truth is not None and truth.defect_mask is not None  # the synthetic line always carries truth
        areas.append(int(np.count_nonzero(truth.defect_mask)))
    return areas


def defect_signal(
    station: str, kind: DefectType, *, parts: range, seed: int, size: tuple[int, int]
) -> tuple[float, float, float]:
    """(median defect pixels, median p90 |Δ colour|, median p90 |Δ depth| in mm) of ``kind`` over ``parts``."""
    cfg = SyntheticSourceConfig(seed=seed, width=size[0], height=size[1], clutter="high", station=station)
    pixels, colour, depth = [], [], []
    for part in parts:
        good, bad = render_frame(cfg, part, defect=None), render_frame(cfg, part, defect=kind)
        assert bad.truth is not None and bad.truth.defect_mask is not None  # the synthetic line always carries truth
        mask = bad.truth.defect_mask.astype(bool)
        both = mask & (good.depth > 0) & (bad.depth > 0)
        d_colour = np.abs(good.color.astype(np.float32) - bad.color.astype(np.float32)).mean(-1)
        d_depth = np.abs(good.depth.astype(np.float32) - bad.depth.astype(np.float32)) * good.spec.depth_scale * 1e3
        pixels.append(int(mask.sum()))
        colour.append(float(np.percentile(d_colour[mask], 90)) if mask.any() else 0.0)
        depth.append(float(np.percentile(d_depth[both], 90)) if both.any() else 0.0)
    return float(np.median(pixels)), float(np.median(colour)), float(np.median(depth))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.defect_sizes", description=__doc__.splitlines()[0])
    p.add_argument("--parts", type=int, default=6, help="parts per station and type (default 6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fine", type=float, default=0.35, help="the small-defect scale measured beside the preset's")
    p.add_argument("--size", default="640x480", help="frame size WxH (default 640x480)")
    p.add_argument("--signal", action="store_true", help="each defect's colour and depth change instead of areas")
    p.add_argument("--first", type=int, default=0, help="--signal: index of the first part (default 0)")
    args = p.parse_args(argv)
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        print(f"python -m tools.defect_sizes: --size {args.size!r} is not WxH; e.g. --size 640x480", file=sys.stderr)
        return 2
    if args.parts < 1:
        print(f"python -m tools.defect_sizes: --parts {args.parts} is not ≥ 1; e.g. --parts 6", file=sys.stderr)
        return 2
    if args.signal:
        print("| station | defect | pixels | p90 \\|Δ colour\\| (grey levels) | p90 \\|Δ depth\\| (mm) |")
        print("|---|---|---|---|---|")
        for name in STATIONS:
            for kind in DEFECT_TYPES:
                parts = range(args.first, args.first + args.parts)
                px, colour, depth = defect_signal(name, kind, parts=parts, seed=args.seed, size=(w, h))
                print(f"| {name} | {kind} | {px:.0f} | {colour:.1f} | {depth:.1f} |", flush=True)
        return 0
    print("| station | scale | " + " | ".join(k.replace("_", " ") for k in DEFECT_TYPES) + " |")
    print("|---|---|" + "---|" * len(DEFECT_TYPES))
    for name, station in STATIONS.items():
        for scale in (None, args.fine):
            cells = []
            for kind in DEFECT_TYPES:
                a = defect_areas(name, kind, scale=scale, parts=args.parts, seed=args.seed, size=(w, h))
                cells.append(f"{min(a)}–{max(a)}")
            label = f"{station.defect_scale:g} (preset)" if scale is None else f"{scale:g}"
            print(f"| `{name}` | {label} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
