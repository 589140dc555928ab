"""Shape-Guided (``engines/models/shape_guided.py``): patches, the 3D expert, OMP, self-excluded scoring, export.

The family contract (build, shapes, ONNX, 1-epoch fit, resume) is checked in ``test_families.py`` with the others.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.decomposition import sparse_encode

from edge.core.errors import EdgeError
from engines.contract import ModelCard
from engines.export import check_onnx, onnx_from_model
from engines.models.shape_guided import (
    PRESETS,
    SHAPE_GUIDED_FAMILY,
    FpsPatching,
    LocalNIF,
    PointNetEncoder,
    ShapeGuidedModel,
    fold_windows,
    fps_patches,
    fps_reference,
    grid_windows,
    neighbour_sigma,
    neural_pull_loss,
    normalise_patches,
    omp,
    window_patches,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def bumpy(card: ModelCard, seed: int) -> dict[str, torch.Tensor]:
    """One 1×… sample unlike any other seed's: a surface near 1 m with random bumps in a disc, random colour."""
    size = card.input_size
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[0:size, 0:size] / size).astype(np.float32)
    z = 1.0 + 0.03 * xx
    for _ in range(6):
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.04, 0.15)
        z += rng.uniform(-0.02, 0.02) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    disc = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.16).astype(np.float32)
    xyz = np.stack([(xx - 0.5) * 0.3, (yy - 0.5) * 0.3, z]) * disc
    colour = rng.uniform(0.2, 0.8, (3, 1, 1)) + 0.2 * np.sin(xx * rng.uniform(3, 9) + yy * rng.uniform(3, 9))
    colour = colour + 0.05 * rng.normal(size=(3, size, size))
    rgb = (colour - np.reshape(card.mean, (3, 1, 1))) / np.reshape(card.std, (3, 1, 1)) * disc
    return {
        "rgb": torch.from_numpy(rgb[None].astype(np.float32)),
        "xyz": torch.from_numpy(xyz[None].astype(np.float32)),
        "mask": torch.from_numpy(disc[None, None]),
    }


def tiny_model(seed: int = 0) -> tuple[ModelCard, ShapeGuidedModel]:
    card = SHAPE_GUIDED_FAMILY.card("tiny", "foreground")
    torch.manual_seed(seed)
    return card, SHAPE_GUIDED_FAMILY.build(card).eval()


# ------------------------------------------------------------------------------------------------------------ patches


def test_fps_patches_count_coverage_and_seeded_reproducibility() -> None:
    card = SHAPE_GUIDED_FAMILY.card("tiny", "foreground")
    sample = bumpy(card, 1)
    xyz, valid = sample["xyz"][0], sample["mask"][0, 0] > 0
    n_valid = int(valid.sum())
    points, group_mul = 64, 10
    patches, pixels = fps_patches(xyz, valid, points, group_mul, torch.Generator().manual_seed(5))
    assert patches.shape == (round(n_valid * group_mul / points), points, 3)  # P = round(N·group_mul/n)
    assert bool(valid.reshape(-1)[pixels].all())  # only valid points are grouped
    covered = torch.zeros(valid.numel(), dtype=torch.bool)
    covered[pixels.reshape(-1)] = True
    assert covered[valid.reshape(-1)].float().mean() >= 0.99
    again, again_pixels = fps_patches(xyz, valid, points, group_mul, torch.Generator().manual_seed(5))
    assert torch.equal(again, patches) and torch.equal(again_pixels, pixels)
    _, other_pixels = fps_patches(xyz, valid, points, group_mul, torch.Generator().manual_seed(6))
    assert not torch.equal(other_pixels, pixels)


def test_a_cloud_without_valid_points_is_refused() -> None:
    with pytest.raises(EdgeError, match="no valid points") as err:
        fps_patches(torch.zeros(3, 8, 8), torch.zeros(8, 8, dtype=torch.bool), 16, 10, torch.Generator())
    assert "ROI" in err.value.remedy


