"""The GPU check: the product's main job on a GPU machine, in one command, writing ``docs/benchmarks-gpu.md``.

Two phases, because the GPU machines this project is checked on have no open3d (calibration) and no ImageNet
weights packages (training), and only a few minutes of device time:

``python -m tools.gpu_check prepare --out gpu-prep`` (any machine, a few CPU minutes)
    records a calibration clip of the synthetic line and calibrates its ROI (``edge-calibrate``), records a short
    line and trains AST ``edge`` on it (``edge-train``, few epochs: this checks speed and parity, not accuracy),
    and keeps only what the GPU machine needs: ``roi.yaml`` and the model folder (ONNX, scoring file, checkpoint,
    golden crops).

``python -m tools.gpu_check run --prep gpu-prep --out OUT`` (the GPU machine, ≤ 8 minutes)
    1. builds pycuda from the sdist in ``--wheels`` when it does not import (CUDA crop, TensorRT buffers);
    2. runs the GPU tests (``tests/edge/test_crop_cuda.py``, ``tests/edge/test_inspect_gpu.py``);
    3. renders the line into a genuine RealSense recording (``edge-record``), same station as the ROI's;
    4. runs ``edge-daemon`` over it twice, as a real process each time: the CPU path (ONNX Runtime, CPU crop) and
       the GPU path (``runtime.backend: tensorrt`` when tensorrt imports, else ``torch`` — the PyTorch CUDA reference
       engine — with the CUDA crop writing the engine's device inputs and the ring page-locked);
    5. compares them frame by frame (verdicts, raw scores) and writes per-stage p50/p99 from the stored records,
       the sustained frames/s, accounting (0 unaccounted drops) and the machine into ``OUT/benchmarks-gpu.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DAEMON_CONFIG = """\
# Written by tools.gpu_check: the daemon over the rendered line, {label}.
schema_version: 1
source: {{type: playback, path: {line}}}
roi: {roi}
models:
  - {{name: ast-edge, onnx: {model}/model.onnx, scoring: {model}/scoring.yaml}}
runtime: {runtime}
latency_budget_ms: 200
gating: {{min_roi_fill: 0.2, mode: per_frame}}
storage: {{data_dir: {data}, evidence_quota_mb: 50, sample_ok_every: 0}}
metrics: {{enabled: false}}
ring: {{slots: 8, policy: lossless}}
"""
MODEL_DIR = "ast-edge"
SEED = 7


def _run(argv: list[str], log: Path | None = None, timeout: float = 600) -> int:
    """Run a command (this interpreter's tools), teeing its output to ``log``; returns its exit code."""
    t0 = time.monotonic()
    with log.open("w") if log else open("/dev/null", "w") as f:  # noqa: PTH123
        rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, check=False).returncode
    print(f"gpu_check: {' '.join(argv[:4])} … rc={rc} ({time.monotonic() - t0:.1f} s)", flush=True)
    return rc


def prepare(out: Path, frames: int, epochs: int) -> int:
    """CPU phase: ROI and a trained AST edge model for the run phase."""
    work = out.with_name(out.name + "-work")
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m"]
    clip, line = work / "clip.db3", work / "line.db3"
    steps = [
        [*py, "tools.record", "--source", "synthetic", "--seed", str(SEED), "--clutter", "high", "--overwrite",
         "--frames", "5", "--frames-per-part", "5", "--defect-rate", "0", "--out", str(clip)],
        [*py, "tools.record", "--source", "synthetic", "--seed", str(SEED), "--clutter", "high", "--overwrite",
         "--frames", str(frames), "--frames-per-part", "2", "--gap-frames", "1", "--defect-rate", "0.3",
         "--out", str(line)],
        [*py, "tools.calibrate", "--recording", str(clip), "--frames", "5", "--out", str(out / "roi.yaml"),
         "--preview", str(out / "roi-preview.png")],
        [*py, "tools.train", "--model", "ast", "--preset", "edge", "--data", str(line), "--roi", str(out / "roi.yaml"),
         "--crop", "foreground", "--out", str(work / MODEL_DIR), "--epochs", str(epochs), "--seed", str(SEED)],
    ]  # fmt: skip
    for argv in steps:
        if rc := _run(argv, work / "prepare.log"):
            print((work / "prepare.log").read_text()[-3000:])
            return rc
    model = out / MODEL_DIR
    model.mkdir(exist_ok=True)
    for name in ("model.onnx", "scoring.yaml", "model.safetensors", "golden.npz"):
        shutil.copy2(work / MODEL_DIR / name, model / name)
    print(f"gpu_check: prepared {out} ({sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 1e6:.1f} MB)")
    return 0


