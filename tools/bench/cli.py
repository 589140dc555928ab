"""`edge-bench`: accept a station (fast enough? accurate enough? does the engine match the trained model?) and
reproduce the published foreground study on your own recordings.

Exit codes: 0 everything measured and every gate passed; 1 a gate failed (--budget-ms, --parity) or an
input could not be read completely (the report says which and why); 2 nothing could be measured (bad arguments,
ROI, models, or no readable input).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from calibration.roi import RoiFile, load_roi
from edge.core.errors import EdgeError
from edge.core.scoring import file_sha256, fit_scoring, load_scoring, refit_threshold_f1, save_scoring
from engines.parity import ParityBudget
from engines.quantize import quantization_record
from engines.runtime.select import RuntimeConfig
from tools.bench import analysis, figures
from tools.bench.backends import BACKENDS, BackendSettings, check_backend, parity, runner_factory
from tools.bench.inputs import BenchInput, MvtecInput, Split, open_input
from tools.bench.machine import describe, machine_info
from tools.bench.measure import Bench, InputOutcome, ModelResults
from tools.bench.models import BenchModel, TrainRecipe, family_name, load_model_dir, train_model
from tools.bench.report import (
    accuracy_table,
    finite,
    latency_table,
    study_table,
    write_html,
    write_json,
    write_markdown,
)
from tools.entry import one_line_errors

PROG = "edge-bench"
CROPS = {"full": ("full",), "foreground": ("foreground",), "both": ("full", "foreground")}
console = Console(stderr=True, soft_wrap=True)  # one problem, one line (never wrapped at the terminal width)


class BenchError(EdgeError):
    """The bench cannot run as asked."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, nargs="+", required=True, help="labelled .db3/.bag recordings or MVTec folders")
    p.add_argument("--labels", type=Path, help="labels sidecar (only with one recording; default <recording>.labels)")
    p.add_argument(
        "--roi",
        type=Path,
        help="roi.yaml of the camera the data was recorded with (not used for MVTec folders without dataset.json: "
        "data from outside is cropped whole, or with its background plane removed in --crop foreground)",
    )
    p.add_argument("--models", required=True, help="comma-separated edge-train folders and/or families to train here")
    p.add_argument(
        "--crop", choices=sorted(CROPS), default="foreground", help="crop modes trained (default foreground)"
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="onnxruntime",
        help="engine runtime (auto: TensorRT with a GPU, else ONNX Runtime; torch: the PyTorch checkpoint)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16", help="TensorRT engine precision")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: one per core)")
    p.add_argument("--report", type=Path, default=Path("bench-report"), help="output folder (default bench-report)")
    p.add_argument("--split", choices=["auto", "test", "all"], default="auto", help="which frames are scored")
    p.add_argument("--warmup", type=int, default=5, help="frames per input left out of the latency (default 5)")
    p.add_argument("--budget-ms", type=float, help="fail when a model's crop+infer+score p99 exceeds this")
    p.add_argument("--fit-scoring", action="store_true", help="fit a scoring file per model on the good frames")
    p.add_argument("--threshold", choices=["quantile", "f1"], default="quantile", help="with --fit-scoring")
    p.add_argument("--false-alarm-rate", type=float, default=0.01, help="with --fit-scoring --threshold quantile")
    p.add_argument("--parity", action="store_true", help="check the backend against its reference on real crops")
    p.add_argument("--parity-samples", type=int, default=8)
    p.add_argument("--allow-mismatch", action="store_true", help="use an ROI calibrated on another camera")
    t = p.add_argument_group("training (for families named in --models)")
    d = TrainRecipe()
    t.add_argument("--preset", default=d.preset)
    t.add_argument("--epochs", type=int, default=d.epochs)
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--train-threads", type=int, default=d.threads, help="torch threads")
    t.add_argument("--option", action="append", default=[], metavar="FAMILY:KEY=VALUE", help="family option")
    return p


@dataclass
class Plan:
    """What the arguments ask for, checked before any frame is read."""

    roi: RoiFile | None  # None: only data from outside (folders without a camera stream)
    folders: list[BenchModel]
    families: list[str]
    recipe: TrainRecipe
    modes: tuple[str, ...]
    backend: BackendSettings


