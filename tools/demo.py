"""`make demo`: the main job on an embedded default, end to end as far as the product goes today.

1. ``edge-record`` renders a calibration clip (one good drum) and a short synthetic drum line into genuine
   RealSense ``.db3`` recordings (+ labels sidecar);
2. ``edge-calibrate`` fits the drum ROI on the clip and writes ``roi.yaml`` and a preview PNG;
3. ``edge-train`` trains the ``tiny`` AST on the line's good parts, exports ONNX and fits the scoring file;
4. the line is played by a capture *process* into the shared-memory ring (lossless policy, as the bench will
   run); this process consumes it zero-copy, gates empty-station frames, and crops, infers (ONNX Runtime)
   and scores every other frame, printing a per-frame table and a verdict summary.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.metrics import roc_auc_score

from calibration.roi import load_roi
from drivers.labels import LabelSet, labels_dir_for, read_labels
from drivers.playback import PlaybackSource, PlaybackSourceConfig
from edge.capture import capture_main
from edge.core.errors import EdgeError
from edge.core.frame import Frame
from edge.core.ringbuf import FrameRing, RingClosedError, RingPolicy, install_signal_cleanup
from edge.core.scoring import load_scoring
from edge.inspect import Inspector
from tools import calibrate, record, train

console = Console(width=max(Console().width, 110))
MIN_ROI_FILL = 0.2  # below this share of the crop inside the ROI, no drum is at the station: not scored


@dataclass(frozen=True, slots=True)
class FrameRow:
    """One consumed frame, as the summary table shows it."""

    sequence: int
    frame_number: int
    truth: str
    roi_fill: float
    verdict: str  # OK / NG / gated
    score: float  # normalised; nan when gated
    crop_ms: float
    infer_ms: float


def _step(n: int, text: str) -> None:
    console.rule(f"[bold]{n}. {text}")


def stream_through_ring(
    recording: Path, roi_path: Path, model_dir: Path, labels: LabelSet
) -> tuple[list[FrameRow], str]:
    """Capture process → ring → this process: gate, crop, infer and score each frame in place."""
    with PlaybackSource(PlaybackSourceConfig(path=recording)) as probe:
        spec = probe.spec
    inspector = Inspector(spec, load_roi(roi_path), model_dir / "model.onnx", load_scoring(model_dir / "scoring.yaml"))
    rows: list[FrameRow] = []
    ctx = mp.get_context("spawn")
    with FrameRing.create(spec, slots=4, policy=RingPolicy.LOSSLESS) as ring:
        stop = ctx.Event()
        source = PlaybackSourceConfig(path=recording).model_dump(mode="json")
        capture = ctx.Process(target=capture_main, args=(source, ring.name, stop), name="edge.capture", daemon=True)
        capture.start()
        reader = ring.reader()
        try:
            while True:
                try:
                    with reader.read(timeout_s=15.0) as frame:
                        rows.append(_inspect(inspector, frame, labels))
                except RingClosedError:
                    break
        finally:
            stop.set()
            capture.join(timeout=10)
            inspector.close()
        s = ring.stats()
    counters = (
        f"ring {s.policy}: written {s.written}, delivered {s.delivered}, dropped {s.dropped}, "
        f"torn {s.torn}, capture exit code {capture.exitcode}"
    )
    return rows, counters


def _inspect(inspector: Inspector, frame: Frame, labels: LabelSet) -> FrameRow:
    result = inspector.inspect(frame)
    truth = labels.truth(frame.color_frame_number)
    gated = result.roi_fill < MIN_ROI_FILL
    return FrameRow(
        frame.sequence,
        frame.color_frame_number,
        truth.label if truth.defect_type is None else truth.defect_type,
        result.roi_fill,
        "gated" if gated else result.verdict,
        float("nan") if gated else result.score,
        result.crop_ms,
        result.infer_ms,
    )


def print_rows(rows: list[FrameRow]) -> None:
    table = Table(title="frames through the ring: ROI crop → tiny AST (ONNX Runtime) → scoring")
    for col in ("seq", "frame #", "truth", "ROI fill", "verdict", "z-score", "crop ms", "infer ms"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        colour = {"NG": "red", "OK": "green"}.get(r.verdict, "dim")
        table.add_row(
            str(r.sequence),
            str(r.frame_number),
            r.truth,
            f"{r.roi_fill:.1%}",
            f"[{colour}]{r.verdict}[/]",
            "" if np.isnan(r.score) else f"{r.score:.2f}",
            f"{r.crop_ms:.2f}",
            f"{r.infer_ms:.2f}",
        )
    console.print(table)


def print_summary(rows: list[FrameRow]) -> None:
    scored = [r for r in rows if r.verdict != "gated"]
    gated = [r for r in rows if r.verdict == "gated"]
    wrongly_gated = sum(r.truth != "empty" for r in gated) + sum(r.truth == "empty" for r in scored)
    counts = {v: sum(r.verdict == v for r in scored) for v in ("OK", "NG")}
    console.print(
        f"verdicts: {counts['OK']} OK, {counts['NG']} NG, {len(gated)} gated (no drum); "
        f"{wrongly_gated} frames gated wrongly"
    )
    y = [int(r.truth not in ("good", "empty")) for r in scored]
    if 0 < sum(y) < len(y):
        auroc = roc_auc_score(y, [r.score for r in scored])
        console.print(
            f"image AUROC on the known labels of the scored frames: {auroc:.3f} "
            "(tiny preset, trained on this same line: a pipeline check, not an accuracy claim — see docs/models/ast.md)"
        )
    for name, values in (("crop", [r.crop_ms for r in rows]), ("infer", [r.infer_ms for r in scored])):
        if values:
            p50, p99 = np.percentile(values, [50, 99])
            console.print(f"{name} latency: p50 {p50:.2f} ms, p99 {p99:.2f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="where everything is written")
    parser.add_argument("--frames", type=int, default=96, help="frames of the drum line")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20, help="training epochs of the tiny AST")
    args = parser.parse_args(argv)
    install_signal_cleanup()
    out: Path = args.out
    clip, line = out / "calibration-clip.db3", out / "drumline.db3"
    roi, preview, model_dir = out / "roi.yaml", out / "roi-preview.png", out / "ast-tiny"
    out.mkdir(parents=True, exist_ok=True)
    seed = str(args.seed)

    _step(1, "record a calibration clip and a synthetic drum line (edge-record)")
    for argv_ in (
        ["--frames", "5", "--frames-per-part", "5", "--defect-rate", "0", "--out", str(clip)],
        [
            "--frames", str(args.frames), "--frames-per-part", "2", "--gap-frames", "1",
            "--defect-rate", "0.35", "--out", str(line),
        ],
    ):  # fmt: skip
        if rc := record.main(["--source", "synthetic", "--seed", seed, "--clutter", "high", "--overwrite", *argv_]):
            return rc

    _step(2, "calibrate the drum ROI on the clip (edge-calibrate)")
    if rc := calibrate.main(["--recording", str(clip), "--frames", "5", "--out", str(roi), "--preview", str(preview)]):
        return rc

    _step(3, "train the tiny AST on the line's good parts, export ONNX, fit the scoring file (edge-train)")
    if rc := train.main(
        [
            "--model", "ast", "--preset", "tiny", "--data", str(line), "--roi", str(roi), "--crop", "foreground",
            "--out", str(model_dir), "--epochs", str(args.epochs), "--seed", seed,
        ]
        + (["--resume"] if (model_dir / "state").exists() else [])
    ):  # fmt: skip
        return rc

    _step(4, "play the line through the shared-memory ring; crop, infer and score every frame")
    try:
        rows, counters = stream_through_ring(line, roi, model_dir, read_labels(labels_dir_for(line)))
    except EdgeError as err:
        console.print(f"[red]error:[/] {err}")
        return 2
    print_rows(rows)
    print_summary(rows)
    console.print(counters)
    console.print(f"\nrecordings: {clip}, {line} (labels: {labels_dir_for(line)})")
    console.print(f"ROI:        {roi}\npreview:    {preview}  (color image with the ROI, and a top view of the fit)")
    console.print(f"model:      {model_dir}/model.onnx, scoring {model_dir}/scoring.yaml")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
