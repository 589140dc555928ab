"""3DSR (Zavrtanik, Kristan, Skočaj, WACV 2024) and its depth-aware discrete autoencoder DADA, for RGB+D and depth.

Anatomy (after ``VitjanZ/3DSR@6f83317``, Apache-2.0; facts in ``shared/research/models.md`` §4):

1. Input. ``rgb`` is taken back to [0, 1] with the card's mean/std (3DSR does not normalise colour). Depth is the z of
   ``xyz`` where ``mask`` and z > 0, min–max normalised per image over those pixels to [0.1, 0.9], 0 elsewhere, then
   two passes of a 3×3 mean of valid neighbours fill holes. ``rgbd`` stacks (depth, R, G, B); ``depth`` uses depth.
2. DADA (family ``dada``, pretrained once per preset and mode): encoder Hi (stride 4) and Lo (stride 8), each
   convolution grouped (depth | RGB) in ``rgbd``; two EMA vector quantisers (commitment 0.25, decay 0.99); ConvT
   upsampling of q_lo; the general appearance decoder reconstructing the input from (q_lo, q_hi).
3. 3DSR (family ``dsr3d``): the frozen DADA; two subspace-restriction U-shaped nets (no skips) whose outputs are
   re-quantised with DADA's frozen codebooks; the object-specific decoder reconstructing an anomaly-free input; the
   anomaly-detection U-Net on cat(object recon, general recon) → 2 logits.
4. Score (raw, in the graph): softmax anomaly channel → fixed mean filter (11×11 rgbd, 21×21 depth, AveragePool)
   → ``anomaly_map`` (× ``mask`` in ``foreground`` crop mode); ``image_score`` = its max.

Every codebook lookup is ``argmin`` of ‖x‖² + ‖e‖² − 2x·e followed by a Gather (``F.embedding``): no scatter
one-hot, so TensorRT takes the graph (models.md §1.4). Presets (widths: DADA hidden/residual/embedding, subspace
base, object decoder base, U-Net base):

========  ====  =====================  =====  ========  ======  =====  ====================
preset    S     DADA h / res / emb     codes  subspace  decoder  U-Net  fit (epochs/batch/lr)
========  ====  =====================  =====  ========  ======  =====  ====================
paper     384   256 / 128 / 256        2048   128       512     32     120 / 16 / 2e-4
edge      256   128 / 64 / 128         512    64        128     16     60 / 8 / 2e-4
tiny      64    16 / 8 / 16            32     8         16      8      2 / 4 / 1e-3
========  ====  =====================  =====  ========  ======  =====  ====================

Deviations and why: DADA is pretrained on a procedural corpus (``engines/models/_perlin.py``) instead of ImageNet
(not downloadable); no ±15° rotation augmentation (the drum crop is pose-normalised by the ROI); the learning rate
steps ×0.1 at 80 % (and 90 % for DADA) of ``FitSettings.epochs`` instead of iterations; an epoch is one pass over the
cached training set (3DSR) or ``corpus_batches`` generated batches (DADA) instead of fixed 4000/1000×64 samples.
Codebooks are drawn from the first training batch's features (the reference's N(0, 1) start collapses to one code).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from edge.core.errors import EdgeError
from engines.checkpoint import check_card, load_checkpoint, read_checkpoint_meta
from engines.contract import CropMode, FitSettings, ModelCard, TrainContext
from engines.models import _perlin

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
    "tiny": Dsr3dSettings(
        64, 16, 8, 16, 32, 8, 16, 8, corpus_batches=2, epochs=2, batch_size=4, learning_rate=1e-3
    ),
}  # fmt: skip


def _settings(preset: str) -> Dsr3dSettings:
    if preset not in PRESETS:
        raise Dsr3dConfigError(f"3DSR/DADA has no preset {preset!r}", f"pick one of {sorted(PRESETS)}")
    return PRESETS[preset]


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
        idx = self.distances(flat).argmin(1)
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
        return x + (q - x).detach(), loss, idx

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

    def quantize(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(q_lo, q_hi, commitment loss) of an input C×S×S (C = 4: depth, R, G, B; or 1: depth)."""
        if self.mode == "rgbd":
            x = nnf.relu(torch.cat([self.stem_depth(x[:, :1]), self.stem_rgb(x[:, 1:])], 1))
        hi = self.enc_hi(x)
        q_lo, loss_lo, _ = self.vq_lo(self.pre_vq_lo(self.enc_lo(hi)))
        q_hi, loss_hi, _ = self.vq_hi(self.pre_vq_hi(interleave(hi, self.upsample(q_lo), self.groups)))
        return q_lo, q_hi, loss_lo + loss_hi

    def decode(self, q_lo: Tensor, q_hi: Tensor) -> Tensor:
        """The general appearance decoder: (q_lo, q_hi) → C×S×S reconstruction."""
        y: Tensor = self.decoder(interleave(self.upsample(q_lo), q_hi, self.groups))
        if self.mode == "depth":
            return y
        y_depth, y_rgb = y.chunk(2, 1)
        return torch.cat([self.head_depth(y_depth), self.head_rgb(y_rgb)], 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(reconstruction, commitment loss)."""
        q_lo, q_hi, loss = self.quantize(x)
        return self.decode(q_lo, q_hi), loss


def conv_in_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.InstanceNorm2d(c_out), nn.ReLU()]


def up2() -> nn.Upsample:
    return nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)


class SubspaceRestriction(nn.Module):
    """Encoder–decoder (no skips) mapping possibly anomalous codes toward the normal subspace (64·b → e)."""

    def __init__(self, e: int, b: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            *conv_in_relu(e, b), *conv_in_relu(b, b), nn.MaxPool2d(2),
            *conv_in_relu(b, 2 * b), *conv_in_relu(2 * b, 2 * b), nn.MaxPool2d(2),
            *conv_in_relu(2 * b, 4 * b), *conv_in_relu(4 * b, 4 * b),
            up2(), *conv_in_relu(4 * b, 2 * b), *conv_in_relu(2 * b, 2 * b),
            up2(), *conv_in_relu(2 * b, b), *conv_in_relu(b, b),
            nn.Conv2d(b, e, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out


class ObjectDecoder(nn.Module):
    """3DSR's object-specific decoder: cat(up(q_lo′), q_hi′) at stride 4 → anomaly-free C×S×S input."""

    def __init__(self, e: int, d: int, channels: int, res_hidden: int) -> None:
        super().__init__()
        narrow = max(d // 8, 4)
        self.net = nn.Sequential(
            *conv_in_relu(2 * e, d), *conv_in_relu(d, 2 * d), nn.MaxPool2d(2),
            *conv_in_relu(2 * d, 2 * d), *conv_in_relu(2 * d, 4 * d), nn.MaxPool2d(2),
            nn.Conv2d(4 * d, narrow, 1),
            nn.ConvTranspose2d(narrow, narrow, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(narrow, narrow, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(narrow, d // 2, 3, padding=1), ResidualStack(d // 2, res_hidden, 2, 1),
            nn.ConvTranspose2d(d // 2, d // 4, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(d // 4, channels, 4, stride=2, padding=1),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out


class AnomalyUNet(nn.Module):
    """3DSR's anomaly-detection U-Net: widths b/2b/4b/4b, three max-pools, skip connections, 2 logits."""

    def __init__(self, c_in: int, b: int) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(*conv_in_relu(i, o), *conv_in_relu(o, o))

        self.enc = nn.ModuleList([block(c_in, b), block(b, 2 * b), block(2 * b, 4 * b), block(4 * b, 4 * b)])
        self.up = nn.ModuleList(
            nn.Sequential(up2(), *conv_in_relu(i, o)) for i, o in ((4 * b, 4 * b), (4 * b, 2 * b), (2 * b, b))
        )
        self.dec = nn.ModuleList([block(8 * b, 4 * b), block(4 * b, 2 * b), block(2 * b, b)])
        self.out = nn.Conv2d(b, 2, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for k, enc in enumerate(self.enc):
            x = enc(nnf.max_pool2d(x, 2) if k else x)
            skips.append(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips[:-1]), strict=True):
            x = dec(torch.cat([up(x), skip], 1))
        out: Tensor = self.out(x)
        return out


# ------------------------------------------------------------------------------------------------------------- input


class InputImage(nn.Module):
    """The contract's (rgb, xyz, mask) → 3DSR's input: (depth, R, G, B) on [0, 1], or depth alone."""

    rgb_scale: Tensor
    rgb_shift: Tensor

    def __init__(self, mode: Mode, mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        super().__init__()
        self.mode = mode
        self.register_buffer("rgb_scale", torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.register_buffer("rgb_shift", torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1))

    def depth(self, xyz: Tensor, mask: Tensor) -> Tensor:
        """Per-image min–max of valid z to [0.1, 0.9], 0 where invalid, holes filled by 2 passes of 3×3 means."""
        z = xyz[:, 2:3]
        valid = mask * (z > 0).float()
        lo = (z * valid + (1 - valid) * 1e6).amin((2, 3), keepdim=True)
        hi = (z * valid).amax((2, 3), keepdim=True)
        d = ((z - lo) / (hi - lo).clamp_min(1e-6) * 0.8 + 0.1) * valid
        for _ in range(2):
            total = nnf.avg_pool2d(d, 3, stride=1, padding=1)
            count = nnf.avg_pool2d(valid, 3, stride=1, padding=1)
            grow = (1 - valid) * (count > 0).float()
            d = d * valid + grow * total / count.clamp_min(1e-6)
            valid = valid + grow
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


class Dsr3dModel(nn.Module):
    """Frozen DADA + subspace restriction + object decoder + anomaly U-Net; ``forward`` takes the card's inputs."""

    def __init__(self, settings: Dsr3dSettings, mode: Mode, card: ModelCard, dada: DadaNet) -> None:
        super().__init__()
        self.settings, self.mode, self.foreground = settings, mode, card.crop_mode == "foreground"
        self.input_names = card_inputs(mode)
        self.filter = 11 if mode == "rgbd" else 21
        self.prepare = InputImage(mode, card.mean, card.std)
        self.dada = dada.requires_grad_(False).eval()
        e = settings.embed_dim
        self.sub_lo = SubspaceRestriction(e, settings.subspace)
        self.sub_hi = SubspaceRestriction(e, settings.subspace)
        self.decoder = ObjectDecoder(e, settings.decoder, dada.channels, settings.res_hidden)
        self.unet = AnomalyUNet(2 * dada.channels, settings.unet)

    def train(self, mode: bool = True) -> Dsr3dModel:
        """Switch the object-specific modules; DADA stays in eval mode (its codebooks are frozen)."""
        super().train(mode)
        self.dada.eval()
        return self

    def restore(self, q_lo: Tensor, q_hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(restricted lo features, restricted hi features, object-specific reconstruction) of (q_lo, q_hi)."""
        f_lo, f_hi = self.sub_lo(q_lo), self.sub_hi(q_hi)
        r_lo, _ = self.dada.vq_lo.lookup(f_lo)
        r_hi, _ = self.dada.vq_hi.lookup(f_hi)
        r_lo, r_hi = f_lo + (r_lo - f_lo).detach(), f_hi + (r_hi - f_hi).detach()  # straight-through
        return f_lo, f_hi, self.decoder(torch.cat([self.dada.upsample(r_lo), r_hi], 1))

    def segment(self, q_lo: Tensor, q_hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(f_lo, f_hi, object reconstruction, logits B×2×S×S) of (possibly anomalous) codes."""
        f_lo, f_hi, obj = self.restore(q_lo, q_hi)
        general = self.dada.decode(q_lo, q_hi)
        return f_lo, f_hi, obj, self.unet(torch.cat([obj, general], 1))

    def forward(
        self, rgb: Tensor | None = None, xyz: Tensor | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(anomaly_map B×1×S×S, image_score B), raw."""
        x = self.prepare(rgb, xyz, mask)
        q_lo, q_hi, _ = self.dada.quantize(x)
        *_, logits = self.segment(q_lo, q_hi)
        prob = torch.softmax(logits, 1)[:, 1:]
        amap = nnf.avg_pool2d(prob, self.filter, stride=1, padding=self.filter // 2)
        if self.foreground and mask is not None:
            amap = amap * mask
        return amap, amap.amax((1, 2, 3))


# ------------------------------------------------------------------------------------------------------------ losses


def focal_loss(prob: Tensor, target: Tensor, gamma: float = 2.0) -> Tensor:
    """Mean focal loss of the softmax ``prob`` B×2×H×W against a 0/1 target B×1×H×W."""
    pt = torch.where(target > 0.5, prob[:, 1:], prob[:, :1]).clamp(1e-6, 1.0)
    return (-((1 - pt) ** gamma) * pt.log()).mean()


def dsr3d_loss(
    model: Dsr3dModel, x: Tensor, q: tuple[Tensor, Tensor], q_anom: tuple[Tensor, Tensor], target: Tensor
) -> tuple[Tensor, dict[str, float]]:
    """Feature MSE (both levels) + 10 × image MSE + focal + L1 on the segmentation; returns (loss, parts)."""
    f_lo, f_hi, obj, logits = model.segment(*q_anom)
    prob = torch.softmax(logits, 1)
    feat = nnf.mse_loss(f_lo, q[0]) + nnf.mse_loss(f_hi, q[1])
    image = 10.0 * nnf.mse_loss(obj, x)
    seg = focal_loss(prob, target) + nnf.l1_loss(prob, torch.cat([1 - target, target], 1))
    parts = {"feat": float(feat.detach()), "image": float(image.detach()), "seg": float(seg.detach())}
    return feat + image + seg, parts


# -------------------------------------------------------------------------------------------------- anomaly creation


def replace_codes(vq: VectorQuantizerEMA, q: Tensor, mask: Tensor, gen: torch.Generator) -> Tensor:
    """DSR's codebook replacement: inside ``mask`` (B×1×h×w) each code becomes a random one among its top-⌈s·K⌉
    nearest codewords minus the nearest 5 % of K, with strength s ~ U[0.1, 1) drawn per sample."""
    b, d, h, w = q.shape
    k = vq.codebook.shape[0]
    flat = q.permute(0, 2, 3, 1).reshape(-1, d)
    order = vq.distances(flat).argsort(1)  # N×K, nearest first
    skip = int(0.05 * k)
    strength = 0.1 + 0.9 * torch.rand(b, generator=gen)  # drawn on the CPU: the same numbers on every device
    top = torch.clamp(torch.ceil(strength * k).long(), min=skip + 1, max=k).repeat_interleave(h * w)
    rank = (skip + (torch.rand(b * h * w, generator=gen) * (top - skip)).long()).to(q.device)
    new = vq.codebook[order.gather(1, rank[:, None])[:, 0]].reshape(b, h, w, d).permute(0, 3, 1, 2)
    return q * (1 - mask) + new * mask


def shuffle_patches(q: Tensor, mask: Tensor, gen: torch.Generator) -> Tensor:
    """Inside ``mask``, codes taken from a copy of q whose p×p patches (p ∈ {1, 2, 4, 8}, ≤ side/2) are shuffled."""
    b, d, h, w = q.shape
    sizes = [p for p in (1, 2, 4, 8) if h % p == 0 and w % p == 0 and p <= max(1, h // 2)]
    p = sizes[int(torch.randint(len(sizes), (1,), generator=gen))]
    patches = nnf.pixel_unshuffle(q, p).reshape(b, d * p * p, -1)
    perm = torch.randperm(patches.shape[-1], generator=gen).to(q.device)
    shuffled = nnf.pixel_shuffle(patches[..., perm].reshape(b, d * p * p, h // p, w // p), p)
    return q * (1 - mask) + shuffled * mask


def training_mask(rng: np.random.Generator, fg: Tensor) -> Tensor:
    """B×1×S×S Perlin anomaly masks × the foreground; half the samples get none (they stay normal)."""
    size = fg.shape[-1]
    masks = [
        _perlin.anomaly_mask(rng, size) if rng.random() < 0.5 else np.zeros((size, size), np.float32)
        for _ in range(fg.shape[0])
    ]
    return torch.from_numpy(np.stack(masks)[:, None]).to(fg.device) * fg


def make_anomalies(
    dada: DadaNet,
    q: tuple[Tensor, Tensor],
    mask: Tensor,
    fg: Tensor,
    *,
    rng: np.random.Generator,
    gen: torch.Generator,
) -> tuple[tuple[Tensor, Tensor], Tensor]:
    """Anomalous (q_lo, q_hi) and the S×S target: replacement or patch shuffle (50/50), on both levels (50 %) or on
    Lo or Hi only (25 % each). Latent cells change only where the max-pooled ``mask`` (Perlin ∧ foreground) is set;
    the target is those cells at input resolution, restricted to the foreground ``fg``."""
    q_lo, q_hi = q
    size = mask.shape[-1]
    draw = rng.random()
    use_lo, use_hi = draw < 0.75, draw < 0.5 or draw >= 0.75
    m_lo = nnf.max_pool2d(mask, size // q_lo.shape[-1]) * float(use_lo)
    m_hi = nnf.max_pool2d(mask, size // q_hi.shape[-1]) * float(use_hi)
    if rng.random() < 0.5:
        q_lo, q_hi = replace_codes(dada.vq_lo, q_lo, m_lo, gen), replace_codes(dada.vq_hi, q_hi, m_hi, gen)
    else:
        q_lo, q_hi = shuffle_patches(q_lo, m_lo, gen), shuffle_patches(q_hi, m_hi, gen)
    up_lo = nnf.interpolate(m_lo, size=(size, size), mode="nearest")
    up_hi = nnf.interpolate(m_hi, size=(size, size), mode="nearest")
    return (q_lo, q_hi), torch.maximum(up_lo, up_hi) * fg


# ---------------------------------------------------------------------------------------------------------- training

REAL_CROP_FRACTION = 0.25  # DADA: share of corpus samples replaced by crops of the given normal frames


def _check_settings(settings: FitSettings) -> None:
    if settings.epochs < 1 or settings.batch_size < 1 or settings.learning_rate <= 0:
        raise Dsr3dTrainError(
            f"epochs={settings.epochs}, batch_size={settings.batch_size}, lr={settings.learning_rate}",
            "use at least one epoch, batch size 1 and a positive learning rate",
        )
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)


def _inputs(names: tuple[str, ...], batch: Mapping[str, Any]) -> dict[str, Tensor]:
    missing = [n for n in names if n not in batch]
    if missing:
        raise Dsr3dTrainError(
            f"training batch lacks {missing} (has {sorted(batch)})",
            f"feed batches with {list(names)} as the card lists",
        )
    return {n: torch.as_tensor(batch[n]).float() for n in names}


def _set_lr(opt: torch.optim.Optimizer, base: float, epoch: int, epochs: int, steps: tuple[float, ...]) -> None:
    """Step schedule by epoch (×0.1 at each fraction of ``epochs``): stateless, so a resumed run needs no scheduler."""
    lr = base * 0.1 ** sum(epoch >= int(f * epochs) for f in steps)
    for group in opt.param_groups:
        group["lr"] = lr


def _state(nets: Mapping[str, nn.Module], opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Resumable state: the trained modules' and the optimizer's state_dicts (tensors and plain values only)."""
    nets_state = {k: {n: t.detach().clone() for n, t in v.state_dict().items()} for k, v in nets.items()}
    return {"nets": nets_state, "optim": copy.deepcopy(opt.state_dict())}  # a snapshot, not live tensors


def _resume(context: TrainContext, phase: str, nets: Mapping[str, nn.Module], opt: torch.optim.Optimizer) -> int:
    """Load the context's saved state into ``nets`` and ``opt``; returns the number of epochs already done."""
    saved = context.resume_state()
    if saved is None:
        return 0
    found, epoch, state = saved
    if found != phase:
        raise Dsr3dTrainError(f"saved state is of phase {found!r}, not {phase!r}", "resume the same family's run")
    try:
        for name, net in nets.items():
            net.load_state_dict({k: torch.as_tensor(v) for k, v in state["nets"][name].items()}, strict=True)
        opt.load_state_dict(state["optim"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise Dsr3dTrainError(
            f"the saved {phase} state does not fit this model ({' '.join(str(err).split())[:200]})",
            "resume with the same preset and mode, or start a fresh run",
        ) from err
    return int(epoch)


def _order(n: int, batch: int, seed: int, epoch: int) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return list(torch.split(torch.randperm(n, generator=gen), batch))


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

    Batches are generated on the CPU and trained on ``settings.device``; the model comes back on the CPU."""
    _check_settings(settings)
    device = torch.device(settings.device)
    with torch.no_grad():
        real = [model.prepare(**_inputs(model.input_names, b)) for b in train]
    real_all = torch.cat(real) if real else None
    model.to(device)
    opt = torch.optim.Adam(model.net.parameters(), lr=settings.learning_rate)
    start = _resume(context, "dada", {"net": model.net}, opt)
    steps = model.settings.corpus_batches
    recon_loss = nnf.l1_loss if model.mode == "rgbd" else nnf.mse_loss
    model.train()
    for epoch in range(start, settings.epochs):
        _set_lr(opt, settings.learning_rate, epoch, settings.epochs, (0.8, 0.9))
        losses = []
        for step in range(steps):
            x = dada_batch(
                settings.seed,
                epoch * steps + step,
                settings.batch_size,
                model.settings.input_size,
                model.mode,
                real=real_all,
            ).to(device)
            recon, commit = model.net(x)
            loss = recon_loss(recon, x) + commit
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        context.progress("dada", epoch + 1, settings.epochs, loss=float(np.mean(losses)))
        context.save_state("dada", epoch + 1, _state({"net": model.net}, opt))
    model.cpu().eval()


def _cache(model: Dsr3dModel, train: Iterable[Mapping[str, Any]], device: torch.device) -> tuple[Tensor, ...]:
    """(input, foreground, q_lo, q_hi) of every training sample, computed once on ``device`` through the frozen DADA."""
    parts: list[tuple[Tensor, ...]] = []
    with torch.no_grad():
        for batch in train:
            inputs = {k: v.to(device) for k, v in _inputs(model.input_names, batch).items()}
            x = model.prepare(**inputs)
            fg = inputs["mask"] * (inputs["xyz"][:, 2:3] > 0).float()
            q_lo, q_hi, _ = model.dada.quantize(x)
            parts.append((x, fg, q_lo, q_hi))
    if not parts:
        raise Dsr3dTrainError("the training set is empty", "give fit() at least one batch of normal samples")
    return tuple(torch.cat(p) for p in zip(*parts, strict=True))


def fit_dsr3d(
    model: Dsr3dModel, train: Iterable[Mapping[str, Any]], settings: FitSettings, context: TrainContext
) -> None:
    """Train the object-specific modules on normal samples with feature-space anomalies; DADA stays frozen.

    Runs on ``settings.device`` (anomaly draws stay on the CPU generators) and hands the model back on the CPU."""
    _check_settings(settings)
    device = torch.device(settings.device)
    model.to(device)
    nets = {"sub_lo": model.sub_lo, "sub_hi": model.sub_hi, "decoder": model.decoder, "unet": model.unet}
    params = [p for net in nets.values() for p in net.parameters()]
    opt = torch.optim.Adam(params, lr=settings.learning_rate)
    start = _resume(context, "dsr3d", nets, opt)
    x_all, fg_all, lo_all, hi_all = _cache(model, train, device)
    model.train()
    for epoch in range(start, settings.epochs):
        _set_lr(opt, settings.learning_rate, epoch, settings.epochs, (0.8,))
        rng = np.random.default_rng([settings.seed, epoch])
        gen = torch.Generator().manual_seed(settings.seed * 7919 + epoch)
        losses = []
        for idx in _order(x_all.shape[0], settings.batch_size, settings.seed, epoch):
            x, fg, q = x_all[idx], fg_all[idx], (lo_all[idx], hi_all[idx])
            with torch.no_grad():
                q_anom, target = make_anomalies(model.dada, q, training_mask(rng, fg), fg, rng=rng, gen=gen)
            loss, _ = dsr3d_loss(model, x, q, q_anom, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            opt.step()
            losses.append(float(loss.detach()))
        context.progress("dsr3d", epoch + 1, settings.epochs, loss=float(np.mean(losses)))
        context.save_state("dsr3d", epoch + 1, _state(nets, opt))
    model.cpu().eval()


# ----------------------------------------------------------------------------------------------------- family objects


def _mode_of(options: Mapping[str, Any], allowed: set[str], family: str, default: str | None) -> Mode:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise Dsr3dConfigError(f"unknown {family} options {unknown}", f"use only {sorted(allowed)}")
    mode = options.get("mode", default)
    if mode not in MODES:
        raise Dsr3dConfigError(f"{family} mode {mode!r} is not one of {MODES}", "pick mode rgbd or depth")
    return mode  # type: ignore[no-any-return]  # checked against MODES above


def _check_card(card: ModelCard, family: str) -> tuple[Dsr3dSettings, Mode]:
    if card.family != family:
        raise Dsr3dConfigError(f"card is for family {card.family!r}, not {family!r}", "build it with its own family")
    settings = _settings(card.preset)
    if card.input_size != settings.input_size:
        raise Dsr3dConfigError(
            f"card input size {card.input_size} differs from preset {card.preset!r} ({settings.input_size})",
            f"make the card with the {family} family's card(preset, …)",
        )
    mode = _mode_of({"mode": card.options.get("mode")}, {"mode"}, family, None)
    if tuple(card.inputs) != card_inputs(mode):
        raise Dsr3dConfigError(f"card inputs {card.inputs} do not fit mode {mode!r}", f"use {card_inputs(mode)}")
    return settings, mode


def _card(family: str, preset: str, crop_mode: CropMode, options: dict[str, Any]) -> ModelCard:
    settings = _settings(preset)
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
    presets: Mapping[str, Mapping[str, Any]] = MappingProxyType({k: asdict(v) for k, v in PRESETS.items()})

    def card(self, preset: str, crop_mode: CropMode, **options: Any) -> ModelCard:
        """Card with colour on [0, 1] (mean 0, std 1) and the inputs of ``options["mode"]`` (default rgbd)."""
        _settings(preset)
        return _card(self.name, preset, crop_mode, {"mode": _mode_of(options, {"mode"}, self.name, "rgbd")})

    def build(self, card: ModelCard) -> DadaModel:
        settings, mode = _check_card(card, self.name)
        return DadaModel(settings, mode, card)

    def fit(self, model: Any, train: Iterable[Mapping[str, Any]], settings: FitSettings, context: TrainContext) -> None:
        """Pretrain on the procedural corpus; ``train`` contributes only crops (see ``fit_dada``)."""
        if not isinstance(model, DadaModel):
            raise Dsr3dTrainError(f"DADA cannot train a {type(model).__name__}", "build it with DADA_FAMILY.build")
        fit_dada(model, train, settings, context)


def _dada_expect(preset: str, mode: str) -> dict[str, Any]:
    return {"family": "dada", "preset": preset, "options": {"mode": mode}}


class Dsr3dFamily:
    """3DSR's object-specific part on a frozen, pretrained DADA of the same preset and mode."""

    name = "dsr3d"
    presets: Mapping[str, Mapping[str, Any]] = MappingProxyType({k: asdict(v) for k, v in PRESETS.items()})
    pretrained_from: Mapping[str, str] = MappingProxyType({"dada": "dada"})  # option 'dada' names a DADA checkpoint

    def card(self, preset: str, crop_mode: CropMode, **options: Any) -> ModelCard:
        """Card naming the DADA checkpoint (``dada=<path>``, required); mode defaults to the DADA's."""
        _settings(preset)
        if "dada" not in options:
            raise Dsr3dConfigError(
                "3DSR needs a pretrained DADA (option 'dada')",
                f"train one with edge-train --model dada --preset {preset}, "
                "then pass --option dada=<its out>/model.safetensors",
            )
        path = Path(str(options["dada"])).resolve()
        dada_card, _ = read_checkpoint_meta(path)
        mode = _mode_of(options, {"mode", "dada"}, self.name, str(dada_card.options.get("mode")))
        check_card(dada_card, _dada_expect(preset, mode), f"DADA checkpoint {path}")
        return _card(self.name, preset, crop_mode, {"mode": mode, "dada": str(path)})

    def build(self, card: ModelCard) -> Dsr3dModel:
        """A fresh 3DSR on the card's DADA (loaded, checked and frozen)."""
        settings, mode = _check_card(card, self.name)
        if "dada" not in card.options:
            raise Dsr3dConfigError("the 3DSR card names no DADA checkpoint", "make the card with DSR3D_FAMILY.card")
        dada, _, _ = load_checkpoint(Path(card.options["dada"]), _dada_expect(card.preset, mode), family=DADA_FAMILY)
        return Dsr3dModel(settings, mode, card, dada.net)

    def fit(self, model: Any, train: Iterable[Mapping[str, Any]], settings: FitSettings, context: TrainContext) -> None:
        """Train subspace restriction, object decoder and U-Net (see ``fit_dsr3d``)."""
        if not isinstance(model, Dsr3dModel):
            raise Dsr3dTrainError(f"3DSR cannot train a {type(model).__name__}", "build it with DSR3D_FAMILY.build")
        fit_dsr3d(model, train, settings, context)


DADA_FAMILY = DadaFamily()
DSR3D_FAMILY = Dsr3dFamily()
