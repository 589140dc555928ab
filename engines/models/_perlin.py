"""Perlin noise, 3DSR's anomaly masks and the procedural DADA pretraining corpus (numpy only, seeded).

The DADA of the paper is pretrained on ImageNet RGB paired with Perlin "depth"; ImageNet cannot be downloaded here,
so the RGB half is drawn from a procedural corpus instead: fractal Perlin colour fields, random flat or textured
shapes over such a field, and (when the caller has them) crops of normal frames. Depth is always simulated as
``D = clip(α·P + β, 0, 1)`` with P a min–max-normalised Perlin field, α ~ U(0, 1), β ~ U(0, 1 − α) (the paper's
form). Every function takes its ``numpy.random.Generator``, so one seed fixes the whole corpus.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


def _fade(t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return ((6.0 * t - 15.0) * t + 10.0) * t**3


def perlin(rng: np.random.Generator, size: int, res_y: int, res_x: int) -> F32:
    """size×size gradient noise with ``res_y × res_x`` lattice cells (values roughly in ±0.7)."""
    angles = rng.uniform(0.0, 2.0 * np.pi, (res_y + 1, res_x + 1))
    grad = np.stack([np.cos(angles), np.sin(angles)], -1)
    y = (np.arange(size) + 0.5) * res_y / size
    x = (np.arange(size) + 0.5) * res_x / size
    yi, xi = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - yi)[:, None], (x - xi)[None, :]

    def dot(dy: int, dx: int) -> npt.NDArray[np.float64]:
        g = grad[yi[:, None] + dy, xi[None, :] + dx]
        return np.asarray(g[..., 0] * (fx - dx) + g[..., 1] * (fy - dy))

    uy, ux = _fade(fy), _fade(fx)
    top = dot(0, 0) * (1 - ux) + dot(0, 1) * ux
    bottom = dot(1, 0) * (1 - ux) + dot(1, 1) * ux
    return np.asarray((top * (1 - uy) + bottom * uy) * np.sqrt(2.0), dtype=np.float32)


def fractal(rng: np.random.Generator, size: int, base_res: int, octaves: int) -> F32:
    """Sum of ``octaves`` Perlin layers, each with twice the lattice resolution and half the amplitude."""
    out = np.zeros((size, size), np.float32)
    for k in range(octaves):
        res = min(base_res * 2**k, size // 2)
        out += perlin(rng, size, res, res) * 0.5**k
    return out


def minmax(a: F32) -> F32:
    span = float(a.max() - a.min())
    return np.asarray((a - a.min()) / span if span > 0 else np.zeros_like(a), dtype=np.float32)


def anomaly_mask(rng: np.random.Generator, size: int) -> F32:
    """3DSR's training mask: Perlin at 2^[0..5] cells per axis, rotated, thresholded at t ~ U[0.4, 0.8) on |P|."""
    top = max(0, min(5, int(np.log2(size)) - 2))
    res_y, res_x = 2 ** int(rng.integers(0, top + 1)), 2 ** int(rng.integers(0, top + 1))
    noise = np.rot90(perlin(rng, size, res_y, res_x), int(rng.integers(0, 4)))
    return (np.abs(noise) > rng.uniform(0.4, 0.8)).astype(np.float32)


def simulated_depth(rng: np.random.Generator, size: int) -> F32:
    """DADA's fake depth ``clip(α·P + β, 0, 1)``, P a min–max-normalised (fractal) Perlin field."""
    res = 2 ** int(rng.integers(0, max(1, int(np.log2(size)) - 3)))
    field = minmax(fractal(rng, size, res, int(rng.integers(1, 4))))
    alpha = rng.uniform(0.0, 1.0)
    beta = rng.uniform(0.0, 1.0 - alpha)
    return np.asarray(np.clip(alpha * field + beta, 0.0, 1.0), dtype=np.float32)


def colour_texture(rng: np.random.Generator, size: int) -> F32:
    """3×S×S colours in [0, 1]: three fractal fields mixed by a random colour matrix around a random base colour."""
    fields = np.stack([fractal(rng, size, 2 ** int(rng.integers(0, 4)), int(rng.integers(1, 5))) for _ in range(3)])
    mix = rng.normal(0.0, 0.6, (3, 3))
    base = rng.uniform(0.1, 0.9, (3, 1, 1))
    return np.asarray(np.clip(base + np.einsum("ij,jhw->ihw", mix, fields), 0.0, 1.0), dtype=np.float32)


def shapes(rng: np.random.Generator, size: int) -> F32:
    """A colour texture with 1–8 random rectangles and ellipses painted over it, flat or textured."""
    img = colour_texture(rng, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for _ in range(int(rng.integers(1, 9))):
        cy, cx = rng.uniform(0, 1, 2)
        ry, rx = rng.uniform(0.05, 0.35, 2)
        if rng.random() < 0.5:
            inside = (np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)
        else:
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1.0
        fill = rng.uniform(0, 1, (3, 1, 1)) if rng.random() < 0.6 else colour_texture(rng, size)
        img = np.where(inside[None], fill, img)
    return img.astype(np.float32)


def corpus_sample(rng: np.random.Generator, size: int, mode: str) -> F32:
    """One procedural DADA sample: (depth, R, G, B) for ``rgbd`` or (depth,) for ``depth``, C×S×S in [0, 1]."""
    depth = simulated_depth(rng, size)[None]
    if mode == "depth":
        return depth
    rgb = colour_texture(rng, size) if rng.random() < 0.5 else shapes(rng, size)
    return np.concatenate([depth, rgb]).astype(np.float32)


def corpus_batch(seed: int, index: int, batch: int, size: int, mode: str) -> F32:
    """Batch ``index`` of the corpus of ``seed``: the same numbers on every call, on every machine."""
    rng = np.random.default_rng([seed, index])
    return np.stack([corpus_sample(rng, size, mode) for _ in range(batch)])