def test_patch_normalisation_removes_position_and_size() -> None:
    card = SHAPE_GUIDED_FAMILY.card("tiny", "foreground")
    sample = bumpy(card, 2)
    xyz, valid = sample["xyz"][0], sample["mask"][0, 0] > 0
    moved = (xyz * 2.5 + torch.tensor([0.3, -0.2, 0.7]).view(3, 1, 1)) * valid
    a, pixels = fps_patches(xyz, valid, 64, 10, torch.Generator().manual_seed(1))
    b = normalise_patches(moved.reshape(3, -1).T[pixels], torch.ones(pixels.shape))  # the same points, moved
    torch.testing.assert_close(b, a, atol=2e-5, rtol=0)
    assert float(a.norm(dim=-1).amax()) == pytest.approx(1.0, abs=1e-5)  # scaled by the largest distance
    torch.testing.assert_close(a.mean(1), torch.zeros(a.shape[0], 3), atol=1e-5, rtol=0)  # centred
    _, model = tiny_model()
    w_a = normalise_patches(window_patches(xyz[None], 4), window_patches(valid[None, None].float(), 4)[..., 0])
    w_b = normalise_patches(window_patches(moved[None], 4), window_patches(valid[None, None].float(), 4)[..., 0])
    torch.testing.assert_close(w_b, w_a, atol=1e-4, rtol=0)
    with torch.no_grad():
        ones = torch.ones(a.shape[:2])
        torch.testing.assert_close(model.encoder(b, ones), model.encoder(a, ones), atol=1e-4, rtol=1e-4)


def test_grid_windows_cover_every_pixel_and_fold_back_exactly() -> None:
    image = torch.arange(2 * 56 * 56, dtype=torch.float32).reshape(2, 1, 56, 56)
    windows = window_patches(image, 4)
    assert windows.shape == (2, 13 * 13, 64, 1)
    for reduce, fill in (("min", float("inf")), ("max", float("-inf"))):
        assert torch.equal(fold_windows(windows[..., 0], 4, fill, reduce), image)
    counts = fold_windows(torch.ones(1, 169, 64), 4, 0.0, "max")
    assert bool((counts == 1).all())


# ------------------------------------------------------------------------------------------------------- 3D expert


