"""Evidence folders: content, OK sampling, exact oldest-first quota, and a genuinely full filesystem."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from edge.daemon.evidence import EvidenceError, EvidenceStore, render_overlay
from edge.daemon.record import Evidence, ModelScore, VerdictRecord

RNG = np.random.default_rng(7)


def record(seq: int, verdict: str = "NG") -> VerdictRecord:
    return VerdictRecord(
        sequence=seq,
        frame_number=seq,
        device_ts_ns=seq,
        host_ts_ns=1_767_225_600_000_000_000 + seq * 1_000_000,  # 2026-01-01 00:00 UTC
        kind="part",
        part_id=seq,
        verdict=verdict,  # type: ignore[arg-type]
        late=False,
        roi_fill=0.4,
        scores=(ModelScore("ast/s/fg", raw=2.0, score=0.7, verdict="NG", infer_ms=3.0),),
        stage_ms={"total": 12.0},
        roi_version="r1",
        model_versions={},
        scoring_versions={},
    )


def evidence(size: int = 24) -> Evidence:
    color = RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)
    depth = RNG.integers(0, 65536, (size, size), dtype=np.uint16)
    overlay = render_overlay(color, RNG.random((size, size), dtype=np.float32), vmax=1.0)
    return Evidence(color=color, depth=depth, overlay=overlay, extra={"threshold": np.float32(1.5)})


def read_png(path: Path) -> npt.NDArray[Any]:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return np.asarray(image)


def test_folder_content_round_trips(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path / "ev", quota_bytes=10_000_000)
    ev = evidence()
    folder = store.save(record(5), ev)
    assert folder is not None and folder.name == "00000005_NG"
    assert folder.parent.parent == tmp_path / "ev" and len(folder.parent.name) == 8
    color = read_png(folder / "color.png")
    assert np.array_equal(cv2.cvtColor(color, cv2.COLOR_BGR2RGB), ev.color)
    depth = read_png(folder / "depth.png")
    assert depth.dtype == np.uint16 and np.array_equal(depth, ev.depth)
    overlay = read_png(folder / "overlay.png")
    assert np.array_equal(cv2.cvtColor(overlay, cv2.COLOR_BGR2RGB), ev.overlay)
    meta = json.loads((folder / "record.json").read_text())
    assert meta["sequence"] == 5 and meta["scores"][0]["raw"] == 2.0 and meta["extra"]["threshold"] == 1.5
    assert store.usage_bytes == sum(f.stat().st_size for f in folder.iterdir())
    again = store.save(record(5), ev)  # a restarted daemon reuses sequence numbers: never overwrite
    assert again is not None and again != folder and (folder / "color.png").exists()


def test_warm_encodes_the_pictures_a_save_writes_and_writes_nothing(tmp_path: Path) -> None:
    """The start-up warm-up encodes the same three PNGs a save writes (byte for byte the same sizes), and leaves the
    evidence folder, its usage and its counts untouched."""
    ev = evidence(64)
    store = EvidenceStore(tmp_path / "ev", quota_bytes=10_000_000)
    encoded = store.warm(ev)
    assert list((tmp_path / "ev").iterdir()) == [] and store.saved == 0 and store.usage_bytes == 0
    folder = store.save(record(1), ev)
    assert folder is not None
    assert encoded == sum((folder / n).stat().st_size for n in ("color.png", "depth.png", "overlay.png")) > 0


def test_ok_sampling(tmp_path: Path) -> None:
    never = EvidenceStore(tmp_path / "a", quota_bytes=10_000_000)
    assert [never.save(record(i, "OK"), evidence()) for i in range(5)] == [None] * 5
    assert never.save(record(9, "ERROR"), evidence()) is None
    every3 = EvidenceStore(tmp_path / "b", quota_bytes=10_000_000, sample_ok_every=3)
    kept = [i for i in range(10) if every3.save(record(i, "OK"), evidence()) is not None]
    assert kept == [2, 5, 8]


def test_quota_deletes_oldest_first_exactly(tmp_path: Path) -> None:
    root = tmp_path / "ev"
    probe = EvidenceStore(tmp_path / "probe", quota_bytes=10_000_000)
    ev = evidence()
    first = probe.save(record(0), ev)
    assert first is not None
    one = probe.usage_bytes  # the same images and a same-length record → the same size every time
    store = EvidenceStore(root, quota_bytes=3 * one + one // 2)
    folders = [store.save(record(i), ev) for i in range(6)]
    assert all(f is not None for f in folders)
    alive = sorted(p.name for p in root.glob("*/*"))
    assert alive == ["00000003_NG", "00000004_NG", "00000005_NG"]
    assert store.deleted == 3 and store.usage_bytes == 3 * one <= store.quota_bytes

    reopened = EvidenceStore(root, quota_bytes=3 * one + one // 2)  # start-up scan, then oldest-first again
    assert reopened.usage_bytes == 3 * one
    reopened.save(record(6), ev)
    assert sorted(p.name for p in root.glob("*/*")) == ["00000004_NG", "00000005_NG", "00000006_NG"]


def test_oversized_evidence_and_bad_settings(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path / "ev", quota_bytes=100)
    assert store.save(record(0), evidence()) is None and not store.alarm
    with pytest.raises(EvidenceError, match="positive quota"):
        EvidenceStore(tmp_path / "x", quota_bytes=0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(EvidenceError, match="cannot create evidence folder"):
        EvidenceStore(blocker / "ev", quota_bytes=1000)


def test_render_overlay_colours_and_validation() -> None:
    crop = np.full((16, 16, 3), 128, np.uint8)
    amap = np.zeros((16, 16), np.float32)
    amap[:, 8:] = 5.0  # above vmax: clipped to the hot end
    out = render_overlay(crop, amap, vmax=2.0)
    assert out.shape == crop.shape and out.dtype == np.uint8
    cold, hot = out[0, 0].astype(int), out[0, 15].astype(int)
    assert cold[2] > cold[0] and hot[0] > hot[2]  # turbo: low = blue, high = red (RGB order)
    with pytest.raises(ValueError, match="must match"):
        render_overlay(crop, np.zeros((8, 8), np.float32), vmax=1.0)
    with pytest.raises(ValueError, match="positive"):
        render_overlay(crop, amap, vmax=0.0)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=False, capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 256 KiB tmpfs to fill a disk for real: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def fill(path: Path) -> None:
    """Write until the filesystem refuses (ENOSPC), as a filling disk would."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_full_disk_raises_alarm_and_resumes_after_space_is_freed(small_fs: Path) -> None:
    store = EvidenceStore(small_fs / "ev", quota_bytes=10_000_000, recheck_every=3)
    assert store.save(record(0), evidence()) is not None
    filler = small_fs / "filler.bin"
    fill(filler)

    assert store.save(record(1), evidence()) is None
    assert store.alarm and "disk full" in store.alarm_reason
    assert sorted(p.name for p in (small_fs / "ev").glob("*/*")) == ["00000000_NG"]  # partial folder removed
    assert [store.save(record(i), evidence()) for i in range(2, 8)] == [None] * 6  # rechecks find no room

    filler.unlink()
    results = [store.save(record(i), evidence()) for i in range(8, 11)]
    assert results[:2] == [None, None] and results[2] is not None  # resumes at the next recheck
    assert not store.alarm and store.alarm_reason == ""
    assert store.saved == 2


