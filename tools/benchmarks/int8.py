"""Benchmark: INT8 (``edge-quantize``) against fp32 in ONNX Runtime on the CPU — speed, image AUROC, where time goes.

The product's path end to end on a small labelled data set: the synthetic line rendered into an MVTec 3D-AD export
and its ROI calibrated (``tools.benchmarks.accuracy``), AST ``edge`` trained on it with ``edge-train`` (foreground
crop), then quantised twice with ``edge-quantize`` — ``--activations int8`` (symmetric, the Q/DQ ONNX TensorRT builds
from) and ``--activations uint8`` (ONNX Runtime's x86 form) — and every model scored through
:class:`edge.inspect.ModelStage`. Latency: the three models run one after another on the same real test crop, in an
order that rotates every repetition, so load from other jobs on the machine falls on all of them alike; ratios are
p50 over p50 of the same run. Accuracy: image AUROC of each model on the test split. Where the time goes: an ONNX
Runtime profile (per operator type) of each model. 3DSR ``edge`` (random initialisation, calibrated on seeded
example inputs: a speed row, no accuracy) follows when it fits.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from calibration.roi import RoiFile, load_roi
from edge.core.errors import EdgeError
from edge.inspect import ModelStage
from engines.datasets import open_dataset
from engines.export import card_from_onnx, example_feeds, onnx_from_model
from engines.quantize import QuantizeSettings, quantize_onnx
from engines.runtime.ort import open_session
from engines.runtime.select import RunnerPlan, RuntimeConfig
from tools.benchmarks import accuracy
from tools.benchmarks.report import BenchSection

SPEED_TARGET = 1.8  # INT8 p50 at least this many times faster than fp32 (ONNX Runtime, CPU)
AUROC_TARGET = 0.005  # |image AUROC(INT8) − image AUROC(fp32)| at most this
# AST's output convolutions: the flow's coupling subnets' second convs (their outputs are the affine log-scale, through
# atan and exp, and the shift) and the student's last conv (its output is compared with the flow's z).
OUTPUT_CONVS = (r"teacher/.*/conv2/", r"student/conv2/")
_KEEP_OUT = [a for p in OUTPUT_CONVS for a in ("--keep-node", p)]
# Every variant is an edge-quantize run on the same fp32 folder: kind → (row label, its arguments).
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "int8": (" (symmetric: TensorRT's Q/DQ)", ["--activations", "int8"]),
    "uint8": (" (ONNX Runtime x86)", ["--activations", "uint8"]),
    "uint8-all": (" (every Conv, --keep-first 0)", ["--activations", "uint8", "--keep-first", "0"]),
    "uint8-64": (" (64 calibration crops: every good training crop)", ["--activations", "uint8", "--frames", "64"]),
    "uint8-percentile": (" (percentile ranges)", ["--activations", "uint8", "--calibrate-method", "percentile"]),
    "uint8-entropy": (" (entropy ranges)", ["--activations", "uint8", "--calibrate-method", "entropy"]),
    "uint8-keep-out": (" (output convs fp32: flow s/t, student)", ["--activations", "uint8", *_KEEP_OUT]),
    "int8-keep-out": (" (output convs fp32: flow s/t, student)", ["--activations", "int8", *_KEEP_OUT]),
}
KINDS = ("fp32", *VARIANTS)
TARGETED = ("int8", "uint8")  # the two forms edge-quantize writes by default: the targets are judged on them
STUDY = accuracy.Study(seed=11, frames=240, epochs=10, batch_size=8, learning_rate=2e-4, base_options=accuracy.RGBD)
QUICK = accuracy.Study(seed=11, frames=40, epochs=2, batch_size=8, learning_rate=2e-4, base_options=accuracy.RGBD)


@dataclass(frozen=True, slots=True)
class Timed:
    """p50/p99 (ms) of each model kind, measured interleaved."""

    p50: dict[str, float]
    p99: dict[str, float]


def interleaved(stages: dict[str, ModelStage], feed: dict[str, npt.NDArray[np.float32]], reps: int) -> Timed:
    """Every stage on ``feed`` ``reps`` times, the order rotating each repetition (after 3 warm-up runs each)."""
    names = list(stages)
    for s in stages.values():
        for _ in range(3):
            s.run(feed)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for i in range(reps):
        k = i % len(names)
        for n in names[k:] + names[:k]:
            samples[n].append(stages[n].run(feed)[2])
    return Timed(
        {n: float(np.percentile(v, 50)) for n, v in samples.items()},
        {n: float(np.percentile(v, 99)) for n, v in samples.items()},
    )


def op_profile(onnx: Path, feed: dict[str, npt.NDArray[np.float32]], runs: int, tmp: Path) -> list[tuple[str, float]]:
    """ONNX Runtime's profile of ``runs`` runs on one thread: (operator type, share of kernel time), largest first."""
    import onnxruntime as ort  # noqa: PLC0415

    so = ort.SessionOptions()
    so.enable_profiling, so.intra_op_num_threads, so.inter_op_num_threads = True, 1, 1
    so.profile_file_prefix = str(tmp / f"profile-{onnx.parent.name}")
    session = open_session(onnx, so)
    for _ in range(runs):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values()) or 1
    return [(op, t / total) for op, t in per_op.most_common()]