def ensure_pycuda(wheels: Path | None, log: Path) -> str:
    """pycuda's version, building it from the sdist in ``wheels`` first when it does not import."""
    if importlib.util.find_spec("pycuda") is None:
        sdists = sorted(wheels.glob("pycuda-*.tar.gz")) if wheels else []
        if not sdists:
            return "not installed (no pycuda sdist given with --wheels)"
        argv = [sys.executable, "-m", "pip", "install", "--no-index", "--no-build-isolation", "--no-deps",
                "--target", str(_site()), str(sdists[-1])]  # fmt: skip
        if _run(argv, log, timeout=420):
            return f"build failed (see {log.name})"
    import pycuda  # noqa: PLC0415  (optional GPU dependency)

    return str(pycuda.VERSION_TEXT)


def _site() -> Path:
    """Where wheels travelled to on the GPU machine (PYTHONPATH's first entry), else this interpreter's site."""
    import os  # noqa: PLC0415
    import site  # noqa: PLC0415

    first = os.environ.get("PYTHONPATH", "").split(":")[0]
    return Path(first) if first else Path(site.getsitepackages()[0])


def render_line(path: Path, frames: int, log: Path) -> int:
    """The line to score: parts of 4 frames, no empty-station gaps (every frame is scored), 30 % defective."""
    return _run(
        [sys.executable, "-m", "tools.record", "--source", "synthetic", "--seed", str(SEED), "--clutter", "high",
         "--overwrite", "--frames", str(frames), "--frames-per-part", "4", "--gap-frames", "0", "--defect-rate",
         "0.3", "--out", str(path)],
        log,
    )  # fmt: skip


@dataclass
class DaemonRun:
    label: str
    runtime: dict[str, Any]
    rc: int
    wall_s: float
    db: Path
    log: Path


def run_daemon(out: Path, prep: Path, line: Path, label: str, runtime: dict[str, Any]) -> DaemonRun:
    """One edge-daemon process over the recording; its results database is what the comparison reads."""
    data = out / f"daemon-{label}"
    shutil.rmtree(data, ignore_errors=True)
    config = out / f"edge-{label}.yaml"
    config.write_text(
        DAEMON_CONFIG.format(
            label=label, line=line.resolve(), roi=(prep / "roi.yaml").resolve(),
            model=(prep / MODEL_DIR).resolve(), runtime=json.dumps(runtime), data=data.resolve(),
        )
    )  # fmt: skip
    log = out / f"daemon-{label}.log"
    t0 = time.monotonic()
    rc = _run([sys.executable, "-m", "edge.daemon.main", "--config", str(config)], log)
    return DaemonRun(label, runtime, rc, time.monotonic() - t0, data / "results.db", log)


def read_records(db: Path) -> dict[int, dict[str, Any]]:
    """Stored verdict records by sequence: verdict, raw score, per-stage ms, capture host time."""
    query = (
        "SELECT v.sequence, v.verdict, v.stage_ms_json, v.host_ts_ns, s.raw FROM verdicts v "
        "JOIN scores s ON s.verdict_id = v.id"
    )
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(query).fetchall()
    return {
        int(seq): {"verdict": verdict, "raw": float(raw), "stages": json.loads(stages), "host_ts_ns": int(ts)}
        for seq, verdict, stages, ts, raw in rows
    }


