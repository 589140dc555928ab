"""edge.yaml validation: every error names the key path, the bad value, what is expected and the YAML line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from drivers.playback import PlaybackSourceConfig
from edge.core.ringbuf import RingPolicy
from edge.daemon.config import ConfigError, EdgeConfig, load_config, missing_files, parse_config
from edge.daemon.main import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "edge.example.yaml"

GOOD = """\
schema_version: 1
source:
  type: playback
  path: line.db3
roi: roi.yaml
models:
  - name: ast
    onnx: model/model.onnx
    scoring: model/scoring.yaml
"""


def _errors(text: str, path: Path = Path("/etc/edge/edge.yaml")) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, path)
    return info.value.lines


def test_minimal_config_gets_defaults_and_paths_relative_to_the_file(tmp_path: Path) -> None:
    config = parse_config(GOOD, tmp_path / "edge.yaml")
    assert isinstance(config.source, PlaybackSourceConfig)
    assert config.source.path == tmp_path / "line.db3"
    assert config.models[0].onnx == tmp_path / "model" / "model.onnx"
    assert config.roi == tmp_path / "roi.yaml"
    assert config.metrics.host == "127.0.0.1"
    assert not config.mqtt.enabled
    assert config.ring_policy() is RingPolicy.LOSSLESS, "auto: a recording is never dropped"


def test_auto_ring_policy_is_latest_for_a_live_camera(tmp_path: Path) -> None:
    text = GOOD.replace("  type: playback\n  path: line.db3\n", "  type: realsense\n")
    assert parse_config(text, tmp_path / "edge.yaml").ring_policy() is RingPolicy.LATEST
    explicit = text + "ring:\n  policy: lossless\n"
    assert parse_config(explicit, tmp_path / "edge.yaml").ring_policy() is RingPolicy.LOSSLESS


def test_bad_value_names_key_value_expectation_and_line() -> None:
    (line,) = _errors(GOOD + "gating:\n  min_roi_fill: 1.5\n")
    assert line.startswith("/etc/edge/edge.yaml:11: gating.min_roi_fill:")
    assert "less than or equal to 1" in line and "got 1.5" in line


def test_union_member_errors_name_the_source_key_not_the_tag() -> None:
    (line,) = _errors(GOOD.replace("  path: line.db3\n", "  path: line.db3\n  read_timeout_s: -1\n"))
    assert line.startswith("/etc/edge/edge.yaml:5: source.read_timeout_s:"), line
    assert "greater than 0" in line


def test_unknown_and_missing_keys_are_one_line_each() -> None:
    text = GOOD.replace("roi: roi.yaml\nmodels:\n", "models:\n").split("models:")[0] + "storage:\n  data_dri: /srv\n"
    lines = _errors(text)
    assert len(lines) == 2
    assert any(": models: Field required (missing)" in x for x in lines)
    assert any(x.startswith("/etc/edge/edge.yaml:6: storage.data_dri: Extra inputs") for x in lines)


def test_roi_may_be_left_out() -> None:
    """The roi key is optional (models of crop mode 'image', BAAD); preflight refuses it for other models."""
    assert parse_config(GOOD.replace("roi: roi.yaml\n", ""), Path("/etc/edge/edge.yaml")).roi is None


def test_unknown_source_type_lists_the_choices() -> None:
    (line,) = _errors(GOOD.replace("type: playback", "type: webcam"))
    assert "source" in line and "'realsense', 'playback', 'synthetic'" in line and "webcam" in line


def test_duplicate_model_names_and_wrong_schema_version() -> None:
    dup = GOOD + "  - name: ast\n    onnx: b.onnx\n    scoring: b.yaml\n"
    assert any("model names must be unique, repeated: ast" in x for x in _errors(dup))
    (line,) = _errors(GOOD.replace("schema_version: 1", "schema_version: 2"))
    assert "schema_version" in line and ":1:" in line


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    (line,) = _errors("schema_version: 1\nsource: [\n")
    assert "not valid YAML" in line and "edge.yaml:" in line
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_missing_files_are_named_by_key(tmp_path: Path) -> None:
    config = parse_config(GOOD, tmp_path / "edge.yaml")
    (tmp_path / "roi.yaml").write_text("x")
    missing = missing_files(config)
    assert [m.split(":")[0] for m in missing] == ["models.0.onnx", "models.0.scoring", "source.path"]


def test_check_config_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "edge.yaml"
    bad.write_text(GOOD + "latency_budget_ms: -5\n")
    assert main(["--config", str(bad), "--check-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "latency_budget_ms" in err[0] and "-5" in err[0]
    bad.write_text(GOOD)
    assert main(["--config", str(bad), "--check-config"]) == 2, "files the config names must exist"
    assert "roi: file" in capsys.readouterr().err
    for name in ("line.db3", "roi.yaml", "model/model.onnx", "model/scoring.yaml"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x")
    assert main(["--config", str(bad), "--check-config"]) == 2, "files that exist must also be readable"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "roi: ROI file" in err[0], err


def test_example_config_is_valid_and_documents_every_section() -> None:
    config = load_config(EXAMPLE)
    raw = yaml.safe_load(EXAMPLE.read_text())
    assert set(raw) == set(EdgeConfig.model_fields), "the example shows every top-level section"
    assert config.metrics.host == "127.0.0.1"
