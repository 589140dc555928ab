"""The accuracy suite: every suite family, in both crop modes, on every station preset of the synthetic line.

Per station (``drivers.synthetic.STATIONS``) and seed: good training, validation and test frames and, for EVERY
defect type, a fixed number of defective test frames (forced with ``render_frame(..., defect=...)``), written as an
MVTec 3D-AD export and cached by (station, seed, counts, size); the ROI from ``edge-calibrate`` on good frames of the
station (or a ROI fitted earlier, ``--roi-dir``); then each family (default: ``engines._registry.suite_families``)
is trained by ``edge-train`` once per crop mode and every test frame scored through :class:`edge.inspect.ModelStage`
with ONNX Runtime, exactly as the one-line study (:mod:`tools.benchmarks.accuracy`) does. Results are kept per
(station, seed, family) as JSON, and the page ``docs/accuracy.md`` gets the study per station and averaged.

Tuning vs held-out (the guide: never judge accuracy on the data settings were chosen on): ``--split tuning`` is the
presets at seed 1, the only data looked at while choosing settings; ``--split heldout`` is the same presets at seed 2
(other parts, poses, defects, clutter and noise), run once with the chosen settings and reported apart.

``--precision fp32,uint8,int8`` also quantises each trained model with ``edge-quantize`` (``--activations uint8``,
``int8``; reused when done before) and scores every engine beside fp32 in the same run, results saved per
precision beside the fp32 ones, and a table of AUROC Δ and speed-up added to the page.

``python -m tools.benchmarks.accuracy --suite [--models ast] [--split tuning|heldout] [--device cuda] [--workers N]
[--roi-dir DIR] [--precision fp32,uint8,int8]``; ``--fit-rois DIR`` only fits and writes the ROIs (on a machine
with open3d, for a GPU machine without it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from calibration.roi import RoiFile, load_roi
from drivers.mvtec import MvtecExportConfig, MvtecWriter
from drivers.synthetic import STATIONS, SyntheticSourceConfig, render_frame
from edge.core.errors import EdgeError
from edge.core.frame import DEFECT_TYPES, DefectType, Frame
from engines._registry import ROI_STUDY_MODES, get_family, list_families, suite_families, suite_modes
from tools import calibrate, train
from tools.benchmarks.accuracy import (
    FULL_STUDIES,
    MODES,
    ModeResult,
    Study,
    edge_quantize,
    score_mode,
    train_models,
    write_into_doc,
)
from tools.benchmarks.report import BenchSection, machine_block

DOC = Path("docs/accuracy.md")
SPLIT_SEEDS = {"tuning": 1, "heldout": 2}  # the seed of every station of the split
TARGET_AUROC = 0.95  # Foreground-Only image AUROC, every station
TARGET_TYPE_AUROC = 0.90  # Foreground-Only image AUROC of every defect type, every station
TARGET_P99_MS = 50.0  # the edge preset per frame in ONNX Runtime on 2 cores
TARGET_MASK_IOU = 0.90  # a family that learns its foreground (BAAD): mean IoU vs the calibrated ROI mask, test/good
TARGET_GAP_TO_ROI = 0.02  # ... and its whole-image AUROC within this of the best ROI model's Foreground-Only AUROC
# The engines a run can score beside the fp32 export: edge-quantize's two activation forms (--activations)
PRECISIONS = ("fp32", "uint8", "int8")
TARGET_QUANT_AUROC = 0.005  # issue 18: a quantised model's image AUROC within this of fp32's, every station
TARGET_QUANT_SPEED = 1.8  # ... and its model call ≥ this many times faster than fp32's (p50, the same run)
# Training settings of a family the one-line study has none for (a family added later: no options); --epochs etc.
# override.
GENERIC = Study(seed=0, frames=0, epochs=24, batch_size=8, learning_rate=2e-4)


@dataclass(frozen=True, slots=True)
class Counts:
    """Frames per station: good train / validation / test, and defective test frames of every defect type."""

    train: int = 60
    validation: int = 10
    test_good: int = 30
    per_type: int = 30
    width: int = 640  # edge-calibrate's frames are 640×480, and a ROI is refused by a camera of another size
    height: int = 480

    @property
    def good(self) -> int:
        return self.train + self.validation + self.test_good

    def key(self) -> str:
        return f"{self.train}-{self.validation}-{self.test_good}-{self.per_type}-{self.width}x{self.height}"

    def expected(self) -> dict[str, dict[str, int]]:
        """The export's counts per split and type when the station is rendered right."""
        test = {"good": self.test_good} | dict.fromkeys(DEFECT_TYPES, self.per_type)
        return {
            "train": {"good": self.train},
            "validation": {"good": self.validation},
            "test": {k: v for k, v in test.items() if v},
        }