def _options(items: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        m = re.fullmatch(r"([\w-]+):(\w+=.*)", item)
        name = family_name(m.group(1)) if m else None
        if m is None or name is None:
            raise BenchError(f"--option {item!r} is not FAMILY:KEY=VALUE for a known family", "e.g. ast:mode=rgbd")
        out.setdefault(name, []).append(m.group(2))
    return out


def plan(args: argparse.Namespace) -> Plan:
    if args.warmup < 0 or args.parity_samples < 1 or (args.budget_ms is not None and args.budget_ms <= 0):
        raise BenchError("--warmup must be ≥ 0, --parity-samples ≥ 1 and --budget-ms > 0", "fix the argument")
    recordings = [p for p in args.data if p.suffix in (".db3", ".bag")]
    if args.roi is None and recordings:
        raise BenchError(
            f"{recordings[0]} comes from a calibrated camera but no --roi was given", "pass --roi roi.yaml"
        )
    if args.labels is not None and len(recordings) != 1:
        raise BenchError("--labels names one sidecar, but not exactly one recording was given", "bench them one by one")
    folders, families = [], []
    for item in (x.strip() for x in args.models.split(",") if x.strip()):
        name = family_name(item)
        if name is not None and not Path(item).is_dir():
            families.append(name)
        else:
            folders.append(load_model_dir(Path(item)))
    if not folders and not families:
        raise BenchError("--models names no model", "pass edge-train folders and/or families, e.g. --models ast")
    recipe = TrainRecipe(
        args.preset, args.epochs, args.batch_size, args.lr, args.seed, args.train_threads, _options(args.option)
    )
    runtime = {"backend": args.backend, "device": args.device, "threads": args.threads, "precision": args.precision}
    backend = BackendSettings(RuntimeConfig.model_validate(runtime), args.report / "engines")
    check_backend(backend)
    roi = load_roi(args.roi) if args.roi is not None else None
    return Plan(roi, folders, families, recipe, CROPS[args.crop], backend)


def _split(args: argparse.Namespace, data: BenchInput, models: Sequence[BenchModel]) -> Split:
    """``auto``: the test split when a model was trained on this data (or it is an MVTec folder), else every frame."""
    if args.split != "auto":
        return "test" if args.split == "test" else "all"
    trained_on = any(m.card.data_hash == data.data_hash for m in models)
    return "test" if trained_on or data.kind == "mvtec" else "all"


def _models_for(args: argparse.Namespace, p: Plan, data: BenchInput) -> list[BenchModel]:
    """The folders given, and the families trained on ``data`` (a folder from outside: without the ROI)."""
    out = list(p.folders)
    public = isinstance(data, MvtecInput) and data.public
    for family in p.families:
        for mode in p.modes:
            out.append(
                train_model(
                    family,
                    mode,
                    p.recipe,
                    data=data.path,
                    data_hash=data.data_hash,
                    roi_path=None if public else args.roi,
                    roi=None if public else p.roi,
                    out=args.report / "models" / data.path.stem / f"{family}-{p.recipe.preset}-{mode}",
                    labels=args.labels,
                )
            )
    return out


def run_inputs(args: argparse.Namespace, p: Plan, bench: Bench) -> None:
    """Open, (train on,) and score every input; a failing input is recorded and the next one goes on."""
    for index, path in enumerate(args.data):
        try:
            data = open_input(path, args.labels)
            models = _models_for(args, p, data)
            split = _split(args, data, models)
            total = sum(data.count(split).values())
        except EdgeError as err:
            bench.run.inputs.append(InputOutcome(path, "?", "", {}, error=str(err)))
            console.print(f"[red]{PROG}: {path}: {err}[/]")
            continue
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as bar:
            task = bar.add_task(f"{path.name} ({split})", total=total)
            outcome = bench.run_input(index, data, split, models, partial(bar.advance, task))
        if outcome.error:
            console.print(f"[red]{PROG}: {path}: {outcome.error}[/]")


def fit_scoring_files(args: argparse.Namespace, results: Sequence[ModelResults]) -> list[str]:
    """``--fit-scoring``: a scoring file per model from this run's good frames (bound to the same ONNX)."""
    written = []
    for r in results:
        good = [x for x, k in zip(r.raw, r.kinds, strict=True) if k == "good"]
        old = load_scoring(r.model.scoring)
        sources = ", ".join(sorted({s.split("#")[0] for s in r.sources}))
        scoring = fit_scoring(good, old.model, false_alarm_rate=args.false_alarm_rate,
                              split=f"edge-bench: good frames of {sources}")  # fmt: skip
        if args.threshold == "f1":
            scoring = refit_threshold_f1(scoring, r.raw, [0 if k == "good" else 1 for k in r.kinds])
        path = args.report / "scoring" / f"{r.model.run_dir.name}.yaml"
        save_scoring(scoring, path)
        written.append(str(path))
    return written


def gates(args: argparse.Namespace, p: Plan, bench: Bench, report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.budget_ms is not None:
        for m in report["models"]:
            p99 = (m["latency"].get("total") or {}).get("p99")
            ok = p99 is not None and p99 <= args.budget_ms
            out[f"latency {m['name']}"] = {"passed": ok, "detail": f"crop+infer+score p99 {_ms(p99)} ms, "
                                           f"budget {args.budget_ms:g} ms"}  # fmt: skip
    if args.parity:
        budget = ParityBudget()
        fp32 = {file_sha256(r.model.onnx): r.model.onnx for r in bench.run.models if r.model.card.precision == "fp32"}
        for r in bench.run.models:
            try:
                source = (quantization_record(r.model.onnx) or {}).get("source_sha256", "")
                rep = parity(r.model, r.feeds, p.backend, budget, fp32_onnx=fp32.get(source))
            except EdgeError as err:
                out[f"parity {r.model.name}"] = {"passed": False, "detail": f"not run: {err}"}
                continue
            pair = rep.pairs[0]
            detail = "; ".join(f"{s.name} max|Δ| {s.max_abs:.3g} ({s.limit})" for s in pair.outputs)
            detail += f"; verdict flips {pair.flips}; {pair.candidate} vs {pair.reference}, {rep.samples} crops"
            out[f"parity {r.model.name}"] = {"passed": pair.passed, "detail": detail, "report": rep.to_dict()}
    return out


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def build_report(args: argparse.Namespace, p: Plan, bench: Bench, started: str, argv: Sequence[str]) -> dict[str, Any]:
    run = bench.run
    aurocs = []
    models = []
    for r in run.models:
        acc = analysis.accuracy(r)
        aurocs.append(acc["image_auroc"])
        models.append({
            "name": r.model.name, "run_dir": str(r.model.run_dir), "card": r.model.card.to_dict(),
            "threshold_z": r.threshold_z, "accuracy": acc,
            "latency": {s: analysis.latency_stats(v) for s, v in r.latency_ms.items()},
            "per_input_auroc": analysis.per_input_auroc(r, len(run.inputs)),
            "frames": [
                {"source": src, "type": kind, "raw": raw, "z": z, "verdict": "NG" if ng else "OK"}
                for src, kind, raw, z, ng in zip(r.sources, r.kinds, r.raw, r.z, r.ng, strict=True)
            ],
        })  # fmt: skip
    rows = analysis.study(run.models, aurocs)
    report: dict[str, Any] = {
        "tool": PROG,
        "started": started,
        "command": " ".join([PROG, *argv]),
        "machine": machine_info(),
        "backend": {
            "name": p.backend.backend,
            "threads": p.backend.threads,
            "precision": p.backend.precision,
            "resolved": check_backend(p.backend).describe(),
        },
        "inputs": [
            {
                "path": str(o.path),
                "kind": o.kind,
                "split": o.split,
                "counts": o.counts,
                "frames": o.frames,
                "error": o.error,
                "dropped": o.dropped,
            }
            for o in run.inputs
        ],
        "models": models,
        "study": [
            {
                "model": s.model,
                "full": s.full,
                "foreground": s.foreground,
                "delta": s.delta,
                "relative_pct": s.relative_pct,
            }
            for s in rows
        ],
        "latency": {
            "read": analysis.latency_stats(run.read_ms),
            "throughput_fps": run.throughput_fps,
            "warmup_frames_per_input": args.warmup,
        },
        "notes": NOTES,
    }
    report["machine_line"] = describe(report["machine"])
    report["gates"] = gates(args, p, bench, report)
    clean: dict[str, Any] = finite(report)
    return clean


NOTES = [
    "Latency: per model, crop (ROI crop into the engine's input buffers), infer (the runtime), score (scoring file); "
    "'crop+infer+score' is the model's share of a frame. read/decode is recording playback or PNG+TIFF reading.",
    "The first --warmup frames of every input are scored but not timed. Throughput counts frames through reading "
    "and every model, one after another (the daemon's order).",
    "Image AUROC, F1-max and per-type AUROC use the raw image score; pixel AUROC and AU-PRO (FPR ≤ 0.3, normalised, "
    "8-connected regions) use the S×S anomaly maps against the defect masks sampled like the crop.",
    "F1-max picks its threshold on the scored frames themselves (optimistic); 'good flagged NG' and 'defects passed' "
    "use the scoring file's threshold, fitted on normal validation data by edge-train.",
    "Split 'test' of a recording: the frames of parts that edge-train's split puts into test (never trained on).",
]


def draw(report_dir: Path, run_models: Sequence[ModelResults], read_ms: Sequence[float]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    study_pairs = analysis.pairs(run_models)
    if study_pairs:
        out["Score distributions, normal vs defective (log scale)"] = figures.score_distributions(
            study_pairs, report_dir / "score-distributions.png"
        )
        for i, pair in enumerate(study_pairs):
            fig = figures.heatmaps(pair, report_dir / f"heatmaps-{i}.png")
            if fig is not None:
                out[f"Heatmaps: {pair[0].model.study_key}"] = fig
    if (roc := figures.roc_curves(run_models, report_dir / "roc.png")) is not None:
        out["ROC curves"] = roc
    if (lat := figures.latency_histograms(run_models, read_ms, report_dir / "latency.png")) is not None:
        out["Latency histograms"] = lat
    return out


def print_summary(report: dict[str, Any]) -> None:
    out = Console(width=max(Console().width, 150))
    for title, (headers, rows) in (
        ("Foreground study (image AUROC)", study_table(report)),
        ("Accuracy", accuracy_table(report)),
        ("Latency after warm-up", latency_table(report)),
    ):
        if not rows:
            continue
        table = Table(title=title)
        for h in headers:
            table.add_column(h, justify="right")
        for r in rows:
            table.add_row(*r)
        out.print(table)
    for name, gate in report["gates"].items():
        out.print(f"{'[green]PASS' if gate['passed'] else '[red]FAIL'}[/] {name}: {gate['detail']}")


@one_line_errors(f"{PROG}: error")  # plain: one line, and no markup eats "[gpu]"
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    p = plan(args)
    bench = Bench(p.roi, runner_factory(p.backend), warmup=args.warmup,
                  parity_samples=args.parity_samples if args.parity else 0,
                  allow_mismatch=args.allow_mismatch)  # fmt: skip
    run_inputs(args, p, bench)
    if not any(r.raw for r in bench.run.models):
        raise BenchError("no frame could be scored", "see the per-input problems above")
    report = build_report(args, p, bench, started, argv)
    if args.fit_scoring:
        report["scoring_written"] = fit_scoring_files(args, bench.run.models)
    figs = draw(args.report, bench.run.models, bench.run.read_ms)
    report["figures"] = {k: v.name for k, v in figs.items()}
    write_json(report, args.report / "report.json")
    write_html(report, figs, args.report / "report.html")
    write_markdown(report, figs, args.report / "report.md")
    print_summary(report)
    console.print(f"{PROG}: wrote {args.report / 'report.html'} and report.json")
    failed = [o for o in bench.run.inputs if o.error]
    return 1 if failed or not all(g["passed"] for g in report["gates"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
