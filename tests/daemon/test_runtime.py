"""The daemon's runtime section: each backend value, refusals before any child starts, and one inference path shared
with ``edge-bench`` (same frames → same verdicts)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.daemon.conftest import ConfigFactory, DaemonAssets
from tests.daemon.test_daemon import ROOT, daemon
from tools.bench import cli as bench


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "edge.daemon.main", "--config", str(config), "--check-config"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


def _stored(db: Path) -> dict[int, tuple[str, float]]:
    """frame number → (verdict, raw score) of the daemon's only model."""
    query = "SELECT v.frame_number, v.verdict, s.raw FROM verdicts v JOIN scores s ON s.verdict_id = v.id"
    with sqlite3.connect(db) as conn:
        return {int(n): (v, float(raw)) for n, v, raw in conn.execute(query)}


def test_auto_resolves_to_onnxruntime_on_the_cpu_here_and_check_config_says_so(make_config: ConfigFactory) -> None:
    run = _check(make_config(runtime={"backend": "auto", "threads": 1}))
    assert run.returncode == 0, run.stderr
    assert "runtime onnxruntime via CPUExecutionProvider on cpu, crop on cpu (auto:" in run.stdout


@pytest.mark.parametrize(
    ("runtime", "missing"),
    [
        ({"backend": "tensorrt"}, "runtime tensorrt is not available here: the tensorrt package is not installed"),
        ({"backend": "onnxruntime", "device": "cuda"}, "the installed onnxruntime has no CUDAExecutionProvider"),
        ({"backend": "onnxruntime", "crop": "cuda"}, "runtime crop cuda is not available here"),
    ],
)
def test_an_unavailable_backend_fails_check_config_and_start_with_one_line_and_no_child(
    make_config: ConfigFactory, runtime: dict[str, str], missing: str, tmp_path: Path
) -> None:
    config = make_config(runtime=runtime)
    run = _check(config)
    assert run.returncode == 2 and run.stdout == ""
    assert len(run.stderr.strip().splitlines()) == 1 and missing in run.stderr
    t0 = time.monotonic()
    start = subprocess.run([sys.executable, "-m", "edge.daemon.main", "--config", str(config)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert start.returncode == 2 and missing in start.stderr and len(start.stderr.strip().splitlines()) == 1
    assert time.monotonic() - t0 < 20
    assert not (tmp_path / "data" / "results.db").exists()  # nothing started: no database, no children


def test_unknown_backend_is_a_config_error(make_config: ConfigFactory) -> None:
    run = _check(make_config(runtime={"backend": "cuda"}))
    assert run.returncode == 2 and "runtime.backend" in run.stderr


def test_torch_backend_passes_the_gate_reports_its_runtime_and_gives_the_onnxruntime_verdicts(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    """The stand-in GPU engine, here on the CPU: the daemon builds it, gates it against ONNX Runtime on the golden
    crops edge-train stored, says what it runs on, and stores the verdicts the ONNX Runtime daemon stores."""
    dbs = {}
    for name, runtime in (("ort", {"backend": "onnxruntime", "threads": 1}), ("torch", {"backend": "torch",
                          "device": "cpu", "threads": 1, "precision": "fp32"})):  # fmt: skip
        config = make_config(runtime=runtime, storage={"data_dir": str(tmp_path / name), "evidence_quota_mb": 50})
        with daemon(config) as d:
            ready = d.wait_for(r"event=inference_ready .* runtime=(\S+)", timeout_s=90)
            assert ready.group(1) == ("torch/cpu" if name == "torch" else "onnxruntime/cpu"), "\n".join(d.lines)
            assert d.finish(120) == 0
            assert not any("event=parity_gate_failed" in ln for ln in d.lines)
        dbs[name] = _stored(tmp_path / name / "results.db")
    assert dbs["torch"].keys() == dbs["ort"].keys() and dbs["ort"]
    for n, (verdict, raw) in dbs["ort"].items():
        assert dbs["torch"][n][0] == verdict
        assert dbs["torch"][n][1] == pytest.approx(raw, rel=1e-4)


def test_daemon_and_bench_give_identical_verdicts_through_the_shared_path(
    daemon_assets: DaemonAssets, make_config: ConfigFactory, tmp_path: Path
) -> None:
    config = make_config(runtime={"backend": "onnxruntime", "threads": 1})
    with daemon(config) as d:
        assert d.finish(120) == 0
    stored = _stored(tmp_path / "data" / "results.db")
    report = tmp_path / "bench"
    argv = ["--data", str(daemon_assets.line), "--roi", str(daemon_assets.roi), "--models",
            str(daemon_assets.onnx.parent), "--report", str(report), "--split", "all", "--threads", "1"]  # fmt: skip
    assert bench.main(argv) == 0
    frames = json.loads((report / "report.json").read_text())["models"][0]["frames"]
    benched = {int(f["source"].rsplit("#", 1)[1]): (f["verdict"], float(f["raw"])) for f in frames}
    assert stored and set(stored) <= set(benched)  # the daemon gates empty stations; the bench scores every frame
    for n, (verdict, raw) in stored.items():
        assert benched[n] == (verdict, pytest.approx(raw, rel=1e-5))
