"""Anomaly-detection metrics in the MVTec 3D-AD conventions: image/pixel AUROC, AU-PRO, F1-max, per-type AUROC.

Conventions (``shared/research/models.md`` §1.3): image AUROC is scikit-learn's ``roc_auc_score`` on one score per
image (higher = more anomalous, label 1 = defect); pixel AUROC pools every pixel of every test map; AU-PRO is the
area under the per-region-overlap curve against the false-positive rate of good pixels, integrated up to FPR 0.3 and
divided by 0.3 so a perfect detector scores 1. Regions are the 8-connected components of each ground-truth mask (as
MVTec's evaluation labels them), and the PRO at a threshold is the mean over all regions of the share of the region's
pixels above it. numpy, scipy and scikit-learn only: the bench and the edge box run it without torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

from edge.core.errors import EdgeError

F64 = npt.NDArray[np.float64]
PRO_LIMIT = 0.3
_EIGHT_CONNECTED = np.ones((3, 3), dtype=np.int8)


class MetricsError(EdgeError):
    """Scores and labels cannot be evaluated (a class is missing, shapes differ, values are not finite)."""


def _scores_labels(scores: Sequence[float] | npt.ArrayLike, labels: Sequence[int] | npt.ArrayLike) -> tuple[F64, F64]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise MetricsError(f"{s.size} scores but {y.size} labels", "pass one label (0 good, 1 defect) per score")
    if not np.all(np.isfinite(s)):
        raise MetricsError(f"{int((~np.isfinite(s)).sum())} non-finite score(s)", "check the model's output")
    if not np.isin(y, (0, 1)).all():
        raise MetricsError(f"labels must be 0 or 1, got {sorted(set(y.tolist()))[:5]}", "use 0 good, 1 defect")
    return s, y.astype(np.float64)


def _both_classes(y: F64, what: str) -> None:
    n_bad = int(y.sum())
    if n_bad in (0, y.size):
        raise MetricsError(
            f"{what} needs good and defective samples, got {y.size - n_bad} good and {n_bad} defective",
            "evaluate on a test split holding both good parts and defects",
        )


def image_auroc(scores: Sequence[float] | npt.ArrayLike, labels: Sequence[int] | npt.ArrayLike) -> float:
    """Area under the ROC curve of one score per image (label 1 = defect)."""
    s, y = _scores_labels(scores, labels)
    _both_classes(y, "image AUROC")
    return float(roc_auc_score(y, s))


def _maps(anomaly_maps: npt.ArrayLike, gt_masks: npt.ArrayLike) -> tuple[F64, npt.NDArray[np.bool_]]:
    """N×H×W float maps and boolean ground truth; a channel axis of size 1 (N×1×H×W, the contract's) is dropped."""
    a = np.asarray(anomaly_maps, dtype=np.float64)
    g = np.asarray(gt_masks)
    a = a[:, 0] if a.ndim == 4 and a.shape[1] == 1 else a
    g = g[:, 0] if g.ndim == 4 and g.shape[1] == 1 else g
    if a.ndim != 3 or a.shape != g.shape:
        raise MetricsError(
            f"anomaly maps {a.shape} and ground truth {g.shape} differ or are not N×H×W",
            "pass maps and masks of the same N×H×W (or N×1×H×W) shape",
        )
    if not np.all(np.isfinite(a)):
        raise MetricsError(f"{int((~np.isfinite(a)).sum())} non-finite map value(s)", "check the model's output")
    return a, g > 0


def pixel_auroc(anomaly_maps: npt.ArrayLike, gt_masks: npt.ArrayLike) -> float:
    """ROC AUC over every pixel of every map pooled (defect pixels against all others)."""
    a, g = _maps(anomaly_maps, gt_masks)
    y = g.ravel().astype(np.float64)
    _both_classes(y, "pixel AUROC")
    return float(roc_auc_score(y, a.ravel()))


def pro_curve(anomaly_maps: npt.ArrayLike, gt_masks: npt.ArrayLike) -> tuple[F64, F64]:
    """(FPR, PRO) at every distinct map value as a threshold, from the strictest one: (0, 0) first, (1, 1) last.

    Exact in one sort: each good pixel weighs 1/#good towards the FPR, each defect pixel 1/(#regions·|its region|)
    towards the PRO, so the running sums over pixels in descending score order are the curve; ties form one step.
    """
    a, g = _maps(anomaly_maps, gt_masks)
    weights_pro = np.zeros(a.shape, dtype=np.float64)
    n_regions = 0
    for i in range(a.shape[0]):
        lab, n = ndimage.label(g[i], structure=_EIGHT_CONNECTED)
        if n:
            sizes = np.bincount(lab.ravel())
            inside = lab > 0
            weights_pro[i][inside] = 1.0 / sizes[lab[inside]]
            n_regions += n
    n_good = int((~g).sum())
    if n_regions == 0 or n_good == 0:
        raise MetricsError(
            f"AU-PRO needs defect regions and good pixels, got {n_regions} region(s) and {n_good} good pixel(s)",
            "evaluate on a test split holding defects with ground-truth masks and good pixels",
        )
    order = np.argsort(-a.ravel(), kind="stable")
    values = a.ravel()[order]
    fpr = np.cumsum((~g).ravel()[order]) / n_good  # integer counts: exactly 1 at the end
    pro = np.cumsum(weights_pro.ravel()[order]) / n_regions
    pro[-1] = 1.0  # every region fully covered; the float sum may miss it by an ulp
    last_of_tie = np.r_[values[1:] != values[:-1], True]
    return np.r_[0.0, fpr[last_of_tie]], np.r_[0.0, pro[last_of_tie]]


def au_pro(anomaly_maps: npt.ArrayLike, gt_masks: npt.ArrayLike, limit: float = PRO_LIMIT) -> float:
    """Area under the PRO-vs-FPR curve for FPR in [0, limit], divided by ``limit`` (1 = perfect)."""
    if not 0 < limit <= 1:
        raise MetricsError(f"AU-PRO integration limit {limit} is not in (0, 1]", "use 0.3 (MVTec 3D-AD's)")
    fpr, pro = pro_curve(anomaly_maps, gt_masks)
    end = int(np.searchsorted(fpr, limit, side="right"))  # points with fpr <= limit
    x, y = fpr[:end], pro[:end]
    if x[-1] < limit:  # close the area at the limit, interpolating on the segment that crosses it
        x0, x1, y0, y1 = fpr[end - 1], fpr[end], pro[end - 1], pro[end]
        x, y = np.r_[x, limit], np.r_[y, y0 + (y1 - y0) * (limit - x0) / (x1 - x0)]
    return float(np.trapezoid(y, x) / limit)


@dataclass(frozen=True, slots=True)
class F1Max:
    """The image-score threshold with the best F1 (a score above or at it is flagged), and its F1."""

    threshold: float
    f1: float
    precision: float
    recall: float


def f1_max(scores: Sequence[float] | npt.ArrayLike, labels: Sequence[int] | npt.ArrayLike) -> F1Max:
    """Best F1 over all thresholds (NG when score ≥ threshold); an optimistic, test-set-fitted operating point."""
    s, y = _scores_labels(scores, labels)
    _both_classes(y, "F1-max")
    precision, recall, thresholds = precision_recall_curve(y, s)
    p, r = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)
    best = int(np.argmax(f1))
    return F1Max(float(thresholds[best]), float(f1[best]), float(p[best]), float(r[best]))