def _profile_text(profile: Sequence[tuple[str, float]], n: int = 5) -> str:
    return ", ".join(f"{op} {100 * share:.0f} %" for op, share in profile[:n])


def _auroc(labels: npt.NDArray[np.int64], scores: npt.NDArray[np.float64]) -> float:
    from sklearn.metrics import roc_auc_score  # noqa: PLC0415

    return float(roc_auc_score(labels, scores))


def _prepare(study: accuracy.Study, work: Path) -> tuple[Path, RoiFile, Path, Path]:
    """Data, ROI, and the fp32 AST edge folder trained on it (edge-train); a folder that holds them already (an
    earlier run with ``--work``) is used as it is."""
    fp32 = work / "ast-edge"
    if (fp32 / "model.onnx").is_file() and (fp32 / "scoring.yaml").is_file():
        (data,) = [d for d in (work / "data").iterdir() if d.is_dir()]
        return data, load_roi(work / "roi.yaml"), work / "roi.yaml", fp32
    data, _ = accuracy.render_dataset(study, work / "data")
    roi_path = work / "roi.yaml"
    roi, _ = accuracy.calibrate(study, roi_path)
    accuracy.edge_train(study, "ast", "foreground", epochs=study.epochs, options=study.options({}),
                        paths=(data, roi_path, fp32))  # fmt: skip
    return data, roi, roi_path, fp32


def _stages(dirs: dict[str, Path]) -> dict[str, ModelStage]:
    plan = RunnerPlan(RuntimeConfig(backend="onnxruntime", device="cpu", threads=1))
    return {k: ModelStage(d / "model.onnx", plan) for k, d in dirs.items()}


