"""Run every benchmark section and rewrite docs/benchmarks.md."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from rich.console import Console

from tools.benchmarks.report import BenchSection, write_page

# Section modules, in the order the pipeline runs: source → ring → crop → engines, then the GPU paths.
SECTIONS = [
    "tools.benchmarks.synthetic",
    "tools.benchmarks.ring",
    "tools.benchmarks.calibration",
    "tools.benchmarks.crop",
    "tools.benchmarks.engines",
    "tools.benchmarks.int8",
    "tools.benchmarks.gpu",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    parser.add_argument("--only", action="append", default=[], help="run only sections whose module ends so")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args(argv)
    console = Console()
    sections: list[BenchSection] = []
    all_met = True
    for name in SECTIONS:
        if args.only and not any(name.endswith(o) for o in args.only):
            continue
        console.print(f"[bold]bench[/] {name} …")
        section: BenchSection = importlib.import_module(name).run(quick=args.quick)
        console.print(section.to_markdown())
        sections.append(section)
        all_met &= all(section.targets.values())
    command = "python -m tools.benchmarks " + " ".join(sys.argv[1:] if argv is None else argv)
    write_page(args.out, command.strip(), sections, merge=bool(args.only))
    console.print(f"wrote {args.out}")
    return 0 if all_met else 1


if __name__ == "__main__":
    raise SystemExit(main())