def run_counters(db: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (counters,) = conn.execute("SELECT counters_json FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    return {k: int(v) for k, v in json.loads(counters).items()}


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def stage_rows(run: DaemonRun, records: dict[int, dict[str, Any]], skip: int) -> list[list[str]]:
    """p50/p99 per stage over the records after the first ``skip`` (warm-up: kernel compile, allocator)."""
    recs = [records[k] for k in sorted(records)][skip:]
    stages: dict[str, list[float]] = {}
    for r in recs:
        st = r["stages"]
        model = {k.split(":")[0]: v for k, v in st.items() if k.endswith(":ast-edge")}
        cis = model.get("crop", 0.0) + model.get("infer", 0.0) + st.get("score", 0.0)
        for name, v in (("crop", model.get("crop")), ("infer", model.get("infer")), ("score", st.get("score")),
                        ("crop+infer+score", cis), ("publish→verdict", st.get("total"))):  # fmt: skip
            if v is not None:
                stages.setdefault(name, []).append(float(v))
    return [[run.label, k, f"{_pct(v, 50):.2f}", f"{_pct(v, 99):.2f}", str(len(v))] for k, v in stages.items()]


def sustained_fps(records: dict[int, dict[str, Any]], skip: int) -> float:
    ts = sorted(r["host_ts_ns"] for r in records.values())[skip:]
    return (len(ts) - 1) / ((ts[-1] - ts[0]) / 1e9) if len(ts) > 1 and ts[-1] > ts[0] else float("nan")


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def machine() -> list[str]:
    lines = [f"- machine: {platform.processor() or platform.machine()}, Linux {platform.release()}, "
             f"python {platform.python_version()}, numpy {np.__version__}"]  # fmt: skip
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False).stdout.strip()  # fmt: skip
        lines.append(f"- GPU: {smi}")
    except (OSError, subprocess.TimeoutExpired) as err:
        lines.append(f"- GPU: nvidia-smi failed ({err})")
    if importlib.util.find_spec("torch"):
        import torch  # noqa: PLC0415

        lines.append(f"- torch {torch.__version__} (CUDA {torch.version.cuda})")
    import onnxruntime  # noqa: PLC0415

    lines.append(f"- onnxruntime {onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())})")
    return lines


def gpu_tests(out: Path) -> str:
    log = out / "gpu-tests.log"
    _run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/edge/test_crop_cuda.py",
          "tests/edge/test_inspect_gpu.py"], log)  # fmt: skip
    tail = [ln for ln in log.read_text().splitlines() if ln.strip()]
    return tail[-1] if tail else "no output"


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    pycuda = ensure_pycuda(args.wheels, out / "pycuda-build.log")
    print(f"gpu_check: pycuda {pycuda}", flush=True)
    tests = gpu_tests(out) if not args.skip_tests else "skipped (--skip-tests)"
    print(f"gpu_check: GPU tests: {tests}", flush=True)
    line = out.with_name(out.name + "-line") / "line.db3"
    line.parent.mkdir(parents=True, exist_ok=True)
    if rc := render_line(line, args.frames, out / "render.log"):
        print((out / "render.log").read_text()[-2000:])
        return rc
    gpu_backend = "tensorrt" if importlib.util.find_spec("tensorrt") else "torch"
    runs = [
        run_daemon(out, args.prep, line, "cpu", {"backend": "onnxruntime", "device": "cpu", "threads": 4}),
        run_daemon(out, args.prep, line, "gpu", {"backend": gpu_backend, "device": "cuda:0", "crop": "cuda",
                                                  "precision": "fp32"}),
    ]  # fmt: skip
    lines = ["# GPU check", "", "Written by `python -m tools.gpu_check run` on a GPU machine (both phases: the "
             "module's docstring). Do not edit by hand: rerun it.", "", *machine(),
             f"- pycuda: {pycuda}", f"- command: `{' '.join(sys.argv)}`",
             f"- run at: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}", "",
             f"GPU tests (`tests/edge/test_crop_cuda.py`, `tests/edge/test_inspect_gpu.py`): {tests}", ""]  # fmt: skip
    records: dict[str, dict[int, dict[str, Any]]] = {}
    rows: list[list[str]] = []
    summary: list[list[str]] = []
    for r in runs:
        if r.rc != 0 or not r.db.is_file():
            lines.append(f"**daemon {r.label} failed (exit {r.rc})**; its log's end:\n\n```\n"
                         f"{r.log.read_text()[-2500:]}\n```\n")  # fmt: skip
            continue
        recs = records[r.label] = read_records(r.db)
        c = run_counters(r.db)
        accounted = sum(c.get(k, 0) for k in ("scored", "gated", "waiting", "dropped"))
        log = r.log.read_text().splitlines()
        runtime_line = next((ln for ln in log if "event=inference_ready" in ln), "")
        runtime = runtime_line.split("runtime=")[-1] if "runtime=" in runtime_line else "?"
        engine_line = next((ln for ln in log if "event=model_runtime" in ln), "")
        runtime += f" ({engine_line.split('engine=')[1].split()[0]})" if "engine=" in engine_line else ""
        skip = args.warmup
        rows += stage_rows(r, recs, skip)
        fps = f"{sustained_fps(recs, skip):.1f}"
        summary.append([r.label, runtime, str(args.frames), str(c.get("scored", 0)), str(c.get("dropped", 0)),
                        str(args.frames - accounted), fps, f"{r.wall_s:.1f}"])  # fmt: skip
    lines += ["## Daemon runs over the recording", ""]
    lines += _table(["path", "runtime (as the daemon reported it)", "frames", "scored", "dropped", "unaccounted",
                     "sustained frames/s", "process wall s"], summary)  # fmt: skip
    lines += ["", f"## Per-stage latency (ms, stored records, after {args.warmup} warm-up frames)", ""]
    lines += _table(["path", "stage", "p50", "p99", "n"], rows)
    if "cpu" in records and "gpu" in records:
        a, b = records["cpu"], records["gpu"]
        common = sorted(set(a) & set(b))
        flips = [k for k in common if a[k]["verdict"] != b[k]["verdict"]]
        raw_a = np.array([a[k]["raw"] for k in common])
        raw_b = np.array([b[k]["raw"] for k in common])
        rel = np.abs(raw_b - raw_a) / np.maximum(np.abs(raw_a), 1e-12)
        ng = sum(a[k]["verdict"] == "NG" for k in common)
        lines += ["", "## Parity: GPU path against the CPU path, frame by frame", "",
                  f"- frames scored by both: {len(common)} ({ng} NG on the CPU path)",
                  f"- verdict flips: {len(flips)}" + (f" (sequences {flips[:10]})" if flips else ""),
                  f"- raw image score: max |Δ| {np.abs(raw_b - raw_a).max(initial=0):.3g}, "
                  f"max relative {rel.max(initial=0):.3g}"]  # fmt: skip
    lines += ["", f"Total check time {time.monotonic() - t_start:.0f} s.", ""]
    (out / "benchmarks-gpu.md").write_text("\n".join(lines))
    if args.doc is not None:
        write_block(args.doc, "\n".join(lines))
    print("\n".join(lines), flush=True)
    return 0


