"""`edge-parity`: the parity gate between a reference and candidate runtimes (ONNX Runtime, TensorRT, PyTorch).

An INT8 model (``edge-quantize``) against its fp32 ONNX: ``edge-parity --onnx int8/model.onnx --reference-onnx
fp32/model.onnx`` reports its deviation on the golden crops beside the INT8 ONNX, judged by the INT8 budget of the
runtime's parity gate unless --map-atol/--score-rtol say otherwise.

Exit 0 within budget, 1 over budget (each failure named), 2 on an error (bad file, missing backend).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np

from edge.inspect import GATE_BUDGETS, GOLDEN_NAME, gate_budget, golden_feeds
from engines.export import card_from_onnx
from engines.parity import ParityBudget, ParityReport, compare_runners, feeds_from_npz, random_feeds
from engines.runtime.base import EngineError, Runner, TensorSpec
from engines.runtime.ort import OrtRunner
from tools.entry import one_line_errors


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
    p.add_argument(
        "--feeds", type=Path, nargs="+",
        help=".npz files of inputs (default: golden.npz beside --onnx, the real crops edge-train keeps; else seeded "
        "random inputs)",
    )  # fmt: skip
    p.add_argument("--samples", type=int, default=8, help="random samples when no --feeds (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, help="raw image-score threshold for verdict flips (omit: not checked)")
    d = ParityBudget()
    int8_map, int8_score = GATE_BUDGETS["int8"]
    p.add_argument(
        "--map-atol", type=float,
        help=f"default {d.map_atol:g}; an INT8 model against fp32: {int8_map:g} × the reference's largest map value",
    )  # fmt: skip
    p.add_argument(
        "--score-rtol", type=float, help=f"default {d.score_rtol:g}; an INT8 model against fp32: {int8_score:g}"
    )
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


def _feeds(args: argparse.Namespace, specs: list[TensorSpec]) -> tuple[list[dict[str, np.ndarray]], str]:
    """The inputs and what they are: --feeds, else golden.npz beside --onnx, else seeded random inputs."""
    if args.feeds:
        return feeds_from_npz(args.feeds, specs), ", ".join(str(f) for f in args.feeds)
    if args.onnx.with_name(GOLDEN_NAME).is_file():  # the parity gate's own reader of golden crops
        golden, described = golden_feeds(args.onnx, card_from_onnx(args.onnx))
        return [dict(f) for f in golden], described
    return random_feeds(specs, args.samples, args.seed), f"{args.samples} seeded random inputs (seed {args.seed})"


def _precisions(args: argparse.Namespace) -> dict[str, str]:
    """fp32/int8 of the reference and the candidate ONNX, from their cards (the ONNX is the candidate unless
    --engine, which is built from it)."""
    own = card_from_onnx(args.onnx).precision
    if args.reference_onnx:
        return {"reference": card_from_onnx(args.reference_onnx).precision, "candidate": own}
    return {"reference": own if args.engine else "fp32", "candidate": own}


def _budget(args: argparse.Namespace, precision: dict[str, str], reference: Runner, feeds: Any) -> ParityBudget:
    """The budget asked for; unset limits of an INT8 model against an fp32 one take the INT8 gate's budget."""
    d = ParityBudget()
    map_atol, score_rtol = args.map_atol, args.score_rtol
    if precision["reference"] != precision["candidate"] and "int8" in precision.values():
        gate = gate_budget(reference, feeds, "int8")
        map_atol = gate.map_atol if map_atol is None else map_atol
        score_rtol = gate.score_rtol if score_rtol is None else score_rtol
    return ParityBudget(
        map_atol=d.map_atol if map_atol is None else map_atol,
        score_rtol=d.score_rtol if score_rtol is None else score_rtol,
        max_flips=args.max_flips,
    )


def run(args: argparse.Namespace) -> ParityReport:
    precision = _precisions(args)
    onnx = OrtRunner(args.onnx)
    with onnx:  # __enter__ is typed as returning the base Runner
        reference, candidates = _runners(args, onnx)
        feeds, described = _feeds(args, list(onnx.input_specs))
        others = [r for r in (reference, *candidates) if r is not onnx]
        try:
            for r in others:
                r.activate()
            budget = _budget(args, precision, reference, feeds)
            report = compare_runners(reference, candidates, feeds, budget=budget, threshold=args.threshold)
        finally:
            for r in others:
                r.deactivate()
    report.feeds, report.precision = described, precision
    return report


def _summary(report: ParityReport) -> list[str]:
    lines = []
    prec = report.precision
    for p in report.pairs:
        kinds = f" ({prec['candidate']} vs {prec['reference']})" if prec else ""
        lines.append(f"{p.candidate} vs {p.reference}{kinds}: {'PASS' if p.passed else 'FAIL'} ({report.feeds})")
        lines.extend(
            f"  {s.name}: max|Δ| {s.max_abs:.3g}  mean|Δ| {s.mean_abs:.3g}  max rel {s.max_rel:.3g}  ({s.limit})"
            for s in p.outputs
        )
        lines.append(f"  verdict flips: {'not checked (no --threshold)' if p.flips is None else p.flips}")
        lines.extend(f"  FAIL {f}" for f in p.failures)
    return lines


@one_line_errors("edge-parity: error")
def main(argv: list[str] | None = None) -> int:
    """Entry point of `edge-parity`: 0 within budget, 1 over it, 2 on an EdgeError (one line, no traceback)."""
    args = _parser().parse_args(argv)
    report = run(args)
    if args.report:
        report.write(args.report)
    print("\n".join(_summary(report)))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
