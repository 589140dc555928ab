"""DADA, the depth-aware discrete autoencoder 3DSR is built on (Zavrtanik, Kristan, Skočaj, WACV 2024), as its own
family ``dada``: pretrained once per preset and mode, then frozen inside every 3DSR model (``engines/models/dsr3d.py``).

Anatomy (after ``VitjanZ/3DSR@6f83317``, Apache-2.0; facts in ``shared/research/models.md`` §4):

1. Input. ``rgb`` is taken back to [0, 1] with the card's mean/std (3DSR does not normalise colour). Depth is the z of
   ``xyz`` where ``mask`` and z > 0, min–max normalised per image over those pixels to [0.1, 0.9], 0 elsewhere, then
   two passes of a 3×3 mean of valid neighbours fill holes. ``rgbd`` stacks (depth, R, G, B); ``depth`` uses depth.
2. Encoder Hi (stride 4) and Lo (stride 8), each convolution grouped (depth | RGB) in ``rgbd``; two EMA vector
   quantisers (commitment 0.25, decay 0.99); ConvT upsampling of q_lo; the general appearance decoder reconstructing
   the input from (q_lo, q_hi).
3. Score of a DADA on its own (a diagnostic, not a detector): mean-channel |input − reconstruction| (× ``mask`` in
   ``foreground`` crop mode) → ``anomaly_map``; ``image_score`` = its max.

Every codebook lookup is ``argmin`` of ‖e‖² − 2x·e (‖x‖² is the same for every codeword), computed as one GEMM
whose bias is ‖e‖² (``addmm``: ONNX Gemm, no N×K Sub), followed by a Gather (``F.embedding``): no scatter one-hot,
so TensorRT takes the graph (models.md §1.4). The straight-through estimator ``x + (q − x).detach()`` is applied
only where a gradient can flow (``straight_through``): at inference and in the export (traced under
``torch.no_grad``) the lookup's output is the codeword itself. For speed in ONNX Runtime
(docs/models/dsr3d.md, "Where the time goes") the two rgbd stems run as one block-diagonal convolution, the rgbd
output heads are folded into the decoder's last ConvTranspose, and ``encode`` hands its upsampled q_lo to
``decode``: the same parameters and the same function, fewer operators. The presets (``PRESETS``) are shared
with 3DSR, whose table is in ``engines/models/dsr3d.py``; DADA uses the hidden/residual/embedding widths, the
codebook size and ``corpus_batches``.

Deviations and why: DADA is pretrained on a procedural corpus (``engines/models/_perlin.py``, with a quarter of the
samples replaced by crops of the given normal frames) instead of ImageNet (not downloadable); the learning rate steps
×0.1 at 80 % and 90 % of ``FitSettings.epochs``; an epoch is ``corpus_batches`` generated batches instead of fixed
4000×64 samples. Codebooks are drawn from the first training batch's features (the reference's N(0, 1) start
collapses to one code).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
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
from engines.models import _perlin
from engines.models.layers import colour_affine, fill_gaps

Mode = Literal["rgbd", "depth"]
MODES: tuple[str, ...] = ("rgbd", "depth")
UNIT_MEAN: tuple[float, float, float] = (0.0, 0.0, 0.0)  # 3DSR reads colour on [0, 1]: no normalisation
UNIT_STD: tuple[float, float, float] = (1.0, 1.0, 1.0)


class Dsr3dConfigError(EdgeError):
    """A DADA/3DSR card or option does not describe a model this family can build."""


class Dsr3dTrainError(EdgeError):
    """DADA/3DSR training cannot run on the given data or resume from the given state."""


# ------------------------------------------------------------------------------------------------ settings / presets


@dataclass(frozen=True, slots=True)
class Dsr3dSettings:
    """Constructor and recommended training settings of one preset (module docstring's table)."""

    input_size: int
    hidden: int  # DADA encoder/decoder width (paper 256)
    res_hidden: int  # residual-stack bottleneck (paper 128)
    embed_dim: int  # codeword length (paper 256)
    codes: int  # codewords per codebook (paper 2048)
    subspace: int  # subspace-restriction base width (paper 128 → 128/256/512)
    decoder: int  # object-decoder base width (paper 512 → 512/1024/2048)
    unet: int  # anomaly U-Net base width (paper 32)
    corpus_batches: int = 1000  # DADA: generated batches per epoch
    epochs: int = 120
    batch_size: int = 16
    learning_rate: float = 2e-4


PRESETS: dict[str, Dsr3dSettings] = {
    "paper": Dsr3dSettings(384, 256, 128, 256, 2048, 128, 512, 32),
    "edge": Dsr3dSettings(256, 128, 64, 128, 512, 64, 128, 16, corpus_batches=250, epochs=60, batch_size=8),
    "cpu": Dsr3dSettings(
        128, 32, 16, 32, 128, 16, 32, 8, corpus_batches=15, epochs=40, batch_size=8, learning_rate=1e-3
    ),
    "tiny": Dsr3dSettings(
        64, 16, 8, 16, 32, 8, 16, 8, corpus_batches=2, epochs=2, batch_size=4, learning_rate=1e-3
    ),
}  # fmt: skip


def dsr3d_settings(preset: str) -> Dsr3dSettings:
    """The settings of a 3DSR/DADA preset (shared by both families)."""
    return preset_settings(PRESETS, preset, "3DSR/DADA", Dsr3dConfigError)


# ------------------------------------------------------------------------------------------------------------ layers


class VectorQuantizerEMA(nn.Module):
    """Codebook updated by exponential moving averages (VQ-VAE-2), looked up by argmin + Gather.

    A code whose EMA count falls below ``restart_below`` vectors per batch is restarted on a random vector of the
    current batch (the usual dead-code restart of VQ-VAE training). Without it the DADA pretrained on this CPU
    collapsed to one code for every position of every frame (docs/models/dsr3d.md).
    """

    codebook: Tensor
    cluster_size: Tensor
    ema_sum: Tensor
    seeded: Tensor

    def __init__(
        self,
        codes: int,
        dim: int,
        *,
        commitment: float = 0.25,
        decay: float = 0.99,
        eps: float = 1e-5,
        restart_below: float = 0.5,
    ):
        super().__init__()
        self.commitment, self.decay, self.eps, self.restart_below = commitment, decay, eps, restart_below
        init = torch.randn(codes, dim)
        self.register_buffer("codebook", init.clone())
        self.register_buffer("cluster_size", torch.zeros(codes))
        self.register_buffer("ema_sum", init.clone())
        self.register_buffer("seeded", torch.zeros(()))  # 1 once the codebook was drawn from training features

    def distances(self, flat: Tensor) -> Tensor:
        """N×K squared Euclidean distances of N vectors to every codeword."""
        cb = self.codebook
        return (flat**2).sum(1, keepdim=True) + (cb**2).sum(1)[None] - 2.0 * flat @ cb.t()

    def lookup(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(nearest codewords B×D×H×W, indices B×H×W) of x B×D×H×W; no gradient reaches the codebook."""
        b, d, h, w = x.shape
        flat = x.permute(0, 2, 3, 1).reshape(-1, d)
        cb = self.codebook
        # ‖e‖² − 2x·e as one GEMM with a bias (‖x‖² is the same for every codeword: left out)
        idx = torch.addmm((cb**2).sum(1), flat, cb.t(), alpha=-2.0).argmin(1)
        q = nnf.embedding(idx, self.codebook).reshape(b, h, w, d).permute(0, 3, 1, 2)
        return q, idx.reshape(b, h, w)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(straight-through quantised x, commitment loss, indices); in train mode the codebook follows by EMA."""
        if self.training and not bool(self.seeded):
            self.seed_from(x.detach())
        q, idx = self.lookup(x)
        if self.training:
            self.ema_update(x.detach(), idx)
            q, _ = self.lookup(x)
        loss = self.commitment * nnf.mse_loss(x, q.detach())
        return straight_through(x, q), loss, idx

    @torch.no_grad()
    def seed_from(self, x: Tensor) -> None:
        """Draw the codewords from the first training batch's features (plus small noise), so no code starts dead
        far away from the encoder's output range (an N(0, 1) codebook collapses to one code at the start)."""
        flat = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        pick = flat[torch.randint(flat.shape[0], (self.codebook.shape[0],))]
        pick = pick + 0.01 * flat.std() * torch.randn_like(pick)
        self.codebook.copy_(pick)
        self.ema_sum.copy_(pick)
        self.cluster_size.fill_(1.0)
        self.seeded.fill_(1.0)

    @torch.no_grad()
    def ema_update(self, x: Tensor, idx: Tensor) -> None:
        """Move each codeword toward the mean of the vectors assigned to it (Laplace-smoothed counts)."""
        flat = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        onehot = nnf.one_hot(idx.reshape(-1), self.codebook.shape[0]).to(flat.dtype)
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        dead = self.cluster_size < self.restart_below
        if bool(dead.any()):  # restart unused codes on this batch's vectors, or the codebook collapses to one code
            pick = flat[torch.randint(flat.shape[0], (int(dead.sum()),), device=flat.device)]
            self.ema_sum[dead] = pick
            self.cluster_size[dead] = 1.0
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook.shape[0] * self.eps) * n
        self.codebook.copy_(self.ema_sum / smoothed[:, None])


def straight_through(x: Tensor, q: Tensor) -> Tensor:
    """q in the forward pass, with x's gradient in the backward pass (VQ-VAE's straight-through estimator).

    Where no gradient can flow (inference, export under ``torch.no_grad``) it is ``q`` itself: ``x + (q − x)``
    would be two N×D element-wise operators per lookup whose result differs from q by rounding only."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return q
    return x + (q - x).detach()


def weight_bias(layer: nn.Module) -> tuple[Tensor, Tensor]:
    """(weight, bias) of a convolution built with a bias (every one that ``DadaNet`` folds)."""
    if not isinstance(layer, nn.Conv2d | nn.ConvTranspose2d) or layer.bias is None:
        raise Dsr3dConfigError(f"{type(layer).__name__} is not a convolution with a bias", "build it with DadaNet")
    return layer.weight, layer.bias


def conv(c_in: int, c_out: int, k: int, groups: int, stride: int = 1, *, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=(k - 1) // 2 if k % 2 else 1, groups=groups, bias=bias)


class ResidualStack(nn.Module):
    """DADA's residual layers: [ReLU, conv3×3 → res, ReLU, conv1×1 → c] + skip, then ReLU; grouped."""

    def __init__(self, channels: int, res: int, layers: int, groups: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.ReLU(),
                conv(channels, res, 3, groups, bias=False),
                nn.ReLU(),
                conv(res, channels, 1, groups, bias=False),
            )
            for _ in range(layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return nnf.relu(x)


def interleave(a: Tensor, b: Tensor, groups: int) -> Tensor:
    """cat of a and b keeping each group's halves together ([a_d, b_d, a_rgb, b_rgb]) for grouped convolutions."""
    if groups == 1:
        return torch.cat([a, b], 1)
    parts = [t for pair in zip(a.chunk(groups, 1), b.chunk(groups, 1), strict=True) for t in pair]
    return torch.cat(parts, 1)


class DadaNet(nn.Module):
    """DADA: grouped Hi/Lo encoders, two EMA codebooks, ConvT upsampling and the general appearance decoder."""

    def __init__(self, s: Dsr3dSettings, mode: Mode) -> None:
        super().__init__()
        h, e, g = s.hidden, s.embed_dim, 2 if mode == "rgbd" else 1
        self.mode, self.groups, self.channels = mode, g, 4 if mode == "rgbd" else 1
        if mode == "rgbd":
            self.stem_depth, self.stem_rgb = nn.Conv2d(1, h // 4, 1), nn.Conv2d(3, h // 4, 1)
            first = conv(h // 2, h // 2, 4, g, 2)
        else:
            first = conv(1, h // 2, 4, 1, 2)
        self.enc_hi = nn.Sequential(
            first,
            nn.ReLU(),
            conv(h // 2, h, 4, g, 2),
            nn.ReLU(),
            conv(h, h, 3, g),
            ResidualStack(h, s.res_hidden, 2, g),
        )
        self.enc_lo = nn.Sequential(
            conv(h, h, 4, g, 2), nn.ReLU(), conv(h, h, 3, g), ResidualStack(h, s.res_hidden, 2, g)
        )
        self.pre_vq_lo = conv(h, e, 1, g)
        self.vq_lo = VectorQuantizerEMA(s.codes, e)
        self.upsample = nn.ConvTranspose2d(e, e, 4, stride=2, padding=1, groups=g)
        self.pre_vq_hi = conv(h + e, e, 1, g)
        self.vq_hi = VectorQuantizerEMA(s.codes, e)
        self.decoder = nn.Sequential(
            conv(2 * e, h, 3, g),
            ResidualStack(h, s.res_hidden, 2, g),
            nn.ConvTranspose2d(h, h // 2, 4, stride=2, padding=1, groups=g),
            nn.ReLU(),
            nn.ConvTranspose2d(h // 2, h // 4 if mode == "rgbd" else 1, 4, stride=2, padding=1, groups=g),
        )
        if mode == "rgbd":
            self.head_depth, self.head_rgb = nn.Conv2d(h // 8, 1, 1), nn.Conv2d(h // 8, 3, 1)

    def stem(self, x: Tensor) -> Tensor:
        """``rgbd``: the depth and RGB 1×1 stems as one convolution with a block-diagonal weight (depth → the first
        h/4 channels, RGB → the rest), the same as concatenating the two stems' outputs without the concatenation
        (a 64-channel S×S copy that ONNX Runtime paid 5 ms for at ``edge``); ``depth``: the input itself."""
        if self.mode == "depth":
            return x
        (wd, bd), (wr, br) = weight_bias(self.stem_depth), weight_bias(self.stem_rgb)  # (h/4)×1 and (h/4)×3 (×1×1)
        weight = torch.cat([torch.cat([wd, wd.new_zeros(wd.shape[0], 3, 1, 1)], 1),
                            torch.cat([wr.new_zeros(wr.shape[0], 1, 1, 1), wr], 1)], 0)  # fmt: skip
        bias = torch.cat([bd, br])
        return nnf.relu(nnf.conv2d(x, weight, bias))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(q_lo, q_hi, upsampled q_lo, commitment loss) of an input C×S×S (C = 4: depth, R, G, B; or 1: depth).
        The upsampled q_lo is returned so that ``decode`` of these same codes need not upsample them again."""
        hi = self.enc_hi(self.stem(x))
        q_lo, loss_lo, _ = self.vq_lo(self.pre_vq_lo(self.enc_lo(hi)))
        up_lo = self.upsample(q_lo)
        q_hi, loss_hi, _ = self.vq_hi(self.pre_vq_hi(interleave(hi, up_lo, self.groups)))
        return q_lo, q_hi, up_lo, loss_lo + loss_hi

    def quantize(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(q_lo, q_hi, commitment loss) of an input C×S×S."""
        q_lo, q_hi, _, loss = self.encode(x)
        return q_lo, q_hi, loss

    def output_layer(self) -> tuple[Tensor, Tensor]:
        """(weight, bias) of the decoder's last ConvTranspose with the ``rgbd`` 1×1 heads folded in.

        The heads are linear and follow the ConvTranspose directly, so head ∘ ConvT is one ConvTranspose with
        4 outputs: depth from the depth group's inputs only, RGB from the RGB group's. That replaces a
        ConvTranspose to h/4 channels at S×S, a Split, two 1×1 convolutions and a Concat (together about 15 ms of
        ONNX Runtime's 3DSR ``edge`` frame) with a ConvTranspose to 4 channels; the parameters are unchanged."""
        w, b = weight_bias(self.decoder[-1])  # c_in × (c_out/2) × 4 × 4: group j's inputs feed outputs j·c_out/2 + …
        half_in, half_out = w.shape[0] // 2, w.shape[1]
        blocks, biases = [], []
        for j, head in enumerate((self.head_depth, self.head_rgb)):
            hw, hb = weight_bias(head)
            h = hw[:, :, 0, 0]  # outputs × (c_out/2)
            blocks.append(torch.einsum("iokl,po->ipkl", w[j * half_in : (j + 1) * half_in], h))
            biases.append(h @ b[j * half_out : (j + 1) * half_out] + hb)
        zeros_d, zeros_rgb = blocks[0].new_zeros(half_in, 3, 4, 4), blocks[0].new_zeros(half_in, 1, 4, 4)
        weight = torch.cat([torch.cat([blocks[0], zeros_d], 1), torch.cat([zeros_rgb, blocks[1]], 1)], 0)
        return weight, torch.cat(biases)

    def decode(self, q_lo: Tensor, q_hi: Tensor, up_lo: Tensor | None = None) -> Tensor:
        """The general appearance decoder: (q_lo, q_hi) → C×S×S reconstruction; ``up_lo`` is ``upsample(q_lo)``
        when the caller has it (``encode``)."""
        z = interleave(self.upsample(q_lo) if up_lo is None else up_lo, q_hi, self.groups)
        if self.mode == "depth":
            y: Tensor = self.decoder(z)
            return y
        weight, bias = self.output_layer()
        return nnf.conv_transpose2d(self.decoder[:-1](z), weight, bias, stride=2, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(reconstruction, commitment loss)."""
        q_lo, q_hi, up_lo, loss = self.encode(x)
        return self.decode(q_lo, q_hi, up_lo), loss


# ------------------------------------------------------------------------------------------------------------- input


class InputImage(nn.Module):
    """The contract's (rgb, xyz, mask) → 3DSR's input: (depth, R, G, B) on [0, 1], or depth alone."""

    rgb_scale: Tensor
    rgb_shift: Tensor

    def __init__(self, mode: Mode, mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        super().__init__()
        self.mode = mode
        scale, shift = colour_affine(mean, std, UNIT_MEAN, UNIT_STD)
        self.register_buffer("rgb_scale", scale)
        self.register_buffer("rgb_shift", shift)

    def depth(self, xyz: Tensor, mask: Tensor) -> Tensor:
        """Per-image min–max of valid z to [0.1, 0.9], 0 where invalid, holes filled by 2 passes of 3×3 means."""
        z = xyz[:, 2:3]
        valid = mask * (z > 0).float()
        lo = (z * valid + (1 - valid) * 1e6).amin((2, 3), keepdim=True)
        hi = (z * valid).amax((2, 3), keepdim=True)
        d = ((z - lo) / (hi - lo).clamp_min(1e-6) * 0.8 + 0.1) * valid
        d, _ = fill_gaps(d, valid, 2)
        return d

    def forward(self, rgb: Tensor | None = None, xyz: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        if xyz is None or mask is None:
            raise Dsr3dConfigError("3DSR/DADA needs the 'xyz' and 'mask' inputs", "feed the crop's xyz and mask")
        depth = self.depth(xyz, mask)
        if self.mode == "depth":
            return depth
        if rgb is None:
            raise Dsr3dConfigError("3DSR/DADA mode 'rgbd' needs the 'rgb' input", "feed the crop's rgb")
        return torch.cat([depth, (rgb * self.rgb_scale + self.rgb_shift).clamp(0.0, 1.0)], 1)


def card_inputs(mode: str) -> tuple[str, ...]:
    return ("rgb", "xyz", "mask") if mode == "rgbd" else ("xyz", "mask")


# ------------------------------------------------------------------------------------------------------------ models


class DadaModel(nn.Module):
    """DADA behind the contract: ``anomaly_map`` = mean-channel |input − reconstruction| (× mask in foreground)."""

    def __init__(self, settings: Dsr3dSettings, mode: Mode, card: ModelCard) -> None:
        super().__init__()
        self.settings, self.mode, self.foreground = settings, mode, card.crop_mode == "foreground"
        self.input_names = card_inputs(mode)
        self.prepare = InputImage(mode, card.mean, card.std)
        self.net = DadaNet(settings, mode)

    def forward(
        self, rgb: Tensor | None = None, xyz: Tensor | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        x = self.prepare(rgb, xyz, mask)
        recon, _ = self.net(x)
        amap = (x - recon).abs().mean(1, keepdim=True)
        if self.foreground and mask is not None:
            amap = amap * mask
        return amap, amap.amax((1, 2, 3))


# ---------------------------------------------------------------------------------------------------------- training

REAL_CROP_FRACTION = 0.25  # share of corpus samples replaced by crops of the given normal frames


def dada_batch(seed: int, index: int, batch: int, size: int, mode: str, *, real: Tensor | None) -> Tensor:
    """Corpus batch ``index``; with normal frames given, each sample is a random crop of one with p = 0.25."""
    x = torch.from_numpy(_perlin.corpus_batch(seed, index, batch, size, mode))
    if real is None or real.shape[0] == 0:
        return x
    rng = np.random.default_rng([seed, index, 1])
    for i in range(batch):
        if rng.random() < REAL_CROP_FRACTION:
            src = real[int(rng.integers(real.shape[0]))]
            side = int(size * rng.uniform(0.5, 1.0))
            y0, x0 = (int(v) for v in rng.integers(0, size - side + 1, 2))
            crop = src[None, :, y0 : y0 + side, x0 : x0 + side]
            x[i] = nnf.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0]
    return x


def fit_dada(
    model: DadaModel, train: Iterable[Mapping[str, Any]], settings: FitSettings, context: TrainContext
) -> None:
    """Pretrain DADA on the seeded procedural corpus (+ crops of ``train``): L1 (rgbd) or MSE (depth) + commitment.

    Batches are generated on the CPU and trained on ``settings.device`` with the shared harness
    (``engines.training``); the model comes back on the CPU."""
    device = training.start(settings, Dsr3dTrainError)
    frames = training.cache_features(  # DADA inputs of the given normal frames, for the corpus's real crops
        train,
        model.input_names,
        lambda **t: (model.prepare(**t),),
        torch.device("cpu"),
        Dsr3dTrainError,
        allow_empty=True,
    )
    real = frames[0] if frames else None
    model.to(device)
    nets = {"net": model.net}
    steps = model.settings.corpus_batches
    recon_loss = nnf.l1_loss if model.mode == "rgbd" else nnf.mse_loss

    def batches(epoch: int) -> Iterator[Tensor]:
        for step in range(steps):
            index = epoch * steps + step
            size = model.settings.input_size
            yield dada_batch(settings.seed, index, settings.batch_size, size, model.mode, real=real).to(device)

    def step(x: Tensor) -> Tensor:
        recon, commit = model.net(x)
        loss: Tensor = recon_loss(recon, x) + commit
        return loss

    training.fit_one_phase(
        model, "dada", nets, settings, context, batches=batches, step=step, error=Dsr3dTrainError, lr_steps=(0.8, 0.9)
    )


# ----------------------------------------------------------------------------------------------------- family objects


def mode_option(options: Mapping[str, Any], allowed: set[str], family: str, default: str | None) -> Mode:
    check_option_names(options, allowed, family, f"use only {sorted(allowed)}", Dsr3dConfigError)
    mode = options.get("mode", default)
    if mode not in MODES:
        raise Dsr3dConfigError(f"{family} mode {mode!r} is not one of {MODES}", "pick mode rgbd or depth")
    return mode  # type: ignore[no-any-return]  # checked against MODES above


def check_family_card(card: ModelCard, family: str) -> tuple[Dsr3dSettings, Mode]:
    """(preset settings, mode) of a DADA or 3DSR card, refused with the remedy if it does not fit ``family``."""
    settings = dsr3d_settings(card.preset)
    check_card(card, family, settings.input_size, Dsr3dConfigError)
    mode = mode_option({"mode": card.options.get("mode")}, {"mode"}, family, None)
    check_card_inputs(card, card_inputs(mode), f"mode {mode!r}", Dsr3dConfigError)
    return settings, mode


def family_card(family: str, preset: str, crop_mode: CropMode, options: dict[str, Any]) -> ModelCard:
    settings = dsr3d_settings(preset)
    return ModelCard(
        family=family,
        preset=preset,
        input_size=settings.input_size,
        inputs=card_inputs(options["mode"]),
        crop_mode=crop_mode,
        mean=UNIT_MEAN,
        std=UNIT_STD,
        options=options,
    )


class DadaFamily:
    """DADA, the pretrained half of 3DSR, as its own family: ``edge-train --model dada`` writes the checkpoint
    every 3DSR model of the preset reuses (``--option dada=<path>``)."""

    name = "dada"
    presets: Mapping[str, Mapping[str, Any]] = preset_table(PRESETS)

    def card(self, preset: str, crop_mode: CropMode, **options: Any) -> ModelCard:
        """Card with colour on [0, 1] (mean 0, std 1) and the inputs of ``options["mode"]`` (default rgbd)."""
        dsr3d_settings(preset)
        return family_card(self.name, preset, crop_mode, {"mode": mode_option(options, {"mode"}, self.name, "rgbd")})

    def build(self, card: ModelCard) -> DadaModel:
        settings, mode = check_family_card(card, self.name)
        return DadaModel(settings, mode, card)

    def fit(self, model: Any, train: Iterable[Mapping[str, Any]], settings: FitSettings, context: TrainContext) -> None:
        """Pretrain on the procedural corpus; ``train`` contributes only crops (see ``fit_dada``)."""
        if not isinstance(model, DadaModel):
            raise Dsr3dTrainError(f"DADA cannot train a {type(model).__name__}", "build it with DADA_FAMILY.build")
        fit_dada(model, train, settings, context)


DADA_FAMILY = DadaFamily()