@dataclass(frozen=True, slots=True)
class Job:
    """What one suite run does (from the command line)."""

    split: str
    stations: tuple[str, ...]
    models: tuple[str, ...]
    counts: Counts
    work: Path
    roi_dir: Path | None
    device: str
    workers: int
    threads: int
    epochs: int | None  # every family's epochs per phase; None: the family's study
    options: tuple[str, ...]  # FAMILY:KEY=VALUE
    family_epochs: tuple[tuple[str, int], ...] = ()  # (FAMILY, epochs) from --epochs FAMILY:N, before ``epochs``
    dada_epochs: int | None = None  # pretraining epochs (3DSR's DADA); None: the family's study
    modes: tuple[str, ...] = MODES  # crop modes trained (a tuning variant may train foreground only)
    precisions: tuple[str, ...] = ("fp32",)  # engines scored: fp32 first, then edge-quantize's forms asked for
    # (FAMILY, preset) from --preset FAMILY:NAME: that preset with its recommended fit instead of the family's study
    family_presets: tuple[tuple[str, str], ...] = ()

    def modes_for(self, family: str) -> tuple[str, ...]:
        """The crop modes ``family`` is trained in: the foreground study's pair (less what ``--modes`` leaves out),
        or the modes the family declares instead (``engines._registry.suite_modes``: BAAD's ``image``)."""
        declared = suite_modes(family)
        return tuple(m for m in MODES if m in self.modes) if declared == ROI_STUDY_MODES else declared

    @property
    def seed(self) -> int:
        return SPLIT_SEEDS[self.split]

    def data_dir(self, station: str) -> Path:
        return self.work / "data" / f"{station}-seed{self.seed}-{self.counts.key()}-{FRAME_PLAN}"

    def tag(self, family: str) -> str:
        """A short hash of the family's training settings: each variant keeps its own models and results."""
        study = self.study(family)
        settings = [study.preset, study.epochs, study.batch_size, study.learning_rate, study.options({})]
        return hashlib.sha256(json.dumps([*settings, study.device, study.dada_epochs]).encode()).hexdigest()[:8]

    def study(self, family: str) -> Study:
        """The family's training settings: the one-line study's, with the suite's device, threads and options."""
        base = FULL_STUDIES.get(family, GENERIC)
        preset = dict(self.family_presets).get(family)
        if preset is not None:  # the preset's recommended fit (its settings' epochs, batch size, learning rate)
            fit = get_family(family).presets[preset]
            base = replace(
                base,
                preset=preset,
                epochs=int(fit["epochs"]),
                batch_size=int(fit["batch_size"]),
                learning_rate=float(fit["learning_rate"]),
            )
        extra = tuple(o.split(":", 1)[1] for o in self.options if o.split(":", 1)[0] == family)
        return replace(
            base,
            model=family,
            seed=self.seed,
            frames=self.counts.good + self.counts.per_type * len(DEFECT_TYPES),
            epochs=dict(self.family_epochs).get(family) or self.epochs or base.epochs,
            dada_epochs=self.dada_epochs or base.dada_epochs,
            device=self.device,
            threads=self.threads,
            workers=self.workers,
            extra_options=extra,
            reuse=True,
        )


# How the good and defective parts take the line's frame indices (part of the data's cache key). A frame's light
# (a lamp passing with periods of 4.3–6 s) and moving clutter are functions of its time, index / fps; the first plan
# put the 100 good parts first and the 210 defective ones after them, so a model could tell a defective frame by its
# time alone (a Shape-Guided full-frame model ranked *good* parts rendered at the defect frames' indices above the
# test split's good ones with AUROC 0.81). "interleaved": every kind spread evenly over the same frames.
FRAME_PLAN = "interleaved"


def frame_plan(counts: Counts) -> list[tuple[int, DefectType | None]]:
    """(frame index, forced defect) of every frame, in index order: the good parts and each defect type spread evenly
    over the whole run (the j-th of a kind's n frames sits near the fraction (j + ½)/n of it), so that train,
    validation, good test and every defect type see the same light and clutter phases."""
    groups: list[tuple[DefectType | None, int]] = [(None, counts.good)]
    groups += [(kind, counts.per_type) for kind in DEFECT_TYPES]
    keyed = [((j + 0.5) / n, g, kind) for g, (kind, n) in enumerate(groups) for j in range(n)]
    return [(i, kind) for i, (_, _, kind) in enumerate(sorted(keyed, key=lambda t: (t[0], t[1])))]


def _render(config: SyntheticSourceConfig, job: tuple[int, DefectType | None]) -> Frame:
    return render_frame(config, job[0], defect=job[1])


