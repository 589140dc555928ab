"""The daemon as a real process tree on a real recording: accounting, SIGTERM drain, sd_notify, metrics, faults."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.synthetic import SyntheticSourceConfig, plan
from edge.daemon.store import read_summary

ROOT = Path(__file__).resolve().parents[2]
LINE_FRAMES = 30


class Daemon:
    """``python -m edge.daemon.main`` with its stdout collected line by line by a thread."""

    def __init__(self, config: Path, env: dict[str, str] | None = None, launch: list[str] | None = None) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, *(launch or ["-m", "edge.daemon.main"]), "--config", str(config)],
            cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout_s: float = 30.0, after: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                if m := re.search(pattern, line):
                    return m
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r}; output:\n" + "\n".join(self.lines[-40:]))

    def finish(self, timeout_s: float = 60.0) -> int:
        code = self.proc.wait(timeout_s)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextmanager
def daemon(config: Path, env: dict[str, str] | None = None, launch: list[str] | None = None) -> Iterator[Daemon]:
    d = Daemon(config, env, launch)
    try:
        yield d
    finally:
        d.kill()


@contextmanager
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A datagram socket playing systemd: collects every sd_notify message sent to it."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.1)
    messages: list[str] = []
    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                continue

    t = threading.Thread(target=collect, daemon=True)
    t.start()
    try:
        yield str(path), messages
    finally:
        stop.set()
        t.join(2)
        sock.close()


def _db(config: Path) -> Path:
    return config.parent / "data" / "results.db"


def _check_db(db: Path) -> dict[str, Any]:
    """The database opens, passes integrity_check, and has one verdict row per counted scored frame."""
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]
    summary = read_summary(db)
    assert rows == summary["records"] == summary["counters"]["scored"]
    return summary


def _accounted(counters: dict[str, int]) -> int:
    c = counters
    return c["scored"] + c["gated"] + c["waiting"] + c["dropped"] + c["capture_lost"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metric(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_recording_fully_accounted_with_sd_notify(make_config: Callable[..., Path], tmp_path: Path) -> None:
    """Every frame of the recording is scored, gated or dropped; READY, WATCHDOG and STOPPING reach systemd."""
    config = make_config()
    with (
        notify_socket(tmp_path) as (address, messages),
        daemon(config, {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "100000"}) as d,
    ):
        assert d.finish() == 0, "\n".join(d.lines[-30:])
        time.sleep(0.2)
    summary = _check_db(_db(config))
    counters = summary["counters"]
    assert _accounted(counters) == LINE_FRAMES, counters
    assert counters["dropped"] == 0, "a lossless ring on a recording drops nothing"
    assert counters["gated"] > 0 and counters["scored"] > 0, "the line has empty gaps and drums"
    assert messages.count("READY=1") == 1
    assert "WATCHDOG=1" in messages
    assert messages.index("READY=1") < messages.index("WATCHDOG=1")
    assert messages[-1] == "STOPPING=1" or "STOPPING=1" in messages
    assert any(m.startswith("STATUS=source=") for m in messages)
    assert any("database:" in line for line in d.lines), "the exit summary names the database"


def test_sigterm_drains_every_read_frame_and_metrics_answer(make_config: Callable[..., Path]) -> None:
    """An endless synthetic line: metrics answer, SIGHUP reloads, SIGTERM exits 0 with every frame read accounted."""
    port = _free_port()
    source = {"type": "synthetic", "seed": 0, "width": 320, "height": 240, "frames_per_part": 3, "gap_frames": 2}
    config = make_config(source=source, metrics={"enabled": True, "port": port})
    with daemon(config) as d:
        d.wait_for(r"event=ready")
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert _metric(body, "edge_frames_total") > 0, "frames are counted on the endpoint"
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for(r"role=inference .*event=reloaded roi_version=\w+")
        d.proc.send_signal(signal.SIGTERM)
        assert d.finish() == 0, "\n".join(d.lines[-30:])
    final = d.wait_for(r"event=ring_final written=(\d+) delivered=(\d+)")
    summary = _check_db(_db(config))
    c = summary["counters"]
    delivered = int(final.group(2))
    assert c["scored"] + c["gated"] + c["waiting"] == delivered, "every frame the inference read is in the DB counts"
    assert c["dropped"] == 0 and delivered == int(final.group(1)), "lossless: every published frame was read"
    assert summary["finished_ns"] is not None


@pytest.mark.parametrize(
    ("process", "resumed"),
    [
        ("capture", r"event=capture_resumed skipped_frames=\d+"),
        ("inference", r"event=inference_ready pid=(?!{pid}\b)\d+"),  # its successor, on fresh pipes
    ],
)
def test_a_child_killed_mid_stream_is_restarted_counted_and_every_frame_accounted(
    make_config: Callable[..., Path], process: str, resumed: str
) -> None:
    """SIGKILL a child mid-stream: it is restarted and counted, the daemon never hangs (a killed inference child may
    die mid-message), keeps every verdict the dead child sent and counts each frame of the line exactly once."""
    frames = 60  # paced at 20 fps, so the kill always lands mid-stream
    source = {"type": "synthetic", "seed": 0, "width": 320, "height": 240, "frames_per_part": 3, "gap_frames": 2,
              "n_frames": frames, "fps": 20, "realtime": True}  # fmt: skip
    config = make_config(source=source)
    with daemon(config) as d:
        pid = int(d.wait_for(rf"event=child_started process={process} pid=(\d+)").group(1))
        d.wait_for(r"event=ready")
        time.sleep(0.3)  # a few frames scored first
        os.kill(pid, signal.SIGKILL)
        d.wait_for(rf"event=child_crashed process={process} cause='signal SIGKILL' action=restart")
        d.wait_for(resumed.format(pid=pid))
        assert d.finish() == 0, "\n".join(d.lines[-30:])
    c = _check_db(_db(config))["counters"]
    assert c[f"restarts_{process}"] == 1
    # What the dead child took with it (the frame in flight, frames the ring overwrote meanwhile) is counted dropped.
    assert _accounted(c) == frames, c
    if process == "capture":  # the frame in flight is capture_lost; dropped is what the ring dropped, as it says
        final = d.wait_for(r"event=ring_final written=\d+ delivered=\d+ dropped=(\d+) torn=(\d+) capture_lost=(\d+)")
        ring_dropped, ring_torn, capture_lost = map(int, final.groups())
        assert c["dropped"] == ring_dropped + ring_torn and c["capture_lost"] == capture_lost <= 1, (final.groups(), c)


def test_bad_config_names_the_key(make_config: Callable[..., Path]) -> None:
    config = make_config(gating={"min_roi_fill": 1.5, "mode": "per_frame"})
    run = subprocess.run(
        [sys.executable, "-m", "edge.daemon.main", "--config", str(config), "--check-config"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "gating.min_roi_fill" in lines[0] and "1.5" in lines[0] and "less than or equal to 1" in lines[0]
    assert re.search(rf"{re.escape(str(config))}:\d+:", lines[0]), "the YAML line is named"


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: too small for one evidence folder, so every evidence write fails with ENOSPC."""
    mount = tmp_path / "data" / "evidence"
    mount.mkdir(parents=True)
    run = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if run.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {run.stderr.decode().strip()}")
    try:
        (mount / "filler").write_bytes(b"\0" * 60_000)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_evidence_disk_keeps_verdicts_flowing(make_config: Callable[..., Path], full_disk: Path) -> None:
    config = make_config(storage={"data_dir": str(full_disk.parent), "evidence_quota_mb": 100, "sample_ok_every": 1})
    with daemon(config) as d:
        assert d.finish() == 0, "\n".join(d.lines[-30:])
    d.wait_for(r"event=evidence_alarm state=on")
    c = _check_db(_db(config))["counters"]
    assert _accounted(c) == LINE_FRAMES
    assert c["scored"] > 0 and c["evidence_saved"] == 0 and c["evidence_skipped"] == c["scored"]


