"""The daemon benchmark's readers: which families it measures, and its figures from a real results database."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge.daemon.app import COUNTERS
from edge.daemon.record import ModelScore, VerdictRecord
from edge.daemon.store import ResultStore
from tools.benchmarks import daemon


def test_every_scoring_family_is_measured_and_pretraining_stages_are_not() -> None:
    families = daemon.scoring_families()
    assert {"ast", "dsr3d"} <= set(families)
    assert "dada" not in families, "DADA is 3DSR's pretrained half, not a scorer"


def _record(sequence: int, host_ts_ns: int, total_ms: float, gap_before: int = 0) -> VerdictRecord:
    score = ModelScore(model="m", raw=0.1, score=0.2, verdict="OK", infer_ms=1.0)
    return VerdictRecord(
        sequence=sequence, frame_number=sequence, device_ts_ns=0, host_ts_ns=host_ts_ns, kind="frame", part_id=None,
        verdict="OK", late=False, roi_fill=0.9, scores=(score,), stage_ms={"total": total_ms}, roi_version="r",
        model_versions={"m": "a"}, scoring_versions={"m": "b"}, gap_before=gap_before,
    )  # fmt: skip


def test_figures_from_a_results_database(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.db")
    store.open()
    run_id = store.start_run({"source": "test", "config": {}, "versions": {}})
    n = daemon.WARMUP + 101
    for i in range(n):  # 30 frames/s of capture times; publish → verdict 10 ms, 50 ms every 50th verdict
        # frames 0 and 1 lost before the first verdict, one more before the 41st
        gap = {0: 2, 40: 1}.get(i, 0)
        store.write(_record(i + 2 + (i >= 40), 1_000_000_000 + round(i * 1e9 / 30), 50.0 if i % 50 == 0 else 10.0, gap))
    counters = dict.fromkeys(COUNTERS, 0) | {"scored": n, "dropped": 3, "published": n + 3}
    store.finish_run(run_id, counters)
    store.close()
    run = daemon.Run("t", 0, 1.0, tmp_path / "results.db", "")
    f = daemon.figures(run, frames_read=n + 5)
    assert f.fps == pytest.approx(30.0, rel=1e-3)
    assert f.p50 == 10.0 and 10.0 < f.p99 <= 50.0
    assert (f.scored, f.dropped) == (n, 3)
    assert f.dropped_at_start == 2, "the first verdict's gap_before: frames lost while the daemon started"
    assert f.unaccounted == 2, "frames of the recording in no counter"
    assert daemon.figures(run, frames_read=None).unaccounted == 0, "endless source: the ring's count is the reference"


def test_a_run_is_called_shared_only_when_the_load_before_it_was_high() -> None:
    cpus = os.cpu_count() or 1
    quiet = daemon.load_note(cpus / 4, cpus * 2.0, "figures are inflated")
    assert quiet.startswith("the machine was quiet at the start") and "inflated" not in quiet
    busy = daemon.load_note(cpus * 2.0, cpus * 2.0, "figures are inflated")
    assert busy.startswith("the machine was shared with other jobs") and "figures are inflated" in busy
