"""From what the bench measured to the numbers it reports: latency percentiles, accuracy, the foreground study.

Accuracy uses :mod:`engines.metrics` (scikit-learn curves; AU-PRO to FPR 0.3, MVTec convention). A metric that
cannot be computed (the evaluated frames lack good or defective ones) is reported as not computed with the reason,
never as a number. The study pairs models that differ only in crop mode and prints the paper's table: AUROC of
the Original (``full``) and Foreground-Only crop, Δ and Rel.%, and the average row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.metrics import MetricsError, au_pro, f1_max, image_auroc, per_type_auroc, pixel_auroc
from tools.bench.measure import ModelResults

PERCENTILES = (50, 95, 99)


def latency_stats(values_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99, mean, max (ms) and the frame rate the mean allows; empty when nothing was timed."""
    if not values_ms:
        return {}
    a = np.asarray(values_ms, dtype=np.float64)
    out = {f"p{p}": float(np.percentile(a, p)) for p in PERCENTILES}
    out |= {"mean": float(a.mean()), "max": float(a.max()), "n": float(a.size)}
    out["fps"] = 1000.0 / out["mean"] if out["mean"] > 0 else math.inf
    return out


def _guarded(fn: Any, *args: Any) -> tuple[Any, str | None]:
    try:
        return fn(*args), None
    except MetricsError as err:
        return None, str(err)


def accuracy(r: ModelResults) -> dict[str, Any]:
    """Every accuracy figure of one model over the kept frames, with the reason for any that is missing."""
    labels = np.array([0 if k == "good" else 1 for k in r.kinds], dtype=np.int64)
    ng = np.asarray(r.ng, dtype=bool)
    out: dict[str, Any] = {
        "frames": len(r.kinds),
        "good": int((labels == 0).sum()),
        "defective": int((labels == 1).sum()),
        "false_alarms": int((ng & (labels == 0)).sum()),
        "misses": int((~ng & (labels == 1)).sum()),
        "not_computed": {},
    }
    auroc, why = _guarded(image_auroc, r.raw, labels)
    out["image_auroc"] = auroc
    if why:
        out["not_computed"]["image_auroc"] = why
    if r.maps:
        maps, gts = np.stack(r.maps), np.stack(r.gts)
        for name, fn in (("pixel_auroc", pixel_auroc), ("au_pro", au_pro)):
            out[name], why = _guarded(fn, maps, gts)
            if why:
                out["not_computed"][name] = why
    f1, why = _guarded(f1_max, r.raw, labels)
    out["f1_max"] = (
        None
        if f1 is None
        else {"f1": f1.f1, "threshold_raw": f1.threshold, "precision": f1.precision, "recall": f1.recall}
    )
    per_type, why = _guarded(per_type_auroc, r.raw, r.kinds)
    out["per_type_auroc"] = per_type or {}
    return out


def per_input_auroc(r: ModelResults, n_inputs: int) -> list[float | None]:
    """Image AUROC of each input alone (None where it lacks a class)."""
    out: list[float | None] = []
    files = np.asarray(r.file_index)
    raw = np.asarray(r.raw)
    labels = np.array([0 if k == "good" else 1 for k in r.kinds])
    for i in range(n_inputs):
        pick = files == i
        value, _ = _guarded(image_auroc, raw[pick], labels[pick]) if pick.any() else (None, "")
        out.append(value)
    return out


@dataclass(frozen=True, slots=True)
class StudyRow:
    """One model family/preset in both crop modes (the paper's Table I row)."""

    model: str
    full: float | None
    foreground: float | None

    @property
    def delta(self) -> float | None:
        return None if self.full is None or self.foreground is None else self.foreground - self.full

    @property
    def relative_pct(self) -> float | None:
        d = self.delta
        return None if d is None or not self.full else 100.0 * d / self.full


def _groups(results: Sequence[ModelResults]) -> dict[str, dict[str, int]]:
    """Label → crop mode → index into ``results``, for models that differ only in crop mode and were trained on the
    same data (a study compares the modes on one data set). The label names the data only when several exist."""
    several = len({r.model.card.data_hash for r in results}) > 1
    out: dict[str, dict[str, int]] = {}
    for i, r in enumerate(results):
        card = r.model.card
        label = r.model.study_key + (f" · data {card.data_hash[:8]}" if several else "")
        out.setdefault(label, {})[card.crop_mode] = i
    return out


def study(results: Sequence[ModelResults], aurocs: Sequence[float | None]) -> list[StudyRow]:
    """Rows for every group that has both crop modes, then the average row over the complete ones."""
    rows = [
        StudyRow(label, aurocs[modes["full"]], aurocs[modes["foreground"]])
        for label, modes in _groups(results).items()
        if "full" in modes and "foreground" in modes
    ]
    complete = [r for r in rows if r.delta is not None]
    if len(complete) > 1:
        mean_full = float(np.mean([r.full for r in complete]))
        mean_fg = float(np.mean([r.foreground for r in complete]))
        rows.append(StudyRow("average", mean_full, mean_fg))
    return rows


def pairs(results: Sequence[ModelResults]) -> list[tuple[ModelResults, ModelResults]]:
    """(full, foreground) result pairs of the same group, for the side-by-side figures."""
    return [
        (results[m["full"]], results[m["foreground"]])
        for m in _groups(results).values()
        if "full" in m and "foreground" in m
    ]