def test_per_part_scores_each_drum_once_on_its_nth_frame(make_config: Callable[..., Path]) -> None:
    """per_part, stable_frames 3 on 4-frame parts with 1-frame gaps: one 'part' row per drum, on its 3rd frame."""
    stable = 3
    source = {"type": "synthetic", "seed": 0, "width": 320, "height": 240, "frames_per_part": 4, "gap_frames": 1,
              "n_frames": 20, "defect_rate": 0.5}  # fmt: skip
    config = make_config(source=source, gating={"min_roi_fill": 0.2, "mode": "per_part", "stable_frames": stable})
    with daemon(config) as d:
        assert d.finish() == 0, "\n".join(d.lines[-30:])
    truth = SyntheticSourceConfig.model_validate(source)
    plans = [plan(truth, i) for i in range(20)]
    parts = sorted({p.part for p in plans if p.drum is not None})
    expected = [min(i for i, p in enumerate(plans) if p.part == part) + stable - 1 for part in parts]
    c = _check_db(_db(config))["counters"]
    with sqlite3.connect(_db(config)) as conn:
        rows = conn.execute("SELECT sequence, kind, part_id FROM verdicts ORDER BY sequence").fetchall()
    assert [r[0] for r in rows] == expected, "each part is scored on its stable_frames-th frame, once"
    assert {r[1] for r in rows} == {"part"}
    assert len({r[2] for r in rows}) == len(parts), "a distinct part_id per drum"
    assert _accounted(c) == 20, c
    assert c["dropped"] == 0 and c["scored"] == len(parts)
    assert c["gated"] == sum(p.drum is None for p in plans)
    assert c["waiting"] == 20 - c["gated"] - c["scored"]


