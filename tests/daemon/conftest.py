"""Shared daemon fixtures: a synthetic line recording, its ROI and a trained tiny AST, built once per session."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools import calibrate, record, train

LINE_FRAMES = 30
WIDTH, HEIGHT = 320, 240


@dataclass(frozen=True)
class DaemonAssets:
    """Files a daemon config points at."""

    line: Path  # .db3 recording of LINE_FRAMES frames: 3-frame parts with 2-frame gaps, some defects
    roi: Path
    onnx: Path
    scoring: Path


@pytest.fixture(scope="session")
def daemon_assets(tmp_path_factory: pytest.TempPathFactory) -> DaemonAssets:
    d = tmp_path_factory.mktemp("daemon-assets")
    common = ["--source", "synthetic", "--seed", "0", "--width", str(WIDTH), "--height", str(HEIGHT), "--overwrite"]
    clip_args = ["--frames", "5", "--frames-per-part", "5", "--defect-rate", "0", "--out", str(d / "clip.db3")]
    assert record.main([*common, *clip_args]) == 0
    line_args = ["--frames", str(LINE_FRAMES), "--frames-per-part", "3", "--gap-frames", "2", "--defect-rate", "0.4"]
    assert record.main([*common, *line_args, "--out", str(d / "line.db3")]) == 0
    assert calibrate.main(["--recording", str(d / "clip.db3"), "--frames", "5", "--out", str(d / "roi.yaml")]) == 0
    train_args = ["--model", "ast", "--preset", "tiny", "--crop", "foreground", "--epochs", "2"]
    paths = ["--data", str(d / "line.db3"), "--roi", str(d / "roi.yaml"), "--out", str(d / "model")]
    assert train.main([*train_args, *paths]) == 0
    return DaemonAssets(d / "line.db3", d / "roi.yaml", d / "model" / "model.onnx", d / "model" / "scoring.yaml")


@pytest.fixture(scope="session")
def second_model(daemon_assets: DaemonAssets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny AST trained on the same line and ROI (another seed, one epoch): a new release to roll out.
    Its folder holds model.onnx, scoring.yaml and golden.npz, as edge-train writes them."""
    out = tmp_path_factory.mktemp("second-model")
    args = ["--model", "ast", "--preset", "tiny", "--crop", "foreground", "--epochs", "1", "--seed", "1"]
    paths = ["--data", str(daemon_assets.line), "--roi", str(daemon_assets.roi), "--out", str(out)]
    assert train.main([*args, *paths]) == 0
    return out


ConfigFactory = Callable[..., Path]


@pytest.fixture
def make_config(daemon_assets: DaemonAssets, tmp_path: Path) -> ConfigFactory:
    """Writes ``edge.yaml`` into tmp_path: a valid config on the recording; keyword overrides replace sections."""

    def make(**overrides: Any) -> Path:
        config = daemon_config(daemon_assets, tmp_path / "data")
        config.update(overrides)
        path = tmp_path / "edge.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return path

    return make


def daemon_config(assets: DaemonAssets, data_dir: Path) -> dict[str, Any]:
    """A valid config dict that scores the recording frame by frame."""
    config: dict[str, Any] = {
        "schema_version": 1,
        "source": {"type": "playback", "path": str(assets.line)},
        "roi": str(assets.roi),
        "models": [{"name": "ast-tiny", "onnx": str(assets.onnx), "scoring": str(assets.scoring)}],
        "runtime": {"threads": 1},
        "latency_budget_ms": 5000,
        "gating": {"min_roi_fill": 0.2, "mode": "per_frame"},
        "storage": {"data_dir": str(data_dir), "evidence_quota_mb": 50, "sample_ok_every": 0},
        "metrics": {"enabled": False},
    }
    return config
