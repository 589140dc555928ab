"""The model-family contract, checked on every registered family at its ``tiny`` preset.

A new family passes this file by registering itself (``engines/_registry.py``): it is parametrised over
``list_families()``. Each family: a tiny model builds from its card; its outputs have the contract's shapes; its
ONNX export reproduces PyTorch; one epoch of ``fit`` runs through the shared harness and saves the one resume
format; a run resumed from its first saved epoch (through the CLI's state file) ends with the same weights as an
uninterrupted one; a state of another family is refused with a remedy.

A family trained on top of another's checkpoint declares it (``pretrained_from``, read with
``engines._registry.pretrained_from``): this file trains that checkpoint first, knowing no family by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _toy import MemoryContext

from edge.core.errors import EdgeError
from engines._registry import get_family, list_families, pretrained_from, suite_modes
from engines.checkpoint import TrainInfo, load_state, save_checkpoint, save_state
from engines.contract import EXTRA_OUTPUTS, INPUT_NAMES, OUTPUT_NAMES, PRESETS, FitSettings, FitsValidation, ModelCard
from engines.export import check_onnx, onnx_from_model

FAMILIES = list_families()
PRETRAINED: dict[str, dict[str, str]] = {name: deps for name in FAMILIES if (deps := pretrained_from(name))}
ONE_EPOCH = FitSettings(epochs=1, batch_size=2, learning_rate=1e-3, seed=3, threads=1)
TWO_EPOCHS = FitSettings(epochs=2, batch_size=2, learning_rate=1e-3, seed=3, threads=1)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def drums(card: ModelCard, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """Drum-like samples at the card's size: a slanted surface near 1 m in a disc mask, noisy colour."""
    size = card.input_size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    disc = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.16).astype(np.float32)
    xyz = np.zeros((batch, 3, size, size), np.float32)
    xyz[:, 0], xyz[:, 1] = xx - 0.5, yy - 0.5
    xyz[:, 2] = 1.0 + 0.05 * xx + 0.01 * rng.normal(size=(batch, 1, 1))
    rgb = np.stack([np.stack([0.3 + 0.2 * xx, 0.5 + 0.1 * yy, 0.4 + 0 * xx]) for _ in range(batch)])
    rgb = (rgb + 0.05 * rng.normal(size=rgb.shape) - np.reshape(card.mean, (1, 3, 1, 1))) / np.reshape(
        card.std, (1, 3, 1, 1)
    )
    mask = np.broadcast_to(disc, (batch, 1, size, size)).copy()
    return {
        "rgb": torch.from_numpy((rgb * mask).astype(np.float32)),
        "xyz": torch.from_numpy(xyz * mask),
        "mask": torch.from_numpy(mask),
    }


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny checkpoint (one epoch) of every family another family builds on, as edge-train writes it."""
    folder = tmp_path_factory.mktemp("pretrained")
    files = {}
    for family_name in {dep for deps in PRETRAINED.values() for dep in deps.values()}:
        family = get_family(family_name)
        card = family.card("tiny", "foreground")
        torch.manual_seed(0)
        model = family.build(card)
        family.fit(model, [drums(card, 2, 0)], ONE_EPOCH, MemoryContext())
        files[family_name] = save_checkpoint(folder / f"{family_name}.safetensors", model, card, TrainInfo(1, 3))
    return files


def tiny(
    name: str, pretrained: Mapping[str, Path], seed: int = 0, crop_mode: str = "foreground"
) -> tuple[ModelCard, Any]:
    family = get_family(name)
    options = {option: str(pretrained[dep]) for option, dep in PRETRAINED.get(name, {}).items()}
    card = family.card("tiny", crop_mode, **options)
    torch.manual_seed(seed)
    return card, family.build(card)


def feeds(card: ModelCard, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in card.inputs}


def weights(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_the_registry_holds_the_product_families() -> None:
    assert {"ast", "baad", "dada", "dsr3d"} <= set(FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
def test_tiny_model_follows_the_contract(name: str, pretrained: dict[str, Path]) -> None:
    family = get_family(name)
    assert family.name == name and set(PRESETS) <= set(family.presets)
    card, model = tiny(name, pretrained)
    assert card.family == name and card.preset == "tiny" and set(card.inputs) <= set(INPUT_NAMES)
    assert "mask" in card.inputs  # every family takes the mask (full crop mode feeds ones)
    assert card.outputs[:2] == OUTPUT_NAMES and set(card.extra_outputs()) <= set(EXTRA_OUTPUTS)
    with torch.no_grad():
        amap, score, *extras = model.eval()(**feeds(card, drums(card, 2, 1)))
    s = card.input_size
    assert tuple(amap.shape) == (2, 1, s, s) and tuple(score.shape) == (2,)
    assert bool(torch.isfinite(amap).all()) and bool(torch.isfinite(score).all())
    assert len(extras) == len(card.extra_outputs())  # each extra output (BAAD's foreground) is B×1×S×S
    assert all(tuple(e.shape) == (2, 1, s, s) and bool(torch.isfinite(e).all()) for e in extras)


# every crop mode the accuracy suite trains the family in, and foreground: in ``full`` mode the model ignores the
# ROI, and the exported graph must still take the contract's ``mask`` input (Shape-Guided's once did not)
EXPORTS = [(name, mode) for name in FAMILIES for mode in dict.fromkeys(("foreground", *suite_modes(name)))]


@pytest.mark.parametrize(("name", "crop_mode"), EXPORTS)
def test_onnx_export_reproduces_pytorch(name: str, crop_mode: str, pretrained: dict[str, Path], tmp_path: Path) -> None:
    card, model = tiny(name, pretrained, crop_mode=crop_mode)
    assert card.crop_mode == crop_mode and "mask" in card.inputs
    path = onnx_from_model(model.eval(), card, tmp_path / f"{name}.onnx")
    batch = {k: v.numpy() for k, v in feeds(card, drums(card, 1, 2)).items()}
    parity = check_onnx(model, path, batch)
    assert parity.ok, parity.summary()
    assert set(parity.outputs) == set(card.outputs) >= set(OUTPUT_NAMES)


@pytest.mark.parametrize("name", FAMILIES)
def test_one_epoch_of_fit_trains_and_saves_the_one_resume_format(name: str, pretrained: dict[str, Path]) -> None:
    family = get_family(name)
    card, model = tiny(name, pretrained)
    before = weights(model)
    ctx = MemoryContext()
    family.fit(model, [drums(card, 2, 3), drums(card, 2, 4)], ONE_EPOCH, ctx)
    assert ctx.reports and all(done == total == 1 for _, done, total in ctx.reports)
    assert [(p, e) for p, e, _ in ctx.saved] == [(p, 1) for p, _, _ in ctx.reports]
    for _, _, state in ctx.saved:  # flat name → tensor: net weights and the optimiser's slots, nothing pickled
        assert state and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
        assert any(k.startswith("optim.") for k in state)
    assert not model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert any(not torch.equal(before[k], v) for k, v in weights(model).items())
    if isinstance(family, FitsValidation):
        reported = family.fit_validation(model, [drums(card, 2, 5)], ONE_EPOCH, ctx)
        assert all(np.isfinite(float(v)) for v in reported.values())


@pytest.mark.parametrize("name", FAMILIES)
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(
    name: str, pretrained: dict[str, Path], tmp_path: Path
) -> None:
    family = get_family(name)
    card, model = tiny(name, pretrained)
    train = [drums(card, 2, 6), drums(card, 2, 7)]
    ctx = MemoryContext()
    family.fit(model, train, TWO_EPOCHS, ctx)
    phase, epoch, state = ctx.saved[0]
    save_state(tmp_path / "state.safetensors", phase, epoch, state, {})  # the CLI's file, no pickle
    _, again = tiny(name, pretrained, seed=99)  # other initial weights: all must come from the state
    family.fit(again, train, TWO_EPOCHS, MemoryContext(load_state(tmp_path / "state.safetensors")[:3]))
    expected = weights(model)
    for k, v in weights(again).items():
        torch.testing.assert_close(v, expected[k], rtol=1e-5, atol=1e-6, msg=f"{name}: resumed run differs in {k}")
    with pytest.raises(EdgeError, match="saved state is of phase 'other-family'") as err:
        family.fit(again, train, TWO_EPOCHS, MemoryContext(("other-family", 1, {})))
    assert "fresh run" in err.value.remedy