def test_read_only_filesystem_is_a_write_error_alarm(small_fs: Path) -> None:
    store = EvidenceStore(small_fs / "ev", quota_bytes=10_000_000, recheck_every=1)
    assert store.save(record(0), evidence()) is not None
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        assert store.save(record(1), evidence()) is None
        assert store.alarm and "write error" in store.alarm_reason
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    assert store.save(record(2), evidence()) is not None and not store.alarm


def test_ng_evidence_keeps_its_reserved_share_whatever_ok_sampling_does(tmp_path: Path) -> None:
    """Quota for 4 folders, half reserved for NG: a stream of sampled OK parts evicts only OK evidence, so the two
    newest NG folders survive it; without a reserve the same stream pushes every NG folder out."""
    probe = EvidenceStore(tmp_path / "probe", quota_bytes=10_000_000)
    ev = evidence()
    assert probe.save(record(0), ev) is not None
    one = probe.usage_bytes  # OK and NG folders of the same images are within a few bytes of each other
    quota = 4 * one + one // 2
    root = tmp_path / "ev"
    store = EvidenceStore(root, quota_bytes=quota, sample_ok_every=1, ng_reserve=0.5)
    for i in range(3):
        assert store.save(record(i, "NG"), ev) is not None
    for i in range(3, 20):
        assert store.save(record(i, "OK"), ev) is not None
    names = sorted(p.name for p in root.glob("*/*"))
    assert [n for n in names if n.endswith("_NG")] == ["00000001_NG", "00000002_NG"], names
    assert [n for n in names if n.endswith("_OK")] == ["00000018_OK", "00000019_OK"], "OK keeps only its share"
    assert store.ok_usage_bytes <= store.ok_quota_bytes and store.usage_bytes <= quota
    reopened = EvidenceStore(root, quota_bytes=quota, sample_ok_every=1, ng_reserve=0.5)  # the scan knows OK from NG
    assert reopened.ok_usage_bytes == store.ok_usage_bytes and reopened.usage_bytes == store.usage_bytes
    assert reopened.save(record(20, "NG"), ev) is not None  # NG may use the whole quota: the oldest folder goes
    assert sorted(p.name for p in root.glob("*/*"))[0] == "00000002_NG"

    starved = EvidenceStore(tmp_path / "none", quota_bytes=quota, sample_ok_every=1, ng_reserve=0.0)
    for i in range(3):
        starved.save(record(i, "NG"), ev)
    for i in range(3, 20):
        starved.save(record(i, "OK"), ev)
    assert not list((tmp_path / "none").glob("*/*_NG")), "the failure the reserve prevents"
    with pytest.raises(EvidenceError, match="ng_reserve"):
        EvidenceStore(tmp_path / "x", quota_bytes=1000, ng_reserve=1.5)
