"""Layers more than one model family uses: depth gap filling, the colour affine between normalisations, the
training-time jitter of a crop (pose, tilt, light) and the ROI-free mask of the ``full`` crop mode.

One copy each, so a family's preprocessing cannot drift from another's by a re-typed loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as nnf
from torch import Tensor


def roi_free(mask: Tensor) -> Tensor:
    """All ones shaped like the crop's ``mask``, computed from it: the ``full`` crop mode (the paper's Original)
    ignores the ROI, yet the exported graph must keep the ``mask`` input the contract names (``torch.ones_like``
    would let the exporter fold the input out of the graph)."""
    return mask.clamp(1.0, 1.0)


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


def jitter_view(
    inputs: Mapping[str, Tensor],
    gen: torch.Generator,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    rotate_deg: float = 3.0,
    shift: float = 0.03,
    scale: float = 0.03,
    gain: float = 0.1,
    offset: float = 0.03,
    tilt: float = 0.03,
) -> dict[str, Tensor]:
    """One randomly jittered view of a batch of crops (training-time augmentation; B×C×S×S tensors by name).

    Pose: one in-plane affine per sample about the crop's centre (rotation ±``rotate_deg``, shift ±``shift`` of the
    side, scale 1 ± ``scale``) warps ``rgb`` (bilinear) and ``xyz`` / ``mask`` (nearest, so no depth is invented
    between a surface and its background); pixels brought in from outside repeat the border (rgb, xyz) or are
    background (mask). Depth: z gets a random tilt about the valid points' centre, ``z + a·(x − x̄) + b·(y − ȳ)``
    with |a|, |b| ≤ ``tilt`` (0.03: ±1.7°), the part's out-of-plane pose jitter. Light: colour on the [0, 1] scale
    (``rgb`` arrives normalised with ``mean`` / ``std``, the card's) becomes ``g·c + o`` with g = 1 ± ``gain``,
    o = ±``offset``. Every number is drawn from ``gen`` (CPU), so a seeded generator repeats the views. Inputs not
    named rgb, xyz or mask pass through unchanged."""
    first = next(iter(inputs.values()))
    n = first.shape[0]

    def draw(bound: float, *shape: int) -> Tensor:
        return ((torch.rand(n, *shape, generator=gen) * 2 - 1) * bound).to(first.device)

    angle, zoom = draw(math.radians(rotate_deg)), 1 + draw(scale)
    theta = torch.zeros(n, 2, 3, device=first.device)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle) / zoom, -torch.sin(angle) / zoom
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle) / zoom, torch.cos(angle) / zoom
    theta[:, :, 2] = draw(2 * shift, 2)  # normalised coordinates span 2 per side
    out = dict(inputs)
    for name, mode, padding in (
        ("rgb", "bilinear", "border"),
        ("xyz", "nearest", "border"),
        ("mask", "nearest", "zeros"),
    ):
        if name in inputs:
            x = inputs[name].float()
            grid = nnf.affine_grid(theta, list(x.shape), align_corners=False)
            out[name] = nnf.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=False)
    if "rgb" in out:
        s = torch.tensor(std, dtype=torch.float32, device=first.device).view(1, 3, 1, 1)
        m = torch.tensor(mean, dtype=torch.float32, device=first.device).view(1, 3, 1, 1)
        g, o = (1 + draw(gain)).view(n, 1, 1, 1), draw(offset).view(n, 1, 1, 1)
        out["rgb"] = ((out["rgb"] * s + m) * g + o - m) / s
    if "xyz" in out:
        xyz = out["xyz"]
        valid = (xyz[:, 2:3] > 0).float()
        count = valid.sum((2, 3), keepdim=True).clamp_min(1.0)
        centre = (xyz[:, :2] * valid).sum((2, 3), keepdim=True) / count
        slope = draw(tilt, 2).view(n, 2, 1, 1)
        dz = ((xyz[:, :2] - centre) * slope).sum(1, keepdim=True) * valid
        out["xyz"] = torch.cat([xyz[:, :2], xyz[:, 2:3] + dz], 1)
    return out
