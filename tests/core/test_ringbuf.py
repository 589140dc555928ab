"""The shared-memory frame ring across real processes: zero copy, seqlock, policies, counters, cleanup."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np
import pytest
from _ring_procs import (
    attach_and_report_stats,
    color_value,
    depth_value,
    die_holding_a_reserved_slot,
    fill_slot_frames,
    small_spec,
    zero_copy_consumer,
)

from drivers.synthetic import SyntheticSource, SyntheticSourceConfig, render_frame
from edge.core.errors import EdgeError
from edge.core.frame import Frame
from edge.core.ringbuf import (
    FrameRing,
    RingAttachError,
    RingClosedError,
    RingError,
    RingFullError,
    RingPolicy,
    RingStats,
    RingTimeoutError,
    TornReadError,
)

REPO = Path(__file__).resolve().parents[2]
PROCS = Path(__file__).with_name("_ring_procs.py")
SPAWN = mp.get_context("spawn")


@pytest.fixture
def ring_name() -> Iterator[str]:
    """A unique segment name; the test fails if the segment is still in /dev/shm afterwards."""
    name = f"drumsight-test-{uuid.uuid4().hex[:10]}"
    yield name
    leaked = Path("/dev/shm", name).exists()
    if leaked:
        SharedMemory(name=name).unlink()
    assert not leaked, f"/dev/shm/{name} leaked"


def _frame(k: int) -> Frame:
    spec = small_spec()
    return Frame(
        color=np.full(spec.color_shape, color_value(k), np.uint8),
        depth=np.full(spec.depth_shape, depth_value(k), np.uint16),
        spec=spec,
        color_frame_number=1000 + k,
        depth_frame_number=2000 + k,
        device_ts_ns=10 * k,
        host_ts_ns=20 * k,
        sequence=k,
    )


def test_consumer_process_gets_views_into_the_segment_without_copy(ring_name: str) -> None:
    with FrameRing.create(small_spec(), name=ring_name, slots=4, policy=RingPolicy.LOSSLESS) as ring:
        ring.writer().write(_frame(7))
        out = SPAWN.Queue()
        proc = SPAWN.Process(target=zero_copy_consumer, args=(ring_name, out))
        proc.start()
        result = out.get(timeout=60)
        proc.join(30)
    assert proc.exitcode == 0
    assert result["content_ok"] and result["sequence"] == 7 and result["color_frame_number"] == 1007
    assert not result["writeable"], "consumers must not be able to scribble into the writer's slot"
    assert result["ranges"], "the consumer does not map the segment at all"
    for key in ("color", "depth"):
        lo, hi = result[f"{key}_addr"], result[f"{key}_addr"] + result[f"{key}_nbytes"]
        assert any(a <= lo and hi <= b for a, b in result["ranges"]), f"{key} is not a view of /dev/shm/{ring_name}"
        assert lo % 64 == 0, f"{key} plane is not 64-byte aligned"


def test_racing_writer_never_lets_an_overwritten_frame_through(ring_name: str) -> None:
    """Latest policy, 4 slots, a writer process at full speed and a reader that dawdles inside the block."""
    accepted = torn = inconsistent_accepted = 0
    with FrameRing.create(small_spec(), name=ring_name, slots=4, policy=RingPolicy.LATEST) as ring:
        stop = SPAWN.Event()
        proc = SPAWN.Process(target=fill_slot_frames, args=(ring_name, -1, 1.0, stop))
        proc.start()
        reader = ring.reader()
        end = time.monotonic() + 1.5
        try:
            while time.monotonic() < end:
                try:
                    with reader.read(timeout_s=20.0) as frame:
                        time.sleep(0.001)
                        consistent = bool(
                            (frame.color == color_value(frame.sequence)).all()
                            and (frame.depth == depth_value(frame.sequence)).all()
                        )
                        del frame
                    accepted += 1
                    inconsistent_accepted += not consistent
                except TornReadError:
                    torn += 1
        finally:
            stop.set()
            proc.join(30)
        stats = ring.stats()
    assert proc.exitcode == 0
    assert inconsistent_accepted == 0, f"{inconsistent_accepted} overwritten frames passed the seqlock"
    assert torn > 0, "the writer never overwrote a frame in use: the race was not exercised"
    assert stats.torn == torn and stats.delivered == accepted
    assert stats.dropped > 0 and stats.overruns > 0


def test_latest_policy_counts_every_overwritten_frame_exactly(ring_name: str) -> None:
    with FrameRing.create(small_spec(), name=ring_name, slots=4, policy=RingPolicy.LATEST) as ring:
        writer = ring.writer()
        for k in range(20):
            writer.write(_frame(k), timeout_s=0.0)
        out = SPAWN.Queue()
        proc = SPAWN.Process(target=attach_and_report_stats, args=(ring_name, out))
        proc.start()
        remote: RingStats = out.get(timeout=60)
        proc.join(30)
        assert (remote.written, remote.dropped, remote.pending, remote.delivered) == (20, 16, 4, 0)
        reader = ring.reader()
        seen = []
        for _ in range(4):
            with reader.read(timeout_s=1.0) as frame:
                seen.append((frame.sequence, int(frame.color[0, 0, 0]), frame.host_ts_ns))
        assert seen == [(k, color_value(k), 20 * k) for k in range(16, 20)]
        for k in range(20, 30):  # 10 more: slots hold 26..29, so 22 frames have been lost in all
            writer.write(_frame(k))
        with reader.read(timeout_s=1.0) as frame:
            assert frame.sequence == 26
        stats = ring.stats()
    assert (stats.written, stats.delivered, stats.dropped, stats.torn, stats.pending) == (30, 5, 22, 0, 3)


@pytest.mark.parametrize("poll_interval_s", [None, 20e-6], ids=["futex", "poll"])
def test_lossless_policy_delivers_every_frame_in_order_across_processes(
    ring_name: str, poll_interval_s: float | None
) -> None:
    with FrameRing.create(small_spec(), name=ring_name, slots=3, policy=RingPolicy.LOSSLESS) as ring:
        proc = SPAWN.Process(target=fill_slot_frames, args=(ring_name, 200, 20.0))
        proc.start()
        reader = ring.reader(poll_interval_s=poll_interval_s)
        got = []
        with pytest.raises(RingClosedError):
            while True:
                with reader.read(timeout_s=30.0) as frame:
                    assert (frame.color == color_value(frame.sequence)).all()
                    assert (frame.depth == depth_value(frame.sequence)).all()
                    got.append(frame.sequence)
        proc.join(30)
        stats = ring.stats()
    assert proc.exitcode == 0
    assert got == list(range(200))
    assert (stats.written, stats.delivered, stats.dropped, stats.torn, stats.closed) == (200, 200, 0, 0, True)


def test_source_reads_straight_into_the_reserved_slot(ring_name: str) -> None:
    """The capture path: ``source.read(out=slot.buffers)`` is the one copy; the metadata comes from the frame."""
    config = SyntheticSourceConfig(seed=3, n_frames=3, width=64, height=48)
    with SyntheticSource(config) as source, FrameRing.create(source.spec, name=ring_name, slots=4) as ring:
        writer, reader = ring.writer(), ring.reader()
        for _ in range(3):
            with writer.reserve() as slot:
                frame = source.read(1.0, out=slot.buffers)
                assert frame.color is slot.color and frame.depth is slot.depth
                slot.stamp(frame)
        for i in range(3):
            expected = render_frame(config, i)
            with reader.read(timeout_s=0.1) as got:
                np.testing.assert_array_equal(got.color, expected.color)
                np.testing.assert_array_equal(got.depth, expected.depth)
                assert (got.sequence, got.color_frame_number, got.spec) == (i, expected.color_frame_number, ring.spec)
        del got


def test_lossless_writer_without_reader_waits_then_raises_a_clear_error(ring_name: str) -> None:
    with FrameRing.create(small_spec(), name=ring_name, slots=3, policy="lossless") as ring:
        writer = ring.writer()
        for k in range(3):
            writer.write(_frame(k), timeout_s=0.0)
        t0 = time.perf_counter()
        with pytest.raises(RingFullError, match=r"no free slot for 0\.3 s") as err:
            writer.write(_frame(3), timeout_s=0.3)
        waited = time.perf_counter() - t0
        assert "consumer" in err.value.remedy and isinstance(err.value, EdgeError)
        assert 0.3 <= waited < 2.0
        with ring.reader().read(timeout_s=0.1) as frame:
            assert frame.sequence == 0
        assert writer.write(_frame(3), timeout_s=0.0) == 3  # the freed slot takes the next frame at once


def test_exception_inside_reserve_abandons_the_slot(ring_name: str) -> None:
    with FrameRing.create(small_spec(), name=ring_name, slots=2) as ring:
        writer, reader = ring.writer(), ring.reader()
        with pytest.raises(ZeroDivisionError), writer.reserve() as slot:
            slot.color.fill(9)
            _ = 1 / 0
        with pytest.raises(RingTimeoutError, match="no frame published"), reader.read(timeout_s=0.05):
            pass
        assert writer.write(_frame(5)) == 0
        with reader.read(timeout_s=0.1) as frame:
            assert frame.sequence == 5 and frame.color[0, 0, 0] == color_value(5)
        assert ring.stats().abandoned == 1


def test_a_writer_killed_holding_a_slot_is_abandoned_not_dropped(ring_name: str) -> None:
    """The next writer handle abandons the dead writer's reserved slot: the reader skips no index, so ``dropped``
    stays 0 (it counts frames overwritten unread) and ``written`` counts published frames."""
    with FrameRing.create(small_spec(), name=ring_name, slots=4) as ring:
        proc = SPAWN.Process(target=die_holding_a_reserved_slot, args=(ring_name,))
        proc.start()
        proc.join(30)
        assert proc.exitcode == 9
        writer, reader = ring.writer(), ring.reader()
        assert writer.write(_frame(7)) == 0, "the abandoned index is reused"
        with reader.read(timeout_s=1.0) as frame:
            assert frame.sequence == 7
        stats = ring.stats()
        assert (stats.abandoned, stats.dropped, stats.written, stats.delivered) == (1, 0, 1, 1)


def test_close_stream_drains_published_frames_then_signals_end(ring_name: str) -> None:
    with FrameRing.create(small_spec(), name=ring_name, slots=4) as ring:
        writer, reader = ring.writer(), ring.reader()
        writer.write(_frame(0))
        writer.close_stream()
        with reader.read(timeout_s=0.1) as frame:
            assert frame.sequence == 0
        with pytest.raises(RingClosedError), reader.read(timeout_s=5.0):
            pass
        with pytest.raises(RingError, match="stream was closed"):
            writer.write(_frame(1))


def test_foreign_or_missing_segment_names_give_clear_errors(ring_name: str) -> None:
    with pytest.raises(RingAttachError, match="no ring buffer segment named") as err:
        FrameRing.attach(ring_name)
    assert "start the producer" in err.value.remedy
    foreign = SharedMemory(name=ring_name, create=True, size=4096)
    try:
        foreign.buf[:8] = b"NOTARING"
        with pytest.raises(RingAttachError, match="not a drumsight frame ring"):
            FrameRing.attach(ring_name)
        assert Path("/dev/shm", ring_name).exists(), "a failed attach must leave a foreign segment alone"
        with pytest.raises(RingError, match="already exists"):
            FrameRing.create(small_spec(), name=ring_name)
    finally:
        foreign.close()
        foreign.unlink()


def test_ring_of_another_layout_version_is_refused(ring_name: str) -> None:
    with FrameRing.create(small_spec(), name=ring_name, slots=2):
        raw = SharedMemory(name=ring_name)
        struct.pack_into("<q", raw.buf, 8, 99)  # header word 1: layout version
        raw.close()
        with pytest.raises(RingAttachError, match="layout version 99, this build reads 1") as err:
            FrameRing.attach(ring_name)
        assert "same drumsight-edge release" in err.value.remedy


def _start_owner(mode: str, name: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(PROCS), mode, name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "ready", f"{mode} helper failed: {line!r} {proc.stderr.read() if proc.stderr else ''}"
    return proc


def _gone_within(name: str, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not Path("/dev/shm", name).exists():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("mode", ["exit", "sigterm", "sigkill", "sigkill-after-child"])
def test_owner_segment_is_unlinked_on_exit_sigterm_and_sigkill(mode: str, ring_name: str) -> None:
    proc = _start_owner(mode, ring_name)
    if mode != "exit":
        attacher = _start_owner("attach", ring_name)  # an unrelated process with its own resource tracker
        assert attacher.wait(30) == 0
        assert Path("/dev/shm", ring_name).exists(), "an attaching process unlinked the live owner's segment"
        proc.send_signal(signal.SIGTERM if mode == "sigterm" else signal.SIGKILL)
    code = proc.wait(30)
    assert code == {"exit": 0, "sigterm": 128 + signal.SIGTERM}.get(mode, -signal.SIGKILL)
    assert _gone_within(ring_name, 10.0), f"/dev/shm/{ring_name} survived the owner's {mode}"


def test_spawned_attacher_leaves_the_owners_segment_alone(ring_name: str) -> None:
    """A multiprocessing child shares the owner's resource tracker; its exit must not unlink the segment."""
    with FrameRing.create(small_spec(), name=ring_name, slots=2) as ring:
        out = SPAWN.Queue()
        proc = SPAWN.Process(target=attach_and_report_stats, args=(ring_name, out))
        proc.start()
        assert out.get(timeout=60).slots == 2
        proc.join(30)
        assert Path("/dev/shm", ring_name).exists()
        assert ring.stats().written == 0
