"""The shared crop → engine → scoring stage: fed exactly as the model's card says, refusing foreign artefacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="exporting the test model needs the train extra (torch)")

from calibration.fit import frame_from_axis  # noqa: E402
from calibration.roi import CameraBinding, CylinderShape, RoiError, RoiFile  # noqa: E402
from drivers.synthetic import SyntheticSource, SyntheticSourceConfig  # noqa: E402
from edge.core.frame import Frame  # noqa: E402
from edge.core.scoring import ModelIdentity, ScoringError, fit_scoring  # noqa: E402
from edge.crop import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from edge.inspect import Inspector  # noqa: E402
from engines.contract import ModelCard  # noqa: E402
from engines.export import onnx_from_model  # noqa: E402


class MaskedMean(torch.nn.Module):
    """A fixed, hand-checkable model: map = mask · mean(rgb² + xyz), score = max(map)."""

    def forward(self, rgb: torch.Tensor, xyz: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap = ((rgb**2).mean(1, keepdim=True) + xyz.mean(1, keepdim=True)) * mask
        return amap, amap.flatten(1).amax(1)


def _frames() -> list[Frame]:
    cfg = SyntheticSourceConfig(seed=5, n_frames=3, width=160, height=120, defect_rate=0.5, gap_frames=1)
    with SyntheticSource(cfg) as src:
        return list(src.frames())


def _roi(frame: Frame) -> RoiFile:
    assert frame.truth is not None and frame.truth.drum is not None
    drum = frame.truth.drum
    return RoiFile(
        camera=CameraBinding.from_spec(frame.spec),
        T_camera_roi=frame_from_axis(np.asarray(drum.center), np.asarray(drum.axis)).tolist(),
        shape=CylinderShape(radius_m=drum.radius_m, length_m=drum.length_m),
        margin_m=0.01,
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Frame], RoiFile, Path, ModelCard]:
    frames = _frames()
    roi = _roi(frames[0])
    card = ModelCard(
        "masked_mean", "tiny", 32, ("rgb", "xyz", "mask"), "foreground", IMAGENET_MEAN, IMAGENET_STD, roi.version
    )
    onnx = onnx_from_model(MaskedMean().eval(), card, tmp_path_factory.mktemp("m") / "model.onnx")
    return frames, roi, onnx, card


def _identity(onnx: Path, card: ModelCard, sha: str | None = None) -> ModelIdentity:
    identity = ModelIdentity.of(card, onnx)
    return identity if sha is None else identity.model_copy(update={"artefact_sha256": sha})


def test_scores_match_the_torch_model_on_the_same_crop_and_gate_reads_the_mask(setup) -> None:  # type: ignore[no-untyped-def]
    frames, roi, onnx, card = setup
    scoring = fit_scoring([0.5, 0.6, 0.7, 0.8], _identity(onnx, card))
    inspector = Inspector(frames[0].spec, roi, onnx, scoring)
    try:
        results = []
        for frame in (frames[0], frames[1]):  # a part, then an empty station (gap frame)
            r = inspector.inspect(frame)
            crop = r.crop
            assert crop.rgb.shape == (1, 3, 32, 32)  # the card's input size, not a default
            mask = torch.from_numpy(crop.mask.astype(np.float32))[None, None]
            _, want = MaskedMean()(torch.from_numpy(crop.rgb), torch.from_numpy(crop.xyz), mask)
            assert r.raw_score == pytest.approx(float(want[0]), rel=1e-5, abs=1e-6)
            assert r.score == pytest.approx((r.raw_score - scoring.normalisation.mean) / scoring.normalisation.std)
            assert r.verdict == ("NG" if r.score > scoring.threshold.value else "OK")
            assert r.roi_fill == pytest.approx(float(crop.mask.mean()))
            results.append(r)
        assert frames[1].truth is not None and frames[1].truth.label == "empty"
        assert results[0].roi_fill > 0.2 > results[1].roi_fill
        assert results[0].crop is results[1].crop  # buffers reused, nothing allocated per frame
    finally:
        inspector.close()


def test_refuses_a_scoring_file_of_another_model(setup) -> None:  # type: ignore[no-untyped-def]
    frames, roi, onnx, card = setup
    scoring = fit_scoring([0.5, 0.6, 0.7], _identity(onnx, card, sha="0" * 64))
    with pytest.raises(ScoringError, match="fitted for"):
        Inspector(frames[0].spec, roi, onnx, scoring)


def test_refuses_an_roi_other_than_the_one_the_model_was_trained_with(setup) -> None:  # type: ignore[no-untyped-def]
    frames, roi, onnx, card = setup
    scoring = fit_scoring([0.5, 0.6, 0.7], _identity(onnx, card))
    other = roi.model_copy(update={"margin_m": 0.05})
    with pytest.raises(RoiError, match="ROI version"):
        Inspector(frames[0].spec, other, onnx, scoring)
