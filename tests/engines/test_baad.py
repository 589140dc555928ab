"""BAAD on the tiny preset: layer shapes and receptive field, foreground-only anomalies, a tiny overfit that learns
the mask of a synthetic drum, background anomalies that leave the score unchanged, ONNX parity with the mask output.

The contract checks (shapes, export, one epoch, resume) run for BAAD in ``test_families.py`` like for every family.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _toy import MemoryContext

from engines.contract import FitSettings, ModelCard
from engines.export import check_onnx, onnx_from_model
from engines.models import _perlin
from engines.models.baad import BAAD_FAMILY, PRESETS, BaadConfigError, BaadModel, LiteTargets, Pdn, foreground_anomalies
from engines.runtime.ort import OrtRunner

S = 64  # tiny preset input size
OVERFIT = FitSettings(epochs=25, batch_size=4, learning_rate=2e-3, seed=5, threads=1)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def drum_disc(cy: float, cx: float, r: float = 0.28) -> np.ndarray:
    yy, xx = np.mgrid[0:S, 0:S] / S
    return ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.float32)


def station(card: ModelCard, n: int, seed: int) -> dict[str, torch.Tensor]:
    """Whole-image frames of a synthetic station: a grey, brushed drum (a disc at a slightly varying place) in front
    of a cluttered, coloured background; ``mask`` is the drum (what ROI ∧ depth gives), depth everywhere."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:S, 0:S] / S
    rgbs, masks = [], []
    for _ in range(n):
        disc = drum_disc(0.5 + rng.uniform(-0.08, 0.08), 0.5 + rng.uniform(-0.08, 0.08))
        drum = 0.55 + 0.08 * np.sin(40 * xx + 10 * yy) + 0.02 * rng.normal(size=(S, S))
        background = _perlin.colour_texture(rng, S)
        rgb = disc * drum[None] + (1 - disc) * background
        rgbs.append((rgb - np.reshape(card.mean, (3, 1, 1))) / np.reshape(card.std, (3, 1, 1)))
        masks.append(disc[None])
    xyz = np.zeros((n, 3, S, S), np.float32)
    xyz[:, 2] = 1.2
    return {
        "rgb": torch.from_numpy(np.stack(rgbs).astype(np.float32)),
        "xyz": torch.from_numpy(xyz),
        "mask": torch.from_numpy(np.stack(masks).astype(np.float32)),
    }


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def trained() -> tuple[ModelCard, BaadModel]:
    """The tiny BAAD overfitted on 12 station frames (25 epochs per phase, one thread)."""
    card = BAAD_FAMILY.card("tiny", "image")
    torch.manual_seed(0)
    model = BAAD_FAMILY.build(card)
    data = station(card, 12, 0)
    batches = [{k: v[i : i + 4] for k, v in data.items()} for i in range(0, 12, 4)]
    BAAD_FAMILY.fit(model, batches, OVERFIT, MemoryContext())
    return card, model


