"""AST family on the tiny preset: contract shapes, flow init, masking, losses, fit/resume, score modes, ONNX parity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from _toy import MemoryContext
from scipy import ndimage

from engines.contract import OUTPUT_NAMES, FitSettings, ModelCard
from engines.export import check_onnx, example_feeds, onnx_from_model
from engines.models import ast as ast_module
from engines.models.ast import (
    AST_FAMILY,
    MODES,
    AstConfigError,
    AstModel,
    AstTrainError,
    student_loss,
    teacher_nll,
)
from engines.models.backbones import LITE_MEAN, LITE_STD

S = 128  # the tiny preset's input size


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def drum_batch(batch: int, seed: int) -> dict[str, torch.Tensor]:
    """Smooth drum-like samples: a bulging disc surface ~0.6 m away inside a round mask, with a few depth holes."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, S), torch.linspace(-1, 1, S), indexing="ij")
    r2 = xx**2 + yy**2
    mask = (r2 < 0.6).float().expand(batch, 1, S, S).clone()
    z = 0.6 - 0.02 * (1 - r2) + 0.002 * torch.randn(batch, 1, S, S, generator=gen)
    holes = torch.rand(batch, 1, S, S, generator=gen) < 0.02
    mask[holes] = 0
    xyz = torch.cat([xx * 0.2 * z / 0.6, yy * 0.2 * z / 0.6, z], 1) * mask
    rgb = 0.5 * torch.randn(batch, 3, S, S, generator=gen) * mask
    return {"rgb": rgb, "xyz": xyz, "mask": mask, "label": torch.zeros(batch)}


def build(mode: str = "rgbd", seed: int = 0, **options: Any) -> tuple[ModelCard, AstModel]:
    card = AST_FAMILY.card("tiny", "foreground", mode=mode, **options)
    torch.manual_seed(seed)
    return card, AST_FAMILY.build(card)


def inputs(card: ModelCard, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: batch[n] for n in card.inputs}


def perturb_gammas(model: AstModel, value: float) -> None:
    """Give the flow non-identity couplings (γ = 0 at init makes every block the identity)."""
    with torch.no_grad():
        for name, p in model.teacher.named_parameters():
            if name.endswith("gamma"):
                p.fill_(value)


@pytest.mark.parametrize("mode", MODES)
def test_card_and_outputs_follow_the_contract(mode: str) -> None:
    card, model = build(mode)
    assert card.inputs == {"rgb": ("rgb", "mask"), "depth": ("xyz", "mask"), "rgbd": ("rgb", "xyz", "mask")}[mode]
    assert (card.family, card.input_size, card.mean, card.std) == ("ast", S, LITE_MEAN, LITE_STD)
    assert ModelCard.from_dict(card.to_dict()) == card
    model.eval()
    with torch.no_grad():
        outputs = model(**inputs(card, drum_batch(2, 0)))
    assert len(outputs) == len(OUTPUT_NAMES)
    amap, score = outputs
    assert amap.shape == (2, 1, S, S) and score.shape == (2,)
    assert amap.dtype == score.dtype == torch.float32
    assert bool((amap >= 0).all()) and bool((score > 0).all())


def test_zero_gamma_makes_the_flow_a_pure_permutation() -> None:
    _, model = build("rgbd")
    x = torch.randn(2, model.channels, model.grid, model.grid)
    cond = model.cond(2)
    z, logdet = model.teacher(x, cond)
    expected = x
    for k in range(len(model.teacher.blocks)):
        expected = expected[:, getattr(model.teacher, f"perm{k}")]
    torch.testing.assert_close(z, expected, rtol=0, atol=0)
    assert torch.equal(logdet, torch.zeros_like(logdet))
    perturb_gammas(model, 0.1)
    z2, logdet2 = model.teacher(x, cond)
    assert not torch.allclose(z2, expected) and float(logdet2.abs().max()) > 0


def test_map_is_zero_outside_the_dilated_foreground_only() -> None:
    card, model = build("rgbd")
    batch = drum_batch(1, 1)
    batch["mask"][:, :, 80:, :] = 0  # cut the disc: a straight foreground edge
    model.eval()
    with torch.no_grad():
        amap, _ = model(**inputs(card, batch))
    mask = batch["mask"][0, 0].numpy() > 0
    dilated = ndimage.binary_dilation(mask, structure=np.ones((9, 9), bool))  # tiny: radius 4 at full resolution
    outside = amap[0, 0].numpy()[~dilated]
    assert outside.size > 0 and np.all(outside == 0)
    assert np.all(amap[0, 0].numpy()[mask] > 0)


