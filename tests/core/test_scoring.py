"""Scoring file: z-score fit, quantile threshold, verdicts, F1 refit, YAML round trip and bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from edge.core.scoring import (
    ModelIdentity,
    Scorer,
    ScoringError,
    file_sha256,
    fit_scoring,
    load_scoring,
    refit_threshold_f1,
    save_scoring,
)


def identity(tmp_path: Path) -> ModelIdentity:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not really onnx, but hashed all the same")
    return ModelIdentity(
        family="toy",
        preset="tiny",
        input_size=32,
        crop_mode="foreground",
        roi_version="abc123",
        artefact=model.name,
        artefact_sha256=file_sha256(model),
    )


def test_fit_normalises_and_thresholds(tmp_path: Path) -> None:
    raw = np.random.default_rng(0).normal(5.0, 2.0, 400)
    sf = fit_scoring(raw, identity(tmp_path), data_hash="h", false_alarm_rate=0.05, margin=0.25)
    assert sf.normalisation.mean == pytest.approx(raw.mean())
    assert sf.normalisation.std == pytest.approx(raw.std(ddof=1))
    z = (raw - raw.mean()) / raw.std(ddof=1)
    assert sf.threshold.value == pytest.approx(np.quantile(z, 0.95, method="higher") + 0.25)
    assert sf.fitted_on.n_samples == 400 and sf.fitted_on.data_hash == "h"
    scorer = Scorer(sf)
    flagged = [scorer.score(r)[1] for r in raw]
    assert flagged.count("NG") <= 0.05 * raw.size  # at most the target share of the fitting samples
    assert scorer.score(raw.mean()) == (pytest.approx(0.0), "OK")
    assert scorer.score(raw.mean() + 10 * raw.std())[1] == "NG"
    assert scorer.score(float("nan"))[1] == "NG"  # a score that cannot be judged never passes


def test_few_samples_threshold_is_max_plus_margin(tmp_path: Path) -> None:
    raw = [1.0, 2.0, 3.0, 4.0]
    sf = fit_scoring(raw, identity(tmp_path), false_alarm_rate=0.01, margin=0.5)
    z_max = (4.0 - 2.5) / np.std(raw, ddof=1)
    assert sf.threshold.value == pytest.approx(z_max + 0.5)
    assert all(Scorer(sf).score(r)[1] == "OK" for r in raw)


def test_constant_scores_do_not_divide_by_zero(tmp_path: Path) -> None:
    sf = fit_scoring([0.3, 0.3, 0.3], identity(tmp_path))
    assert sf.normalisation.std > 0
    assert Scorer(sf).score(0.3)[1] == "OK" and Scorer(sf).score(0.31)[1] == "NG"


def test_fit_refuses_too_few_or_non_finite(tmp_path: Path) -> None:
    with pytest.raises(ScoringError, match="at least 2"):
        fit_scoring([1.0], identity(tmp_path))
    with pytest.raises(ScoringError, match="non-finite"):
        fit_scoring([1.0, float("inf"), 2.0], identity(tmp_path))


def test_f1_refit_moves_only_the_threshold(tmp_path: Path) -> None:
    sf = fit_scoring([1.0, 1.2, 0.9, 1.1, 1.0], identity(tmp_path))
    raw = [1.0, 1.1, 0.95, 1.4, 2.0, 3.0]
    labels = [0, 0, 0, 1, 1, 1]
    refit = refit_threshold_f1(sf, raw, labels)
    assert refit.normalisation == sf.normalisation and refit.threshold.method == "f1_max"
    verdicts = [Scorer(refit).score(r)[1] for r in raw]
    assert verdicts == ["OK", "OK", "OK", "NG", "NG", "NG"]  # perfectly separable → F1 = 1
    assert refit.fitted_on.n_labelled == 6
    with pytest.raises(ScoringError, match="both classes"):
        refit_threshold_f1(sf, raw, [0] * 6)


def test_round_trip_and_threshold_edit_without_model(tmp_path: Path) -> None:
    sf = fit_scoring(np.linspace(0, 1, 50), identity(tmp_path), data_hash="d")
    path = tmp_path / "scoring.yaml"
    save_scoring(sf, path)
    assert load_scoring(path) == sf
    data = yaml.safe_load(path.read_text())
    data["threshold"].update(value=9.0, method="manual")  # a person edits the threshold: no re-export
    path.write_text(yaml.safe_dump(data))
    assert Scorer(load_scoring(path)).score(1.0)[1] == "OK"
    load_scoring(path).check_artefact(tmp_path / "model.onnx")
    (tmp_path / "other.onnx").write_bytes(b"another model")
    with pytest.raises(ScoringError, match=r"use the scoring\.yaml written with this model"):
        load_scoring(path).check_artefact(tmp_path / "other.onnx")


def test_bad_files_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "scoring.yaml"
    with pytest.raises(ScoringError, match="not found"):
        load_scoring(path)
    path.write_text("a: [unclosed")
    with pytest.raises(ScoringError, match="not valid YAML"):
        load_scoring(path)
    path.write_text("schema_version: 7\n")
    with pytest.raises(ScoringError, match="schema_version 7"):
        load_scoring(path)
    save_scoring(fit_scoring([1.0, 2.0, 3.0], identity(tmp_path)), path)
    data = yaml.safe_load(path.read_text())
    data["normalisation"]["std"] = -1.0
    data["threshold"]["colour"] = "red"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ScoringError) as err:
        load_scoring(path)
    assert "normalisation.std" in str(err.value) and "threshold.colour" in str(err.value)
