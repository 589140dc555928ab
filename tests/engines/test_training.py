"""The shared training harness (``engines/training.py``) and shared layers (``engines/models/layers.py``)."""

from __future__ import annotations

import pytest
import torch
from _toy import MemoryContext
from torch import nn

from edge.core.errors import EdgeError
from engines import training
from engines.contract import FitSettings
from engines.models.layers import colour_affine, fill_gaps


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
