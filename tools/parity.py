"""`edge-parity`: the parity gate between a reference and candidate runtimes (ONNX Runtime, TensorRT, PyTorch).

Exit 0 within budget, 1 over budget (each failure named), 2 on an error (bad file, missing backend).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from edge.core.errors import EdgeError
from engines.parity import ParityBudget, ParityReport, compare_runners, feeds_from_npz, random_feeds
from engines.runtime.base import EngineError, Runner
from engines.runtime.ort import OrtRunner


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-parity",
        description="Run the same inputs through a reference and candidate runtimes; fail over the error budget. "
        "The ONNX (ONNX Runtime, CPU) is the candidate against --reference-onnx / --torch-factory, and the "
        "reference for --engine (TensorRT).",
    )
    p.add_argument("--onnx", type=Path, required=True, help="the exported model")
    p.add_argument("--engine", type=Path, help="TensorRT engine built from --onnx (candidate)")
    p.add_argument("--reference-onnx", type=Path, help="another ONNX as reference (e.g. before fp16 conversion)")
    p.add_argument(
        "--torch-factory", metavar="MODULE:CALLABLE", help="zero-argument callable building the torch reference"
    )
    p.add_argument("--feeds", type=Path, nargs="+", help=".npz files of inputs (default: seeded random inputs)")
    p.add_argument("--samples", type=int, default=8, help="random samples when no --feeds (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, help="raw image-score threshold for verdict flips (omit: not checked)")
    d = ParityBudget()
    p.add_argument("--map-atol", type=float, default=d.map_atol, help=f"default {d.map_atol:g}")
    p.add_argument("--score-rtol", type=float, default=d.score_rtol, help=f"default {d.score_rtol:g}")
    p.add_argument("--max-flips", type=int, default=d.max_flips, help=f"default {d.max_flips}")
    p.add_argument("--report", type=Path, help="write the JSON report here")
    return p


def load_factory(target: str) -> Callable[[], Any]:
    """``module:callable`` → the callable (the pluggable torch reference; a checkpoint loader fits here)."""
    module_name, _, attr = target.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise EngineError(
            f"cannot load the torch factory {target!r} ({e})", "pass MODULE:CALLABLE importable here"
        ) from None
    if not callable(fn):
        raise EngineError(f"{target} is not callable", "pass a function that returns a torch.nn.Module")
    return cast(Callable[[], Any], fn)  # getattr gives Any; checked callable above


def _runners(args: argparse.Namespace, onnx: OrtRunner) -> tuple[Runner, list[Runner]]:
    """(reference, candidates) from the arguments; the ONNX runner must already be active (its specs are used)."""
    if args.torch_factory:
        from engines.runtime.torch_ref import TorchRunner  # noqa: PLC0415  (torch only when asked for)

        outs = [s.name for s in onnx.output_specs]
        return TorchRunner(load_factory(args.torch_factory), onnx.input_specs, outs), [onnx]
    if args.reference_onnx:
        return OrtRunner(args.reference_onnx), [onnx]
    if args.engine:
        from engines.runtime.trt import TrtRunner  # noqa: PLC0415  (tensorrt only when asked for)

        return onnx, [TrtRunner(args.engine)]
    raise EngineError("nothing to compare the ONNX against", "pass --engine, --reference-onnx or --torch-factory")


def run(args: argparse.Namespace) -> ParityReport:
    budget = ParityBudget(map_atol=args.map_atol, score_rtol=args.score_rtol, max_flips=args.max_flips)
    onnx = OrtRunner(args.onnx)
    with onnx:  # __enter__ is typed as returning the base Runner
        reference, candidates = _runners(args, onnx)
        specs = onnx.input_specs
        feeds = feeds_from_npz(args.feeds, specs) if args.feeds else random_feeds(specs, args.samples, args.seed)
        others = [r for r in (reference, *candidates) if r is not onnx]
        try:
            for r in others:
                r.activate()
            return compare_runners(reference, candidates, feeds, budget=budget, threshold=args.threshold)
        finally:
            for r in others:
                r.deactivate()


def _summary(report: ParityReport) -> list[str]:
    lines = []
    for p in report.pairs:
        lines.append(f"{p.candidate} vs {p.reference}: {'PASS' if p.passed else 'FAIL'} ({report.samples} samples)")
        lines.extend(f"  {s.name}: max|Δ| {s.max_abs:.3g}  max rel {s.max_rel:.3g}  ({s.limit})" for s in p.outputs)
        lines.append(f"  verdict flips: {'not checked (no --threshold)' if p.flips is None else p.flips}")
        lines.extend(f"  FAIL {f}" for f in p.failures)
    return lines


def main(argv: list[str] | None = None) -> int:
    """Entry point of `edge-parity`: 0 within budget, 1 over it, 2 on an EdgeError (one line, no traceback)."""
    args = _parser().parse_args(argv)
    try:
        report = run(args)
    except EdgeError as err:
        print(f"edge-parity: error: {err}", file=sys.stderr)
        return 2
    if args.report:
        report.write(args.report)
    print("\n".join(_summary(report)))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
