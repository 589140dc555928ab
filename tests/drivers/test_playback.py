"""Playback of real recordings: the shared D435 .bag and .db3 files written by the SDK's software device."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyrealsense2 as rs
import pytest
from conftest import FIRST_FRAME_NUMBER, SERIAL, Recording, RecordingFactory

from drivers.base import FrameBuffers
from drivers.errors import EndOfStreamError, RecordingError, SourceError
from drivers.playback import PlaybackSource, PlaybackSourceConfig


def _source(path: Path, **kw: object) -> PlaybackSource:
    return PlaybackSource(PlaybackSourceConfig(path=path, **kw))


def test_shared_bag_plays_with_the_files_own_settings(shared_bag: Path) -> None:
    # The file is 6 fps: a driver that asked the SDK for the usual 30 fps could not even resolve it.
    strict = rs.config()
    strict.enable_device_from_file(str(shared_bag), repeat_playback=False)
    strict.enable_stream(rs.stream.color, 640, 480, rs.format.rgb8, 30)
    assert not strict.can_resolve(rs.pipeline_wrapper(rs.pipeline()))

    with _source(shared_bag) as src:
        spec = src.spec
        assert spec.fps == 6
        assert spec.color_shape == (480, 640, 3) and spec.color_format == "rgb8"
        assert spec.serial == "728612070259"
        assert spec.depth_scale == pytest.approx(0.001)
        assert spec.depth_aligned_to_color and spec.depth_intrinsics == spec.color_intrinsics
        assert spec.depth_to_color.is_identity()
        frame = src.read(5.0)
        assert frame.depth.shape == (480, 640) and frame.color.shape == (480, 640, 3)
        assert frame.depth.dtype == np.uint16 and frame.color.dtype == np.uint8
        assert (frame.depth > 0).mean() > 0.3  # alignment carried real depth over, not an empty image
        assert frame.color.std() > 10
        # The file holds depth 169, color 162, depth 170 in that order; 169 is the one nearer in time to the color
        # (102 ms against 268 ms), and pairing in file order picks it.
        assert (frame.depth_frame_number, frame.color_frame_number) == (169, 162)
        assert frame.device_ts_ns == round(360815.089 * 1e6)
        assert frame.sequence == 0 and abs(frame.host_ts_ns - time.time_ns()) < 5e9
        t0 = time.perf_counter()
        with pytest.raises(EndOfStreamError, match="after 1 frames"):
            src.read(5.0)
        assert time.perf_counter() - t0 < 2.0  # end detected from the playback status, not by a 5 s timeout
        with pytest.raises(EndOfStreamError):
            src.read(5.0)
    assert not src.ready


def test_shared_bag_unaligned_keeps_depth_calibration(shared_bag: Path) -> None:
    with _source(shared_bag, align_to_color=False) as src:
        spec = src.spec
        assert not spec.depth_aligned_to_color
        assert spec.depth_intrinsics.fx == pytest.approx(390.431, abs=1e-3)
        assert spec.color_intrinsics.fx == pytest.approx(613.204, abs=1e-3)
        assert spec.depth_intrinsics.model == "brown_conrady"
        # The same extrinsics the SDK reports for the file, in the project's row-major convention.
        pipe, cfg = rs.pipeline(), rs.config()
        cfg.enable_device_from_file(str(shared_bag), repeat_playback=False)
        streams = {s.stream_type(): s for s in cfg.resolve(rs.pipeline_wrapper(pipe)).get_streams()}
        sdk = streams[rs.stream.depth].get_extrinsics_to(streams[rs.stream.color])
        assert spec.depth_to_color.translation == pytest.approx(list(sdk.translation))
        assert np.asarray(spec.depth_to_color.rotation).reshape(3, 3).T.ravel() == pytest.approx(list(sdk.rotation))
        assert not spec.depth_to_color.is_identity()
        assert len(list(src.frames())) == 1


def test_db3_round_trip_is_exact_and_in_order(recording: Recording) -> None:
    with _source(recording.path, align_to_color=False) as src:
        spec = src.spec
        assert (spec.serial, spec.fps, spec.color_shape) == (SERIAL, recording.fps, (48, 64, 3))
        frames = [(f.color.copy(), f.depth.copy(), f) for f in src.frames()]
    assert len(frames) == recording.n
    for i, (color, depth, frame) in enumerate(frames):
        assert frame.sequence == i
        assert frame.depth_frame_number == frame.color_frame_number == FIRST_FRAME_NUMBER + i
        assert frame.device_ts_ns == round(i * 1000.0 / recording.fps * 1e6)
        np.testing.assert_array_equal(color, recording.rgb(i))
        np.testing.assert_array_equal(depth, recording.depth(i))


def test_rate_fps_paces_reads_like_a_camera(recording: Recording) -> None:
    rate = 20.0
    with _source(recording.path, rate_fps=rate) as src:
        t0 = time.perf_counter()
        stamps = [time.perf_counter() - t0 for _ in src.frames()]
    assert len(stamps) == recording.n
    for i, t in enumerate(stamps):
        assert t >= i / rate - 0.002, f"frame {i} came {i / rate - t:.3f} s before it was due"
    assert stamps[-1] < (recording.n - 1) / rate + 0.5, "pacing does not slow the replay beyond the rate"


def test_db3_reads_into_caller_buffers(recording: Recording) -> None:
    with _source(recording.path) as src:
        spec = src.spec
        assert spec.depth_aligned_to_color and spec.depth_shape == (48, 64)
        out = FrameBuffers(np.zeros(spec.color_shape, np.uint8), np.zeros(spec.depth_shape, np.uint16))
        frame = src.read(5.0, out=out)
        assert frame.color is out.color and frame.depth is out.depth
        np.testing.assert_array_equal(out.color, recording.rgb(0))
        assert (out.depth > 0).mean() > 0.5  # depth registered into the color image
        wrong = FrameBuffers(np.zeros((48, 64, 3), np.uint8), np.zeros((24, 32), np.uint16))
        with pytest.raises(SourceError, match=r"size the ring-buffer slots"):
            src.read(5.0, out=wrong)


@pytest.mark.parametrize("color_format", ["bgr8", "rgba8", "bgra8", "yuyv"])
def test_other_color_formats_arrive_as_rgb(make_recording: RecordingFactory, color_format: str) -> None:
    rec = make_recording(n=3, color_format=color_format)
    with _source(rec.path, align_to_color=False) as src:
        colors = [f.color.copy() for f in src.frames()]
    assert len(colors) == 3
    for i, color in enumerate(colors):
        np.testing.assert_array_equal(color, rec.rgb(i))


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db3"
    with pytest.raises(RecordingError, match=r"nope\.db3 does not exist — check the path"):
        _source(missing).open()
    with pytest.raises(RecordingError, match="is not a regular file"):
        _source(tmp_path).open()


@pytest.mark.parametrize("kind", ["half_db3", "half_bag", "garbage_db3", "garbage_bag", "empty_bag"])
def test_truncated_or_garbage_recording_fails_fast(
    kind: str, recording: Recording, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    how, ext = kind.split("_")
    data = recording.path.read_bytes() if ext == "db3" else request.getfixturevalue("shared_bag").read_bytes()
    content = {"half": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b""}[how]
    bad = tmp_path / f"bad.{ext}"
    bad.write_bytes(content)
    t0 = time.perf_counter()
    with pytest.raises(RecordingError, match=r"bad\.(db3|bag) is not a readable RealSense recording.*re-record"):
        _source(bad).open()
    assert time.perf_counter() - t0 < 10.0


def test_recording_without_color_is_refused(make_recording: RecordingFactory) -> None:
    rec = make_recording(n=3, with_color=False)
    with pytest.raises(RecordingError, match=r"has no color stream \(it holds: depth z16\).*enabled"):
        _source(rec.path).open()


def test_stalled_playback_raises_instead_of_hanging(recording: Recording) -> None:
    with _source(recording.path, read_timeout_s=1.0) as src:
        assert src._reader is not None
        # A paused playback is the SDK state of a file that stops mid-way: not "stopped", yet no frames arrive.
        src._reader.playback.pause()
        src.read(5.0)  # the frameset open() fetched is still delivered
        t0 = time.perf_counter()
        with pytest.raises(RecordingError, match=r"stopped delivering frames at .* \(status paused\) after \d+ frames"):
            for _ in range(20):  # short caller timeouts still add up to the stall limit
                try:
                    src.read(0.3)
                except SourceError as err:
                    if isinstance(err, RecordingError):
                        raise
        assert 1.0 <= time.perf_counter() - t0 < 3.0
        assert not src.ready
        with pytest.raises(RecordingError, match="stopped delivering"):
            src.read(5.0)


def test_fifo_is_refused_before_the_sdk_can_block_on_it(tmp_path: Path) -> None:
    # The SDK holds the GIL while it opens a file, so a FIFO (or a stuck device node) would freeze every thread.
    fifo = tmp_path / "stuck.db3"
    os.mkfifo(fifo)
    with pytest.raises(RecordingError, match=r"stuck\.db3 is not a regular file — check the path"):
        _source(fifo).open()


def test_recording_without_frames_is_refused_at_open(make_recording: RecordingFactory) -> None:
    rec = make_recording(n=0)
    t0 = time.perf_counter()
    # The SDK recorder writes stream descriptions with the first frame, so an empty recording has no streams.
    with pytest.raises(RecordingError, match=r"sw_rgb8_0\.db3 has no depth and color stream \(it holds: no video"):
        _source(rec.path).open()
    assert time.perf_counter() - t0 < 5.0
