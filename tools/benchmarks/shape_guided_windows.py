"""Shape-Guided: the graph's grid windows against the paper's FPS patches, on the synthetic drum line.

The exported graph scores with grid windows (``engines/models/shape_guided.py``); the paper samples FPS centres
and groups their nearest points. Issue 16 asks that the window variant be checked against an FPS reference: rank
correlation of the image scores ≥ 0.99 and image AUROC within 0.01. Here the line is rendered into an MVTec 3D-AD
export and the ROI calibrated as the accuracy study does (``tools.benchmarks.accuracy``), ``edge-train`` trains
the model, and every test sample is scored twice in PyTorch through the same ``ShapeGuidedModel.score``: by the
trained model (windows) and by its FPS reference (``engines.models.shape_guided.fps_reference``: the same experts,
the memory rebuilt and the alignment refitted from seeded FPS patches, group_mul 10).

``python -m tools.benchmarks.shape_guided_windows [--frames 60] [--crop foreground]`` writes its table into
``docs/models/shape_guided.md`` (between the ``accuracy:windows`` markers). Minutes on a CPU (training first);
not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from scipy.stats import spearmanr

from calibration.roi import load_roi
from engines.checkpoint import load_checkpoint
from engines.datasets import Batches, Dataset, open_dataset
from engines.metrics import image_auroc
from engines.models.shape_guided import INPUTS, FpsPatching, ShapeGuidedModel, fps_reference
from tools.benchmarks.accuracy import Study, calibrate, edge_train, render_dataset, write_into_doc
from tools.benchmarks.report import machine_block

DOC = Path("docs/models/shape_guided.md")
BLOCK = "windows"
TARGET_RHO = 0.99
TARGET_AUROC_GAP = 0.01


def test_scores(model: ShapeGuidedModel, data: Dataset) -> tuple[npt.NDArray[np.float64], float]:
    """Per test sample (PyTorch, batch 1): (image score, s_sdf, s_rgb) as rows; and the mean seconds per sample."""
    test = data.split("test")
    rows = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(len(test)):
            feeds = {k: torch.as_tensor(np.asarray(test[i][k], np.float32))[None] for k in INPUTS}
            parts = model.parts(**feeds)
            rows.append((float(model.fuse(*parts)[1][0]), float(parts[2][0]), float(parts[3][0])))
    return np.array(rows, dtype=np.float64), (time.perf_counter() - t0) / max(1, len(test))


def rho(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    """Spearman rank correlation."""
    return float(spearmanr(a, b).statistic)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.benchmarks.shape_guided_windows", description=__doc__)
    parser.add_argument("--frames", type=int, default=60, help="parts rendered on the line")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--crop", default="foreground", choices=("foreground", "full"))
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto", help="edge-train's device (scoring here is PyTorch on the CPU)")
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--no-doc", action="store_true", help="print the table only")
    parser.add_argument("--work", type=Path, help="keep the data and the trained model here (a rerun reuses them)")
    return parser.parse_args(argv)


def train_model(args: argparse.Namespace, work: Path) -> tuple[ShapeGuidedModel, Dataset, str]:
    """Render the line, calibrate the ROI, edge-train; the trained PyTorch model, its data and a note on them."""
    study = Study(
        seed=args.seed,
        frames=args.frames,
        epochs=args.epochs,
        batch_size=2,
        learning_rate=1e-3,
        model="shape_guided",
        preset=args.preset,
        threads=args.threads,
        device=args.device,
        reuse=args.work is not None,
    )
    data_dir = work / "mvtec" / "drum"
    if args.work is None or not data_dir.is_dir():
        data_dir, _ = render_dataset(study, work / "mvtec")
    roi_path = work / "roi.yaml"
    _, roi_note = calibrate(study, roi_path)
    fit_s = edge_train(
        study, "shape_guided", args.crop, epochs=args.epochs, options=[], paths=(data_dir, roi_path, work / "run")
    )
    model, card, _ = load_checkpoint(work / "run" / "model.safetensors")
    crop = card.crop_spec()
    data = open_dataset(data_dir, load_roi(roi_path), crop)
    splits = ", ".join(f"{s} {sum(k.values())}" for s, k in data.kinds.items())
    note = (
        f"Data: the synthetic line, {args.frames} parts ({splits}); ROI calibrated ({roi_note}); `{args.preset}` in"
        f" `{args.crop}` crop mode, edge-train {args.epochs} epochs, batch 2, lr 1e-3 ({fit_s:.0f} s)."
    )
    return model, data, note


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sg-windows-") as tmp:
        work = Path(tmp) if args.work is None else args.work
        work.mkdir(parents=True, exist_ok=True)
        model, data, note = train_model(args, work)
    t0 = time.perf_counter()
    train = Batches(data.split("train"), 2)
    refs = [fps_reference(model, train, args.seed, FpsPatching(seed=seed)) for seed in (0, 1)]
    reference_s = (time.perf_counter() - t0) / 2
    (win, win_s), (fps, fps_s), (fps1, _) = (test_scores(m, data) for m in (model, *refs))
    labels = np.ones(len(win), dtype=np.int64)
    labels[data.good("test")] = 0
    main_rho = rho(win[:, 0], fps[:, 0])
    auc = [image_auroc(s[:, 0], labels) for s in (win, fps, fps1)]
    met_rho, met_gap = main_rho >= TARGET_RHO, abs(auc[0] - auc[1]) <= TARGET_AUROC_GAP
    align = ["{:.3g}, {:.3g}".format(*m.align.tolist()) for m in (model, refs[0])]
    command = "python -m tools.benchmarks.shape_guided_windows " + " ".join(sys.argv[1:] if argv is None else argv)
    text = "\n".join(
        [
            note,
            "",
            "| what | windows (graph) | FPS reference (seed 0) |",
            "|---|---|---|",
            f"| SDF memory (rows) | {model.sdf_memory.shape[0]} | {refs[0].sdf_memory.shape[0]} |",
            f"| RGB memory (cells) | {model.rgb_memory.shape[0]} | {refs[0].rgb_memory.shape[0]} |",
            f"| alignment (w, b) | {align[0]} | {align[1]} (rebuilt with the memory in {reference_s:.0f} s) |",
            f"| image AUROC | {auc[0]:.3f} | {auc[1]:.3f} (FPS seed 1: {auc[2]:.3f}) |",
            f"| AUROC of s_sdf / s_rgb alone | {image_auroc(win[:, 1], labels):.3f} /"
            f" {image_auroc(win[:, 2], labels):.3f} | {image_auroc(fps[:, 1], labels):.3f} /"
            f" {image_auroc(fps[:, 2], labels):.3f} |",
            f"| PyTorch scoring, s per sample (1 thread) | {win_s:.2f} | {fps_s:.2f} |",
            "",
            f"| Spearman ρ over the {len(win)} test samples | image score | s_sdf | s_rgb |",
            "|---|---|---|---|",
            f"| windows vs FPS (seed 0) | **{main_rho:.3f}** | {rho(win[:, 1], fps[:, 1]):.3f} |"
            f" {rho(win[:, 2], fps[:, 2]):.3f} |",
            f"| FPS seed 0 vs FPS seed 1 (the reference's own spread) | {rho(fps[:, 0], fps1[:, 0]):.3f} |"
            f" {rho(fps[:, 1], fps1[:, 1]):.3f} | {rho(fps[:, 2], fps1[:, 2]):.3f} |",
            "",
            f"- rank correlation windows vs FPS **{main_rho:.3f}** (target ≥ {TARGET_RHO}:"
            f" {'met' if met_rho else '**not met**'}); image AUROC gap **{abs(auc[0] - auc[1]):.3f}** (target ≤"
            f" {TARGET_AUROC_GAP}: {'met' if met_gap else '**not met**'})",
            f"- load average at the start {load[0]:.2f} (2 shared cores: timings are upper bounds); wall"
            f" {time.perf_counter() - started:.0f} s",
            machine_block(command.strip()),
        ]
    )
    print(text)
    if not args.no_doc:
        write_into_doc(args.doc, text, BLOCK)
        print(f"wrote {args.doc}")
    return 0 if met_rho and met_gap else 1


if __name__ == "__main__":
    raise SystemExit(main())