def plane_and_sphere(points: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two normalised patches of ``points`` random points: a square of the plane z = 0 and a closed unit sphere.
    Returns the patches (2×n×3), each point's unit normal (outward on the sphere) and the sphere's centre and radius
    in its normalised frame (4)."""
    plane = torch.cat([torch.rand(points, 2, generator=gen) * 2 - 1, torch.zeros(points, 1)], 1)
    sphere = torch.randn(points, 3, generator=gen)
    sphere = sphere / sphere.norm(dim=1, keepdim=True)
    patches = normalise_patches(torch.stack([plane, sphere]), torch.ones(2, points))
    centre = -sphere.mean(0)
    radius = 1.0 / (sphere + centre).norm(dim=1).amax()
    centre = centre * radius
    normals = torch.stack([torch.tensor([0.0, 0.0, 1.0]).expand(points, 3), sphere])
    return patches, normals, torch.cat([centre, radius.view(1)])


def test_nif_fits_a_plane_and_a_closed_sphere_with_a_signed_field() -> None:
    """Neural-Pull (the paper's loss and query sampling, ``tiny`` encoder + NIF as built) on a plane square and a
    closed sphere, 512 points each, 250 Adam steps: the learnt field pulls within 15 % of what the exact signed
    distance does under the same queries, its zero set lies on the surfaces, and it changes sign across them (the
    sphere negative inside).

    The issue's "loss < 0.01" is not asked: the loss compares each pulled query with its nearest *sample*, so even
    the exact SDF has a floor set by the point density (here ≈ 0.05 over both patches, this test's ``floor``; under
    0.01 it needs ≈ 4 100 points on the plane and ≈ 24 000 on the sphere, docs/models/shape_guided.md). The field is
    read with the encoder in training mode, as the loss saw it: over two patches BatchNorm's running statistics are
    not the batch's."""
    torch.manual_seed(0)
    settings = PRESETS["tiny"]
    encoder = PointNetEncoder(settings.encoder_conv, settings.encoder_fc)
    nif = LocalNIF(settings.encoder_fc[-1], settings.nif_width, settings.nif_layers)
    patches, normals, sphere = plane_and_sphere(512, torch.Generator().manual_seed(0))
    sigma = neighbour_sigma(patches, settings.sigma_neighbour)
    opt = torch.optim.Adam([*encoder.parameters(), *nif.parameters()], lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(250):
        loss = neural_pull_loss(encoder, nif, patches, sigma, gen)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()

    def exact(_latent: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """The true signed distances: to the plane z = 0 (patch 0) and to the sphere (patch 1)."""
        to_sphere = (queries[1] - sphere[:3]).norm(dim=-1) - sphere[3]
        return torch.stack([queries[0, :, 2], to_sphere])

    def no_code(points: torch.Tensor, _valid: torch.Tensor) -> torch.Tensor:
        return torch.zeros(points.shape[0], 1)

    learnt = float(neural_pull_loss(encoder, nif, patches, sigma, torch.Generator().manual_seed(9)).detach())
    floor = float(neural_pull_loss(no_code, exact, patches, sigma, torch.Generator().manual_seed(9)).detach())
    assert 0.02 < floor < 0.08  # the density's floor (see the docstring)
    assert learnt < 1.15 * floor
    with torch.no_grad():
        latent = encoder(patches, torch.ones(patches.shape[:2]))
        on, outside, inside = (nif(latent, patches + t * normals) for t in (0.0, 0.05, -0.05))
    assert float(on.abs().mean()) < 0.2 * 0.05  # the zero set on the surfaces
    assert float((outside * inside < 0).float()[0].mean()) >= 0.95  # the plane: a sign change across it
    assert float((inside[1] < 0).float().mean()) >= 0.95 and float((outside[1] > 0).float().mean()) >= 0.95


# ------------------------------------------------------------------------------------------------------------- OMP


def test_omp_matches_scikit_learn_including_duplicate_atoms() -> None:
    rng = np.random.default_rng(0)
    atoms = rng.normal(size=(40, 10, 16))
    atoms[:, 3] = atoms[:, 0]  # duplicate atoms
    atoms[:20, 7] = atoms[:20, 5]
    queries = rng.normal(size=(40, 16))
    queries[:10] = atoms[:10, 0] * 2.0  # in the span of a duplicated atom: the pursuit stops after one atom
    queries[10:15] = atoms[10:15, 0] - 0.5 * atoms[10:15, 2]  # in the span of two atoms
    ours = omp(torch.from_numpy(queries), torch.from_numpy(atoms), 3).numpy()
    with pytest.warns(RuntimeWarning):  # scikit-learn warns when it stops early on dependent atoms
        reference = np.stack(
            [
                sparse_encode(q[None], a, algorithm="omp", n_nonzero_coefs=3)[0] @ a
                for q, a in zip(queries, atoms, strict=True)
            ]
        )
    assert np.abs(ours - reference).max() <= 1e-5


# ------------------------------------------------------------------------------------------------------- scoring


def test_a_training_sample_scored_with_its_own_match_excluded_equals_scoring_it_as_a_test_sample() -> None:
    card, with_all = tiny_model()
    samples = [bumpy(card, s) for s in range(10, 15)]
    with_all.build_memory(samples)
    _, without = tiny_model()
    without.load_state_dict(
        {k: v for k, v in with_all.state_dict().items() if not k.startswith(("sdf_", "rgb_"))}, strict=False
    )
    j = 2
    without.build_memory([s for i, s in enumerate(samples) if i != j])
    with torch.no_grad():
        excluded = with_all.parts(**samples[j], exclude=torch.tensor([j]))
        as_test = without.parts(**samples[j])
        included = with_all.parts(**samples[j])
    for got, want in zip(excluded, as_test, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.equal(included[0], excluded[0])  # with its own windows in the memory it scores otherwise


def test_fit_alignment_sets_the_rgb_affine_from_self_excluded_training_maps() -> None:
    card, model = tiny_model()
    samples = [bumpy(card, s) for s in range(20, 24)]
    model.build_memory(samples)
    stats = model.fit_alignment(samples, range(len(samples)))
    w, b = (float(v) for v in model.align)
    assert w > 0 and (w, b) == pytest.approx((stats["align_w"], stats["align_b"]), rel=1e-5)
    assert stats["sdf_mean"] > 0 and stats["rgb_mean"] > 0


def test_onnx_runtime_reproduces_pytorch_on_a_model_with_memory(tmp_path: Path) -> None:
    card, model = tiny_model()
    samples = [bumpy(card, s) for s in range(30, 34)]
    model.build_memory(samples)
    model.fit_alignment(samples, range(len(samples)))
    path = onnx_from_model(model, card, tmp_path / "sg.onnx")
    for seed in (40, 41):
        feeds = {k: v.numpy() for k, v in bumpy(card, seed).items()}
        parity = check_onnx(model, path, feeds)  # |Δ| ≤ 1e-4 + 1e-3·|PyTorch|, per output
        assert parity.ok, parity.summary()


def test_cards_with_options_or_other_inputs_are_refused() -> None:
    with pytest.raises(EdgeError, match="unknown Shape-Guided options"):
        SHAPE_GUIDED_FAMILY.card("tiny", "foreground", coreset=0.1)
    card = SHAPE_GUIDED_FAMILY.card("tiny", "foreground")
    with pytest.raises(EdgeError, match="do not fit Shape-Guided"):
        SHAPE_GUIDED_FAMILY.build(replace(card, inputs=("rgb", "mask")))
    with pytest.raises(EdgeError, match="has no preset"):
        SHAPE_GUIDED_FAMILY.card("huge", "foreground")


def test_too_little_training_data_for_the_memory_is_refused() -> None:
    card, model = tiny_model()
    empty = bumpy(card, 50)
    empty = {k: v * 0 for k, v in empty.items()}
    with pytest.raises(EdgeError, match="fewer than K") as err:
        model.build_memory([empty])
    assert "more samples" in err.value.remedy


# ------------------------------------------------------------------------------------------- FPS reference scorer


def test_window_fold_and_coverage_equal_the_scatter_by_pixel_the_fps_patches_use() -> None:
    card = SHAPE_GUIDED_FAMILY.card("tiny", "foreground")
    sample = bumpy(card, 3)
    windows = grid_windows(sample["xyz"], sample["mask"], 4, 0.1)
    as_scatter = replace(windows, stride=0)  # the same patches folded by their pixel index, as FPS patches are
    values = torch.rand(windows.valid.shape, generator=torch.Generator().manual_seed(0))
    for reduce, fill in (("min", 9.0), ("max", -9.0)):
        torch.testing.assert_close(as_scatter.fold(values, fill, reduce), windows.fold(values, fill, reduce))
    alone = torch.eye(windows.valid.shape[1])[:, :, None] * windows.valid  # each window alone, the memory's links
    torch.testing.assert_close(windows.coverage()[0], fold_windows(alone, 4, 0.0, "max")[:, 0])


def test_fps_reference_scores_through_the_same_path_and_ranks_a_trivial_case_as_the_windows_do(tmp_path: Path) -> None:
    """Trivial case (the ≥ 0.99 rank correlation on the line is the benchmark's): a training sample (its own memory
    entries in) and two new ones rank alike under windows and FPS patches, the memorised one lowest; the FPS memory
    holds the paper's P = round(N·10/n) patches per sample, covers the valid points, and does not export."""
    card, model = tiny_model()
    train = [bumpy(card, s) for s in range(60, 64)]
    model.build_memory(train)
    model.fit_alignment(train, range(len(train)))
    reference = fps_reference(model, train, seed=0)
    assert reference.fps == FpsPatching() and model.fps is None  # the trained model is left as it was
    n_valid = [int((s["mask"] > 0).sum()) for s in train]
    assert reference.sdf_memory.shape[0] == sum(round(n * 10 / PRESETS["tiny"].points) for n in n_valid)
    cases = [train[1], bumpy(card, 70), bumpy(card, 71)]
    with torch.no_grad():
        ranks = [torch.stack([m.score(**c)[1][0] for c in cases]).argsort().tolist() for m in (model, reference)]
        sdf_map = reference.parts(**cases[1])[0]
    assert ranks[0] == ranks[1] and ranks[0][0] == 0
    assert float((sdf_map[cases[1]["mask"] > 0] > 0).float().mean()) >= 0.99  # FPS patches cover the valid points
    with pytest.raises(EdgeError, match="cannot be exported"):
        onnx_from_model(reference, card, tmp_path / "fps.onnx")
