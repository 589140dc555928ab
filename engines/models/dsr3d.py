"""3DSR (Zavrtanik, Kristan, Skočaj, WACV 2024) on a frozen, pretrained DADA (``engines/models/dada.py``), for
RGB+D and depth.

Anatomy (after ``VitjanZ/3DSR@6f83317``, Apache-2.0; facts in ``shared/research/models.md`` §4):

1. Input: DADA's (``dada.InputImage``): depth min–max normalised over the mask to [0.1, 0.9] with holes filled,
   stacked with colour on [0, 1] in ``rgbd``.
2. The frozen DADA quantises the input to (q_lo, q_hi) and decodes the general appearance reconstruction.
3. Two subspace-restriction U-shaped nets (no skips) whose outputs are re-quantised with DADA's frozen codebooks; the
   object-specific decoder reconstructing an anomaly-free input; the anomaly-detection U-Net on
   cat(object recon, general recon) → 2 logits. Trained on normal samples with anomalies made in feature space
   (codebook replacement or patch shuffle inside Perlin masks ∧ foreground).
4. Score (raw, in the graph): softmax anomaly channel → fixed mean filter (11×11 rgbd, 21×21 depth, AveragePool)
   → ``anomaly_map`` (× ``mask`` in ``foreground`` crop mode); ``image_score`` = its max.

Presets (``dada.PRESETS``, shared with DADA; widths: DADA hidden/residual/embedding, subspace base, object decoder
base, U-Net base):

========  ====  =====================  =====  ========  ======  =====  ====================
preset    S     DADA h / res / emb     codes  subspace  decoder  U-Net  fit (epochs/batch/lr)
========  ====  =====================  =====  ========  ======  =====  ====================
paper     384   256 / 128 / 256        2048   128       512     32     120 / 16 / 2e-4
edge      256   128 / 64 / 128         512    64        128     16     60 / 8 / 2e-4
cpu       128   32 / 16 / 32           128    16        32      8      40 / 8 / 1e-3
tiny      64    16 / 8 / 16            32     8         16      8      2 / 4 / 1e-3
========  ====  =====================  =====  ========  ======  =====  ====================

Deviations and why: no ±15° rotation augmentation (the drum crop is pose-normalised by the ROI); the learning rate
steps ×0.1 at 80 % of ``FitSettings.epochs`` instead of iterations; an epoch is one pass over the cached training
set instead of fixed 4000 × 64 samples; ``cpu`` is the preset sized for training on a 2-core CPU
(docs/models/dsr3d.md, "The cpu preset"). DADA's own deviations are in its module.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from engines import training
from engines.checkpoint import check_card, load_checkpoint, read_checkpoint_meta
from engines.contract import CropMode, FitSettings, ModelCard, TrainContext, preset_table
from engines.models import _perlin
from engines.models.dada import (
    DADA_FAMILY,
    PRESETS,
    DadaNet,
    Dsr3dConfigError,
    Dsr3dSettings,
    Dsr3dTrainError,
    InputImage,
    Mode,
    ResidualStack,
    VectorQuantizerEMA,
    card_inputs,
    check_family_card,
    dsr3d_settings,
    family_card,
    mode_option,
    straight_through,
)

# ------------------------------------------------------------------------------------------------------------ layers


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


# ------------------------------------------------------------------------------------------------------------- model


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
        r_lo, r_hi = straight_through(f_lo, r_lo), straight_through(f_hi, r_hi)
        return f_lo, f_hi, self.decoder(torch.cat([self.dada.upsample(r_lo), r_hi], 1))

    def segment(self, q_lo: Tensor, q_hi: Tensor, up_lo: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(f_lo, f_hi, object reconstruction, logits B×2×S×S) of (possibly anomalous) codes; ``up_lo`` is DADA's
        upsampled q_lo when the caller has it."""
        f_lo, f_hi, obj = self.restore(q_lo, q_hi)
        general = self.dada.decode(q_lo, q_hi, up_lo)
        return f_lo, f_hi, obj, self.unet(torch.cat([obj, general], 1))

    def forward(
        self, rgb: Tensor | None = None, xyz: Tensor | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(anomaly_map B×1×S×S, image_score B), raw."""
        x = self.prepare(rgb, xyz, mask)
        q_lo, q_hi, up_lo, _ = self.dada.encode(x)
        *_, logits = self.segment(q_lo, q_hi, up_lo)
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


def fit_dsr3d(
    model: Dsr3dModel, train: Iterable[Mapping[str, Any]], settings: FitSettings, context: TrainContext
) -> None:
    """Train the object-specific modules on normal samples with feature-space anomalies; DADA stays frozen.

    Runs on ``settings.device`` with the shared harness (``engines.training``: the frozen DADA's codes cached once,
    anomaly draws on per-epoch CPU generators) and hands the model back on the CPU."""
    device = training.start(settings, Dsr3dTrainError)
    model.to(device)
    nets = {"sub_lo": model.sub_lo, "sub_hi": model.sub_hi, "decoder": model.decoder, "unet": model.unet}

    def codes(**inputs: Tensor) -> tuple[Tensor, ...]:
        x = model.prepare(**inputs)
        q_lo, q_hi, _ = model.dada.quantize(x)
        return x, inputs["mask"] * (inputs["xyz"][:, 2:3] > 0).float(), q_lo, q_hi

    x_all, fg_all, lo_all, hi_all = training.cache_features(train, model.input_names, codes, device, Dsr3dTrainError)

    def batches(epoch: int) -> Iterator[tuple[Tensor, np.random.Generator, torch.Generator]]:
        rng = np.random.default_rng([settings.seed, epoch])
        gen = torch.Generator().manual_seed(settings.seed * 7919 + epoch)
        for idx in training.batch_order(x_all.shape[0], settings.batch_size, settings.seed, epoch):
            yield idx, rng, gen

    def step(item: tuple[Tensor, np.random.Generator, torch.Generator]) -> Tensor:
        idx, rng, gen = item
        x, fg, q = x_all[idx], fg_all[idx], (lo_all[idx], hi_all[idx])
        with torch.no_grad():
            q_anom, target = make_anomalies(model.dada, q, training_mask(rng, fg), fg, rng=rng, gen=gen)
        loss, _ = dsr3d_loss(model, x, q, q_anom, target)
        return loss

    training.fit_one_phase(
        model, "dsr3d", nets, settings, context, batches=batches, step=step, error=Dsr3dTrainError, lr_steps=(0.8,)
    )


# ----------------------------------------------------------------------------------------------------- family object


def _dada_expect(preset: str, mode: str) -> dict[str, Any]:
    return {"family": "dada", "preset": preset, "options": {"mode": mode}}


class Dsr3dFamily:
    """3DSR's object-specific part on a frozen, pretrained DADA of the same preset and mode."""

    name = "dsr3d"
    presets: Mapping[str, Mapping[str, Any]] = preset_table(PRESETS)
    pretrained_from: Mapping[str, str] = MappingProxyType({"dada": "dada"})  # option 'dada' names a DADA checkpoint

    def card(self, preset: str, crop_mode: CropMode, **options: Any) -> ModelCard:
        """Card naming the DADA checkpoint (``dada=<path>``, required); mode defaults to the DADA's."""
        dsr3d_settings(preset)
        if "dada" not in options:
            raise Dsr3dConfigError(
                "3DSR needs a pretrained DADA (option 'dada')",
                f"train one with edge-train --model dada --preset {preset}, "
                "then pass --option dada=<its out>/model.safetensors",
            )
        path = Path(str(options["dada"])).resolve()
        dada_card, _ = read_checkpoint_meta(path)
        mode = mode_option(options, {"mode", "dada"}, self.name, str(dada_card.options.get("mode")))
        check_card(dada_card, _dada_expect(preset, mode), f"DADA checkpoint {path}")
        return family_card(self.name, preset, crop_mode, {"mode": mode, "dada": str(path)})

    def build(self, card: ModelCard) -> Dsr3dModel:
        """A fresh 3DSR on the card's DADA (loaded, checked and frozen)."""
        settings, mode = check_family_card(card, self.name)
        if "dada" not in card.options:
            raise Dsr3dConfigError("the 3DSR card names no DADA checkpoint", "make the card with DSR3D_FAMILY.card")
        dada, _, _ = load_checkpoint(Path(card.options["dada"]), _dada_expect(card.preset, mode), family=DADA_FAMILY)
        return Dsr3dModel(settings, mode, card, dada.net)

    def fit(self, model: Any, train: Iterable[Mapping[str, Any]], settings: FitSettings, context: TrainContext) -> None:
        """Train subspace restriction, object decoder and U-Net (see ``fit_dsr3d``)."""
        if not isinstance(model, Dsr3dModel):
            raise Dsr3dTrainError(f"3DSR cannot train a {type(model).__name__}", "build it with DSR3D_FAMILY.build")
        fit_dsr3d(model, train, settings, context)


DSR3D_FAMILY = Dsr3dFamily()
