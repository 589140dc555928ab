"""3DSR and DADA on the tiny preset: codebooks, corpus, anomaly generation, contract, training/resume and ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from _toy import MemoryContext

from engines.checkpoint import CheckpointMismatchError, TrainInfo, load_state, save_checkpoint, save_state
from engines.contract import OUTPUT_NAMES, FitSettings, ModelCard
from engines.export import check_onnx, onnx_from_model
from engines.models import _perlin
from engines.models.dada import (
    DADA_FAMILY,
    MODES,
    UNIT_MEAN,
    UNIT_STD,
    DadaModel,
    Dsr3dConfigError,
    Dsr3dTrainError,
    VectorQuantizerEMA,
    dada_batch,
    interleave,
)
from engines.models.dsr3d import DSR3D_FAMILY, Dsr3dModel, make_anomalies, training_mask

S = 64  # tiny preset input size
SETTINGS = FitSettings(epochs=2, batch_size=2, learning_rate=1e-3, seed=3, threads=1)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def drum_batch(batch: int, seed: int) -> dict[str, torch.Tensor]:
    """A drum-like sample: a slanted surface near 1 m inside a disc mask, smooth colour, label/gt as training adds."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:S, 0:S] / S
    disc = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.16).astype(np.float32)
    xyz = np.zeros((batch, 3, S, S), np.float32)
    xyz[:, 0], xyz[:, 1] = xx - 0.5, yy - 0.5
    xyz[:, 2] = 1.0 + 0.05 * xx + 0.01 * rng.normal(size=(batch, 1, 1))
    rgb = np.stack([np.stack([0.3 + 0.2 * xx, 0.5 + 0.1 * yy, 0.4 * np.ones_like(xx)]) for _ in range(batch)])
    mask = np.broadcast_to(disc, (batch, 1, S, S)).copy()
    return {
        "rgb": torch.from_numpy(rgb.astype(np.float32) * mask),
        "xyz": torch.from_numpy(xyz * mask),
        "mask": torch.from_numpy(mask),
        "label": torch.zeros(batch),
        "gt": torch.zeros(batch, 1, S, S),
    }


