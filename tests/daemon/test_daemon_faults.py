"""Real daemon processes against a failing results disk, a SIGKILL, and configs whose files do not fit together."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge.core.scoring import file_sha256
from edge.daemon.main import main
from edge.daemon.store import ResultStore
from tests.daemon.test_daemon import ROOT, Daemon, _db, _free_port, _metric, daemon

# The daemon with SQLITE_FULL injected: its results database may grow EXTRA_PAGES pages past what start-up wrote,
# exactly what a full disk does to SQLite (works everywhere, unlike mounting a small tmpfs).
FULL_AFTER = [
    "-c",
    "import sys, edge.daemon.store as s\n"
    "prepare = s._prepare\n"
    "def limited(conn, *args):\n"
    "    prepare(conn, *args)\n"
    "    pages = conn.execute('PRAGMA page_count').fetchone()[0]\n"
    "    conn.execute(f'PRAGMA max_page_count = {pages + 3}')\n"
    "s._prepare = limited\n"
    "from edge.daemon.main import main\n"
    "sys.exit(main(sys.argv[1:]))",
]
ENDLESS = {"type": "synthetic", "seed": 0, "width": 320, "height": 240, "frames_per_part": 3, "gap_frames": 2,
           "fps": 20, "realtime": True}  # fmt: skip


def _children(d: Daemon) -> list[int]:
    return [int(d.wait_for(rf"event=child_started process={p} pid=(\d+)").group(1)) for p in ("capture", "inference")]


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in "ZX"  # a zombie has exited (reaped by whoever adopted it)


def _final_counters(d: Daemon) -> dict[str, int]:
    counters: dict[str, int] = json.loads(d.wait_for(r"event=run_final run_id=\d+ counters=(\{.*\})").group(1))
    return counters


def _rows(config: Path, db: Path | None = None) -> int:
    with sqlite3.connect(db or _db(config)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return int(conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0])


def test_results_disk_full_mid_run_alarms_then_stops_in_bounded_time(make_config: Callable[..., Path]) -> None:
    """SQLITE_FULL mid-run: verdicts queue, the alarm metric goes up, and past storage.outage_limit_s the daemon
    stops in order — exit 1, both children gone, every verdict in the database or counted lost."""
    port = _free_port()
    config = make_config(
        source=ENDLESS, metrics={"enabled": True, "port": port},
        storage={"data_dir": str(make_config().parent / "data"), "outage_limit_s": 3, "pending_max": 100000},
    )  # fmt: skip
    with daemon(config, launch=FULL_AFTER) as d:
        pids = _children(d)
        d.wait_for(r"event=results_alarm state=on action=queue .*database or disk is full", timeout_s=60)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert _metric(body, "edge_results_alarm") == 1 and _metric(body, "edge_verdicts_pending") >= 1
        t0 = time.monotonic()
        assert d.finish(timeout_s=60) == 1, "\n".join(d.lines[-30:])
        assert time.monotonic() - t0 < 3 + 15, "bounded: the outage limit, then an orderly stop"
    d.wait_for(r"event=fatal error='results database unwritable for more than 3 s \(\d+ verdicts queued\)")
    assert all(_gone(pid) for pid in pids), "no child outlives the daemon"
    c = _final_counters(d)
    assert c["verdicts_lost"] > 0 and _rows(config) + c["verdicts_lost"] == c["scored"], c
    assert d.wait_for(r"event=verdicts_lost total=(\d+)").group(1) == str(c["verdicts_lost"])


def test_sigterm_during_a_results_outage_stops_at_once_and_counts_what_is_lost(
    make_config: Callable[..., Path],
) -> None:
    config = make_config(
        source=ENDLESS, storage={"data_dir": str(make_config().parent / "data"), "outage_limit_s": 600}
    )
    with daemon(config, launch=FULL_AFTER) as d:
        pids = _children(d)
        d.wait_for(r"event=results_alarm state=on", timeout_s=60)
        time.sleep(0.5)
        d.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert d.finish(timeout_s=60) == 1, "verdicts were lost: not a clean exit"
        assert time.monotonic() - t0 < 15, "SIGTERM is honoured during the outage"
    d.wait_for(r"event=stop_requested signal=SIGTERM")
    assert all(_gone(pid) for pid in pids)
    c = _final_counters(d)
    assert c["verdicts_lost"] > 0 and _rows(config) + c["verdicts_lost"] == c["scored"], c


def test_sigkill_leaves_a_run_that_summary_flags_with_what_is_known(make_config: Callable[..., Path]) -> None:
    config = make_config(source=ENDLESS)
    with daemon(config) as d:
        pids = _children(d)
        d.wait_for(r"event=ready")
        time.sleep(2.5)  # one counters update (every 2 s) stored
        d.proc.kill()
        d.finish(10)
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)  # orphans notice the dead parent and exit by themselves
    assert all(_gone(pid) for pid in pids)
    out = subprocess.run([sys.executable, "-m", "edge.daemon.main", "--summary", str(_db(config))], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True).stdout  # fmt: skip
    assert "NOT FINISHED" in out, out
    assert "frames published to the ring" in out and "accounted nowhere" in out, out
    with daemon(config) as again:  # the next start names the stale run
        again.wait_for(r"event=unfinished_runs count=1 latest=1 ")
        again.proc.send_signal(signal.SIGTERM)
        assert again.finish() == 0


# -- preflight: every start check in the main process, for --check-config and the start alike -------------------


def _edit_yaml(path: Path, change: Callable[[dict[str, Any]], None], out: Path) -> Path:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    out.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return out


def _mismatch(case: str, assets: Any, tmp: Path) -> tuple[dict[str, Any], str]:  # noqa: PLR0911 (one per case)
    """Config overrides that make ``case`` true, and the text its one error line must hold."""
    model = {"name": "ast-tiny", "onnx": str(assets.onnx), "scoring": str(assets.scoring)}
    if case == "roi_of_another_camera":
        roi = _edit_yaml(assets.roi, lambda d: d["camera"].update(serial="OTHER-CAM"), tmp / "roi.yaml")
        return {"roi": str(roi)}, "ROI was calibrated on 'OTHER-CAM'"
    if case == "roi_the_model_was_not_trained_with":
        roi = _edit_yaml(assets.roi, lambda d: d.update(margin_m=d["margin_m"] + 0.01), tmp / "roi.yaml")
        return {"roi": str(roi)}, "was trained with ROI version"
    if case == "scoring_of_another_onnx":
        scoring = _edit_yaml(
            assets.scoring, lambda d: d["model"].update(artefact_sha256="0" * 64), tmp / "scoring.yaml"
        )
        return {"models": [{**model, "scoring": str(scoring)}]}, "scoring file was fitted for"
    if case == "missing_model":
        return {"models": [{**model, "onnx": str(tmp / "gone.onnx")}]}, "models.0.onnx: file"
    if case == "corrupt_model":
        onnx = tmp / "model.onnx"
        onnx.write_bytes(assets.onnx.read_bytes()[:2000])
        scoring = _edit_yaml(
            assets.scoring, lambda d: d["model"].update(artefact_sha256=file_sha256(onnx)), tmp / "s.yaml"
        )
        return {"models": [{**model, "onnx": str(onnx), "scoring": str(scoring)}]}, "is not a loadable ONNX model"
    if case == "corrupt_roi":
        (tmp / "roi.yaml").write_text("camera: [", encoding="utf-8")
        return {"roi": str(tmp / "roi.yaml")}, "roi: ROI file"
    assert case == "corrupt_recording"
    rec = tmp / "line.db3"
    rec.write_bytes(assets.line.read_bytes()[:4096])
    return {"source": {"type": "playback", "path": str(rec)}}, f"source: {rec}"


CASES = ["roi_of_another_camera", "roi_the_model_was_not_trained_with", "scoring_of_another_onnx", "missing_model",
         "corrupt_model", "corrupt_roi", "corrupt_recording"]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_check_config_and_start_refuse_each_mismatch_in_one_line(
    case: str, make_config: Callable[..., Path], daemon_assets: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    (tmp_path / "bad").mkdir()
    overrides, expected = _mismatch(case, daemon_assets, tmp_path / "bad")
    config = make_config(**overrides)
    assert main(["--config", str(config), "--check-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # One line per problem: an ROI of another camera is also not the ROI the model was trained with (its version
    # covers the camera binding), so that case names both; every other case is exactly one line.
    assert len(err) == (2 if case == "roi_of_another_camera" else 1) and expected in err[0], err
    assert all(line.startswith(f"edge-daemon: config error: {config}: ") for line in err), err
    start = subprocess.run([sys.executable, "-m", "edge.daemon.main", "--config", str(config)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert start.returncode == 2, start.stdout + start.stderr
    assert start.stderr.strip().splitlines() == err, "the start says what --check-config says"
    assert "child_started" not in start.stdout and "Traceback" not in start.stderr, "no child was spawned"
    assert not _db(config).exists(), "nothing was started"


def test_check_config_accepts_the_good_config_and_compares_a_named_camera(
    make_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(make_config()), "--check-config"]) == 0
    assert "is valid" in capsys.readouterr().out
    live = make_config(source={"type": "realsense", "serial": "123456789"})  # not opened: only the serial compared
    assert main(["--config", str(live), "--check-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "source.serial: camera '123456789' is not the one the ROI was calibrated on" in err[0]
    assert main(["--config", str(live)]) == 2, "the start refuses it before looking for the camera"
    assert capsys.readouterr().err.strip().splitlines() == err
    roi_serial = yaml.safe_load(Path(yaml.safe_load(live.read_text())["roi"]).read_text())["camera"]["serial"]
    absent = make_config(source={"type": "realsense", "serial": roi_serial})  # the right camera, not plugged in
    assert main(["--config", str(absent), "--check-config"]) == 0
    assert main(["--config", str(absent)]) == 1, "a camera not there (yet) is not a config error: systemd retries"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and roi_serial in err[0], err


def test_a_start_with_retention_prunes_the_previous_runs_and_the_file_shrinks(make_config: Callable[..., Path]) -> None:
    """Two runs of the recording; the second starts with max_db_mb below one run's verdicts: it deletes the oldest
    (the first run's) at start, gives the pages back to the disk, and still writes its own."""
    config = make_config()
    with daemon(config) as d:
        assert d.finish() == 0
    first = _rows(config)
    size = _db(config).stat().st_size
    with sqlite3.connect(_db(config)) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        per_row = size / first
    data = str(make_config().parent / "data")
    config = make_config(storage={"data_dir": data, "max_db_mb": 1e-6 * per_row * first / 2, "retention_days": 30})
    with daemon(config) as d:
        assert d.finish() == 0
    pruned = int(d.wait_for(r"event=pruned verdicts=(\d+) bytes_before=\d+ bytes_after=\d+").group(1))
    with sqlite3.connect(_db(config)) as conn:
        by_run = dict(conn.execute("SELECT run_id, COUNT(*) FROM verdicts GROUP BY run_id").fetchall())
    assert pruned >= first // 2 and by_run.get(1, 0) == first - pruned and by_run[2] == first, (pruned, by_run)


@pytest.fixture
def data_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs as the daemon's data dir (room for the WAL): a real disk that the test fills and frees."""
    mount = tmp_path / "disk"
    mount.mkdir()
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True,
                         check=False)  # fmt: skip
    if run.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {run.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:  # unbuffered: nothing left to flush (and fail) at close
        try:
            while f.write(b"\0" * 4096):
                pass
        except OSError:
            pass
    return filler


def test_a_real_full_disk_queues_verdicts_and_writes_them_all_when_space_returns(
    make_config: Callable[..., Path], data_disk: Path
) -> None:
    storage = {"data_dir": str(data_disk), "outage_limit_s": 120, "evidence_quota_mb": 1}
    config = make_config(source=ENDLESS, storage=storage)
    with daemon(config) as d:
        d.wait_for(r"event=ready")
        filler = _fill(data_disk)
        d.wait_for(r"event=results_alarm state=on .*(full|disk I/O)", timeout_s=60)
        time.sleep(1.0)  # verdicts queue meanwhile
        filler.unlink()
        d.wait_for(r"event=results_alarm state=off", timeout_s=30)
        d.proc.send_signal(signal.SIGTERM)
        assert d.finish() == 0, "\n".join(d.lines[-30:])
    c = _final_counters(d)
    assert c["verdicts_lost"] == 0 and _rows(config, data_disk / "results.db") == c["scored"] > 0, c


def test_a_start_on_a_full_results_disk_names_the_disk_and_spawns_nothing(
    make_config: Callable[..., Path], data_disk: Path
) -> None:
    store = ResultStore(data_disk / "results.db")  # last week's database, then the disk filled up
    store.open()
    store.start_run({"source": "earlier"})
    store.close()
    _fill(data_disk)
    config = make_config(storage={"data_dir": str(data_disk)})
    with daemon(config) as d:
        assert d.finish(timeout_s=60) == 1, "not a config error: systemd retries until space is freed"
    fatal = d.wait_for(r"event=fatal error='(.*)'").group(1)
    assert f"(disk mounted at {data_disk}: 0.0 MB free of 16.8 MB)" in fatal and "corrupt" not in fatal, fatal
    assert not any("child_started" in line for line in d.lines)
