"""The shared training harness (``engines/training.py``) and shared layers (``engines/models/layers.py``)."""

from __future__ import annotations

import pytest
import torch
from _toy import MemoryContext
from torch import nn

from edge.core.errors import EdgeError
from engines import training
from engines.contract import FitSettings
from engines.models.layers import colour_affine, fill_gaps, jitter_view


class HarnessError(EdgeError):
    """Raised by the harness in these tests."""


def test_fill_gaps_grows_one_pixel_per_pass_with_the_mean_of_valid_neighbours() -> None:
    z = torch.zeros(1, 1, 7, 7)
    valid = torch.zeros(1, 1, 7, 7)
    z[0, 0, :, :3] = torch.arange(7.0)[:, None]  # three valid columns holding the row index
    valid[0, 0, :, :3] = 1.0
    filled, grown = fill_gaps(z, valid, 2)
    assert grown[0, 0, :, :5].eq(1).all() and grown[0, 0, :, 5:].eq(0).all()  # 2 passes → 2 columns
    torch.testing.assert_close(filled[0, 0, 3, 3], torch.tensor(3.0))  # mean of rows 2, 3, 4
    torch.testing.assert_close(filled[0, 0, 0, 3], torch.tensor(0.5))  # border: mean of rows 0 and 1
    assert filled[0, 0, :, 5:].eq(0).all()
    torch.testing.assert_close(filled[..., :3], z[..., :3])  # valid pixels never change


