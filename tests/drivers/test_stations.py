"""Every station preset renders deterministically per seed, with the defect mask exactly on the changed pixels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from drivers.synthetic import STATIONS, SyntheticSourceConfig, render_arrays


@pytest.mark.parametrize("station", list(STATIONS))
def test_station_renders_deterministically_with_aligned_masks(station: str) -> None:
    cfg = SyntheticSourceConfig(seed=3, width=320, height=240, clutter=1.0, station=station)
    a = render_arrays(cfg, 2, defect="dent")
    b = render_arrays(cfg, 2, defect="dent")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    other = render_arrays(cfg.model_copy(update={"seed": 4}), 2, defect="dent")
    assert not np.array_equal(a[1], other[1]), "another seed must give another frame"
    good = render_arrays(cfg, 2, defect=None)
    truth = a[2]
    mask, drum = truth.defect_mask, truth.drum_mask
    assert mask is not None and drum is not None and truth.drum is not None
    assert truth.drum.radius_m == STATIONS[station].design.radius_m
    assert mask.sum() >= 1 and not (mask & ~drum).any()  # the tilted station's fine dent: a few px at 320×240
    changed = (a[0] != good[0]).any(axis=2) | (a[1] != good[1])
    stray = changed & ~binary_dilation(mask, iterations=1)
    assert stray.sum() <= max(3, 0.01 * mask.sum()), f"{station}: {stray.sum()} changed pixels off the mask"


@pytest.mark.parametrize("station", list(STATIONS))
def test_clutter_never_occludes_the_drum(station: str) -> None:
    base = SyntheticSourceConfig(seed=1, width=160, height=120, clutter=0.0, station=station)
    busy = base.model_copy(update={"clutter": 1.0})
    for index in (0, 40, 95):
        quiet, loud = render_arrays(base, index, defect=None)[2], render_arrays(busy, index, defect=None)[2]
        assert quiet.drum_mask is not None and loud.drum_mask is not None
        assert np.array_equal(quiet.drum_mask, loud.drum_mask), f"{station} frame {index}: clutter hides the drum"


def test_unknown_station_is_refused_with_the_presets_named() -> None:
    with pytest.raises(ValueError, match="roller-standing"):
        SyntheticSourceConfig(station="nope")


@pytest.mark.parametrize("kind", ["dent", "scratch"])
def test_fine_defect_scale_gives_small_defects_with_aligned_masks(kind: str) -> None:
    """``defect_scale`` overrides the preset's: at 0.35 (Ø 10–18 mm dents, ~1 mm wide scratches) the same part's
    defect covers far fewer pixels, still only on the drum and exactly where the frame changed."""
    cfg = SyntheticSourceConfig(seed=0, width=640, height=480, clutter=0.25, station="cradle-pallet")
    fine_cfg = cfg.model_copy(update={"defect_scale": 0.35})
    preset, fine, good = render_arrays(cfg, 1, kind), render_arrays(fine_cfg, 1, kind), render_arrays(cfg, 1, None)
    big, small, drum = preset[2].defect_mask, fine[2].defect_mask, fine[2].drum_mask
    assert big is not None and small is not None and drum is not None
    assert 0 < small.sum() < 0.3 * big.sum(), (small.sum(), big.sum())
    assert not (small & ~drum).any()
    changed = (fine[0] != good[0]).any(axis=2) | (fine[1] != good[1])
    assert not (changed & ~binary_dilation(small, iterations=1)).any()
    with pytest.raises(ValueError, match="defect_scale"):
        SyntheticSourceConfig(defect_scale=0)
