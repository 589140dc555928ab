"""Prometheus metrics: independent registries, record observation, and a real scrape over HTTP."""

from __future__ import annotations

import re
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from edge.core.metrics import Metrics
from edge.daemon.record import ModelScore, VerdictRecord


def record(seq: int, verdict: str, total_ms: float, *, late: bool = False) -> VerdictRecord:
    return VerdictRecord(
        sequence=seq,
        frame_number=seq,
        device_ts_ns=seq,
        host_ts_ns=seq,
        kind="frame",
        part_id=None,
        verdict=verdict,  # type: ignore[arg-type]
        late=late,
        roi_fill=0.5,
        scores=(ModelScore("ast/s/fg", raw=1.0, score=0.2, verdict="OK", infer_ms=3.0),),
        stage_ms={"crop": 1.5, "infer:ast/s/fg": 3.0, "total": total_ms},
        roi_version="r",
        model_versions={},
        scoring_versions={},
    )


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_observed_records_show_up_in_a_real_scrape() -> None:
    m = Metrics()
    for i, (verdict, total) in enumerate([("OK", 4.0), ("OK", 12.0), ("NG", 40.0), ("ERROR", 0.5)]):
        m.observe(record(i, verdict, total, late=total > 30))
    m.observe_gated()
    m.observe_dropped("ring_full", 3)
    m.camera_reconnects.inc()
    m.child_restarts.labels(process="capture").inc()
    m.fps.set(29.5)
    m.evidence_alarm.set(1)
    m.ring_slots_pending.set(2)
    server = m.serve("127.0.0.1", 0)
    try:
        got = scrape(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        server.close()

    assert got[("edge_verdicts_total", (("result", "OK"),))] == 2
    assert got[("edge_verdicts_total", (("result", "NG"),))] == 1
    assert got[("edge_verdicts_total", (("result", "ERROR"),))] == 1
    assert got[("edge_frames_total", (("outcome", "scored"),))] == 3
    assert got[("edge_frames_total", (("outcome", "error"),))] == 1
    assert got[("edge_frames_total", (("outcome", "gated"),))] == 1
    assert got[("edge_frames_total", (("outcome", "dropped"),))] == 3
    assert got[("edge_frames_dropped_total", (("reason", "ring_full"),))] == 3
    assert got[("edge_late_frames_total", ())] == 1
    assert got[("edge_camera_reconnects_total", ())] == 1
    assert got[("edge_child_restarts_total", (("process", "capture"),))] == 1
    assert got[("edge_frames_per_second", ())] == 29.5
    assert got[("edge_evidence_alarm", ())] == 1
    assert got[("edge_ring_slots_pending", ())] == 2
    total_stage = (("stage", "total"),)
    assert got[("edge_stage_latency_seconds_count", total_stage)] == 4
    assert abs(got[("edge_stage_latency_seconds_sum", total_stage)] - 0.0565) < 1e-9
    # ms-scale buckets: 4 ms and 0.5 ms fall at or under 5 ms, 12 ms does not
    assert got[("edge_stage_latency_seconds_bucket", (("le", "0.005"), ("stage", "total")))] == 2
    assert got[("edge_stage_latency_seconds_bucket", (("le", "0.015"), ("stage", "total")))] == 3
    assert got[("edge_stage_latency_seconds_count", (("stage", "infer:ast/s/fg"),))] == 4


def test_registries_are_independent_and_names_follow_the_convention() -> None:
    a, b = Metrics(), Metrics()
    a.observe(record(0, "NG", 5.0))
    assert a.registry.get_sample_value("edge_verdicts_total", {"result": "NG"}) == 1
    assert b.registry.get_sample_value("edge_verdicts_total", {"result": "NG"}) == 0  # exported as zero from start
    names = {family.name for family in a.registry.collect()}
    assert names and all(re.fullmatch(r"edge_[a-z_]+", n) for n in names), names
    assert a.registry.get_sample_value("edge_frames_total", {"outcome": "dropped"}) == 0