def test_teacher_and_student_losses_decrease_on_a_fixed_batch() -> None:
    card, model = build("rgbd")
    model.train()
    with torch.no_grad():
        inp, fg, _ = model.prepare(**inputs(card, drum_batch(4, 2)))
    cond = model.cond(4)
    opt = torch.optim.Adam(model.teacher.parameters(), lr=1e-3)
    nll = []
    for _ in range(8):
        loss = teacher_nll(*model.teacher(inp, cond), fg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        nll.append(float(loss))
    assert nll[-1] < nll[0] - 0.05 * abs(nll[0])
    model.teacher.eval()
    with torch.no_grad():
        z_t = model.teacher(inp, cond)[0]
    opt = torch.optim.Adam(model.student.parameters(), lr=1e-3)
    st = []
    for _ in range(8):
        loss = student_loss(z_t, model.student(torch.cat([cond, inp], 1)), fg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        st.append(float(loss))
    assert st[-1] < 0.8 * st[0]


SETTINGS = FitSettings(epochs=2, batch_size=4, learning_rate=1e-3, seed=3, threads=1)


def test_fit_runs_both_phases_saves_each_epoch_and_resumes_without_redoing_epochs() -> None:
    data = [drum_batch(4, 10), drum_batch(4, 11)]
    _, full = build("rgbd", seed=5)
    ctx = MemoryContext()
    AST_FAMILY.fit(full, data, SETTINGS, ctx)
    assert ctx.reports == [("teacher", 1, 2), ("teacher", 2, 2), ("student", 1, 2), ("student", 2, 2)]
    assert [(p, e) for p, e, _ in ctx.saved] == [("teacher", 1), ("teacher", 2), ("student", 1), ("student", 2)]
    assert not full.training and not full.student.training

    for resume_at, redone in [(0, [("teacher", 2, 2), ("student", 1, 2), ("student", 2, 2)]), (2, [("student", 2, 2)])]:
        _, resumed = build("rgbd", seed=99)  # other initial weights: everything must come from the saved state
        ctx2 = MemoryContext(resume=ctx.saved[resume_at])
        AST_FAMILY.fit(resumed, data, SETTINGS, ctx2)
        assert ctx2.reports == redone
        for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_image_score_max_mean_or_top_share() -> None:
    card_max, model_max = build("rgbd", image_score="max")
    _, model_mean = build("rgbd", image_score="mean")
    model_mean.load_state_dict(model_max.state_dict())
    batch = inputs(card_max, drum_batch(2, 4))
    model_max.eval()
    model_mean.eval()
    with torch.no_grad():
        amap, s_max = model_max(**batch)
        amap2, s_mean = model_mean(**batch)
        inp, soft, _ = model_max.prepare(**batch)
        cell = model_max.distance(inp)[2] * soft
    torch.testing.assert_close(amap, amap2)
    torch.testing.assert_close(s_max, amap.amax((1, 2, 3)))
    torch.testing.assert_close(s_mean, cell.mean((1, 2, 3)))
    _, model_top = build("rgbd", image_score="top2pct")
    model_top.load_state_dict(model_max.state_dict())
    with torch.no_grad():
        amap3, s_top = model_top.eval()(**batch)
    k = round(0.02 * amap.shape[-1] ** 2)  # 2 % of the map's pixels
    top = amap.flatten(1).sort(dim=1, descending=True).values[:, :k].mean(1)
    torch.testing.assert_close(amap3, amap)
    torch.testing.assert_close(s_top, top)
    assert bool((s_top <= s_max).all()) and bool((s_top > 0).all())
    assert bool((s_max > s_mean).all())


def test_score_border_leaves_the_map_and_scores_the_eroded_foreground_only() -> None:
    card, model = build("rgbd")
    card_b, model_b = build("rgbd", score_border=6)
    assert card_b.options["score_border"] == 6
    model_b.load_state_dict(model.state_dict())
    perturb_gammas(model, 0.05)
    perturb_gammas(model_b, 0.05)
    batch = inputs(card, drum_batch(2, 5))
    batch["mask"][:, :, :3, :3] = 1  # a 3×3 speck of foreground: its map counts, its score does not
    model.eval()
    model_b.eval()
    with torch.no_grad():
        amap, s_max = model(**batch)
        amap_b, s_b = model_b(**batch)
    torch.testing.assert_close(amap_b, amap)
    for i in range(2):
        mask = batch["mask"][i, 0].numpy() > 0
        # square erosion by 6 px, the image border counting as foreground (max-pooling pads with -inf)
        eroded = ndimage.binary_erosion(mask, structure=np.ones((13, 13), bool), border_value=1)
        assert eroded.sum() > 0 and not eroded[:3, :3].any()
        assert float(s_b[i]) == pytest.approx(float(amap[i, 0].numpy()[eroded].max()), rel=1e-6)
    assert bool((s_b <= s_max).all())
    full_card = AST_FAMILY.card("tiny", "full", mode="rgbd", score_border=6)  # no ROI: nothing is eroded
    full = AST_FAMILY.build(full_card)
    full.load_state_dict(model.state_dict())
    with torch.no_grad():
        amap_f, s_f = full.eval()(**batch)
    torch.testing.assert_close(s_f, amap_f.amax((1, 2, 3)))


def test_mask_open_drops_specks_from_the_foreground_in_foreground_mode_only() -> None:
    batch = drum_batch(1, 7)
    batch["mask"][:, :, 2, 5:40] = 1  # a 1-px line of foreground far from the disc (a depthless speck streak)
    mask = batch["mask"][0, 0].numpy() > 0
    opened = ndimage.binary_dilation(
        ndimage.binary_erosion(mask, np.ones((3, 3), bool), border_value=1), np.ones((3, 3), bool)
    )
    card, model = build("rgbd", mask_open=1)
    assert card.options["mask_open"] == 1
    np.testing.assert_array_equal(model.clean(batch["mask"])[0, 0].numpy() > 0, opened)
    assert not opened[2, 5:40].any() and mask[2, 5:40].all()
    perturb_gammas(model, 0.05)
    with torch.no_grad():
        amap, _ = model.eval()(**inputs(card, batch))
    assert np.all(amap[0, 0].numpy()[:12, 5:40] == 0)  # the streak's cells get no weight: nothing to flag there
    full = AST_FAMILY.build(AST_FAMILY.card("tiny", "full", mode="rgbd", mask_open=1))
    torch.testing.assert_close(full.clean(batch["mask"]), batch["mask"])  # no ROI in full mode: nothing to clean


def test_edge_scores_away_from_the_mask_edge_and_older_cards_keep_the_plain_score() -> None:
    card = AST_FAMILY.card("edge", "foreground")
    assert card.options == {
        "mode": "rgbd", "image_score": "max", "fine_tap": None, "score_border": 16, "mask_open": 0,
        "depth_highpass": 0, "augment": 0, "teacher_hidden": 64, "student_hidden": 256, "student_blocks": 2,
    }  # fmt: skip
    assert AST_FAMILY.card("paper", "foreground").options["score_border"] == 0
    older = ModelCard.from_dict(card.to_dict() | {"options": {"mode": "rgbd", "image_score": "max"}})
    assert AST_FAMILY.build(older).settings.score_border == 0  # its scoring.yaml was fitted on the plain max


def test_fine_tap_puts_the_tap_on_the_finer_blocks_grid() -> None:
    card = AST_FAMILY.card("edge", "foreground", fine_tap=6)
    model = AST_FAMILY.build(card)
    assert (model.grid, model.channels, model.reduce) == (32, 120 + 48 + 64, 1)
    feeds = {
        "rgb": torch.zeros(1, 3, 256, 256),
        "xyz": torch.full((1, 3, 256, 256), 0.6),
        "mask": torch.ones(1, 1, 256, 256),
    }
    with torch.no_grad():
        inp, soft, full = model.eval().prepare(**feeds)
    assert inp.shape == (1, 232, 32, 32) and soft.shape == (1, 1, 32, 32) and full.shape == (1, 1, 256, 256)
    with pytest.raises(AstConfigError, match="half the stride"):
        AST_FAMILY.card("edge", "foreground", fine_tap=3)
    with pytest.raises(AstConfigError, match="at least 8× the grid"):
        AST_FAMILY.card("tiny", "foreground", fine_tap=2)


def test_depth_highpass_takes_a_tilted_surface_off_and_keeps_a_dent() -> None:
    card = AST_FAMILY.card("edge", "foreground", depth_highpass=8)
    model = AST_FAMILY.build(card).eval()
    plain = AST_FAMILY.build(AST_FAMILY.card("edge", "foreground")).eval()
    x = torch.arange(256.0)
    xyz = torch.zeros(1, 3, 256, 256)
    xyz[:, 2] = 0.8 + 0.001 * x + 0.0005 * x[:, None]  # a plane tilted both ways: 0.38 m of depth across
    mask = torch.zeros(1, 1, 256, 256)
    mask[..., 32:224, 32:224] = 1
    dented = xyz.clone()
    dented[:, 2, 120:130, 120:130] -= 0.015  # a 15 mm dent, 10×10 px
    with torch.no_grad():
        flat, dent = (nnf.pixel_shuffle(model.depth_features(z, mask), 8)[0, 0] for z in (xyz, dented))
        raw = nnf.pixel_shuffle(plain.depth_features(xyz, mask), 8)[0, 0]
    inside = (slice(16, 112), slice(16, 112))  # the mask at depth resolution (128²)
    away = (slice(24, 104), slice(24, 104))  # ≥ r = 8 depth px from its edge: the whole window on the surface
    assert float(raw[inside].abs().max()) > 10  # AST's centred z keeps the tilt (×100: centimetres)
    assert float(flat[away].abs().max()) < 1e-4  # the local mean takes a plane off exactly
    assert float(flat[inside].abs().max()) < 1.1  # near the edge a one-sided window leaves ≤ slope · r
    assert float(dent[62, 62]) < -1.2  # the dent's centre, 1.5 cm deep, minus the little it moves the local mean
    assert float(flat[:14].abs().max()) == 0.0  # nothing beyond the mask and the 3 px the gap filling continues it
    older = ModelCard.from_dict(card.to_dict() | {"options": {"mode": "rgbd", "image_score": "max"}})
    assert AST_FAMILY.build(older).settings.depth_highpass == 0
    with pytest.raises(AstConfigError, match="depth_highpass -1 is not a whole number of pixels"):
        AST_FAMILY.card("edge", "foreground", depth_highpass=-1)


def test_augment_caches_the_batches_then_seeded_jittered_views_and_older_cards_train_without() -> None:
    card = AST_FAMILY.card("tiny", "foreground", augment=2)
    model = AST_FAMILY.build(card)
    gen = torch.Generator().manual_seed(0)
    batch = {
        "rgb": torch.rand(2, 3, 128, 128, generator=gen),
        "xyz": torch.rand(2, 3, 128, 128, generator=gen) + 0.5,
        "mask": torch.ones(2, 1, 128, 128),
    }
    views = list(ast_module._views(model, [batch], seed=3))
    assert len(views) == 3  # the batch, then two jittered views of it
    torch.testing.assert_close(views[0]["rgb"], batch["rgb"])
    assert all(float((v["rgb"] - batch["rgb"]).abs().mean()) > 1e-3 for v in views[1:])
    again = list(ast_module._views(model, [batch], seed=3))
    for v, w in zip(views, again, strict=True):  # the fit's seed repeats the views
        torch.testing.assert_close(v["xyz"], w["xyz"])
    plain = AST_FAMILY.build(AST_FAMILY.card("tiny", "foreground"))
    assert ast_module._views(plain, [batch], seed=3) == [batch]  # no option: the batches as they are
    older = ModelCard.from_dict(card.to_dict() | {"options": {"mode": "rgbd", "image_score": "max"}})
    assert AST_FAMILY.build(older).settings.augment == 0
    with pytest.raises(AstConfigError, match="augment -1 is not a whole number of views"):
        AST_FAMILY.card("tiny", "foreground", augment=-1)


def test_width_options_size_teacher_and_student_and_older_cards_keep_the_presets() -> None:
    card = AST_FAMILY.card("edge", "foreground", fine_tap=6, teacher_hidden=32, student_hidden=128, student_blocks=1)
    model = AST_FAMILY.build(card)
    assert model.teacher.blocks[0].s1.conv1.out_channels == 32
    assert model.student.conv1.out_channels == 128 and len(model.student.res) == 1
    older = ModelCard.from_dict(card.to_dict() | {"options": {"mode": "rgbd", "image_score": "max"}})
    settings = AST_FAMILY.build(older).settings
    assert (settings.teacher_hidden, settings.student_hidden, settings.student_blocks) == (64, 256, 2)
    for name, bad in (("student_hidden", 0), ("teacher_hidden", 2.5), ("student_blocks", True)):
        with pytest.raises(AstConfigError, match=f"AST {name} .* is not a whole number ≥ 1"):
            AST_FAMILY.card("edge", "foreground", **{name: bad})


@pytest.mark.parametrize(("mode", "border"), [(m, 0) for m in MODES] + [("rgbd", 6)])
def test_onnx_export_matches_pytorch(mode: str, border: int, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    card, model = build(mode, score_border=border)
    perturb_gammas(model, 0.05)
    model.eval()
    batch = inputs(card, drum_batch(1, 6))
    path = tmp_path / f"ast-{mode}.onnx"
    torch.onnx.export(
        model, (), str(path), kwargs=batch, input_names=list(card.inputs), output_names=list(OUTPUT_NAMES),
        opset_version=17, dynamo=False,
    )  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(card.inputs)
    amap_ort, score_ort = session.run(list(OUTPUT_NAMES), {k: v.numpy() for k, v in batch.items()})
    with torch.no_grad():
        amap, score = model(**batch)
    scale = float(amap.abs().max())
    assert scale > 0
    np.testing.assert_allclose(amap_ort, amap.numpy(), rtol=0, atol=1e-4 * max(1.0, scale))
    np.testing.assert_allclose(score_ort, score.numpy(), rtol=1e-4, atol=1e-6)


def test_bad_cards_options_and_data_name_the_problem_and_the_remedy() -> None:
    with pytest.raises(AstConfigError, match="pick one of"):
        AST_FAMILY.card("huge", "foreground")
    with pytest.raises(AstConfigError, match="rgb, depth or rgbd"):
        AST_FAMILY.card("tiny", "foreground", mode="combi")
    with pytest.raises(AstConfigError, match="max, mean or top2pct"):
        AST_FAMILY.card("tiny", "foreground", image_score="p99")
    with pytest.raises(
        AstConfigError, match="only 'mode', 'image_score', 'fine_tap', 'score_border', 'mask_open', 'depth_highpass'"
    ):
        AST_FAMILY.card("tiny", "foreground", colour="red")
    with pytest.raises(AstConfigError, match="whole number of pixels"):
        AST_FAMILY.card("tiny", "foreground", score_border=-1)
    card = AST_FAMILY.card("tiny", "foreground", mode="depth")
    bad = ModelCard.from_dict(card.to_dict() | {"input_size": 256})
    with pytest.raises(AstConfigError, match="differs from preset"):
        AST_FAMILY.build(bad)
    with pytest.raises(AstConfigError, match="do not fit mode"):
        AST_FAMILY.build(ModelCard.from_dict(card.to_dict() | {"inputs": ["rgb", "mask"]}))
    model = AST_FAMILY.build(card)
    no_xyz = {k: v for k, v in drum_batch(2, 0).items() if k != "xyz"}
    with pytest.raises(AstTrainError, match="lacks \\['xyz'\\]"):
        AST_FAMILY.fit(model, [no_xyz], SETTINGS, MemoryContext())
    with pytest.raises(AstTrainError, match="start a fresh run"):
        AST_FAMILY.fit(model, [drum_batch(2, 0)], SETTINGS, MemoryContext(("teacher", 1, {"teacher.x": torch.ones(1)})))


def test_depth_mode_trained_on_normal_drums_finds_a_dent() -> None:
    card, model = build("depth", seed=1)
    train = [drum_batch(4, 20 + i) for i in range(4)]
    AST_FAMILY.fit(model, train, FitSettings(3, 4, 1e-3, seed=0, threads=1), MemoryContext())
    test = drum_batch(4, 99)
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    dent = (((yy - 50) ** 2 + (xx - 70) ** 2) < 36).float()
    test["xyz"][2:, 2] += 0.01 * dent * test["mask"][2:, 0]  # a 1 cm deep, 12 px wide bump on two samples
    with torch.no_grad():
        amap, score = model(**inputs(card, test))
    assert float(score[2:].min()) > 1.3 * float(score[:2].max())
    for peak in amap[2:, 0].flatten(1).argmax(1).tolist():
        assert abs(peak // S - 50) <= 8 and abs(peak % S - 70) <= 8


@pytest.mark.parametrize("crop_mode", ["full", "foreground"])
def test_ast_uses_the_roi_mask_in_foreground_mode_only(crop_mode: str, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    card = AST_FAMILY.card("tiny", crop_mode, mode="rgbd")  # type: ignore[arg-type]
    torch.manual_seed(0)
    model = AST_FAMILY.build(card).eval()
    feeds = example_feeds(card, seed=3)
    feeds["mask"][:] = 0
    feeds["mask"][..., 40:90, 40:90] = 1  # a square ROI; the map may respond outside it only in full mode
    outside = np.ones(feeds["mask"].shape[-2:], dtype=bool)
    outside[30:100, 30:100] = False  # beyond the 9×9 dilation
    with torch.no_grad():
        amap, _ = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    responds = float(amap[0, 0].numpy()[outside].max())
    assert responds > 0 if crop_mode == "full" else responds == 0
    path = onnx_from_model(model, card, tmp_path / "ast.onnx")  # the mask stays a graph input in both modes
    assert check_onnx(model, path, feeds).ok
