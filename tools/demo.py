"""`make demo`: the main job on an embedded default, end to end as far as the product goes today.

1. ``edge-record`` renders a calibration clip (one good drum) and a short synthetic drum line into genuine
   RealSense ``.db3`` recordings (+ labels sidecar);
2. ``edge-calibrate`` fits the drum ROI on the clip and writes ``roi.yaml`` and a preview PNG;
3. ``edge-train`` trains the ``tiny`` AST on the line's good parts, exports ONNX and fits the scoring file;
4. ``edge-daemon`` runs over the line as a real child process — capture process → shared-memory ring →
   inference process (gate empty stations, crop, ONNX Runtime, scoring) → SQLite and evidence — and the demo
   prints the stored verdicts beside the known labels, their AUROC, and the daemon's own summary (counts,
   latency p50/p99, where the database and evidence are);
5. ``edge-bench`` scores the line's test parts (frames the model never trained on) with the same model: per-stage
   latency, accuracy, ONNX Runtime vs PyTorch parity on real crops, and a self-contained HTML report with figures.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sklearn.metrics import roc_auc_score

from drivers.labels import LabelSet, labels_dir_for, labels_for_recording
from edge.daemon.main import format_summary
from edge.daemon.store import read_summary
from tools import calibrate, record, train
from tools.bench import cli as bench

console = Console(width=max(Console().width, 110))


DAEMON_CONFIG = """\
# Written by `make demo`: the daemon over the synthetic line's recording (paths relative to this file).
schema_version: 1
source: {{type: playback, path: {line}}}
roi: {roi}
models:
  - {{name: ast-tiny, onnx: {model}/model.onnx, scoring: {model}/scoring.yaml}}
runtime: {{threads: 2}}
latency_budget_ms: 200
gating: {{min_roi_fill: 0.2, mode: per_frame}}
storage: {{data_dir: daemon, evidence_quota_mb: 200, sample_ok_every: 10}}
metrics: {{enabled: false}}
ring: {{slots: 4, policy: auto}}
"""


@dataclass(frozen=True, slots=True)
class VerdictRow:
    """One stored verdict joined with the recording's ground truth."""

    sequence: int
    frame_number: int
    truth: str
    roi_fill: float
    verdict: str
    score: float
    total_ms: float


def _step(n: int, text: str) -> None:
    console.rule(f"[bold]{n}. {text}")


def run_daemon(config: Path, log: Path) -> int:
    """``edge-daemon --config`` as a real child process (as systemd runs it); its log goes to a file."""
    with log.open("w") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "edge.daemon.main", "--config", str(config)],
            stdout=f,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=600,
        )
    return proc.returncode


def stored_verdicts(db: Path, labels: LabelSet) -> list[VerdictRow]:
    """The latest run's verdicts with each frame's known label (read-only: the database stays the daemon's)."""
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT v.sequence, v.frame_number, v.device_ts_ns, v.roi_fill, v.verdict, s.score, v.total_ms "
            "FROM verdicts v JOIN scores s ON s.verdict_id = v.id "
            "WHERE v.run_id = (SELECT MAX(id) FROM runs) ORDER BY v.sequence"
        ).fetchall()
    finally:
        conn.close()
    out = []
    for seq, number, device_ts, fill, verdict, score, total in rows:
        truth = labels.truth(int(number), int(device_ts))
        label = truth.label if truth.defect_type is None else truth.defect_type
        out.append(VerdictRow(int(seq), int(number), label, float(fill), str(verdict), float(score), float(total)))
    return out


def print_rows(rows: list[VerdictRow]) -> None:
    table = Table(title="verdicts stored by edge-daemon (tiny AST, ONNX Runtime), with the recording's labels")
    for col in ("seq", "frame #", "truth", "ROI fill", "verdict", "z-score", "publish→verdict ms"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        colour = "red" if r.verdict == "NG" else "green"
        table.add_row(
            str(r.sequence), str(r.frame_number), r.truth, f"{r.roi_fill:.1%}",
            f"[{colour}]{r.verdict}[/]", f"{r.score:.2f}", f"{r.total_ms:.1f}",
        )  # fmt: skip
    console.print(table)
    y = [int(r.truth not in ("good", "empty")) for r in rows]
    if 0 < sum(y) < len(y):
        auroc = roc_auc_score(y, [r.score for r in rows])
        console.print(
            f"image AUROC of the stored scores against the known labels: {auroc:.3f} over {len(rows)} frames "
            "(tiny preset trained on this same line: a pipeline check, not an accuracy claim; see docs/models/ast.md)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="where everything is written")
    parser.add_argument("--frames", type=int, default=96, help="frames of the drum line")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20, help="training epochs of the tiny AST")
    args = parser.parse_args(argv)
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
    if (model_dir / "model.onnx").exists():  # a finished earlier demo: retrain (the ROI above was just refitted)
        shutil.rmtree(model_dir)
    if rc := train.main(
        [
            "--model", "ast", "--preset", "tiny", "--data", str(line), "--roi", str(roi), "--crop", "foreground",
            "--out", str(model_dir), "--epochs", str(args.epochs), "--seed", seed,
        ]
        + (["--resume"] if (model_dir / "state").exists() else [])
    ):  # fmt: skip
        return rc

    _step(4, "run edge-daemon over the line: capture → ring → crop → AST → scoring → SQLite + evidence")
    config, log = out / "edge.yaml", out / "daemon.log"
    config.write_text(DAEMON_CONFIG.format(line=line.name, roi=roi.name, model=model_dir.name))
    rc = run_daemon(config, log)
    db = out / "daemon" / "results.db"
    if rc != 0 or not db.is_file():
        console.print(f"[red]edge-daemon exited with {rc}[/]; its log: {log}")
        console.print(log.read_text()[-3000:])
        return rc or 1
    print_rows(stored_verdicts(db, labels_for_recording(line)))
    console.print(format_summary(read_summary(db), db, out / "daemon" / "evidence"))
    _step(5, "bench the model on the line's test parts (edge-bench): latency per stage, accuracy, parity, figures")
    report = out / "bench"
    bench_rc = bench.main(
        ["--data", str(line), "--roi", str(roi), "--models", str(model_dir), "--report", str(report), "--parity"]
    )
    if bench_rc == 2:
        return bench_rc
    console.print(f"\nrecordings: {clip}, {line} (labels: {labels_dir_for(line)})")
    console.print(f"ROI:        {roi}\npreview:    {preview}  (color image with the ROI, and a top view of the fit)")
    console.print(f"model:      {model_dir}/model.onnx, scoring {model_dir}/scoring.yaml")
    console.print(f"daemon:     config {config}, log {log}")
    console.print(f"bench:      {report / 'report.html'} (self-contained; report.json and PNGs beside it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
