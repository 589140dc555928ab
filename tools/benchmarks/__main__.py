"""Run every benchmark section and rewrite docs/benchmarks.md."""

from __future__ import annotations

import argparse
import importlib
import inspect
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
    "tools.benchmarks.daemon",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    parser.add_argument("--only", action="append", default=[], help="run only sections whose module ends so")
    parser.add_argument(
        "--long",
        action="store_true",
        help="sections that have one also run their long test (daemon: 10 minutes of memory growth)",
    )
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args(argv)
    console = Console()
    sections: list[BenchSection] = []
    all_met = True
    for name in SECTIONS:
        if args.only and not any(name.endswith(o) for o in args.only):
            continue
        console.print(f"[bold]bench[/] {name} …")
        module = importlib.import_module(name)
        long = {"long": True} if args.long and "long" in inspect.signature(module.run).parameters else {}
        section: BenchSection = module.run(quick=args.quick, **long)
        console.print(section.to_markdown())
        sections.append(section)
        all_met &= all(section.targets.values())
    command = "python -m tools.benchmarks " + " ".join(sys.argv[1:] if argv is None else argv)
    write_page(args.out, command.strip(), sections, merge=bool(args.only))
    console.print(f"wrote {args.out}")
    return 0 if all_met else 1


if __name__ == "__main__":
    raise SystemExit(main())