def test_layer_shapes_grid_and_receptive_field() -> None:
    for preset in ("tiny", "edge"):
        st = PRESETS[preset]
        pdn = Pdn(*st.pdn, st.teacher_channels())
        with torch.no_grad():
            out = pdn(torch.zeros(1, 3, st.input_size, st.input_size))
        assert tuple(out.shape) == (1, st.teacher_channels(), st.input_size // 4, st.input_size // 4)
    assert (PRESETS["tiny"].teacher_channels(), PRESETS["edge"].teacher_channels()) == (120, 168)
    # receptive field: the input pixels that move one central output cell span 33 px (EfficientAD's PDN-S)
    st = PRESETS["tiny"]
    pdn = Pdn(*st.pdn, st.teacher_channels())
    x = torch.zeros(1, 3, S, S, requires_grad=True)
    pdn(x)[0, :, 8, 8].sum().backward()  # type: ignore[no-untyped-call]
    assert x.grad is not None
    cols = torch.nonzero(x.grad.abs().sum((0, 1, 2)) > 0)[:, 0]
    assert int(cols.max() - cols.min() + 1) == 33
    # the distillation target is on the same grid as the PDN's output
    with torch.no_grad():
        target = LiteTargets(st)(torch.zeros(2, 3, S, S))
    assert tuple(target.shape) == (2, 120, S // 4, S // 4)
    model = BAAD_FAMILY.build(BAAD_FAMILY.card("tiny", "image"))
    with torch.no_grad():
        recon, fg_logits, logits = model.segment(torch.zeros(2, 3, S, S))
    assert tuple(recon.shape) == (2, 3, S, S) and tuple(fg_logits.shape) == (2, 1, S, S)
    assert tuple(logits.shape) == (2, 2, S, S)


def test_card_refuses_options_and_foreign_outputs() -> None:
    with pytest.raises(BaadConfigError, match="unknown BAAD options"):
        BAAD_FAMILY.card("tiny", "image", mode="rgbd")
    card = BAAD_FAMILY.card("tiny", "image")
    assert card.outputs == ("anomaly_map", "image_score", "foreground") and card.extra_outputs() == ("foreground",)
    assert ModelCard.from_dict(card.to_dict()) == card
    other = ModelCard.from_dict({**card.to_dict(), "outputs": ["anomaly_map", "image_score"]})
    with pytest.raises(BaadConfigError, match="outputs"):
        BAAD_FAMILY.build(other)


def test_synthetic_anomalies_are_placed_inside_the_foreground_only() -> None:
    card = BAAD_FAMILY.card("tiny", "image")
    data = station(card, 8, 1)
    x, fg = data["rgb"], data["mask"]
    mean = torch.tensor(card.mean).view(1, 3, 1, 1)
    std = torch.tensor(card.std).view(1, 3, 1, 1)
    x_anom, m = foreground_anomalies(x, fg, mean, std, np.random.default_rng(3))
    assert float(m.sum()) > 0 and bool((m <= fg).all())
    changed = (x_anom - x).abs().sum(1, keepdim=True) > 1e-6
    assert bool((changed <= (m > 0)).all())  # nothing outside the anomaly mask (so outside the foreground) moves
    assert bool(changed.any())


def test_tiny_overfit_learns_the_mask_of_a_synthetic_drum(trained: tuple[ModelCard, BaadModel]) -> None:
    card, model = trained
    held_out = station(card, 6, 42)  # drums at new places, new backgrounds
    with torch.no_grad():
        _, _, fg = model(held_out["rgb"], held_out["mask"])
    ious = [iou(f[0].numpy() > 0.5, g[0].numpy() > 0.5) for f, g in zip(fg, held_out["mask"], strict=True)]
    assert np.mean(ious) > 0.85 and min(ious) > 0.7, ious  # measured: mean 0.875, min 0.76 (25 epochs per phase)
    untrained = BAAD_FAMILY.build(card)
    with torch.no_grad():
        _, _, fg0 = untrained(held_out["rgb"], held_out["mask"])
    before = [iou(f[0].numpy() > 0.5, g[0].numpy() > 0.5) for f, g in zip(fg0, held_out["mask"], strict=True)]
    assert np.mean(before) < 0.6, before  # what training adds


def test_anomalies_in_the_background_leave_the_score_unchanged(trained: tuple[ModelCard, BaadModel]) -> None:
    card, model = trained
    frames = station(card, 4, 7)
    rng = np.random.default_rng(9)
    far = torch.from_numpy(1 - drum_disc(0.5, 0.5, 0.45))[None, None]  # well away from every drum
    blob = torch.from_numpy(np.stack([_perlin.anomaly_mask(rng, S) for _ in range(4)])[:, None]) * far
    assert float(blob.sum()) > 50  # a real change of the image
    spot = torch.from_numpy(np.stack([_perlin.colour_texture(rng, S) for _ in range(4)]))
    spot = (spot - torch.tensor(card.mean).view(1, 3, 1, 1)) / torch.tensor(card.std).view(1, 3, 1, 1)
    dirty = frames["rgb"] * (1 - blob) + spot * blob
    with torch.no_grad():
        _, score, _ = model(frames["rgb"], frames["mask"])
        amap_d, score_d, fg_d = model(dirty, frames["mask"])
    assert float((fg_d * blob).max()) < 0.2  # the clutter is predicted background
    assert float((amap_d * blob).max()) < 0.05  # so its map is (near) zero there
    assert float((score_d - score).abs().max()) < 0.05, (score, score_d)


def test_onnx_parity_includes_the_foreground_output(trained: tuple[ModelCard, BaadModel], tmp_path: Path) -> None:
    card, model = trained
    path = onnx_from_model(model, card, tmp_path / "baad.onnx")
    feeds = {k: v[:1].numpy() for k, v in station(card, 1, 11).items() if k in card.inputs}
    parity = check_onnx(model, path, feeds)
    assert parity.ok and set(parity.outputs) == {"anomaly_map", "image_score", "foreground"}, parity.summary()
    with OrtRunner(path) as runner:
        got = runner.infer(feeds)
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})[2].numpy()
    assert got["foreground"].shape == (1, 1, S, S)
    np.testing.assert_allclose(got["foreground"], ref, atol=1e-5)