BEGIN, END = "<!-- gpu_check:begin -->", "<!-- gpu_check:end -->"


def write_block(doc: Path, text: str) -> None:
    """Put the check's page (headings one level down) between the gpu_check markers of ``doc``."""
    body = "\n".join("#" + ln if ln.startswith("#") else ln for ln in text.splitlines())
    page = doc.read_text(encoding="utf-8")
    if BEGIN not in page or END not in page:
        raise SystemExit(f"gpu_check: {doc} lacks the markers {BEGIN} … {END}: add them where the results belong")
    head, rest = page.split(BEGIN, 1)
    doc.write_text(f"{head}{BEGIN}\n{body}\n{END}{rest.split(END, 1)[1]}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="phase", required=True)
    p = sub.add_parser("prepare", help="CPU phase: ROI + trained AST edge model")
    p.add_argument("--out", type=Path, default=Path("gpu-prep"))
    p.add_argument("--frames", type=int, default=48, help="frames of the training line")
    p.add_argument("--epochs", type=int, default=2)
    r = sub.add_parser("run", help="GPU phase: tests, daemon CPU vs GPU, docs/benchmarks-gpu.md")
    r.add_argument("--prep", type=Path, default=Path("gpu-prep"))
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--frames", type=int, default=400, help="frames of the rendered line")
    r.add_argument("--warmup", type=int, default=20, help="records left out of the latency and rate figures")
    r.add_argument("--wheels", type=Path, help="folder with the pycuda sdist (built when pycuda does not import)")
    r.add_argument("--skip-tests", action="store_true")
    r.add_argument(
        "--doc", type=Path, help="also write the page into this doc's gpu_check block (docs/benchmarks-gpu.md)"
    )
    args = parser.parse_args(argv)
    if args.phase == "prepare":
        return prepare(args.out, args.frames, args.epochs)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