def test_colour_affine_is_exact_between_normalisations() -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    rgb = torch.rand(2, 3, 4, 4)
    normalised = (rgb - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    scale, shift = colour_affine(mean, std, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    torch.testing.assert_close(normalised * scale + shift, rgb)
    assert torch.equal(scale.flatten(), torch.tensor(std)) and torch.equal(shift.flatten(), torch.tensor(mean))


def test_jitter_view_warps_every_input_alike_tilts_depth_and_relights_colour() -> None:
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    n, side = 2, 64
    yy, xx = torch.meshgrid(torch.arange(side) - 31.5, torch.arange(side) - 31.5, indexing="ij")
    disc = ((xx**2 + yy**2) < 20**2).float()[None, None].repeat(n, 1, 1, 1)
    xyz = torch.stack([xx * 0.001, yy * 0.001, torch.full((side, side), 0.8)])[None].repeat(n, 1, 1, 1) * disc
    rgb = ((torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(1)) - 0.5) / 0.25) * disc
    batch = {"rgb": rgb, "xyz": xyz, "mask": disc, "other": torch.ones(n, 5)}
    none = {"rotate_deg": 0.0, "shift": 0.0, "scale": 0.0, "gain": 0.0, "offset": 0.0, "tilt": 0.0}
    same = jitter_view(batch, torch.Generator().manual_seed(0), mean=mean, std=std, **none)
    for name in ("rgb", "xyz", "mask"):  # zero bounds: the identity
        torch.testing.assert_close(same[name], batch[name], atol=1e-4, rtol=0)
    assert same["other"] is batch["other"]  # inputs it does not know pass through

    moved = jitter_view(batch, torch.Generator().manual_seed(0), mean=mean, std=std, **(none | {"shift": 0.1}))
    assert set(moved["mask"].unique().tolist()) <= {0.0, 1.0}  # nearest: the mask stays binary
    assert not torch.equal(moved["mask"], disc) and abs(float(moved["mask"].sum() - disc.sum())) < 0.02 * disc.sum()
    inside = moved["mask"] > 0  # the disc moved as one: depth is valid exactly where the mask is
    assert torch.equal(inside, moved["xyz"][:, 2:3] > 0)

    tilted = jitter_view(batch, torch.Generator().manual_seed(5), mean=mean, std=std, **(none | {"tilt": 0.03}))
    dz = (tilted["xyz"][:, 2] - xyz[:, 2]) * disc[:, 0]
    assert 0 < float(dz.abs().max()) <= 0.03 * 0.02 * 2 + 1e-6  # a plane ≤ 0.03 m/m over ±20 mm
    assert float(dz[disc[:, 0] > 0].mean().abs()) < 1e-6  # about the valid points' centre
    assert torch.equal(tilted["xyz"][:, :2], xyz[:, :2])  # x and y stay; z only where it was measured
    assert float(tilted["xyz"][:, 2][disc[:, 0] == 0].abs().max()) == 0

    lit = jitter_view(batch, torch.Generator().manual_seed(2), mean=mean, std=std, **(none | {"gain": 0.2}))
    c0, c1 = rgb * 0.25 + 0.5, lit["rgb"] * 0.25 + 0.5  # back on the [0, 1] scale: c1 = g·c0, one g per sample
    gains = (c1 / c0).flatten(1).median(1).values
    torch.testing.assert_close(c1, gains.view(n, 1, 1, 1) * c0, atol=1e-4, rtol=0)
    assert all(0.8 <= g <= 1.2 for g in gains.tolist()) and float(gains[0] - gains[1]) != 0
    again = jitter_view(batch, torch.Generator().manual_seed(2), mean=mean, std=std, **(none | {"gain": 0.2}))
    torch.testing.assert_close(again["rgb"], lit["rgb"])  # the generator repeats the view


def test_batch_order_is_a_seeded_permutation_per_phase_and_epoch() -> None:
    order = training.batch_order(10, 4, seed=3, epoch=1, phase=0)
    assert [len(b) for b in order] == [4, 4, 2]
    assert sorted(torch.cat(order).tolist()) == list(range(10))
    again = training.batch_order(10, 4, seed=3, epoch=1, phase=0)
    assert all(torch.equal(a, b) for a, b in zip(order, again, strict=True))
    others = [
        training.batch_order(10, 4, 3, 2, 0),
        training.batch_order(10, 4, 3, 1, 1),
        training.batch_order(10, 4, 4, 1),
    ]
    assert all(not torch.equal(torch.cat(order), torch.cat(o)) for o in others)


def test_step_schedule_by_epoch_fraction() -> None:
    opt = torch.optim.Adam(nn.Linear(2, 2).parameters(), lr=1.0)
    rates = []
    for epoch in range(10):
        training.set_lr(opt, 1.0, epoch, 10, (0.8, 0.9))
        rates.append(opt.param_groups[0]["lr"])
    assert rates == pytest.approx([1.0] * 8 + [0.1, 0.01])


def test_training_state_round_trip_restores_nets_and_optimizer() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.randn(8, 3)).sum().backward()  # type: ignore[no-untyped-call]
    opt.step()
    state = training.training_state({"net": net}, opt)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert {"net.0.weight", "net.1.running_mean", "optim.0.exp_avg", "optim.0.step"} <= set(state)
    copy = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    copy_opt = torch.optim.Adam(copy.parameters(), lr=0.1)
    training.load_training_state(state, {"net": copy}, copy_opt, HarnessError)
    for k, v in net.state_dict().items():
        assert torch.equal(copy.state_dict()[k], v), k
    assert torch.equal(copy_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(HarnessError, match="does not fit this model") as err:
        training.load_training_state(state, {"net": nn.Linear(3, 5)}, None, HarnessError)
    assert "start a fresh run" in err.value.remedy


def test_cache_features_names_a_missing_input_and_an_empty_set() -> None:
    batch = {"rgb": torch.ones(2, 3, 4, 4), "mask": torch.ones(2, 1, 4, 4)}
    cpu = torch.device("cpu")
    feats = training.cache_features(
        [batch, batch], ("rgb", "mask"), lambda rgb, mask: (rgb.mean((1, 2, 3)), mask[:, 0]), cpu, HarnessError
    )
    assert [tuple(f.shape) for f in feats] == [(4,), (4, 4, 4)] and not feats[0].requires_grad
    with pytest.raises(HarnessError, match=r"lacks \['xyz'\]"):
        training.cache_features([batch], ("xyz",), lambda xyz: (xyz,), torch.device("cpu"), HarnessError)
    with pytest.raises(HarnessError, match="training set is empty"):
        training.cache_features([], ("rgb",), lambda rgb: (rgb,), torch.device("cpu"), HarnessError)
    assert (
        training.cache_features([], ("rgb",), lambda rgb: (rgb,), torch.device("cpu"), HarnessError, allow_empty=True)
        == ()
    )


def test_a_phase_saves_after_every_epoch_and_resumes_where_it_stopped() -> None:
    """``fit_one_phase`` (resume point, state, ``train_phase``, ``finish``): a run resumed after epoch 2 of 3 redoes
    only epoch 3 and ends with the weights of the uninterrupted run; another phase's state is refused."""
    settings = FitSettings(epochs=3, batch_size=2, learning_rate=0.05, seed=1, threads=1)
    x = torch.randn(6, 3)

    def run(net: nn.Linear, ctx: MemoryContext) -> None:
        def batches(epoch: int) -> list[torch.Tensor]:
            return training.batch_order(6, 2, settings.seed, epoch)

        def step(i: torch.Tensor) -> torch.Tensor:
            return net(x[i]).pow(2).mean()

        training.start(settings, HarnessError)
        training.fit_one_phase(net, "fit", {"net": net}, settings, ctx, batches=batches, step=step, error=HarnessError)

    full, ctx = nn.Linear(3, 1), MemoryContext()
    run(full, ctx)
    assert [(p, e) for p, e, _ in ctx.saved] == [("fit", 1), ("fit", 2), ("fit", 3)]
    assert ctx.reports == [("fit", 1, 3), ("fit", 2, 3), ("fit", 3, 3)]
    resumed, ctx2 = nn.Linear(3, 1), MemoryContext(ctx.saved[1])
    run(resumed, ctx2)
    assert ctx2.reports == [("fit", 3, 3)]
    for k, v in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v)
    with pytest.raises(HarnessError, match="phase 'other', not 'fit'"):
        run(nn.Linear(3, 1), MemoryContext(("other", 1, {})))
    with pytest.raises(HarnessError, match="positive learning rate"):
        training.start(FitSettings(epochs=1, batch_size=1, learning_rate=0.0, seed=0), HarnessError)