@pytest.fixture(scope="module")
def dada_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Untrained tiny DADA checkpoints of both modes, as edge-train would write them."""
    folder = tmp_path_factory.mktemp("dada")
    files = {}
    torch.manual_seed(0)
    for mode in MODES:
        card = DADA_FAMILY.card("tiny", "foreground", mode=mode)
        files[mode] = save_checkpoint(folder / f"{mode}.safetensors", DADA_FAMILY.build(card), card, TrainInfo(0, 0))
    return files


def build_dsr3d(dada: Path, crop: str = "foreground") -> tuple[ModelCard, Dsr3dModel]:
    torch.manual_seed(1)
    card = DSR3D_FAMILY.card("tiny", crop, dada=str(dada))  # type: ignore[arg-type]
    return card, DSR3D_FAMILY.build(card)


def feeds(card: ModelCard, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in card.inputs}


# ----------------------------------------------------------------------------------------------------- codebooks


def test_lookup_is_the_brute_force_nearest_codeword() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizerEMA(37, 5)
    x = torch.randn(2, 5, 3, 4)
    q, idx = vq.lookup(x)
    vectors = x.permute(0, 2, 3, 1).reshape(-1, 5)
    brute = torch.stack([((vq.codebook - v) ** 2).sum(1).argmin() for v in vectors])
    assert torch.equal(idx.reshape(-1), brute)
    assert torch.equal(q.permute(0, 2, 3, 1).reshape(-1, 5), vq.codebook[brute])


def test_ema_update_moves_assigned_codewords_toward_their_features() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizerEMA(8, 4, decay=0.5, restart_below=0.0).train()
    vq.seeded.fill_(1.0)  # keep the N(0, 1) codebook: this test is about the EMA step alone (no restarts)
    x = torch.randn(1, 4, 4, 4) + 3.0  # far from the N(0, 1) codebook
    before = vq.codebook.clone()
    _, idx = vq.lookup(x)
    vq(x)
    flat = x.permute(0, 2, 3, 1).reshape(-1, 4)
    used = torch.unique(idx.reshape(-1))
    assert len(used) >= 1
    for k in used:
        target = flat[idx.reshape(-1) == k].mean(0)
        assert torch.linalg.norm(vq.codebook[k] - target) < torch.linalg.norm(before[k] - target)
    unused = torch.tensor([k not in used for k in range(8)])
    assert torch.allclose(vq.cluster_size[used], torch.bincount(idx.reshape(-1), minlength=8)[used] * 0.5)
    assert float(vq.cluster_size[unused].abs().sum()) == 0.0
    vq.eval()
    frozen = vq.codebook.clone()
    vq(x)
    assert torch.equal(vq.codebook, frozen)


def test_unused_codes_restart_on_the_batch_and_used_ones_do_not() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizerEMA(8, 4, decay=0.5).train()
    vq.seeded.fill_(1.0)
    vq.cluster_size.fill_(4.0)  # every code in use so far
    const = torch.full((1, 4, 4, 4), 3.0)  # every vector takes the same code
    (kept,) = torch.unique(vq.lookup(const)[1])
    # an unused code's count halves per step: 2, 1, 0.5 — not below restart_below (0.5) yet
    for _ in range(3):
        vq(const)
    assert not bool((vq.cluster_size < vq.restart_below).any())
    vq(const)  # 0.25 < 0.5: every code but the used one restarts on this batch's vectors
    restarted = torch.arange(8) != kept
    assert torch.equal(vq.cluster_size[restarted], torch.ones(7))
    assert torch.equal(vq.ema_sum[restarted], torch.full((7, 4), 3.0))
    assert float(vq.cluster_size[kept]) > 4.0  # the used code keeps its statistics


def test_commitment_loss_and_straight_through_gradient() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizerEMA(16, 3).eval()
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    out, loss, _ = vq(x)
    q, _ = vq.lookup(x.detach())
    assert torch.allclose(loss, 0.25 * ((x.detach() - q) ** 2).mean())
    assert torch.allclose(out, q)
    out.sum().backward()
    assert x.grad is not None and torch.allclose(x.grad, torch.ones_like(x))
    with torch.no_grad():  # no gradient can flow: the codewords themselves, without the x + (q − x) rounding
        assert torch.equal(vq(x)[0], q)


# ------------------------------------------------------------------------------------------------ corpus and masks


def test_corpus_is_deterministic_per_seed_and_depth_is_affine_perlin() -> None:
    a = _perlin.corpus_batch(5, 2, 3, S, "rgbd")
    assert a.shape == (3, 4, S, S) and a.dtype == np.float32
    assert np.array_equal(a, _perlin.corpus_batch(5, 2, 3, S, "rgbd"))
    assert not np.array_equal(a, _perlin.corpus_batch(6, 2, 3, S, "rgbd"))
    assert not np.array_equal(a, _perlin.corpus_batch(5, 3, 3, S, "rgbd"))
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert all(float(a[i, 1:].std()) > 0.01 for i in range(3))  # textured colour, not flat
    d = _perlin.corpus_batch(5, 2, 4, S, "depth")
    assert d.shape == (4, 1, S, S) and d.min() >= 0.0 and d.max() <= 1.0
    real = torch.rand(2, 4, S, S)
    mixed = [dada_batch(1, i, 4, S, "rgbd", real=real) for i in range(6)]
    assert all(torch.equal(m, dada_batch(1, i, 4, S, "rgbd", real=real)) for i, m in enumerate(mixed))


def test_anomalies_change_codes_only_inside_the_perlin_mask_and_the_foreground(dada_files: dict[str, Path]) -> None:
    card, model = build_dsr3d(dada_files["rgbd"])
    batch = drum_batch(4, 0)
    x = model.prepare(**feeds(card, batch))
    q_lo, q_hi, _ = model.dada.quantize(x)
    fg = batch["mask"]
    changed_any = 0.0
    for seed in range(6):
        rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
        mask = training_mask(rng, fg)
        assert bool((mask <= fg).all())
        (a_lo, a_hi), target = make_anomalies(model.dada, (q_lo, q_hi), mask, fg, rng=rng, gen=gen)
        for q, a in ((q_lo, a_lo), (q_hi, a_hi)):
            cells = nnf.max_pool2d(mask, S // q.shape[-1])
            changed = ((q - a).abs().amax(1, keepdim=True) > 0).float()
            assert bool((changed <= cells).all())
            changed_any += float(changed.sum())
        assert bool((target <= fg).all()) and set(torch.unique(target).tolist()) <= {0.0, 1.0}
        coarse = nnf.interpolate(nnf.max_pool2d(mask, 8), scale_factor=8.0, mode="nearest")
        assert float((target * (1 - coarse)).sum()) == 0.0
    assert changed_any > 0


# ---------------------------------------------------------------------------------------------------- DADA and 3DSR


@pytest.mark.parametrize("mode", MODES)
def test_dada_forward_and_reconstruction_loss_decreases(mode: str) -> None:
    torch.manual_seed(0)
    card = DADA_FAMILY.card("tiny", "foreground", mode=mode)
    assert (card.mean, card.std, card.options) == (UNIT_MEAN, UNIT_STD, {"mode": mode})
    model = DADA_FAMILY.build(card)
    amap, score = model.eval()(**feeds(card, drum_batch(2, 0)))
    assert amap.shape == (2, 1, S, S) and score.shape == (2,)
    x = dada_batch(0, 0, 4, S, mode, real=None)
    opt = torch.optim.Adam(model.net.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(16):
        recon, commit = model.net(x)
        assert recon.shape == x.shape
        loss = nnf.l1_loss(recon, x) + commit
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.85 * losses[0]


def test_folded_stem_and_output_layer_equal_the_separate_layers() -> None:
    """The block-diagonal stem and the heads folded into the last ConvTranspose (speed-ups for ONNX Runtime)
    compute what the separate layers and their concatenations compute, from the same parameters."""
    torch.manual_seed(0)
    net = DADA_FAMILY.build(DADA_FAMILY.card("tiny", "foreground", mode="rgbd")).net.eval()
    for p in net.parameters():  # non-trivial biases, so a misplaced one shows
        p.data.normal_(0.0, 0.3)
    x = torch.rand(2, 4, S, S)
    with torch.no_grad():
        separate = nnf.relu(torch.cat([net.stem_depth(x[:, :1]), net.stem_rgb(x[:, 1:])], 1))
        torch.testing.assert_close(net.stem(x), separate, atol=1e-6, rtol=1e-5)
        q_lo, q_hi, up_lo, _ = net.encode(x)
        torch.testing.assert_close(up_lo, net.upsample(q_lo))
        y_depth, y_rgb = net.decoder(interleave(net.upsample(q_lo), q_hi, net.groups)).chunk(2, 1)
        unfolded = torch.cat([net.head_depth(y_depth), net.head_rgb(y_rgb)], 1)
        torch.testing.assert_close(net.decode(q_lo, q_hi, up_lo), unfolded, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(net.decode(q_lo, q_hi), unfolded, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_dsr3d_forward_follows_the_contract_and_masks_in_foreground_mode(
    mode: str, dada_files: dict[str, Path]
) -> None:
    card, model = build_dsr3d(dada_files[mode])
    assert card.options["mode"] == mode and card.inputs == (("rgb",) if mode == "rgbd" else ()) + ("xyz", "mask")
    assert ModelCard.from_dict(card.to_dict()) == card
    batch = drum_batch(2, 1)
    with torch.no_grad():
        outputs = model.eval()(**feeds(card, batch))
    assert len(outputs) == len(OUTPUT_NAMES)
    amap, score = outputs
    assert amap.shape == (2, 1, S, S) and score.shape == (2,)
    assert float(amap[batch["mask"] == 0].abs().max()) == 0.0
    assert float(amap.max()) > 0 and torch.allclose(score, amap.amax((1, 2, 3)))
    full_card, full = build_dsr3d(dada_files[mode], "full")
    with torch.no_grad():
        full_map, _ = full.eval()(**feeds(full_card, batch))
    assert float(full_map[batch["mask"] == 0].min()) > 0.0  # full mode leaves the map unmasked


def test_fit_trains_both_families_saves_every_epoch_and_resumes(dada_files: dict[str, Path], tmp_path: Path) -> None:
    train = [drum_batch(2, 0), drum_batch(2, 1)]
    dada_card = DADA_FAMILY.card("tiny", "foreground", mode="depth")
    dada = DADA_FAMILY.build(dada_card)
    ctx = MemoryContext()
    DADA_FAMILY.fit(dada, train, SETTINGS, ctx)
    assert [(p, e) for p, e, _ in ctx.saved] == [("dada", 1), ("dada", 2)] and not dada.training
    resumed = DADA_FAMILY.build(dada_card)
    DADA_FAMILY.fit(resumed, train, SETTINGS, MemoryContext(ctx.saved[0]))
    for k, v in dada.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, msg=f"resumed DADA differs in {k}")

    _, model = build_dsr3d(dada_files["rgbd"])
    frozen = {k: v.clone() for k, v in model.dada.state_dict().items()}
    ctx = MemoryContext()
    DSR3D_FAMILY.fit(model, train, SETTINGS, ctx)
    assert [(p, e) for p, e, _ in ctx.saved] == [("dsr3d", 1), ("dsr3d", 2)]
    assert all(torch.equal(model.dada.state_dict()[k], v) for k, v in frozen.items())
    _, again = build_dsr3d(dada_files["rgbd"])
    phase, epoch, state = ctx.saved[0]
    save_state(tmp_path / "state.safetensors", phase, epoch, state, {})  # the CLI's file round trip, no pickle
    DSR3D_FAMILY.fit(again, train, SETTINGS, MemoryContext(load_state(tmp_path / "state.safetensors")[:3]))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, msg=f"resumed 3DSR differs in {k}")
    with pytest.raises(Dsr3dTrainError, match="not 'dsr3d'"):
        DSR3D_FAMILY.fit(again, train, SETTINGS, MemoryContext(("dada", 1, {})))


@pytest.mark.parametrize("mode", MODES)
def test_onnx_graph_uses_argmin_and_gather_and_matches_pytorch(
    mode: str, dada_files: dict[str, Path], tmp_path: Path
) -> None:
    onnx = pytest.importorskip("onnx", reason="onnx is not installed")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    card, model = build_dsr3d(dada_files[mode])
    path = onnx_from_model(model, card, tmp_path / f"dsr3d-{mode}.onnx")
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert {"ArgMin", "Gather", "AveragePool", "Softmax"} <= ops and not ops & {"ScatterElements", "ScatterND"}
    # each of the 4 lookups (DADA's two, the restored features' two) is one Gemm on a codebook with its ‖e‖² bias
    lookups = [n for n in graph.node if n.op_type == "Gemm" and any("codebook" in i for i in n.input)]
    assert len(lookups) == 4 and all(len(n.input) == 3 for n in lookups)
    batch = drum_batch(1, 4)
    parity = check_onnx(model, path, {k: batch[k].numpy() for k in card.inputs}, atol=1e-4, rtol=1e-3)
    assert parity.ok, parity.summary()


# ---------------------------------------------------------------------------------------------------------- refusals


def test_a_dada_of_another_preset_or_mode_is_refused(dada_files: dict[str, Path], tmp_path: Path) -> None:
    card = DADA_FAMILY.card("tiny", "foreground", mode="rgbd")
    other = ModelCard.from_dict(card.to_dict() | {"preset": "edge", "input_size": 256})
    path = save_checkpoint(tmp_path / "edge-dada.safetensors", DADA_FAMILY.build(card), other, TrainInfo(0, 0))
    with pytest.raises(CheckpointMismatchError, match=r"preset = 'edge', expected 'tiny'"):
        DSR3D_FAMILY.card("tiny", "foreground", dada=str(path))
    with pytest.raises(CheckpointMismatchError, match="options"):
        DSR3D_FAMILY.card("tiny", "foreground", dada=str(dada_files["rgbd"]), mode="depth")


def test_bad_options_and_data_name_the_problem_and_the_remedy(dada_files: dict[str, Path]) -> None:
    with pytest.raises(Dsr3dConfigError, match="edge-train --model dada"):
        DSR3D_FAMILY.card("tiny", "foreground")
    with pytest.raises(Dsr3dConfigError, match="pick one of"):
        DADA_FAMILY.card("huge", "foreground")
    with pytest.raises(Dsr3dConfigError, match="rgbd or depth"):
        DADA_FAMILY.card("tiny", "foreground", mode="rgb")
    with pytest.raises(Dsr3dConfigError, match="unknown dsr3d options"):
        DSR3D_FAMILY.card("tiny", "foreground", dada=str(dada_files["rgbd"]), colour="red")
    card = DADA_FAMILY.card("tiny", "foreground")
    with pytest.raises(Dsr3dConfigError, match="differs from preset"):
        DADA_FAMILY.build(ModelCard.from_dict(card.to_dict() | {"input_size": 128}))
    model = DADA_FAMILY.build(card)
    assert isinstance(model, DadaModel)
    no_xyz = {k: v for k, v in drum_batch(2, 0).items() if k != "xyz"}
    with pytest.raises(Dsr3dTrainError, match="lacks \\['xyz'\\]"):
        DADA_FAMILY.fit(model, [no_xyz], SETTINGS, MemoryContext())
    with pytest.raises(Dsr3dTrainError, match=r"build it with DSR3D_FAMILY\.build"):
        DSR3D_FAMILY.fit(model, [drum_batch(2, 0)], SETTINGS, MemoryContext())


def test_first_training_batch_seeds_the_codebook_from_features() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizerEMA(6, 3).train()
    x = torch.randn(1, 3, 4, 4) * 0.01 + 5.0
    vq(x)
    assert float(vq.seeded) == 1.0 and float((vq.codebook - 5.0).abs().max()) < 0.1
