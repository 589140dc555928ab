"""Benchmark: the daemon end to end on this machine's CPUs — frames/s, publish → verdict, drops, memory per process.

``edge-daemon`` runs as a real process tree (main, capture, inference) over a recording of the synthetic line
(``edge-record``, 640×480, calibrated with ``edge-calibrate``): capture → shared-memory ring → crop → model → scoring
→ SQLite. Models: every scoring family of the registry (its pretraining dependencies, e.g. 3DSR's DADA, are not
scorers: they get a random-initialised checkpoint) in its ``edge`` preset, trained briefly by ``edge-train`` (speed
and memory, not accuracy), and quantised by ``edge-quantize`` in both forms: ``int8`` (symmetric, the Q/DQ ONNX
TensorRT builds from) and ``uint8`` (ONNX Runtime's x86 form).

Runs, one daemon process each, in one invocation so that ratios compare like with like:

- **unpaced**: the recording read as fast as the lossless ring accepts it — the most the pipeline sustains;
- **paced**: the recording handed out at the line rate (``source.rate_fps``) into a ``latest`` ring, as a live camera
  would be — publish → verdict is the latency a PLC sees, and a frame the daemon cannot keep up with is dropped
  (counted);
- **memory**: resident memory (RSS) of each process sampled during the paced runs with one model, and with the
  three AST forms loaded together;
- **long** (``--long``): ten minutes of an endless synthetic line at 30 frames/s (realtime), RSS per process sampled
  every few seconds; growth = last sample − the sample one minute in.

Figures come from the results database the daemon wrote (per verdict: the capture host time and the publish →
verdict ``total``), after leaving out the first ``WARMUP`` verdicts; accounting from the run's final counters.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edge.core.errors import EdgeError
from tools.benchmarks.report import BenchSection, write_page

LINE_RATE = 30.0  # frames/s of the line (the paced runs)
FPS_TARGET = 30.0
P99_TARGET_MS = 60.0
GROWTH_TARGET_MB = 10.0
WARMUP = 20  # verdicts left out of the rate and latency figures (session start, allocator, first inferences)
KINDS = ("fp32", "int8", "uint8")
NAMES = {"ast": "AST", "dsr3d": "3DSR"}
SEED = 7
THREADS = 1  # ONNX Runtime intra-op threads per model: the daemon's default; 2 on 2 cores shared with capture and
# main dropped 11-12 of 200 frames paced at 30 frames/s where 1 dropped none (load ~4.5, docs/daemon.md)
LONG_S = 600.0
UNPACED_MAX_S = 90.0  # a slow model's unpaced run is stopped (SIGTERM, drained) after this: its rate is known by then


@dataclass(frozen=True, slots=True)
class Prepared:
    line: Path  # the recording
    frames: int
    roi: Path
    models: dict[str, dict[str, Path]]  # family → kind → model folder (model.onnx, scoring.yaml)
    notes: list[str]


@dataclass
class Run:
    """One daemon process: its database, its log, and RSS samples (role → MB list)."""

    label: str
    rc: int
    wall_s: float
    db: Path
    log: str
    rss: dict[str, list[float]] = field(default_factory=dict)
    stopped: bool = False  # SIGTERM after its duration, before the recording ended
    trace: list[tuple[float, str, int, dict[str, float], int]] = field(default_factory=list)  # ``trace=True``:
    # (seconds since start, role, pid, _status, evidence folders written so far) per process per sample

    def counters(self) -> dict[str, int]:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            (counters,) = conn.execute("SELECT counters_json FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        return {k: int(v) for k, v in json.loads(counters).items()}

    def verdicts(self) -> tuple[np.ndarray, np.ndarray]:
        """Capture host times (s) and publish → verdict (ms) of the stored verdicts, in sequence order."""
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            rows = conn.execute("SELECT host_ts_ns, total_ms FROM verdicts ORDER BY sequence").fetchall()
        a = np.array(rows, dtype=np.float64).reshape(-1, 2)
        return a[:, 0] / 1e9, a[:, 1]

    def dropped_before_first(self) -> int:
        """Frames missing before the first verdict (lost while the daemon started: the first verdict's gap_before)."""
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            row = conn.execute("SELECT gap_before FROM verdicts ORDER BY sequence LIMIT 1").fetchone()
        return 0 if row is None else int(row[0])


def _main(module: str, argv: list[str]) -> None:
    """One of this repository's CLIs in a child process (a recording is written and read in separate processes)."""
    done = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        raise EdgeError(f"{module} {' '.join(argv[:6])} … exited {done.returncode}: {' | '.join(tail)}",
                        "run the command by hand to see the whole message")  # fmt: skip


def scoring_families() -> list[str]:
    """Every registered family that scores frames: pretraining dependencies of another family (DADA) are not."""
    from engines import list_families  # noqa: PLC0415
    from engines._registry import pretrained_from  # noqa: PLC0415

    families = list_families()
    dependencies = {dep for f in families for dep in pretrained_from(f).values()}
    return [f for f in families if f not in dependencies]


def _random_dependency(family: str, dep_family: str, path: Path) -> Path:
    """A random-initialised checkpoint of ``family``'s pretraining dependency (speed, not accuracy)."""
    from engines import get_family  # noqa: PLC0415
    from engines.checkpoint import TrainInfo, save_checkpoint  # noqa: PLC0415

    dep = get_family(dep_family)
    card = dep.card(preset="edge", crop_mode="foreground")
    return save_checkpoint(path, dep.build(card), card, TrainInfo(0, SEED))


def prepare(work: Path, frames: int, train_frames: int, epochs: int, families: list[str] | None = None) -> Prepared:
    """Recording, ROI, and each scoring family's edge model (``families``, default every one) in fp32 / int8 / uint8
    (trained and calibrated on a shorter recording of the same line, ``train_frames`` long: edge-quantize needs the
    model's own training data)."""
    from engines._registry import pretrained_from  # noqa: PLC0415

    t0 = time.perf_counter()
    clip, line, roi, training = work / "clip.db3", work / "line.db3", work / "roi.yaml", work / "train.db3"

    def record(path: Path, seed: int, *argv: str) -> None:
        _main("tools.record", ["--source", "synthetic", "--seed", str(seed), "--clutter", "high", "--overwrite",
                               "--out", str(path), *argv])  # fmt: skip

    record(clip, SEED, "--frames", "5", "--frames-per-part", "5", "--defect-rate", "0")
    for path, n in ((line, frames), (training, train_frames)):  # same seed: the camera (and ROI) of the line
        record(path, SEED, "--frames", str(n), "--frames-per-part", "4", "--gap-frames", "0", "--defect-rate", "0.3")
    _main("tools.calibrate", ["--recording", str(clip), "--frames", "5", "--out", str(roi)])
    notes = [f"recording: {frames} frames 640×480 of the synthetic line (seed {SEED}, high clutter, 4-frame parts, "
             f"no empty-station gaps: every frame is scored), {line.stat().st_size / 1e6:.0f} MB; "
             f"prepared in {time.perf_counter() - t0:.0f} s"]  # fmt: skip
    models: dict[str, dict[str, Path]] = {}
    for family in scoring_families() if families is None else families:
        t1 = time.perf_counter()
        fp32 = work / f"{family}-fp32"
        options: list[str] = []
        for key, dep in pretrained_from(family).items():
            options += ["--option", f"{key}={_random_dependency(family, dep, work / f'{dep}.safetensors')}"]
        try:
            _main("tools.train", ["--model", family, "--preset", "edge", "--crop", "foreground",
                                  "--data", str(training), "--roi", str(roi), "--out", str(fp32),
                                  "--epochs", str(epochs), "--seed", str(SEED), *options])  # fmt: skip
            dirs = {"fp32": fp32}
            for kind in KINDS[1:]:
                dirs[kind] = work / f"{family}-{kind}"
                _main("tools.quantize", ["--model-dir", str(fp32), "--data", str(training), "--roi", str(roi),
                                         "--out", str(dirs[kind]), "--activations", kind])  # fmt: skip
        except EdgeError as err:
            notes.append(f"{NAMES.get(family, family)} edge not measured: {err}")
            continue
        models[family] = dirs
        deps = ", ".join(pretrained_from(family).values())
        notes.append(f"{NAMES.get(family, family)} edge: edge-train {epochs} epoch(s) on a {train_frames}-frame "
                     f"recording of the line (its first frames)"
                     + (f" over a random-initialised {deps}" if deps else "")
                     + f", then edge-quantize int8 and uint8: {time.perf_counter() - t1:.0f} s")  # fmt: skip
    return Prepared(line, frames, roi, models, notes)


def _config(path: Path, data: Path, *, source: dict[str, Any], roi: Path, models: Mapping[str, Path],
            policy: str, slots: int, sample_ok_every: int = 0) -> Path:  # fmt: skip
    config = {
        "schema_version": 1,
        "source": source,
        "roi": str(roi),
        "models": [
            {"name": n, "onnx": str(d / "model.onnx"), "scoring": str(d / "scoring.yaml")} for n, d in models.items()
        ],
        "runtime": {"backend": "onnxruntime", "device": "cpu", "threads": THREADS},
        "latency_budget_ms": 200,
        "gating": {"min_roi_fill": 0.2, "mode": "per_frame"},
        "storage": {"data_dir": str(data), "evidence_quota_mb": 50, "sample_ok_every": sample_ok_every},
        "metrics": {"enabled": False},
        "ring": {"slots": slots, "policy": policy},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


STATUS_KEYS = ("VmRSS", "RssAnon", "RssFile", "Threads")


def _status(pid: int) -> dict[str, float] | None:
    """VmRSS, RssAnon, RssFile (MB) and Threads of a process from /proc/<pid>/status, or None once it is gone."""
    found: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in STATUS_KEYS:
                found[key] = int(value.split()[0]) / (1 if key == "Threads" else 1024)
    except OSError:
        return None
    return found if "VmRSS" in found else None


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _daemon_pids(main: int) -> list[int]:
    """The main process and its children (the multiprocessing resource tracker left out)."""
    pids = [main]
    for child in _children(main):
        try:
            if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes():
                pids.append(child)
        except OSError:
            continue
    return pids


def run_daemon(work: Path, label: str, source: dict[str, Any], roi: Path, models: Mapping[str, Path], *,
               policy: str, slots: int = 8, duration_s: float | None = None, sample_s: float = 0.5,
               sample_ok_every: int = 0, trace: bool = False) -> Run:  # fmt: skip
    """One edge-daemon process; RSS of its processes sampled every ``sample_s``; SIGTERM after ``duration_s``;
    ``trace``: every sample's /proc status and the evidence folders written so far kept in ``Run.trace``."""
    data = work / f"run-{label}"
    config = _config(work / f"edge-{label}.yaml", data, source=source, roi=roi, models=models, policy=policy,
                     slots=slots, sample_ok_every=sample_ok_every)  # fmt: skip
    argv = [sys.executable, "-m", "edge.daemon.main", "--config", str(config)]
    lines: list[str] = []
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    samples: dict[int, list[tuple[bool, float]]] = {}  # pid → (models loaded?, MB)
    traced: list[tuple[float, int, dict[str, float], int]] = []
    inference_pid: int | None = None
    stopped = False
    try:
        while proc.poll() is None:
            if inference_pid is None:
                m = next((re.search(r"event=inference_ready pid=(\d+)", ln) for ln in lines if "inference_ready" in ln),
                         None)  # fmt: skip
                inference_pid = int(m.group(1)) if m else None
            evidence = len(list((data / "evidence").glob("*/*"))) if trace else 0
            for pid in _daemon_pids(proc.pid):
                if (status := _status(pid)) is not None:
                    samples.setdefault(pid, []).append((inference_pid is not None, status["VmRSS"]))
                    if trace:
                        traced.append((time.monotonic() - t0, pid, status, evidence))
            if duration_s is not None and time.monotonic() - t0 > duration_s:
                proc.terminate()
                stopped = True
                break
            time.sleep(sample_s)
        rc = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    rss: dict[str, list[float]] = {}
    for pid, taken in samples.items():  # main and inference once the models are loaded; capture from its start
        role = "main" if pid == proc.pid else "inference" if pid == inference_pid else "capture"
        rss.setdefault(role, []).extend(mb for loaded, mb in taken if loaded or role == "capture")
    roles = {proc.pid: "main", inference_pid: "inference"}
    run = Run(label, rc, time.monotonic() - t0, data / "results.db", "".join(lines), rss, stopped,
              [(t, roles.get(pid, "capture"), pid, status, ev) for t, pid, status, ev in traced])  # fmt: skip
    if rc != 0:
        raise EdgeError(f"edge-daemon ({label}) exited {rc}: {' | '.join(run.log.splitlines()[-4:])}",
                        f"run it by hand: {' '.join(argv[1:])}")  # fmt: skip
    return run


@dataclass(frozen=True, slots=True)
class Figures:
    fps: float
    p50: float
    p99: float
    scored: int
    dropped: int
    unaccounted: int
    dropped_at_start: int  # of ``dropped``: before the first verdict


def figures(run: Run, frames_read: int | None) -> Figures:
    """Sustained frames/s and publish → verdict percentiles after WARMUP verdicts; drops and unaccounted frames.

    ``frames_read``: the frames the source held (a recording); None for an endless source (then the ring's
    published count is the reference, as for a run stopped before its recording ended)."""
    ts, total = run.verdicts()
    skip = min(WARMUP, len(ts) // 4)  # a slow model's paced run may give fewer verdicts than WARMUP
    if len(ts) - skip < 2:
        raise EdgeError(f"{run.label}: {len(ts)} verdicts, too few for a rate", "record more frames")
    ts, total = ts[skip:], total[skip:]
    fps = (len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else float("nan")
    c = run.counters()
    accounted = c["scored"] + c["gated"] + c["waiting"] + c["dropped"] + c["capture_lost"]
    reference = frames_read if frames_read is not None and not run.stopped else c["published"] + c["capture_lost"]
    return Figures(fps, float(np.percentile(total, 50)), float(np.percentile(total, 99)), c["scored"],
                   c["dropped"] + c["capture_lost"], reference - accounted, run.dropped_before_first())  # fmt: skip


def _mb(samples: list[float]) -> str:
    """Median RSS of the second half of the samples (after start-up) and the peak, in MB."""
    if not samples:
        return "–"
    return f"{np.median(samples[len(samples) // 2 :]):.0f} (peak {max(samples):.0f})"


def long_run(work: Path, roi: Path, model: Path, seconds: float) -> tuple[list[list[str]], dict[str, bool], str]:
    """Ten minutes of an endless synthetic line at the line rate: RSS growth per process."""
    source: dict[str, Any] = {"type": "synthetic", "seed": SEED, "clutter": "high", "frames_per_part": 4,
                              "gap_frames": 0, "defect_rate": 0.3, "fps": LINE_RATE, "realtime": True}  # fmt: skip
    run = run_daemon(work, "long", source, roi, {"ast-edge-int8": model}, policy="latest", slots=4,
                     duration_s=seconds, sample_s=5.0)  # fmt: skip
    f = figures(run, None)
    counts = run.counters()
    rows, targets = [], {}
    start_index = max(1, int(60 / 5.0))  # the sample one minute in (after warm-up)
    total_growth = 0.0
    for role in ("main", "capture", "inference"):
        s = run.rss.get(role, [])
        if len(s) <= start_index:
            continue
        growth = s[-1] - s[start_index]
        total_growth += growth
        rows.append([f"10-minute run, {role}", f"{s[start_index]:.1f}", f"{s[-1]:.1f}", f"{growth:+.1f}",
                     f"{max(s):.1f}"])  # fmt: skip
    targets[f"RSS growth over {seconds / 60:.0f} min ≤ {GROWTH_TARGET_MB:g} MB (main + capture + inference, from "
            "the sample 1 min in to the last)"] = total_growth <= GROWTH_TARGET_MB  # fmt: skip
    per_minute = "; ".join(
        f"{role} " + ", ".join(f"{mb:.1f}" for mb in run.rss[role][start_index::start_index])
        for role in ROLES
        if len(run.rss.get(role, [])) > start_index
    )
    note = (
        f"long run: synthetic line realtime at {LINE_RATE:g} frames/s (rendering in the capture process), AST edge "
        f"int8, latest ring; {run.wall_s:.0f} s, {f.scored} verdicts at {f.fps:.1f} frames/s, "
        f"{f.dropped} dropped (counted), {f.unaccounted} unaccounted, {counts['ng']} NG with "
        f"{counts['evidence_saved']} evidence folders written; total growth {total_growth:+.1f} MB; RSS (MB) "
        f"every minute from the first: {per_minute}"
    )
    return rows, targets, note


ROLES = ("main", "capture", "inference")


@dataclass
class Tables:
    """What the runs fill in: the speed rows, the memory rows, the long run's rows, targets and notes."""

    rows: list[list[str]] = field(default_factory=list)
    memory: list[list[str]] = field(default_factory=list)
    long: list[list[str]] = field(default_factory=list)
    targets: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def speed_rows(work: Path, prep: Prepared, out: Tables) -> None:
    """Each family × precision: one unpaced and one paced daemon; targets for AST's int8 forms."""
    for family, dirs in prep.models.items():
        name = NAMES.get(family, family)
        for kind, folder in dirs.items():
            playback: dict[str, Any] = {"type": "playback", "path": str(prep.line)}
            label = f"{family}-{kind}"
            try:
                free = run_daemon(work, f"{label}-unpaced", playback, prep.roi, {label: folder}, policy="lossless",
                                  duration_s=UNPACED_MAX_S)  # fmt: skip
                paced = run_daemon(work, f"{label}-paced", {**playback, "rate_fps": LINE_RATE}, prep.roi,
                                   {label: folder}, policy="latest", slots=4)  # fmt: skip
                u, p = figures(free, prep.frames), figures(paced, prep.frames)
            except EdgeError as err:
                out.notes.append(f"{name} edge {kind} not measured: {err}")
                continue
            out.rows.append([
                f"{name} edge {kind}", f"{u.fps:.1f}", f"{u.p50:.0f} / {u.p99:.0f}", str(u.unaccounted),
                f"{p.fps:.1f}", f"{p.p50:.1f} / {p.p99:.1f}", f"{p.dropped} ({p.dropped_at_start} at start)",
                str(p.unaccounted),
            ])  # fmt: skip
            if family == "ast" and kind != "fp32":
                keeps_up = p.fps >= FPS_TARGET * 0.99 and p.dropped == 0 and p.unaccounted == 0
                out.targets[
                    f"AST edge {kind}: the daemon keeps up with {LINE_RATE:g} frames/s paced (0 dropped, 0 "
                    f"unaccounted) with p99 publish → verdict ≤ {P99_TARGET_MS:g} ms"
                ] = keeps_up and p.p99 <= P99_TARGET_MS
                out.targets[f"AST edge {kind}: ≥ {FPS_TARGET:g} frames/s unpaced, 0 unaccounted"] = (
                    u.fps >= FPS_TARGET and u.unaccounted == 0
                )
            if family == "ast" and kind == "fp32":
                out.memory.append(["1 model (AST edge fp32), paced", *(_mb(paced.rss.get(r, [])) for r in ROLES)])


def memory_rows(work: Path, prep: Prepared, out: Tables, long: bool) -> None:
    """The three AST forms in one daemon (memory with three models); the 10-minute growth run with ``long``."""
    three = {f"ast-edge-{k}": f for k, f in prep.models["ast"].items()}
    playback = {"type": "playback", "path": str(prep.line), "rate_fps": LINE_RATE}
    try:
        both = run_daemon(work, "three-models", playback, prep.roi, three, policy="latest", slots=4)
        out.memory.append(
            ["3 models (AST edge fp32 + int8 + uint8), paced", *(_mb(both.rss.get(r, [])) for r in ROLES)]
        )
        f3 = figures(both, prep.frames)
        out.notes.append(f"three models in one daemon, paced at {LINE_RATE:g}: {f3.fps:.1f} frames/s scored (every "
                         f"model on every frame), {f3.dropped} dropped (counted), "
                         f"{f3.unaccounted} unaccounted")  # fmt: skip
    except EdgeError as err:
        out.notes.append(f"three-model memory run failed: {err}")
    if long:
        try:
            out.long, targets, note = long_run(work, prep.roi, prep.models["ast"]["int8"], LONG_S)
        except EdgeError as err:
            out.notes.append(f"the 10-minute memory-growth run failed: {err}")
            return
        out.targets.update(targets)
        out.notes.append(note)
    else:
        out.notes.append("the 10-minute memory-growth run was not part of this invocation (`--long` runs it)")


def load_note(start: float, end: float, consequence: str) -> str:
    """The run's load, read as other jobs' only at the start (the daemon's own processes load the end)."""
    cpus = os.cpu_count() or 1
    loads = f"1-minute load average {start:.2f} at the start, {end:.2f} at the end, on {cpus} CPUs"
    if start > cpus / 2:
        return (
            f"the machine was shared with other jobs while this ran ({loads}): {consequence}; run at "
            f"{time.strftime('%H:%M:%S')}."
        )
    return (
        f"the machine was quiet at the start ({loads}; the end includes the daemon's own processes); run at "
        f"{time.strftime('%H:%M:%S')}."
    )


def run(quick: bool, long: bool = False) -> BenchSection:
    """Every family × precision unpaced and paced through the daemon; memory with one and three models."""
    frames, train_frames, epochs = (60, 32, 1) if quick else (200, 48, 1)
    load_before = os.getloadavg()
    out = Tables()
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as d:
        work = Path(d)
        prep = prepare(work, frames, train_frames, epochs)
        out.notes += prep.notes
        speed_rows(work, prep, out)
        if "ast" in prep.models:
            memory_rows(work, prep, out, long)
    load_after = os.getloadavg()
    out.notes += [
        f"daemon: `edge-daemon` as a real process tree, ONNX Runtime CPU with {THREADS} threads per model, capture "
        "and inference sharing the same CPUs; unpaced: lossless ring of 8 slots, the recording read as fast as the "
        f"ring accepts it (publish → verdict then includes waiting in the ring), stopped by SIGTERM after "
        f"{UNPACED_MAX_S:g} s if the recording lasts longer (3DSR); paced: source.rate_fps "
        f"{LINE_RATE:g} into a latest ring of 4 slots, as a live camera. Frames/s: scored verdicts over their capture "
        f"host times, after the first {WARMUP} (a quarter of them when fewer than {4 * WARMUP}); "
        "publish → verdict: the daemon's per-verdict `total` stage; "
        "dropped: frames the ring overwrote (counted, in the verdicts' gap_before; 'at start': before the first "
        "verdict, i.e. the first verdict's gap_before); unaccounted: frames of the "
        "recording in no counter (scored, gated, waiting, dropped, capture_lost).",
        "memory: RSS (MB) of each process, sampled every 0.5 s (main and inference once the models are loaded, "
        "capture from its start): median of the second half of the samples (peak in brackets); "
        "main holds SQLite and the sinks, capture the source, inference the models.",
        load_note(
            load_before[0],
            load_after[0],
            "absolute figures are inflated; rerun on a quiet machine to judge the targets",
        ),
    ]
    rows = out.rows
    if out.memory:
        rows.append(["**memory (RSS MB)**", *ROLES, "", "", "", ""])
        rows += [[*r, *([""] * (8 - len(r)))] for r in out.memory]
    if out.long:
        rows.append(["**10-minute run (RSS MB)**", "at 1 min", "last", "growth", "peak", "", "", ""])
        rows += [[*r, *([""] * (8 - len(r)))] for r in out.long]
    headers = ["model", "unpaced frames/s", "unpaced publish→verdict p50 / p99 ms", "unpaced unaccounted",
               f"paced {LINE_RATE:g}/s: frames/s", "paced p50 / p99 ms", "paced dropped (counted)",
               "paced unaccounted"]  # fmt: skip
    return BenchSection(
        title="The daemon end to end on the CPU: frames/s, publish → verdict, drops, memory",
        headers=headers,
        rows=rows,
        targets=out.targets,
        notes=out.notes,
    )


LONG_TITLE = "The daemon's memory over 10 minutes (the long run alone: `python -m tools.benchmarks.daemon --long-only`)"


def long_only(out: Path = Path("docs/benchmarks.md")) -> None:
    """Only the 10-minute memory-growth run (AST edge int8, prepared as in ``run``), written into ``out`` as a section
    of its own (a ``make bench --long`` puts the same rows into the daemon section)."""
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-daemon-long-") as d:
        work = Path(d)
        prep = prepare(work, 8, 48, 1, families=["ast"])
        rows, targets, note = long_run(work, prep.roi, prep.models["ast"]["int8"], LONG_S)
    notes = [
        *prep.notes[1:],
        note,
        "RSS (MB): VmRSS of each process sampled every 5 s; growth = last sample − the sample 1 min in.",
        load_note(load_before[0], os.getloadavg()[0], "frames/s are the machine's, not the daemon's"),
    ]
    section = BenchSection(
        title=LONG_TITLE,
        headers=["process", "RSS MB at 1 min", "last", "growth", "peak"],
        rows=rows,
        targets=targets,
        notes=notes,
    )
    print(section.to_markdown())
    write_page(out, "python -m tools.benchmarks.daemon --long-only", [section], merge=True)


def evidence_probe(seconds: float, ok_every: int = 300) -> None:
    """Diagnostic, not a benchmark section: the long run's daemon for ``seconds`` with every ``ok_every``-th OK
    verdict's evidence kept too (so that evidence comes within the run), each process's VmRSS / RssAnon / RssFile /
    Threads every second; prints a line per process whenever its RSS moved by 0.1 MB or an evidence folder was
    written (docs/daemon.md, "Memory over 10 minutes")."""
    source: dict[str, Any] = {"type": "synthetic", "seed": SEED, "clutter": "high", "frames_per_part": 4,
                              "gap_frames": 0, "defect_rate": 0.3, "fps": LINE_RATE, "realtime": True}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-daemon-probe-") as d:
        work = Path(d)
        prep = prepare(work, 8, 48, 1, families=["ast"])
        run = run_daemon(work, "probe", source, prep.roi, {"ast-edge-int8": prep.models["ast"]["int8"]},
                         policy="latest", slots=4, duration_s=seconds, sample_s=1.0, sample_ok_every=ok_every,
                         trace=True)  # fmt: skip
        f = figures(run, None)
    print(f"{f.scored} verdicts in {run.wall_s:.0f} s; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print("s\tprocess\tpid\tRSS MB\tanon MB\tfile MB\tthreads\tevidence")
    last: dict[int, tuple[float, int]] = {}
    for t, role, pid, st, evidence in run.trace:
        before = last.get(pid)
        if before is None or abs(st["VmRSS"] - before[0]) >= 0.1 or evidence != before[1]:
            print(
                f"{t:.0f}\t{role}\t{pid}\t{st['VmRSS']:.1f}\t{st.get('RssAnon', 0):.1f}\t{st.get('RssFile', 0):.1f}\t"
                f"{st.get('Threads', 0):.0f}\t{evidence}"
            )
            last[pid] = (st["VmRSS"], evidence)


if __name__ == "__main__":
    if sys.argv[1:] == ["--long-only"]:
        long_only()
    elif sys.argv[1:2] == ["--evidence-probe"]:
        evidence_probe(float(sys.argv[2]))
    else:
        print(run(quick=True).to_markdown())
