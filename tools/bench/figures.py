"""The report's figures (matplotlib, Agg backend): the paper's Fig. 2 and Fig. 3 for the foreground study, ROC
curves and latency histograms. Each function writes one PNG and returns its path.

Heatmap samples are the defective frames with the largest ground-truth area in the crop, chosen from the truth and
not from the model, so both crop modes show the same frames and no mode is flattered by the choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from tools.bench.measure import ModelResults

DPI = 110


def _pyplot() -> Any:
    import matplotlib  # noqa: PLC0415  (bench extra; imported only when figures are drawn)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def _log_scores(r: ModelResults) -> tuple[npt.NDArray[np.float64], float | None, str]:
    """log10 of the raw scores (the paper's axis) when all are positive, else the normalised score."""
    raw = np.asarray(r.raw, dtype=np.float64)
    if raw.size and np.all(raw > 0) and np.all(np.isfinite(raw)):
        thr = r.threshold_raw
        return np.log10(raw), (float(np.log10(thr)) if thr is not None and thr > 0 else None), "log10 raw image score"
    return np.asarray(r.z, dtype=np.float64), r.threshold_z, "normalised image score (z)"


def score_distributions(pairs: Sequence[tuple[ModelResults, ModelResults]], path: Path) -> Path:
    """Normal vs defective log anomaly scores; top row Original (full), bottom Foreground-Only (paper Fig. 2)."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(pairs), figsize=(5.5 * len(pairs), 6.4), squeeze=False)
    for col, pair in enumerate(pairs):
        for row, r in enumerate(pair):
            ax = axes[row, col]
            x, thr, label = _log_scores(r)
            good = np.array([k == "good" for k in r.kinds])
            finite = x[np.isfinite(x)]
            bins = np.linspace(finite.min(), finite.max(), 40) if finite.size > 1 else 10
            ax.hist(x[good], bins=bins, alpha=0.6, label=f"normal ({int(good.sum())})", color="tab:cyan")
            ax.hist(x[~good], bins=bins, alpha=0.6, label=f"defective ({int((~good).sum())})", color="tab:pink")
            if thr is not None:
                ax.axvline(thr, color="k", ls="--", lw=1, label="scoring.yaml threshold")
            ax.set_title(f"{r.model.name}", fontsize=10)
            ax.set_xlabel(label)
            ax.set_ylabel("frames")
            ax.legend(fontsize=8)
    return _save(fig, path)


def heatmap_samples(r: ModelResults, n: int) -> list[int]:
    """Indices of the ``n`` defective frames with the largest defect area in the crop."""
    area = [float(g.sum()) if k != "good" else -1.0 for g, k in zip(r.gts, r.kinds, strict=True)]
    order = [int(i) for i in np.argsort(area)[::-1] if area[int(i)] > 0]
    return sorted(order[:n])


def _overlay(rgb: npt.NDArray[np.uint8], heat: npt.NDArray[np.float32], gt: npt.NDArray[np.bool_], scale: float) -> Any:
    colour = cv2.applyColorMap((np.clip(heat / max(scale, 1e-12), 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = cv2.addWeighted(rgb[..., ::-1], 0.5, colour, 0.5, 0.0)
    contours, _ = cv2.findContours(gt.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out[..., ::-1]


def heatmaps(pair: tuple[ModelResults, ModelResults], path: Path, n: int = 3) -> Path | None:
    """Rows: the same defective frames; columns: full crop, its map, foreground crop, its map (paper Fig. 3).

    Each mode's colour scale is the 99th percentile of its maps' maxima over normal frames, so red means "hotter
    than almost any normal frame" in both columns; the white outline is the ground truth.
    """
    ids = heatmap_samples(pair[1], n)
    if not ids:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(ids), 4, figsize=(10, 2.7 * len(ids)), squeeze=False)
    for r, col in zip(pair, (0, 2), strict=True):
        good = [float(m.max()) for m, k in zip(r.maps, r.kinds, strict=True) if k == "good"]
        scale = float(np.quantile(good, 0.99)) if good else float(max(m.max() for m in r.maps))
        for row, i in zip(axes, ids, strict=True):
            row[col].imshow(r.rgb[i])
            row[col + 1].imshow(_overlay(r.rgb[i], r.maps[i], r.gts[i], scale))
            row[col].set_title(f"{r.model.card.crop_mode}: {r.kinds[i]}", fontsize=9)
            row[col + 1].set_title(f"z = {r.z[i]:.2f} ({'NG' if r.ng[i] else 'OK'})", fontsize=9)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle(f"{pair[1].model.study_key}: same defective frames, Original (full) vs Foreground-Only", fontsize=10)
    return _save(fig, path)


def roc_curves(results: Sequence[ModelResults], path: Path) -> Path | None:
    """Image-level ROC of every model whose frames hold both classes."""
    from sklearn.metrics import roc_auc_score, roc_curve  # noqa: PLC0415  (bench/train extra)

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    drawn = 0
    for r in results:
        y = np.array([0 if k == "good" else 1 for k in r.kinds])
        if not 0 < y.sum() < y.size:
            continue
        fpr, tpr, _ = roc_curve(y, r.raw)
        ax.plot(fpr, tpr, label=f"{r.model.name} (AUROC {roc_auc_score(y, r.raw):.3f})")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.plot([0, 1], [0, 1], color="0.7", ls=":")
    ax.set_xlabel("false positive rate (normal frames flagged)")
    ax.set_ylabel("true positive rate (defects found)")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def latency_histograms(results: Sequence[ModelResults], read_ms: Sequence[float], path: Path) -> Path | None:
    """Per model: histograms of crop, inference and crop+inference+scoring times after warm-up; plus reading."""
    timed = [r for r in results if r.latency_ms["total"]]
    if not timed:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(timed) + 1, 1, figsize=(7, 2.4 * (len(timed) + 1)), squeeze=False)
    for ax, r in zip(axes[:-1, 0], timed, strict=True):
        for stage in ("crop", "infer", "total"):
            ax.hist(r.latency_ms[stage], bins=40, alpha=0.55, label=stage)
        p99 = float(np.percentile(r.latency_ms["total"], 99))
        ax.axvline(p99, color="k", ls="--", lw=1, label=f"total p99 {p99:.1f} ms")
        ax.set_title(r.model.name, fontsize=10)
        ax.set_xlabel("ms")
        ax.legend(fontsize=8)
    ax = axes[-1, 0]
    ax.hist(read_ms, bins=40, color="tab:gray")
    ax.set_title("read/decode of a frame (recording playback or PNG+TIFF)", fontsize=10)
    ax.set_xlabel("ms")
    return _save(fig, path)
