"""The daemon runs an INT8 model (``edge-quantize`` of the session's tiny AST) end to end on the recording, and its
preflight refuses the fp32 model's scoring file beside the INT8 ONNX."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge.core.scoring import file_sha256
from engines.export import card_from_onnx
from tests.daemon.conftest import LINE_FRAMES, DaemonAssets, daemon_config
from tests.daemon.test_daemon import _accounted, _check_db, daemon
from tools import quantize

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def int8_model(daemon_assets: DaemonAssets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "model"
    argv = ["--model-dir", str(daemon_assets.onnx.parent), "--data", str(daemon_assets.line)]
    assert quantize.main([*argv, "--roi", str(daemon_assets.roi), "--out", str(out), "--frames", "8"]) == 0
    assert card_from_onnx(out / "model.onnx").precision == "int8"
    return out


def _config(assets: DaemonAssets, tmp_path: Path, onnx: Path, scoring: Path) -> Path:
    config = daemon_config(assets, tmp_path / "data")
    config["models"] = [{"name": "ast-tiny-int8", "onnx": str(onnx), "scoring": str(scoring)}]
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def test_daemon_scores_every_frame_with_the_int8_model(
    daemon_assets: DaemonAssets, int8_model: Path, tmp_path: Path
) -> None:
    config = _config(daemon_assets, tmp_path, int8_model / "model.onnx", int8_model / "scoring.yaml")
    with daemon(config) as d:
        assert d.finish() == 0, "\n".join(d.lines[-30:])
    summary = _check_db(tmp_path / "data" / "results.db")
    counters = summary["counters"]
    assert _accounted(counters) == LINE_FRAMES and counters["dropped"] == 0, counters
    assert counters["scored"] > 0, "the line has drums"
    with sqlite3.connect(tmp_path / "data" / "results.db") as conn:
        text = "\n".join(str(row) for row in conn.execute("SELECT * FROM verdicts"))
    assert "ast-tiny-int8" in text, "verdicts name the INT8 model"
    assert file_sha256(int8_model / "model.onnx") != file_sha256(daemon_assets.onnx)


def test_check_config_refuses_the_fp32_scoring_beside_the_int8_onnx(
    daemon_assets: DaemonAssets, int8_model: Path, tmp_path: Path
) -> None:
    config = _config(daemon_assets, tmp_path, int8_model / "model.onnx", daemon_assets.scoring)
    run = subprocess.run(
        [sys.executable, "-m", "edge.daemon.main", "--config", str(config), "--check-config"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "fitted for" in lines[0], run.stderr