def render_station(station: str, seed: int, counts: Counts, out: Path, workers: int = 1) -> Path:
    """The station's frames as an MVTec 3D-AD export under ``out`` (kept: a second call renders nothing); returns
    the class folder. Rendered into ``out.partial`` first, so an interrupted run never leaves a half export."""
    root = out / "drum"
    if (root / "dataset.json").is_file():
        return root
    config = SyntheticSourceConfig(seed=seed, station=station, clutter="high", width=counts.width, height=counts.height)
    partial_dir = out.with_name(out.name + ".partial")
    shutil.rmtree(partial_dir, ignore_errors=True)
    export = MvtecExportConfig(
        train_fraction=counts.train / counts.good, validation_fraction=counts.validation / counts.good
    )
    writer = MvtecWriter(partial_dir, export, seed=seed)
    jobs = frame_plan(counts)
    if workers > 1:  # render_frame is pure: a pool gives the same frames, in order
        with ProcessPoolExecutor(workers) as pool:
            for frame in pool.map(partial(_render, config), jobs, chunksize=4):
                writer.write(frame)
    else:
        for job in jobs:
            writer.write(_render(config, job))
    summary = writer.close()
    if summary.counts != counts.expected():
        raise EdgeError(
            f"station {station} seed {seed} exported {summary.counts}, expected {counts.expected()}",
            "report this: the MVTec writer's split assignment no longer matches the suite's counts",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    partial_dir.rename(out)
    return root


def roi_name(station: str, seed: int) -> str:
    return f"{station}-seed{seed}.yaml"


def fit_roi(station: str, seed: int, path: Path) -> RoiFile:
    """``edge-calibrate`` on 5 good frames of the station (its own command line, default margin); kept at ``path``."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        argv = ["--synthetic-seed", str(seed), "--station", station, "--clutter", "high", "--out", str(path)]
        if calibrate.main(argv) != 0:
            raise EdgeError(
                f"edge-calibrate {' '.join(argv)} failed on station {station}", "read its message above; fix the fit"
            )
    return load_roi(path)


def station_roi(job: Job, station: str) -> tuple[Path, RoiFile]:
    """The ROI of the station: from ``--roi-dir`` when given (never refitted), else fitted once into the work dir."""
    if job.roi_dir is None:
        path = job.work / "rois" / roi_name(station, job.seed)
        return path, fit_roi(station, job.seed, path)
    path = job.roi_dir / roi_name(station, job.seed)
    if not path.is_file():
        raise EdgeError(
            f"--roi-dir {job.roi_dir} has no {path.name}",
            f"fit it where open3d is installed: python -m tools.benchmarks.accuracy --suite --split {job.split} "
            f"--fit-rois {job.roi_dir}",
        )
    return path, load_roi(path)


def result_path(job: Job, station: str, family: str, precision: str = "fp32") -> Path:
    """The saved result of (station, family) for one engine: fp32 (the edge-train export) keeps its name; a
    quantised engine's is beside it with the precision appended."""
    suffix = "" if precision == "fp32" else f"-{precision}"
    return job.work / "results" / job.split / f"{station}-seed{job.seed}-{family}-{job.tag(family)}{suffix}.json"


def mode_record(r: ModeResult) -> dict[str, Any]:
    """What a result file keeps of one crop mode's scoring (any engine)."""
    record: dict[str, Any] = {
        "image_auroc": r.metrics.image_auroc,
        "pixel_auroc": r.metrics.pixel_auroc,
        "au_pro": r.metrics.au_pro,
        "f1": r.metrics.f1.f1,
        "per_type": dict(r.metrics.per_type),
        "false_alarms": r.false_alarms,
        "misses": r.misses,
        "n_good": r.n_good,
        "n_defect": r.n_defect,
        "fit_s": r.fit_s,
        "ort_ms": r.ort_ms,
        "ort_p99_ms": r.ort_p99_ms,
        "aggregations": r.aggregations,
    }
    if r.mask_iou:  # the model's own foreground vs the calibrated ROI mask, on the normal test frames
        record["mask_iou"] = {"mean": float(np.mean(r.mask_iou)), "min": float(np.min(r.mask_iou))}
    return record


def run_station(job: Job, station: str, family: str, command: str) -> dict[str, dict[str, Any]]:
    """Train ``family`` in its crop modes on the station, quantise each model with ``edge-quantize`` into every
    quantised precision of the job, and score the test split with every engine; returns (and saves) the result per
    precision. A mode's engines are scored one after another, so their latencies share the machine's load."""
    roi_path, roi = station_roi(job, station)
    data = render_station(station, job.seed, job.counts, job.data_dir(station), job.workers)
    study = job.study(family)
    runs = job.work / "runs" / job.split / f"{station}-seed{job.seed}" / f"{family}-{job.tag(family)}"
    modes = job.modes_for(family)
    fit_s, dada_s = train_models(study, data, roi_path, runs, modes)
    model_dirs: dict[tuple[str, str], Path] = {}
    quantize_s: dict[tuple[str, str], float] = {}
    for mode in modes:
        fp32_dir = model_dirs[mode, "fp32"] = runs / f"{family}-{mode}"
        for precision in job.precisions[1:]:
            out = model_dirs[mode, precision] = runs / f"{family}-{mode}-{precision}"
            extra = ["--activations", precision]  # edge-quantize's documented defaults otherwise
            quantize_s[mode, precision] = edge_quantize(fp32_dir, data, roi_path, out, extra, reuse=True)
    head: dict[str, Any] = {
        "station": station,
        "seed": job.seed,
        "family": family,
        "preset": study.preset,
        "epochs": study.epochs,
        "options": list(study.options({})),
        "device": study.device,
        "pretraining_s": dada_s,
        "pretraining_epochs": study.dada_epochs if dada_s else 0,
        "roi_version": roi.version,
        "command": command,
        "run_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    results = {p: head | {"precision": p} for p in job.precisions}
    for mode in modes:
        for precision in job.precisions:
            r = score_mode(data, roi, model_dirs[mode, precision], fit_s[mode], [], threads=job.threads)
            results[precision][mode] = mode_record(r)
        reference = {k: results["fp32"][mode][k] for k in ("image_auroc", "ort_ms", "ort_p99_ms")}
        for precision in job.precisions[1:]:  # its fp32 of the same run: Δ and speed-up never mix two runs
            results[precision][mode] |= {"quantize_s": quantize_s[mode, precision], "fp32": reference}
    for precision, result in results.items():
        out = result_path(job, station, family, precision)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return results


def _f(x: float) -> str:
    return "–" if np.isnan(x) else f"{x:.3f}"


def _mean(rows: Sequence[dict[str, Any]], mode: str, key: str) -> float:
    """The mean over ``rows``; NaN when a row lacks the mode (a foreground-only tuning variant)."""
    return float(np.mean([r[mode][key] if mode in r else np.nan for r in rows]))


def _passed_cell(rows: Sequence[dict[str, Any]], mode: str) -> str:
    """Cell "passed/defects (flagged/good)" of ``mode`` at the fitted threshold, summed over ``rows``."""
    passed = sum(int(x[mode]["misses"]) for x in rows)
    total = sum(int(x[mode]["n_defect"]) for x in rows)
    alarms = sum(int(x[mode]["false_alarms"]) for x in rows)
    return f"{passed}/{total} ({alarms}/{sum(int(x[mode]['n_good']) for x in rows)})"


def _type_cell(rows: Sequence[dict[str, Any]], kind: str) -> str:
    fg = np.mean([x["foreground"]["per_type"][kind] for x in rows])
    if any("full" not in x for x in rows):
        return f"{fg:.3f}"
    return f"{fg:.3f} ({np.mean([x['full']['per_type'][kind] for x in rows]):.3f})"


def training_time_note(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Wall time of the trainings behind the rows (edge-train: load, cache, train, export, parity, threshold), the
    pretraining (3DSR's DADA, once per station, shared by the crop modes) apart; none for results saved without."""
    fits = [float(r[m]["fit_s"]) for r in rows for m in MODES if m in r and "fit_s" in r[m]]
    if not fits:
        return []
    note = f"edge-train wall time per crop mode: {min(fits) / 60:.1f}–{max(fits) / 60:.1f} min"
    pre = [float(r.get("pretraining_s") or 0.0) for r in rows]
    if any(pre):
        epochs = sorted({int(r.get("pretraining_epochs") or 0) for r in rows} - {0})
        of = f" ({', '.join(str(e) for e in epochs)} epochs)" if epochs else ""
        note += f"; pretraining{of}, once per station: {min(pre) / 60:.1f}–{max(pre) / 60:.1f} min"
    return [note + " (the run's threads; other jobs on the machine lengthen it)"]


def family_sections(family: str, rows: Sequence[dict[str, Any]]) -> list[BenchSection]:
    """The foreground study of one family: per station and averaged, then per defect type, with the targets."""
    kinds = sorted({k for r in rows for k in r["foreground"]["per_type"]})
    table = []
    for r in [*rows, None]:
        pick = rows if r is None else [r]
        name = "**mean**" if r is None else f"{r['station']} (seed {r['seed']})"
        cells = [name]
        for key in ("image_auroc", "pixel_auroc", "au_pro", "f1"):
            cells += [_f(_mean(pick, "full", key)), _f(_mean(pick, "foreground", key))]
        for mode in MODES:
            if any(mode not in x for x in pick):
                cells.append("–")
                continue
            cells.append(_passed_cell(pick, mode))
        cells.append(f"{max(float(x['foreground']['ort_p99_ms']) for x in pick):.0f}")
        table.append(cells)
    per_type = []
    for r in [*rows, None]:
        pick = rows if r is None else [r]
        name = "**mean**" if r is None else r["station"]
        per_type.append([name] + [_type_cell(pick, k) for k in kinds])
    targets: dict[str, bool] = {}
    for r in rows:
        fg = r["foreground"]
        where = f"{r['station']} seed {r['seed']}"
        targets[f"{where}: foreground image AUROC ≥ {TARGET_AUROC}"] = fg["image_auroc"] >= TARGET_AUROC
        worst = min(fg["per_type"], key=fg["per_type"].get)
        targets[
            f"{where}: foreground image AUROC ≥ {TARGET_TYPE_AUROC} for every type (worst {worst} "
            f"{fg['per_type'][worst]:.3f})"
        ] = min(fg["per_type"].values()) >= TARGET_TYPE_AUROC
        if "full" in r:
            targets[f"{where}: foreground > full"] = fg["image_auroc"] > r["full"]["image_auroc"]
        if r["preset"] == "edge":
            targets[f"{where}: ONNX Runtime p99 ≤ {TARGET_P99_MS:.0f} ms"] = fg["ort_p99_ms"] <= TARGET_P99_MS
    first = rows[0]
    name = f"{family} {first['preset']}"
    extra = [aggregation_section(name, rows)] if all("aggregations" in r["foreground"] for r in rows) else []
    sections = [
        BenchSection(
            title=f"{name}: Original (full) vs Foreground-Only per station",
            headers=[
                "station",
                "image AUROC full",
                "image AUROC fg",
                "pixel AUROC full",
                "pixel AUROC fg",
                "AU-PRO@0.3 full",
                "AU-PRO@0.3 fg",
                "F1-max full",
                "F1-max fg",
                "defects passed (good flagged) full",
                "defects passed (good flagged) fg",
                "ORT p99 ms fg",
            ],
            rows=table,
            targets=targets,
            notes=[
                f"{family}: edge-train --preset {first['preset']} "
                + " ".join(f"--option {o}" for o in first["options"])
                + f", {first['epochs']} epochs, training device {first['device']}; scoring.yaml fitted on "
                "validation/good; every test frame scored by model.onnx in ONNX Runtime (CPU) through "
                "edge.inspect.ModelStage",
                *training_time_note(rows),
                "defects passed / good flagged: at the fitted scoring.yaml threshold; F1-max at the test-fitted "
                "threshold; AU-PRO with 8-connected ground-truth regions up to FPR 0.3",
                "ORT p99: of the model call while scoring the test split (ONNX Runtime, the run's threads), the "
                "worst station in the mean row; a loaded shared CPU inflates it",
            ],
        ),
        BenchSection(
            title=f"{name}: image AUROC per defect type, foreground (full)",
            headers=["station", *kinds],
            rows=per_type,
        ),
    ]
    return [*sections, *extra]


def image_sections(
    family: str, rows: Sequence[dict[str, Any]], best_roi: dict[str, tuple[str, float]]
) -> list[BenchSection]:
    """A family that learns its own foreground (crop mode ``image``, BAAD): whole-frame image AUROC next to the best
    ROI model of the same station (its Foreground-Only AUROC), the learnt mask's IoU against the calibrated ROI mask,
    per defect type, with the issue's targets (within ``TARGET_GAP_TO_ROI`` of the best ROI model, IoU ≥
    ``TARGET_MASK_IOU``)."""
    kinds = sorted({k for r in rows for k in r["image"]["per_type"]})
    table, per_type = [], []
    targets: dict[str, bool] = {}
    for r in [*rows, None]:
        pick = rows if r is None else [r]
        name = "**mean**" if r is None else f"{r['station']} (seed {r['seed']})"
        best = [best_roi[x["station"]] for x in pick if x["station"] in best_roi]
        best_cell = "–"
        if r is not None and best:
            best_cell = f"{best[0][1]:.3f} ({best[0][0]})"
        elif r is None and len(best) == len(pick):
            best_cell = f"{np.mean([b[1] for b in best]):.3f}"
        iou = [x["image"].get("mask_iou") for x in pick]
        cells = [name, _f(_mean(pick, "image", "image_auroc")), best_cell]
        cells += [_f(_mean(pick, "image", k)) for k in ("pixel_auroc", "au_pro", "f1")]
        cells.append(
            f"{np.mean([i['mean'] for i in iou]):.3f} (min {min(i['min'] for i in iou):.3f})" if all(iou) else "–"
        )
        cells.append(_passed_cell(pick, "image"))
        cells.append(f"{max(float(x['image']['ort_p99_ms']) for x in pick):.0f}")
        table.append(cells)
        per_type.append([name] + [f"{np.mean([x['image']['per_type'][k] for x in pick]):.3f}" for k in kinds])
    for r in rows:
        where, auroc = f"{r['station']} seed {r['seed']}", r["image"]["image_auroc"]
        if r["station"] in best_roi:
            roi_family, roi_auroc = best_roi[r["station"]]
            targets[
                f"{where}: whole-frame image AUROC within {TARGET_GAP_TO_ROI} of the best ROI model ({roi_family} "
                f"Foreground-Only {roi_auroc:.3f})"
            ] = auroc >= roi_auroc - TARGET_GAP_TO_ROI
        if r["image"].get("mask_iou"):
            targets[f"{where}: mean mask IoU vs the calibrated ROI ≥ {TARGET_MASK_IOU}"] = (
                r["image"]["mask_iou"]["mean"] >= TARGET_MASK_IOU
            )
    first = rows[0]
    name = f"{family} {first['preset']}"
    return [
        BenchSection(
            title=f"{name}: the whole frame (crop mode image, no ROI at inference) vs the best ROI model per station",
            headers=[
                "station",
                "image AUROC (whole frame)",
                "best ROI model: Foreground-Only image AUROC",
                "pixel AUROC",
                "AU-PRO@0.3",
                "F1-max",
                "mask IoU vs ROI, test/good: mean (min)",
                "defects passed (good flagged)",
                "ORT p99 ms",
            ],
            rows=table,
            targets=targets,
            notes=[
                f"{family}: edge-train --preset {first['preset']} --crop image "
                + " ".join(f"--option {o}" for o in first["options"])
                + f", {first['epochs']} epochs per phase, training device {first['device']}; the ROI supervises the "
                "mask head in training only; every test frame (the whole 640×480 image) scored by model.onnx in ONNX "
                "Runtime (CPU) through edge.inspect.ModelStage",
                "best ROI model: the highest Foreground-Only image AUROC at that station among the ROI families of "
                "this report (– where none was run); mask IoU: the graph's foreground output > 0.5 against the "
                "crop's ROI mask (ROI ∧ depth) on every good test frame (edge.inspect.mask_iou, the daemon's check)",
            ],
        ),
        BenchSection(
            title=f"{name}: image AUROC per defect type (whole frame)", headers=["station", *kinds], rows=per_type
        ),
    ]


def aggregation_section(name: str, rows: Sequence[dict[str, Any]]) -> BenchSection:
    """Foreground image AUROC (and the worst type's) if the image score were another aggregation of the same maps."""
    names = list(rows[0]["foreground"]["aggregations"])
    table = []
    for r in [*rows, None]:
        pick = rows if r is None else [r]
        cells = ["**mean**" if r is None else r["station"]]
        for agg in names:
            vals = [x["foreground"]["aggregations"][agg] for x in pick]
            cells.append(
                f"{np.mean([v['image_auroc'] for v in vals]):.3f} ({np.mean([v['worst_type'] for v in vals]):.3f})"
            )
        table.append(cells)
    return BenchSection(
        title=f"{name}: foreground image AUROC (worst type) by image-score aggregation of the same maps",
        headers=["station", *names],
        rows=table,
        notes=[
            "a diagnostic for choosing the image score: the maps returned by edge.inspect on the test split, "
            "aggregated here in numpy over the whole map (the deployed image score is the graph's own, in the first "
            "table; it differs from the max column where the model scores an eroded foreground, AST's score_border)"
        ],
    )


def _ms(mode: dict[str, Any]) -> str:
    return f"{mode['ort_ms']:.1f} / {mode['ort_p99_ms']:.1f}"


def precision_sections(
    family: str, fp32_rows: Sequence[dict[str, Any]], quantized: dict[str, list[dict[str, Any]]]
) -> list[BenchSection]:
    """A table per crop mode: every station's fp32 image AUROC and model-call p50/p99 next to each quantised
    engine's (``quantized``: precision → its saved results), with the AUROC difference and the p50 speed-up, both
    against the fp32 scoring of the quantised result's own run; targets: |Δ AUROC| ≤ ``TARGET_QUANT_AUROC`` at every
    station, the mean p50 speed-up ≥ ``TARGET_QUANT_SPEED``."""
    precisions = [p for p in PRECISIONS[1:] if quantized.get(p)]
    modes = [m for m in (*MODES, "image") if m in fp32_rows[0]]
    by_station = {p: {r["station"]: r for r in quantized[p]} for p in precisions}
    sections = []
    for mode in modes:
        table: list[list[str]] = []
        targets: dict[str, bool] = {}
        for r in fp32_rows:
            cells = [f"{r['station']} (seed {r['seed']})", _f(r[mode]["image_auroc"])]
            for p in precisions:
                q = by_station[p].get(r["station"], {}).get(mode)
                if q is None:
                    cells += ["–", "–"]
                    continue
                delta = q["image_auroc"] - q["fp32"]["image_auroc"]
                cells += [_f(q["image_auroc"]), f"{delta:+.4f}"]
                targets[
                    f"{r['station']} seed {r['seed']} {mode}: {p} image AUROC within {TARGET_QUANT_AUROC} of fp32"
                ] = abs(delta) <= TARGET_QUANT_AUROC
            cells.append(_ms(r[mode]))
            for p in precisions:
                q = by_station[p].get(r["station"], {}).get(mode)
                cells += ["–", "–"] if q is None else [_ms(q), f"{q['fp32']['ort_ms'] / q['ort_ms']:.2f}×"]
            table.append(cells)
        mean = ["**mean**", _f(float(np.mean([r[mode]["image_auroc"] for r in fp32_rows])))]
        pairs = {p: [q[mode] for q in by_station[p].values() if mode in q] for p in precisions}
        for p in precisions:
            mean += [
                _f(float(np.mean([q["image_auroc"] for q in pairs[p]]))),
                f"{np.mean([q['image_auroc'] - q['fp32']['image_auroc'] for q in pairs[p]]):+.4f}",
            ]
        fp32_p50, fp32_p99 = (
            np.mean([r[mode]["ort_ms"] for r in fp32_rows]),
            max(r[mode]["ort_p99_ms"] for r in fp32_rows),
        )
        mean.append(f"{fp32_p50:.1f} / {fp32_p99:.1f}")
        for p in precisions:
            speed = np.mean([q["fp32"]["ort_ms"] for q in pairs[p]]) / np.mean([q["ort_ms"] for q in pairs[p]])
            p50, p99 = np.mean([q["ort_ms"] for q in pairs[p]]), max(q["ort_p99_ms"] for q in pairs[p])
            mean += [f"{p50:.1f} / {p99:.1f}", f"{speed:.2f}×"]
            targets[f"{mode}: {p} model call ≥ {TARGET_QUANT_SPEED}× fp32 (mean p50, a shared machine's load)"] = (
                speed >= TARGET_QUANT_SPEED
            )
        table.append(mean)
        headers = ["station", "fp32 image AUROC"]
        for p in precisions:
            headers += [f"{p} image AUROC", f"{p} Δ"]
        headers.append("fp32 p50 / p99 ms")
        for p in precisions:
            headers += [f"{p} p50 / p99 ms", f"{p} speed-up (p50)"]
        first = fp32_rows[0]
        sections.append(
            BenchSection(
                title=f"{family} {first['preset']} ({mode}): fp32 vs edge-quantize's "
                + " / ".join(precisions)
                + " engines per station",
                headers=headers,
                rows=table,
                targets=targets,
                notes=[
                    "each engine: edge-quantize --activations PRECISION of the edge-train folder (its documented "
                    "calibration: 32 seeded good training crops, MinMax ranges, per-channel int8 weights, the "
                    "family's fp32 layers kept, engines.quantize.KEEP_FIRST), threshold from its own refit "
                    "scoring.yaml; every test frame scored through edge.inspect.ModelStage in ONNX Runtime (CPU)",
                    "Δ and speed-up: against the fp32 scoring of the same run (stored with the quantised result), "
                    "the crop mode's engines scored one after another; p50 / p99: of the model call over the test "
                    "split; mean row: mean of AUROC, Δ and p50, worst p99, speed-up = mean fp32 p50 / mean p50",
                ],
            )
        )
    return sections


def report(job: Job, command: str, wall_s: float) -> tuple[str, bool]:
    """The page block of the split from every saved result of its stations; whether every target is met."""
    parts: list[str] = []
    met = True
    results = {
        family: [
            json.loads(p.read_text(encoding="utf-8"))
            for station in job.stations
            if (p := result_path(job, station, family)).is_file()
        ]
        for family in job.models
    }
    best_roi: dict[str, tuple[str, float]] = {}  # station → the ROI family with the best Foreground-Only AUROC
    for family, rows in results.items():
        for r in rows:
            if "foreground" in r and r["foreground"]["image_auroc"] > best_roi.get(r["station"], ("", -1.0))[1]:
                best_roi[r["station"]] = (family, float(r["foreground"]["image_auroc"]))
    for family, rows in results.items():
        if not rows:
            continue
        sections = family_sections(family, rows) if "foreground" in rows[0] else image_sections(family, rows, best_roi)
        for sec in sections:
            parts.append(sec.to_markdown().replace("## ", "### ", 1))
            met = met and all(sec.targets.values())
        quantized = {
            p: [
                json.loads(q.read_text(encoding="utf-8"))
                for r in rows
                if (q := result_path(job, r["station"], family, p)).is_file()
            ]
            for p in job.precisions[1:]
        }
        if any(quantized.values()):
            for sec in precision_sections(family, rows, quantized):
                parts.append(sec.to_markdown().replace("## ", "### ", 1))
                met = met and all(sec.targets.values())
        missing = [s for s in job.stations if not result_path(job, s, family).is_file()]
        if missing:
            parts.append(f"- not run yet for {family}: {', '.join(missing)} (the mean is over the rows above)")
        runs = sorted({(str(r.get("command", "(not recorded)")), str(r.get("run_at", ""))[:10]) for r in rows})
        parts.append("\n".join(f"- {family} rows measured by `{c}` ({day})" for c, day in runs))
    c = job.counts
    parts.append(
        f"- data per station: seed {job.seed}, {c.width}×{c.height}, clutter high; train {c.train} good, "
        f"validation {c.validation} good, test {c.test_good} good + {c.per_type} of each of {len(DEFECT_TYPES)} "
        f"defect types ({', '.join(DEFECT_TYPES)}), frame plan {FRAME_PLAN} (every kind spread over the same "
        "frames: the same light and clutter phases); ROI: "
        + ("given with --roi-dir (fitted by edge-calibrate)" if job.roi_dir else "edge-calibrate, 5 good frames")
    )
    parts.append(machine_block(command) + f"\n- wall time of this run: {wall_s / 60:.1f} min")
    return "\n\n".join(parts) + "\n", met


def parse_epochs(text: str | None, models: Sequence[str]) -> tuple[int | None, tuple[tuple[str, int], ...]]:
    """``--epochs``: ``N`` for every family and/or ``FAMILY:N`` for one (``24,baad:20``) → (N or None, pairs)."""
    every: int | None = None
    per: dict[str, int] = {}
    for item in text.split(",") if text else ():
        family, sep, count = item.strip().rpartition(":")
        if not count.isdigit() or int(count) < 1 or (sep and not family):
            raise EdgeError(
                f"--epochs {text!r}: {item.strip()!r} is not a positive N or FAMILY:N",
                "e.g. --epochs 24, or --epochs 24,baad:20 (--epochs and --dada-epochs must be positive)",
            )
        if not sep:
            every = int(count)
        elif family not in models:
            raise EdgeError(
                f"--epochs names {family}, which this run does not train", f"train it with --models {family}"
            )
        else:
            per[family] = int(count)
    return every, tuple(sorted(per.items()))


def parse_presets(items: Sequence[str], models: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``--preset FAMILY:NAME`` (repeatable) → sorted (FAMILY, NAME) pairs, each checked against the family."""
    pairs: dict[str, str] = {}
    for item in items:
        family, sep, name = item.partition(":")
        if not sep or not family or not name:
            raise EdgeError(f"--preset {item!r} is not FAMILY:NAME", "e.g. --preset shape_guided:tiny")
        if family not in models:
            raise EdgeError(
                f"--preset names {family}, which this run does not train", f"train it with --models {family}"
            )
        presets = get_family(family).presets
        if name not in presets:
            raise EdgeError(f"{family} has no preset {name!r}", f"pick one of {', '.join(sorted(presets))}")
        pairs[family] = name
    return tuple(sorted(pairs.items()))


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, Job]:
    parser = argparse.ArgumentParser(
        prog="python -m tools.benchmarks.accuracy --suite", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--split", choices=list(SPLIT_SEEDS), default="tuning", help="tuning (seed 1) or heldout")
    parser.add_argument("--stations", help="comma-separated subset of the station presets (default: all)")
    parser.add_argument("--models", help="comma-separated families (default: the registry's suite families)")
    parser.add_argument("--work", type=Path, default=Path("bench-out/accuracy-suite"), help="data, ROIs, runs")
    parser.add_argument("--roi-dir", type=Path, help="ROIs fitted earlier (STATION-seedN.yaml), never refitted")
    parser.add_argument("--fit-rois", type=Path, metavar="DIR", help="only fit the split's ROIs into DIR, then stop")
    parser.add_argument("--render-only", action="store_true", help="only render (cache) the split's data, then stop")
    parser.add_argument(
        "--report-only", action="store_true", help="only rewrite the page from the results saved in --work"
    )
    parser.add_argument("--device", default="auto", help="edge-train --device (default auto)")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering frames (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads (default 2)")
    parser.add_argument(
        "--epochs",
        help="epochs per training phase: N for every family, FAMILY:N for one (e.g. 24,baad:20; default: the "
        "family's study)",
    )
    parser.add_argument(
        "--preset",
        action="append",
        default=[],
        metavar="FAMILY:NAME",
        help="train FAMILY with preset NAME and that preset's recommended epochs, batch size and learning rate "
        "(--epochs still overrides the epochs; default: the family's study)",
    )
    parser.add_argument("--dada-epochs", type=int, help="3DSR's DADA pretraining epochs (default: the family's study)")
    parser.add_argument(
        "--option", action="append", default=[], metavar="FAMILY:KEY=VALUE", help="edge-train --option for a family"
    )
    parser.add_argument("--modes", default=",".join(MODES), help="crop modes to train (default: both)")
    parser.add_argument("--counts", default="60,10,30,30", help="train,validation,test-good,per-type frames")
    parser.add_argument(
        "--precision",
        default="fp32",
        help="engines scored, comma-separated among " + ", ".join(PRECISIONS) + " (default fp32): uint8 and int8 are "
        "edge-quantize's --activations forms of each trained model, scored beside fp32 in the same run",
    )
    parser.add_argument("--doc", type=Path, default=DOC, help=f"page to write (default {DOC})")
    parser.add_argument("--block", help="the page's accuracy:<BLOCK> markers (default: the split)")
    parser.add_argument("--no-doc", action="store_true", help="print the report only")
    args = parser.parse_args(list(argv))
    try:
        train_n, val, good, per_type = (int(x) for x in args.counts.split(","))
    except ValueError:
        raise EdgeError(f"--counts {args.counts!r} is not 4 integers", "e.g. --counts 60,10,30,30") from None
    stations = tuple(args.stations.split(",")) if args.stations else tuple(STATIONS)
    unknown = [s for s in stations if s not in STATIONS]
    if unknown:
        raise EdgeError(f"unknown station {', '.join(unknown)}", f"choose among {', '.join(STATIONS)}")
    models = tuple(args.models.split(",")) if args.models else tuple(suite_families())
    unknown = [m for m in models if m not in list_families()]
    if unknown:
        raise EdgeError(f"unknown model family {', '.join(unknown)}", f"choose among {', '.join(suite_families())}")
    bad = [o for o in args.option if ":" not in o or "=" not in o]
    if bad:
        raise EdgeError(f"--option {bad[0]!r} is not FAMILY:KEY=VALUE", "e.g. --option ast:image_score=mean")
    modes = tuple(args.modes.split(","))
    if "foreground" not in modes or not set(modes) <= set(MODES):
        raise EdgeError(f"--modes {args.modes!r} must be foreground or full,foreground", "e.g. --modes foreground")
    precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip())
    if "fp32" not in precisions or not set(precisions) <= set(PRECISIONS) or len(set(precisions)) < len(precisions):
        raise EdgeError(
            f"--precision {args.precision!r} must name fp32 and any of {', '.join(PRECISIONS[1:])}, each once",
            "e.g. --precision fp32,uint8,int8 (fp32 is the reference the quantised engines are compared with)",
        )
    if min(train_n, val, good, per_type) < 1 or args.workers < 1 or args.threads < 1:
        raise EdgeError("--counts, --workers and --threads must be positive", "e.g. --counts 60,10,30,30")
    epochs, family_epochs = parse_epochs(args.epochs, models)
    if args.dada_epochs is not None and args.dada_epochs < 1:
        raise EdgeError("--epochs and --dada-epochs must be positive", "e.g. --dada-epochs 200")
    job = Job(
        split=args.split,
        stations=stations,
        models=models,
        counts=Counts(train_n, val, good, per_type),
        work=args.work,
        roi_dir=args.roi_dir,
        # --report-only resolves it too: the device is part of the results' tag (auto ≠ the cpu it trained on)
        device=args.device if args.fit_rois or args.render_only else train.resolve_device(args.device),
        workers=args.workers,
        threads=args.threads,
        epochs=epochs,
        family_epochs=family_epochs,
        family_presets=parse_presets(args.preset, models),
        dada_epochs=args.dada_epochs,
        options=tuple(args.option),
        modes=tuple(m for m in MODES if m in modes),
        precisions=tuple(p for p in PRECISIONS if p in precisions),
    )
    return args, job


def main(argv: Sequence[str]) -> int:
    """Run the suite; 0 when every target is met, 1 when not, 2 for a problem with the input (one line)."""
    try:
        return _main(argv)
    except EdgeError as err:
        print(f"accuracy --suite: {err}", file=sys.stderr)
        return 2


def _main(argv: Sequence[str]) -> int:
    t0 = time.perf_counter_ns()
    args, job = parse(argv)
    if args.fit_rois is not None:
        for station in job.stations:
            fit_roi(station, job.seed, args.fit_rois / roi_name(station, job.seed))
        print(f"wrote {len(job.stations)} ROIs into {args.fit_rois}")
        return 0
    if args.render_only:
        for station in job.stations:
            print(render_station(station, job.seed, job.counts, job.data_dir(station), job.workers))
        return 0
    if job.roi_dir is not None:  # a missing ROI fails before anything is rendered or trained
        for station in job.stations:
            station_roi(job, station)
    command = "python -m tools.benchmarks.accuracy --suite " + " ".join(argv)
    for station in [] if args.report_only else job.stations:
        for family in job.models:
            by_precision = run_station(job, station, family, command.strip())
            for precision, r in by_precision.items():
                scores = ", ".join(f"{m} {r[m]['image_auroc']:.3f}" for m in job.modes_for(family))
                print(f"{station} seed {job.seed} {family} {precision}: image AUROC {scores}", flush=True)
    text, met = report(job, command.strip(), (time.perf_counter_ns() - t0) / 1e9)
    print(text)
    if not args.no_doc:
        write_into_doc(args.doc, text, args.block or job.split)
        print(f"wrote {args.doc}")
    return 0 if met else 1