def ast_rows(study: accuracy.Study, reps: int, work: Path) -> tuple[list[list[str]], dict[str, bool], list[str]]:
    """AST edge: train, quantise, time interleaved, score the test split, profile."""
    t0 = time.perf_counter()
    reused = (work / "ast-edge" / "model.onnx").is_file()
    data, roi, roi_path, fp32 = _prepare(study, work)
    trained = "by an earlier run, kept in --work" if reused else f"{time.perf_counter() - t0:.0f} s"
    dirs = {k: fp32 if k == "fp32" else work / f"ast-edge-{k}" for k in KINDS}
    quant_s = {k: accuracy.edge_quantize(fp32, data, roi_path, dirs[k], VARIANTS[k][1], reuse=False) for k in KINDS[1:]}
    card = card_from_onnx(fp32 / "model.onnx")
    crop = card.crop_spec()
    test = open_dataset(data, roi, crop).split("test")
    labels = np.array([0 if test[i]["defect_type"] == "good" else 1 for i in range(len(test))], dtype=np.int64)
    stages = _stages(dirs)
    try:
        feed = {k: test[0][k][None] for k in card.inputs}
        timed = interleaved(stages, feed, reps)
        scores = {k: s.raw_scores(test[i] for i in range(len(test))) for k, s in stages.items()}
    finally:
        for s in stages.values():
            s.close()
    auroc = {k: _auroc(labels, v) for k, v in scores.items()}
    profiles = {k: op_profile(d / "model.onnx", feed, 10, work) for k, d in dirs.items()}
    rows, targets = [], {}
    for k in KINDS:
        speed = timed.p50["fp32"] / timed.p50[k]
        delta = auroc[k] - auroc["fp32"]
        rel = np.abs(scores[k] - scores["fp32"]) / np.maximum(np.abs(scores["fp32"]), 1e-12)
        rows.append([
            f"AST edge {k}{VARIANTS[k][0] if k in VARIANTS else ''}",
            f"{timed.p50[k]:.1f}", f"{timed.p99[k]:.1f}", f"{speed:.2f}×", f"{auroc[k]:.4f}",
            "–" if k == "fp32" else f"{delta:+.4f}", "–" if k == "fp32" else f"{float(np.median(rel)):.2e}",
        ])  # fmt: skip
        if k in TARGETED:
            targets[f"AST edge {k}: ≥ {SPEED_TARGET}× fp32 speed (p50, ONNX Runtime, 1 thread)"] = speed >= SPEED_TARGET
            targets[f"AST edge {k}: image AUROC within {AUROC_TARGET} of fp32"] = abs(delta) <= AUROC_TARGET
    n_good = int((labels == 0).sum())
    notes = [
        f"data: synthetic line seed {study.seed}, {study.frames} frames 640×480 as an MVTec export; test split "
        f"{len(labels)} samples ({n_good} good, {len(labels) - n_good} defective); AST edge (mode rgbd, foreground) "
        f"trained by edge-train for {study.epochs}+{study.epochs} epochs ({trained}, with rendering and "
        f"calibration): a small model for the INT8-vs-fp32 comparison, not the accuracy study "
        f"(docs/models/ast.md).",
        "edge-quantize: 32 seeded good training crops, MinMax ranges, per-channel int8 weights, Conv/MatMul/Gemm "
        "quantised except AST's first 12 (the EfficientNet stem and blocks 0–3: the family default, "
        "engines.quantize.KEEP_FIRST), unless the row says otherwise: uint8-all quantises every Conv; "
        "uint8-64 calibrates on 64 crops (all of the 63 good training crops); percentile / entropy: ONNX Runtime's "
        "CalibrationMethod with its default settings (percentile: 99.999th, 2048 bins; entropy: 128 bins); "
        f"keep-out: also keeps the output convs fp32 (--keep-node {' --keep-node '.join(OUTPUT_CONVS)}). Each took "
        + ", ".join(f"{k} {v:.0f} s" for k, v in quant_s.items())
        + " including the scoring refit and the test evaluation.",
        "targets are judged on the default forms (int8, uint8); the other rows are variants tried.",
        "the same two default forms on the accuracy suite (AST edge of every station preset, both crop modes, "
        "python -m tools.benchmarks.accuracy --suite --precision fp32,uint8,int8): docs/accuracy.md, 'Quantised "
        "engines' (block accuracy:int8).",
        "score rel Δ: median over the test samples of |raw score − fp32 raw score| / |fp32 raw score|.",
    ]
    notes += [f"ONNX Runtime profile, AST edge {k} (share of kernel time, 10 runs, 1 thread): "
              f"{_profile_text(profiles[k])}" for k in KINDS]  # fmt: skip
    return rows, targets, notes


