"""ONNX export of the toy family: fixed shapes, contract names, card in metadata, ORT parity."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from _toy import TOY_FAMILY, ToyNet

from edge.core.scoring import file_sha256
from engines.contract import ModelCard
from engines.export import ExportError, card_from_onnx, check_onnx, example_feeds, onnx_from_model

CARD = TOY_FAMILY.card("tiny", "foreground")


def test_export_parity_and_metadata(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TOY_FAMILY.build(CARD)
    path = onnx_from_model(model, CARD, tmp_path / "toy.onnx")
    proto = onnx.load(str(path))
    dims = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*proto.graph.input, *proto.graph.output]
    }
    assert dims == {
        "rgb": [1, 3, 32, 32],
        "xyz": [1, 3, 32, 32],
        "mask": [1, 1, 32, 32],
        "anomaly_map": [1, 1, 32, 32],
        "image_score": [1],
    }
    assert card_from_onnx(path) == CARD
    sidecar = json.loads(path.with_name("toy.onnx.json").read_text())
    assert sidecar["sha256"] == file_sha256(path) and sidecar["opset"] == 17 and sidecar["card"] == CARD.to_dict()
    feeds = example_feeds(CARD, seed=3)
    parity = check_onnx(model, path, feeds)
    assert parity.ok, parity.summary()
    assert set(parity.outputs) == {"anomaly_map", "image_score"}
    assert all(o.max_abs < 1e-4 for o in parity.outputs.values())
    assert parity.outputs["image_score"].max_abs >= 0.0 and "OK" in parity.summary()


def test_parity_detects_a_different_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TOY_FAMILY.build(CARD)
    path = onnx_from_model(model, CARD, tmp_path / "toy.onnx")
    other = TOY_FAMILY.build(CARD)
    with torch.no_grad():
        other.enc.weight.add_(0.05)
    parity = check_onnx(other, path, example_feeds(CARD))
    assert not parity.ok and "MISMATCH" in parity.summary()
    with pytest.raises(ExportError, match="lack the inputs"):
        check_onnx(model, path, {"rgb": example_feeds(CARD)["rgb"]})


class JumpAtATie(torch.nn.Module):
    """The toy model with one map pixel moved, as a pick flipped at a near tie moves Shape-Guided's map."""

    def __init__(self, base: torch.nn.Module, share: float, score_shift: float = 0.0) -> None:
        super().__init__()
        self.base, self.share, self.score_shift = base, share, score_shift

    def forward(self, rgb: torch.Tensor, xyz: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap, score = self.base(rgb, xyz, mask)
        bump = torch.zeros_like(amap)
        bump[..., 5, 7] = self.share * amap.abs().amax()
        return amap + bump, score * (1 + self.score_shift)


def test_a_card_map_tolerance_lets_the_maps_jump_a_little_and_never_the_image_score(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TOY_FAMILY.build(CARD)
    path = onnx_from_model(model, CARD, tmp_path / "toy.onnx")
    feeds = example_feeds(CARD, seed=3)
    jumped = JumpAtATie(model, share=5e-3)
    assert not check_onnx(jumped, path, feeds).ok  # the contract's limits: 1e-4 + 1e-3·|map|
    assert check_onnx(jumped, path, feeds, map_tolerance=1e-2).ok
    assert not check_onnx(JumpAtATie(model, share=2e-2), path, feeds, map_tolerance=1e-2).ok
    assert not check_onnx(JumpAtATie(model, 0.0, score_shift=1e-2), path, feeds, map_tolerance=1e-2).ok
    card = replace(CARD, map_tolerance=1e-2)
    assert ModelCard.from_dict(card.to_dict()) == card and "map_tolerance" not in CARD.to_dict()


class TwoDScore(ToyNet):
    """Breaks the contract: image_score B×1 instead of B."""

    def forward(self, rgb: torch.Tensor, xyz: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap, score = super().forward(rgb, xyz, mask)
        return amap, score[:, None]


def test_contract_violation_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="the contract wants"):
        onnx_from_model(TwoDScore(8), CARD, tmp_path / "bad.onnx")


def test_onnx_without_card_is_refused(tmp_path: Path) -> None:
    path = onnx_from_model(TOY_FAMILY.build(CARD), CARD, tmp_path / "toy.onnx")
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(path))
    with pytest.raises(ExportError, match="carries no model card"):
        card_from_onnx(path)
    (tmp_path / "junk.onnx").write_bytes(np.arange(10, dtype=np.uint8).tobytes())
    with pytest.raises(ExportError, match="not a loadable ONNX model"):
        card_from_onnx(tmp_path / "junk.onnx")
