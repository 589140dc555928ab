"""Anomaly metrics: hand-checked AU-PRO, F1-max and per-type AUROC, a brute-force AU-PRO reference, error paths."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage

from engines.metrics import (
    MetricsError,
    au_pro,
    evaluate,
    f1_max,
    image_auroc,
    per_type_auroc,
    pixel_auroc,
    pro_curve,
)


def _brute_au_pro(maps: npt.NDArray[np.float64], gts: npt.NDArray[np.bool_], limit: float) -> float:
    """The definition, one threshold at a time: loop over regions and thresholds, then integrate to the limit."""
    regions = []
    for m, g in zip(maps, gts, strict=True):
        lab, n = ndimage.label(g, structure=np.ones((3, 3)))
        regions += [m[lab == k] for k in range(1, n + 1)]
    good = maps[~gts]
    xs, ys = [0.0], [0.0]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        xs.append(float((good >= t).mean()))
        ys.append(float(np.mean([(r >= t).mean() for r in regions])))
    area = 0.0
    for k in range(len(xs) - 1):
        x0, y0, x1, y1 = xs[k], ys[k], xs[k + 1], ys[k + 1]
        if x0 >= limit:
            break
        if x1 > limit:  # cut the segment at the limit
            x1, y1 = limit, y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


def _blobs(rng: np.random.Generator, n: int, size: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    gts = np.zeros((n, size, size), dtype=bool)
    for i in range(1, n):  # image 0 stays good
        for _ in range(int(rng.integers(1, 3))):
            y, x = rng.integers(0, size - 3, 2)
            h, w = rng.integers(1, 4, 2)
            gts[i, y : y + h, x : x + w] = True
    return gts.astype(np.float64), gts


def test_perfect_maps_score_one_and_inverted_maps_zero() -> None:
    rng = np.random.default_rng(0)
    gt_f, gts = _blobs(rng, 6, 16)
    perfect = gt_f + 0.1 * rng.random(gts.shape)  # every defect pixel above every good pixel
    assert pixel_auroc(perfect, gts) == 1.0
    assert au_pro(perfect, gts) == pytest.approx(1.0)
    inverted = -perfect
    assert pixel_auroc(inverted, gts) == 0.0
    assert au_pro(inverted, gts) == pytest.approx(0.0, abs=1e-12)
    labels = gts.any((1, 2)).astype(int)
    assert image_auroc(perfect.max((1, 2)), labels) == 1.0


def test_au_pro_by_hand_one_region() -> None:
    # Region (2 px) scores 0.9, 0.5; good pixels 0.8, 0.3, 0.2, 0.1. Curve: (0, 0) (0, .5) (.25, .5) (.25, 1) …
    # Area to FPR 0.3: 0.25·0.5 + 0.05·1 = 0.175 → /0.3 = 7/12.
    maps = np.array([[[0.9, 0.5, 0.8], [0.3, 0.2, 0.1]]])
    gts = np.array([[[1, 1, 0], [0, 0, 0]]], dtype=bool)
    assert au_pro(maps, gts) == pytest.approx(7 / 12)
    fpr, pro = pro_curve(maps, gts)
    assert fpr[:4].tolist() == [0.0, 0.0, 0.25, 0.25] and pro[:4].tolist() == [0.0, 0.5, 0.5, 1.0]
    assert fpr[-1] == pytest.approx(1.0) and pro[-1] == pytest.approx(1.0)


def test_au_pro_averages_regions_not_pixels() -> None:
    # Region A (1 px, 0.9) is found first, region B (3 px, 0.2) only after half the good pixels (0.5, 0.1):
    # PRO is 0.5 on FPR [0, 0.5], so AU-PRO@0.3 = 0.5 (pixel-weighted overlap would give 0.25).
    maps = np.array([[[0.9, 0.5, 0.2, 0.2, 0.2, 0.1]]])
    gts = np.array([[[1, 0, 1, 1, 1, 0]]], dtype=bool)
    assert au_pro(maps, gts) == pytest.approx(0.5)


def test_diagonal_pixels_are_one_region() -> None:
    # Defect pixels (0,0), (1,1), (1,2): 8-connected they are one region of 3, so finding (0,0) alone gives PRO 1/3
    # (4-connected it would be {(0,0)} and {(1,1),(1,2)}: PRO (1 + 0) / 2 = 0.5).
    maps = np.array([[[0.9, 0.5, 0.1], [0.1, 0.2, 0.2], [0.1, 0.1, 0.1]]])
    gts = np.array([[[1, 0, 0], [0, 1, 1], [0, 0, 0]]], dtype=bool)
    fpr, pro = pro_curve(maps, gts)
    assert (fpr[1], pro[1]) == (0.0, pytest.approx(1 / 3))


def test_au_pro_matches_a_brute_force_reference_on_random_maps() -> None:
    rng = np.random.default_rng(3)
    for trial in range(4):
        gt_f, gts = _blobs(rng, 5, 12)
        maps = np.round(gt_f * rng.uniform(0.2, 1.0) + rng.random(gts.shape), 2)  # rounding makes ties
        for limit in (0.3, 0.05, 1.0):
            assert au_pro(maps, gts, limit) == pytest.approx(_brute_au_pro(maps, gts, limit), abs=1e-12), (
                trial,
                limit,
            )


def test_f1_max_by_hand() -> None:
    # NG at ≥ 0.35: 0.4 (good), 0.35, 0.8 (defects) → P 2/3, R 1, F1 0.8; at ≥ 0.8: P 1, R 0.5, F1 2/3.
    best = f1_max([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert best.threshold == pytest.approx(0.35)
    assert best.f1 == pytest.approx(0.8) and best.recall == pytest.approx(1.0)
    assert best.precision == pytest.approx(2 / 3)


def test_per_type_auroc_compares_each_type_with_all_good() -> None:
    # dent {0.9, 0.15} vs good {0.1, 0.2}: 3 of 4 pairs ordered → 0.75; scratch 0.05 below both → 0.
    out = per_type_auroc([0.1, 0.2, 0.9, 0.15, 0.05], ["good", "good", "dent", "dent", "scratch"])
    assert out == {"dent": pytest.approx(0.75), "scratch": pytest.approx(0.0)}


def test_evaluate_bundles_every_metric() -> None:
    rng = np.random.default_rng(1)
    gt_f, gts = _blobs(rng, 5, 10)
    maps = gt_f + 0.05 * rng.random(gts.shape)
    kinds = ["good", "dent", "scratch", "dent", "scratch"]
    m = evaluate(maps.max((1, 2)), maps[:, None], gts[:, None], kinds)
    assert m.image_auroc == 1.0 and m.pixel_auroc == 1.0 and m.au_pro == pytest.approx(1.0)
    assert m.f1.f1 == 1.0 and m.per_type == {"dent": 1.0, "scratch": 1.0}


def test_an_empty_class_is_a_clear_error() -> None:
    with pytest.raises(MetricsError, match="needs good and defective samples, got 3 good and 0") as e:
        image_auroc([0.1, 0.2, 0.3], [0, 0, 0])
    assert "both good parts and defects" in e.value.remedy
    with pytest.raises(MetricsError, match="needs good and defective"):
        f1_max([0.1, 0.2], [1, 1])
    with pytest.raises(MetricsError, match="needs good images"):
        per_type_auroc([0.1, 0.2], ["dent", "scratch"])
    with pytest.raises(MetricsError, match="needs defective images"):
        per_type_auroc([0.1, 0.2], ["good", "good"])
    flat = np.zeros((2, 4, 4))
    with pytest.raises(MetricsError, match="0 region"):
        au_pro(flat, flat > 0)
    with pytest.raises(MetricsError, match="needs good and defective"):
        pixel_auroc(flat, flat > 0)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(MetricsError, match="3 scores but 2 labels"):
        image_auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(MetricsError, match="non-finite"):
        image_auroc([0.1, np.nan], [0, 1])
    with pytest.raises(MetricsError, match="must be 0 or 1"):
        image_auroc([0.1, 0.2], [0, 2])
    with pytest.raises(MetricsError, match="differ or are not"):
        au_pro(np.zeros((2, 4, 4)), np.zeros((2, 4, 5), dtype=bool))
    with pytest.raises(MetricsError, match="integration limit"):
        au_pro(np.zeros((1, 2, 2)), np.eye(2, dtype=bool)[None], limit=0.0)