def dsr3d_rows(reps: int, work: Path) -> tuple[list[list[str]], list[str]]:
    """3DSR edge, random initialisation, calibrated on seeded example inputs: speed only."""
    model, card = accuracy_free_dsr3d(work)
    fp32 = onnx_from_model(model, card, work / "dsr3d" / "model.onnx")
    feeds = [example_feeds(card, seed) for seed in range(8)]
    dirs = {"fp32": fp32.parent}
    for k, settings in {
        "int8": QuantizeSettings(activations="int8"),
        "uint8": QuantizeSettings(activations="uint8"),
    }.items():
        out = work / f"dsr3d-{k}" / "model.onnx"
        quantize_onnx(fp32, out, feeds, settings)
        dirs[k] = out.parent
    stages = _stages(dirs)
    try:
        timed = interleaved(stages, feeds[0], reps)
    finally:
        for s in stages.values():
            s.close()
    profiles = {k: op_profile(d / "model.onnx", feeds[0], 3, work) for k, d in dirs.items()}
    rows = [[f"3DSR edge {k} (random init)", f"{timed.p50[k]:.1f}", f"{timed.p99[k]:.1f}",
             f"{timed.p50['fp32'] / timed.p50[k]:.2f}×", "–", "–", "–"] for k in dirs]  # fmt: skip
    notes = [f"ONNX Runtime profile, 3DSR edge {k}: {_profile_text(profiles[k])}" for k in dirs]
    return rows, notes


def accuracy_free_dsr3d(work: Path) -> tuple[Any, Any]:
    """3DSR edge with a random-init DADA (the engines benchmark's model)."""
    from tools.benchmarks.engines import dsr3d_edge  # noqa: PLC0415

    work.mkdir(parents=True, exist_ok=True)
    return dsr3d_edge(work)()


def run(quick: bool, keep: Path | None = None) -> BenchSection:
    """AST edge INT8 vs fp32 (speed, AUROC, profile); 3DSR edge speed when the full run has the time.

    ``keep``: work in this folder and keep it; its trained fp32 model (from an earlier run) is used again."""
    study = QUICK if quick else STUDY
    reps = 10 if quick else 60
    rows: list[list[str]] = []
    targets: dict[str, bool] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as d:
        work = Path(d) if keep is None else keep
        try:
            r, t, n = ast_rows(study, reps, work)
            rows, targets, notes = r, t, n
        except EdgeError as err:
            notes.append(f"AST edge not measured: {err}")
        try:
            r3, n3 = dsr3d_rows(3 if quick else 10, work / "3dsr")
            rows += r3
            notes += n3
        except EdgeError as err:
            notes.append(f"3DSR edge not measured: {err}")
    notes += [
        "latency: ModelStage.run (ONNX Runtime CPU, 1 intra-op thread as the daemon's default runtime.threads, IO "
        f"binding) on one real test crop; {reps} repetitions per model after 3 warm-up runs, the models "
        "interleaved with a rotating order so that load from other jobs falls on all of them alike.",
        f"the machine was shared with other jobs while this ran (1-minute load average at the end: "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs): absolute times are inflated, the ratios are of the "
        f"same run; run at {time.strftime('%H:%M:%S')}.",
    ]
    return BenchSection(
        title="INT8 (edge-quantize) vs fp32: ONNX Runtime CPU speed and accuracy",
        headers=["model", "p50 ms", "p99 ms", "speed vs fp32 (p50)", "image AUROC", "Δ AUROC", "score rel Δ"],
        rows=rows,
        targets=targets,
        notes=notes,
    )


def main(argv: list[str] | None = None) -> int:
    """This section alone into docs/benchmarks.md (as ``--only int8`` does), optionally keeping its work folder."""
    import argparse  # noqa: PLC0415

    from tools.benchmarks.report import write_page  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m tools.benchmarks.int8", description=main.__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--work", type=Path, help="work folder kept after the run; its trained fp32 model is reused")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args(argv)
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    section = run(args.quick, keep=args.work)
    print(section.to_markdown())
    command = "python -m tools.benchmarks.int8 " + " ".join(sys.argv[1:] if argv is None else argv)
    write_page(args.out, command.strip(), [section], merge=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
