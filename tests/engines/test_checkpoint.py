"""Checkpoints (weights + card + info, refusals) and resumable training state, all without pickle."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from _toy import TOY_FAMILY

from engines._registry import register_family
from engines.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    TrainInfo,
    load_checkpoint,
    load_state,
    read_checkpoint_meta,
    save_checkpoint,
    save_state,
)

CARD = dataclasses.replace(TOY_FAMILY.card("tiny", "foreground", mode="rgbd"), roi_version="roi123", data_hash="d1")


@pytest.fixture(autouse=True)
def _toy_registered() -> None:
    register_family(TOY_FAMILY, replace=True)


def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module, TrainInfo]:
    torch.manual_seed(1)
    model = TOY_FAMILY.build(CARD)
    info = TrainInfo(epochs=3, seed=1, data_hash="d1", metrics={"image_auroc": 0.75}, settings={"lr": 0.01})
    return save_checkpoint(tmp_path, model, CARD, info), model, info


def test_round_trip(tmp_path: Path) -> None:
    path, model, info = saved(tmp_path)
    assert path == tmp_path / "model.safetensors"
    loaded, card, got_info = load_checkpoint(path, {"family": "toy", "preset": "tiny", "mean": CARD.mean})
    assert card == CARD and got_info == info and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    assert read_checkpoint_meta(tmp_path) == (CARD, info)  # the directory form, torch-free header read
    assert b"pickle" not in path.read_bytes()[:8] and path.read_bytes()[8:9] == b"{"  # a JSON header, no pickle


@pytest.mark.parametrize(
    ("field", "expected"),
    [("family", "ast"), ("preset", "edge"), ("input_size", 256), ("crop_mode", "full"), ("roi_version", "other")],
)
def test_mismatch_is_refused_naming_the_field(tmp_path: Path, field: str, expected: object) -> None:
    path, _, _ = saved(tmp_path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(path, {field: expected})
    found = CARD.to_dict()[field]
    assert f"{field} = {found!r}, expected {expected!r}" in str(err.value)
    assert "retrain with edge-train" in err.value.remedy


def test_unusable_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 40)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(junk)
    path, _, _ = saved(tmp_path)
    with pytest.raises(CheckpointError, match="unknown card fields"):
        load_checkpoint(path, {"colour": "red"})
    state = tmp_path / "state.safetensors"
    save_state(state, "toy", 0, {"x": torch.zeros(1)}, {})
    with pytest.raises(CheckpointError, match="not a drumsight checkpoint"):
        load_checkpoint(state)
    wider = dataclasses.replace(CARD, preset="edge")  # same family, other architecture than the weights
    meta_path = tmp_path / "wider.safetensors"
    save_checkpoint(meta_path, TOY_FAMILY.build(CARD), wider, TrainInfo(1, 0))
    with pytest.raises(CheckpointError, match="does not fit the toy/edge model"):
        load_checkpoint(meta_path)


def test_state_round_trip_with_adam(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TOY_FAMILY.build(CARD)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.9))
    for _ in range(2):
        loss = model(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), torch.ones(2, 1, 32, 32))[1].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 7, "best": 0.5, "tag": None}
    path = tmp_path / "state" / "state.safetensors"
    save_state(path, "student", 4, state, {"card": CARD.to_dict()})
    phase, epoch, got, extra = load_state(path)
    assert (phase, epoch, extra) == ("student", 4, {"card": json.loads(json.dumps(CARD.to_dict()))})
    assert (got["step"], got["best"], got["tag"]) == (7, 0.5, None)
    want_opt = opt.state_dict()
    assert got["optimizer"]["param_groups"] == want_opt["param_groups"]  # int lists, tuple betas, None values
    assert set(got["optimizer"]["state"]) == set(want_opt["state"])  # integer keys survive
    for k, s in want_opt["state"].items():
        for name, t in s.items():
            assert torch.equal(got["optimizer"]["state"][k][name], t), (k, name)
    # The restored optimizer takes exactly the step the original takes.
    model2 = TOY_FAMILY.build(CARD)
    model2.load_state_dict(got["model"])
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.5)
    opt2.load_state_dict(got["optimizer"])
    x = (torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32), torch.ones(1, 1, 32, 32))
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(*x)[1].sum().backward()
        o.step()
    for k, v in model.state_dict().items():
        assert torch.equal(model2.state_dict()[k], v), k
    assert not list(path.parent.glob(".*tmp"))  # the atomic write left no temporary file


def test_state_refuses_what_needs_pickle(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot be stored without pickle"):
        save_state(tmp_path / "s.safetensors", "p", 0, {"fn": print}, {})
    path, _, _ = saved(tmp_path)
    with pytest.raises(CheckpointError, match="not drumsight training state"):
        load_state(path)