def test_latest_ring_under_backlog_drops_oldest_and_records_gaps(make_config: Callable[..., Path]) -> None:
    """The recording read as fast as the file allows into a 2-slot latest ring, two models: a sure backlog (the
    reader is far faster than inference on any machine), whose losses are counted exactly.

    The code's relation: ring ``dropped`` (overwritten before claim) is the sum of gap_before over every frame the
    inference read, recorded or not; a torn read is counted once more. With nothing gated, every frame missing from
    the database is one of those, so the sequence gaps between verdict rows add up to the ``dropped`` counter.
    """
    model = yaml.safe_load(make_config().read_text(encoding="utf-8"))["models"][0]
    models = [{**model, "name": f"ast-{i}"} for i in range(2)]  # twice the work per frame
    config = make_config(models=models, ring={"slots": 2, "policy": "latest"},
                         gating={"min_roi_fill": 0.0, "mode": "per_frame"})  # fmt: skip
    with daemon(config) as d:
        assert d.finish() == 0, "\n".join(d.lines[-30:])
    final = d.wait_for(r"event=ring_final written=(\d+) delivered=(\d+) dropped=(\d+) torn=(\d+)")
    written, delivered, ring_dropped, ring_torn = map(int, final.groups())
    c = _check_db(_db(config))["counters"]
    with sqlite3.connect(_db(config)) as conn:
        rows = conn.execute("SELECT sequence, gap_before FROM verdicts ORDER BY sequence").fetchall()
    frames = written
    assert c["dropped"] > 0 and frames >= 20, (c, written)
    assert _accounted(c) == frames, c
    assert c["gated"] == c["waiting"] == 0 and c["scored"] == delivered == len(rows)
    assert c["torn"] == ring_torn and c["dropped"] == ring_dropped + ring_torn, (final.groups(), c)
    assert rows[-1][0] == frames - 1, "the newest frame is never overwritten: the last one is always scored"
    seqs = [seq for seq, _ in rows]
    missing = [seq - prev - 1 for prev, seq in zip([-1, *seqs[:-1]], seqs, strict=True)]
    assert sum(missing) == c["dropped"], "every frame absent from the database is counted dropped"
    assert all(gap <= miss for (_, gap), miss in zip(rows, missing, strict=True)), "gap_before never overstates"
    assert sum(gap for _, gap in rows) <= ring_dropped, "a torn frame's gap_before is counted but not recorded"


def test_capture_opens_its_source_only_once_inference_is_ready(make_config: Callable[..., Path]) -> None:
    """A recording paced like a camera into a ``latest`` ring: capture opens its source only after the inference
    process has loaded and warmed up its model and its evidence path, so no frame is overwritten while the model
    loads — the first verdict is frame 0 with nothing missing before it (before, the frames published during start-up
    were counted dropped)."""
    base = yaml.safe_load(make_config().read_text(encoding="utf-8"))
    config = make_config(source={**base["source"], "rate_fps": 30.0}, ring={"slots": 2, "policy": "latest"},
                         gating={"min_roi_fill": 0.0, "mode": "per_frame"})  # fmt: skip
    with daemon(config) as d:
        assert d.finish() == 0, "\n".join(d.lines[-30:])

    def first(pattern: str) -> int:
        return next(i for i, line in enumerate(d.lines) if re.search(pattern, line))

    # one process logs after the other has acted on its message: the order of the lines is the order of the events
    assert first(r"event=model_runtime .*warmup_ms=") < first("event=inference_ready") < first("event=capture_open")
    # the evidence path is warmed with the models (a blank frame's evidence rendered, then encoded by main), before
    # the first frame: its one-time allocations are not paid on the first NG part (docs/daemon.md, memory)
    warmed = [m for line in d.lines if (m := re.search(r"event=evidence_warmed pid=\d+ bytes=(\d+)", line))]
    assert len(warmed) == 1 and int(warmed[0].group(1)) > 0, "the evidence path was not warmed at start-up"
    assert first("event=evidence_warmed") < first("event=inference_ready")
    with sqlite3.connect(_db(config)) as conn:
        rows = conn.execute("SELECT sequence, gap_before FROM verdicts ORDER BY sequence LIMIT 1").fetchall()
    assert rows == [(0, 0)], "the first frame published is the first frame scored"
