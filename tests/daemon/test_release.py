"""The release: signed model + scoring + ROI bundles (edge-sign / edge-verify / the daemon) and ``config_changes``.

The check is one function (``verify_release``); these tests reach it through every caller: ``edge-verify``,
``edge-daemon --check-config``, a real daemon start (exit 2, one line, no child, no database) and SIGHUP (the running
bundle stays, an alarm is raised, the refusal is a ``config_changes`` row).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge.core.scoring import file_sha256
from tests.daemon.conftest import DaemonAssets, daemon_config
from tests.daemon.test_daemon import ROOT, _free_port, _metric, daemon
from tools.sign import sign_main, verify_main


def _flip_threshold_digit(scoring: Path) -> None:
    """Change one byte of scoring.yaml: the threshold's first digit (the audit's 2.39 → 9.39)."""
    text = scoring.read_text()
    m = re.search(r"^threshold:\n(?:  .*\n)*?  value: (\d)", text, re.M)
    assert m is not None, text
    digit = str((int(m.group(1)) + 7) % 10)
    scoring.write_text(text[: m.start(1)] + digit + text[m.end(1) :])


def _bundle(tmp_path: Path, assets: DaemonAssets, **overrides: Any) -> tuple[Path, Path]:
    """A station folder: copies of ROI, model and scoring, a key pair, and edge.yaml trusting the key.

    Returns (edge.yaml, private key)."""
    station = tmp_path / "station"
    (station / "model").mkdir(parents=True)
    shutil.copy(assets.roi, station / "roi.yaml")
    shutil.copy(assets.onnx, station / "model" / "model.onnx")
    shutil.copy(assets.scoring, station / "model" / "scoring.yaml")
    key = tmp_path / "keys" / "release.key"
    assert sign_main(["--keygen", "--key", str(key)]) == 0
    config = daemon_config(assets, station / "data")
    config["roi"] = "roi.yaml"
    config["models"] = [{"name": "ast-tiny", "onnx": "model/model.onnx", "scoring": "model/scoring.yaml"}]
    config["release"] = {"public_key": str(key) + ".pub"}
    config.update(overrides)
    path = station / "edge.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path, key


def _check_config(config: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "edge.daemon.main", "--config", str(config), "--check-config"]
    return subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_signed_bundle_is_accepted_an_altered_or_unsigned_one_refused(
    daemon_assets: DaemonAssets, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, key = _bundle(tmp_path, daemon_assets)
    station = config.parent
    # unsigned, with a key configured
    assert verify_main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the release is unsigned: no manifest" in err and "edge-sign" in err
    # signed: edge-verify and --check-config accept, naming the release and the key
    assert sign_main(["--key", str(key), "--config", str(config), "--release", "line-7 2026-12"]) == 0
    manifest = json.loads((station / "release.json").read_text())
    assert manifest["files"]["scoring:ast-tiny"]["sha256"] == file_sha256(station / "model" / "scoring.yaml")
    assert set(manifest["files"]) == {"roi", "model:ast-tiny", "scoring:ast-tiny"}
    assert verify_main(["--config", str(config)]) == 0
    assert "signed by key" in capsys.readouterr().out
    ok = _check_config(config)
    assert ok.returncode == 0 and "release 'line-7 2026-12' signed by" in ok.stdout, ok.stderr
    # one byte of scoring.yaml altered: refused by edge-verify and --check-config, naming the file
    scoring = station / "model" / "scoring.yaml"
    original = scoring.read_bytes()
    _flip_threshold_digit(scoring)
    assert sum(a != b for a, b in zip(original, scoring.read_bytes(), strict=True)) == 1
    assert verify_main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scoring:ast-tiny has sha256" in err and "the signed release says" in err
    bad = _check_config(config)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "scoring:ast-tiny has sha256" in bad.stderr
    scoring.write_bytes(original)
    # the manifest edited (its signature no longer matches), or signed by another key
    text = (station / "release.json").read_text()
    (station / "release.json").write_text(text.replace("line-7", "line-8"))
    assert verify_main(["--config", str(config)]) == 2
    assert "does not match" in capsys.readouterr().err
    other = tmp_path / "other.key"
    assert sign_main(["--keygen", "--key", str(other)]) == 0
    assert sign_main(["--key", str(other), "--config", str(config)]) == 2  # refuses: not the trusted key
    assert "is not the private key of release.public_key" in capsys.readouterr().err
    assert verify_main(["--config", str(config), "--public-key", str(other) + ".pub"]) == 2
    assert "altered or signed with another key" in capsys.readouterr().err
    # an existing key is never overwritten
    assert sign_main(["--keygen", "--key", str(key)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_an_altered_bundle_stops_the_start_with_one_line_and_no_child(
    daemon_assets: DaemonAssets, tmp_path: Path
) -> None:
    config, key = _bundle(tmp_path, daemon_assets)
    assert sign_main(["--key", str(key), "--config", str(config)]) == 0
    _flip_threshold_digit(config.parent / "model" / "scoring.yaml")
    with daemon(config) as d:
        code = d.finish(30)
    assert code == 2 and len(d.lines) == 1, d.lines
    assert d.lines[0].startswith("edge-daemon: release error: the bundle differs from the signed release")
    assert not (config.parent / "data").exists(), "refused before the database, the ring or any child"


def _rows(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM config_changes ORDER BY id").fetchall()
    return [
        {**dict(r), "changes": json.loads(r["changes_json"]), "digests": json.loads(r["digests_json"])} for r in rows
    ]


def test_config_changes_at_start_and_on_sighup_and_a_refused_reload_keeps_the_running_bundle(
    daemon_assets: DaemonAssets, tmp_path: Path
) -> None:
    port = _free_port()
    source = {"type": "synthetic", "seed": 0, "width": 320, "height": 240, "frames_per_part": 3, "gap_frames": 2}
    config, key = _bundle(tmp_path, daemon_assets, source=source, metrics={"enabled": True, "port": port})
    station = config.parent
    scoring = station / "model" / "scoring.yaml"
    original = file_sha256(scoring)
    assert sign_main(["--key", str(key), "--config", str(config), "--release", "r1"]) == 0
    url = f"http://127.0.0.1:{port}/metrics"
    with daemon(config) as d:
        d.wait_for(r"event=ready", 60)
        start = d.wait_for(r"event=release_start signed_by=(\w+) release='r1' roi=\w+ .*changed=3")
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        assert f'edge_release_file_info{{file="scoring:ast-tiny",sha256="{original}"}} 1.0' in body
        assert _metric(body, "edge_release_signed") == 1 and _metric(body, "edge_release_alarm") == 0
        # one byte of scoring.yaml altered, not signed: SIGHUP is refused, the running models stay, alarm raised
        _flip_threshold_digit(scoring)
        altered = file_sha256(scoring)
        mark = len(d.lines)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for(r"event=release_rejected action=keep_running error=.*scoring:ast-tiny has sha256", after=mark)
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        assert _metric(body, "edge_release_alarm") == 1 and _metric(body, "edge_release_rejected_total") == 1
        assert not any("event=reloaded" in line for line in d.lines[mark:]), "the inference child was not told"
        # signed again: SIGHUP accepted, the change logged, exported and handed to the inference process
        assert sign_main(["--key", str(key), "--config", str(config), "--release", "r2"]) == 0
        mark = len(d.lines)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for(rf"event=release_changed file=scoring:ast-tiny old={original[:12]} new={altered[:12]}", after=mark)
        d.wait_for(r"role=inference .*event=reloaded", after=mark)
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        assert f'edge_release_file_info{{file="scoring:ast-tiny",sha256="{altered}"}} 1.0' in body
        assert f'sha256="{original}"' not in body and _metric(body, "edge_release_alarm") == 0
        d.proc.send_signal(signal.SIGTERM)
        assert d.finish() == 0, "\n".join(d.lines[-30:])
    db = station / "data" / "results.db"
    rows = _rows(db)
    assert [(r["event"], r["accepted"], r["release"]) for r in rows] == [
        ("start", 1, "r1"), ("reload", 0, ""), ("reload", 1, "r2")
    ]  # fmt: skip
    assert rows[0]["signed_by"] == start.group(1) and {c["file"] for c in rows[0]["changes"]} == set(rows[0]["digests"])
    assert rows[1]["changes"] == [{"file": "scoring:ast-tiny", "old": original, "new": altered}]
    assert "scoring:ast-tiny has sha256" in rows[1]["error"]
    assert rows[2]["changes"] == [{"file": "scoring:ast-tiny", "old": original, "new": altered}]
    assert rows[2]["digests"]["scoring:ast-tiny"] == altered and rows[2]["error"] == ""
    # the next start compares with the last accepted bundle of the database: the scoring file went back
    shutil.copy(daemon_assets.scoring, scoring)
    assert sign_main(["--key", str(key), "--config", str(config), "--release", "r3"]) == 0
    cfg = yaml.safe_load(config.read_text())
    cfg["source"]["n_frames"] = 4
    cfg["metrics"] = {"enabled": False}
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with daemon(config) as d:
        assert d.finish() == 0, "\n".join(d.lines[-30:])
    d.wait_for(rf"event=release_changed file=scoring:ast-tiny old={altered[:12]} new={original[:12]}")
    last = _rows(db)[-1]
    assert (last["event"], last["accepted"], last["release"]) == ("start", 1, "r3")
    assert last["changes"] == [{"file": "scoring:ast-tiny", "old": altered, "new": original}]


def test_a_database_from_before_the_table_gains_it_and_keeps_its_rows(tmp_path: Path) -> None:
    from edge.daemon.store import ResultStore

    db = tmp_path / "results.db"
    store = ResultStore(db)
    store.open()
    run = store.start_run({"source": "old"})
    store.close()
    with sqlite3.connect(db) as conn:  # as written by a daemon older than config_changes
        conn.execute("DROP TABLE config_changes")
    store = ResultStore(db)
    store.open()
    assert store.last_release_digests() is None
    store.add_config_change(run, "start", True, {"roi": "ab" * 32}, [{"file": "roi", "old": None, "new": "ab" * 32}])
    assert store.last_release_digests() == {"roi": "ab" * 32}
    store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT source FROM runs").fetchall() == [("old",)]
