"""How big the synthetic line's defects are on screen: visible pixels of the defect mask, per station and type.

``python -m tools.defect_sizes`` renders every defect type on the first parts of every station preset, at the
preset's own defect scale and at the fine scale (``--fine``, default 0.35: ~1 mm wide scratches, Ø 10–18 mm dents),
and prints a Markdown table of the smallest–largest mask areas (docs/synthetic.md keeps one).
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.defect_sizes", description=__doc__.splitlines()[0])
    p.add_argument("--parts", type=int, default=6, help="parts per station and type (default 6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fine", type=float, default=0.35, help="the small-defect scale measured beside the preset's")
    p.add_argument("--size", default="640x480", help="frame size WxH (default 640x480)")
    args = p.parse_args(argv)
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        print(f"python -m tools.defect_sizes: --size {args.size!r} is not WxH; e.g. --size 640x480", file=sys.stderr)
        return 2
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
