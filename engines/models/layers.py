"""Layers more than one model family uses: depth gap filling and the colour affine between normalisations.

One copy each, so a family's preprocessing cannot drift from another's by a re-typed loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as nnf
from torch import Tensor


def fill_gaps(z: Tensor, valid: Tensor, passes: int) -> tuple[Tensor, Tensor]:
    """Fill invalid pixels with the mean of their valid 3×3 neighbours, ``passes`` times; returns (z, valid).

    ``z`` and ``valid`` are B×1×H×W; ``valid`` is 0/1. Each pass grows the valid region by one pixel, so holes up to
    2·passes pixels wide close and the surface continues ``passes`` pixels past its edge. Exported as AveragePool.
    """
    for _ in range(passes):
        total = nnf.avg_pool2d(z * valid, 3, stride=1, padding=1)
        count = nnf.avg_pool2d(valid, 3, stride=1, padding=1)
        grow = (1 - valid) * (count > 0).float()
        z = z * valid + grow * total / count.clamp_min(1e-6)
        valid = valid + grow
    return z, valid


def colour_affine(
    mean: Sequence[float], std: Sequence[float], target_mean: Sequence[float], target_std: Sequence[float]
) -> tuple[Tensor, Tensor]:
    """Per-channel (scale, shift), each 1×3×1×1, taking colour normalised with ``mean``/``std`` (the card's, as the
    crop produced it) to colour normalised with ``target_mean``/``target_std``: ``x · scale + shift``.

    Exact: ``(x·s + m − tm) / ts``. With target mean 0 and std 1 it gives colour back on [0, 1] (scale = std,
    shift = mean)."""
    m, s = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    tm, ts = torch.tensor(target_mean, dtype=torch.float32), torch.tensor(target_std, dtype=torch.float32)
    return (s / ts).view(1, 3, 1, 1), ((m - tm) / ts).view(1, 3, 1, 1)