def per_type_auroc(scores: Sequence[float] | npt.ArrayLike, defect_types: Sequence[str]) -> dict[str, float]:
    """Image AUROC of each defect type against all good images (type ``"good"``), sorted by type name."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    kinds = np.asarray(list(defect_types), dtype=object)
    if s.shape != kinds.shape:
        raise MetricsError(f"{s.size} scores but {kinds.size} defect types", "pass one type ('good' or …) per score")
    good = kinds == "good"
    if not good.any():
        raise MetricsError("per-type AUROC needs good images, got none", "evaluate on a test split with good parts")
    out: dict[str, float] = {}
    for kind in sorted(set(kinds.tolist()) - {"good"}):
        pick = good | (kinds == kind)
        out[kind] = image_auroc(s[pick], (kinds[pick] == kind).astype(np.int64))
    if not out:
        raise MetricsError("per-type AUROC needs defective images, got none", "evaluate on a split with defects")
    return out


@dataclass(frozen=True, slots=True)
class AnomalyMetrics:
    """The headline metrics of one evaluation (threshold-free except F1-max)."""

    image_auroc: float
    pixel_auroc: float
    au_pro: float
    f1: F1Max
    per_type: Mapping[str, float]


def evaluate(
    image_scores: npt.ArrayLike, anomaly_maps: npt.ArrayLike, gt_masks: npt.ArrayLike, defect_types: Sequence[str]
) -> AnomalyMetrics:
    """Every metric of this module on one test set (labels follow from the types: ``"good"`` is 0)."""
    labels = np.array([0 if t == "good" else 1 for t in defect_types], dtype=np.int64)
    return AnomalyMetrics(
        image_auroc=image_auroc(image_scores, labels),
        pixel_auroc=pixel_auroc(anomaly_maps, gt_masks),
        au_pro=au_pro(anomaly_maps, gt_masks),
        f1=f1_max(image_scores, labels),
        per_type=per_type_auroc(image_scores, defect_types),
    )
