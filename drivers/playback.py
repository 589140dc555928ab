"""Recorded RealSense playback (.bag ROS1, .db3 ROS2) as a frame source, with stream settings read from the file."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Literal

import pyrealsense2 as rs
from pydantic import Field

from drivers._rsconvert import depth_registered_to_color, frame_from_frameset, stream_spec, video_profile
from drivers.base import FrameBuffers, FrameSource, require_open, wait_until_due
from drivers.errors import EndOfStreamError, FrameTimeoutError, RecordingError
from edge.core.config import EdgeModel
from edge.core.frame import Frame, StreamSpec

_REMEDY_RERECORD = (
    "re-record it with `edge-record` (a recording cut short by a crash or a full disk cannot be replayed)"
)


class PlaybackSourceConfig(EdgeModel):
    """A recording to replay as if it were the camera."""

    type: Literal["playback"] = Field("playback", description="discriminator: replay a recording")
    path: Path = Field(description="the .bag (ROS1) or .db3 (ROS2) recording")
    align_to_color: bool = Field(True, description="register depth to the color stream with rs.align")
    read_timeout_s: float | None = Field(
        None, gt=0, description="no frame for this long while the file is still playing → RecordingError (stall)"
    )
    open_timeout_s: float = Field(5.0, gt=0, description="no first frameset within this → RecordingError")
    rate_fps: float | None = Field(
        None, gt=0, le=1000, description="hand out frames at this rate, as a camera at the line rate would (frame i "
        "is due i/rate_fps s after the first read; a reader that falls behind gets the late frames at once); "
        "None: as fast as they are read"
    )  # fmt: skip


class _FileReader:
    """The file's depth and color sensors played non-real-time into one bounded queue, in file order.

    The SDK's pipeline syncer pairs playback frames by arrival timing, which varies with CPU load (measured:
    frames lost or paired with stale partners); reading the sensors directly and pairing in file order does not.
    A full queue blocks the SDK's reader thread, so nothing is dropped however slowly frames are consumed.
    """

    def __init__(self, path: Path) -> None:
        try:
            self.device = rs.context().load_device(str(path))
            self.playback = self.device.as_playback()
            self.playback.set_real_time(False)
        except RuntimeError as err:
            raise RecordingError(
                f"{path} is not a readable RealSense recording ({err})", f"check the file; {_REMEDY_RERECORD}"
            ) from err
        by_sensor = [(s, list(s.get_stream_profiles())) for s in self.device.query_sensors()]
        profiles = [p for _, ps in by_sensor for p in ps]
        depth, color = video_profile(profiles, rs.stream.depth), video_profile(profiles, rs.stream.color)
        if depth is None or color is None:
            held = ", ".join(f"{p.stream_type().name} {p.format().name}" for p in profiles) or "no video streams"
            missing = " and ".join(n for n, p in (("depth", depth), ("color", color)) if p is None)
            raise RecordingError(
                f"recording {path} has no {missing} stream (it holds: {held})",
                "record with both depth and color enabled (`edge-record` does this)",
            )
        self.depth, self.color = depth, color
        wanted = {depth.unique_id(), color.unique_id()}
        self._sensors = [(s, [p for p in ps if p.unique_id() in wanted]) for s, ps in by_sensor]
        self._sensors = [(s, ps) for s, ps in self._sensors if ps]
        self._queue: queue.Queue[rs.frame] = queue.Queue(maxsize=8)
        self._stopping = threading.Event()
        self._playing = False

    def start(self) -> None:
        """Start every sensor while paused: playback begins with the first sensor, and would drop the frames
        of sensors not started yet (measured: the first color frame went missing)."""
        self.playback.pause()
        for sensor, profiles in self._sensors:
            sensor.open(profiles)
        for sensor, _ in self._sensors:
            sensor.start(self._on_frame)
        self.playback.resume()

    def _on_frame(self, frame: rs.frame) -> None:
        """SDK thread: hand the frame over, waiting while the queue is full (that is the back-pressure)."""
        frame.keep()
        while not self._stopping.is_set():
            try:
                self._queue.put(frame, timeout=0.05)
                return
            except queue.Full:
                continue

    def get(self, timeout_s: float) -> rs.frame | None:
        """The next frame in file order, or None after ``timeout_s``."""
        try:
            frame = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None
        self._playing = True
        return frame

    def ended(self) -> bool:
        """True once the file has been read to its end and every frame was taken from the queue.

        Non-real-time playback hands each frame over before reading the next message, so "stopped" after
        playing means the last frame is already queued.
        """
        status = self.playback.current_status()
        self._playing = self._playing or status == rs.playback_status.playing
        return self._playing and status == rs.playback_status.stopped and self._queue.empty()

    def close(self) -> None:
        """Stop every sensor, release the frames still queued, then close the sensors. The frames are let go while
        their sensors are stopped but still open: a frame freed after its sensor closed is the use-after-free class
        of SDK crash at stop (librealsense #7400); a segfault in this close was seen once in the test suite."""
        self._stopping.set()
        for sensor, _ in self._sensors:
            try:
                sensor.stop()
            except RuntimeError:
                continue  # a sensor that never started (open failed half-way) has nothing to stop
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        for sensor, _ in self._sensors:
            try:
                sensor.close()
            except RuntimeError:
                continue  # nor anything to close


class PlaybackSource(FrameSource):
    """Replays a recording frameset by frameset, in file order, never in real time (no frame is dropped).

    Stream sizes, formats and fps are whatever the file holds. Depth and color are paired in file order: a
    pair is emitted as soon as each stream has a frame not yet used (a stream that skipped a frame keeps
    its latest one). ``open`` fetches the first pair, so a file that starts but never plays fails there;
    ``read`` raises EndOfStreamError at the end of the file and RecordingError when the file stops
    delivering while still "playing" (a corrupt chunk), so a bad file ends within seconds instead of hanging.
    """

    def __init__(self, config: PlaybackSourceConfig) -> None:
        self.config = config
        self._reader: _FileReader | None = None
        self._spec: StreamSpec | None = None
        self._align: rs.align | None = None
        self._composer = _PairComposer()
        self._waiting: dict[rs.stream, rs.frame] = {}
        self._pending: rs.composite_frame | None = None
        self._sequence = 0
        self._ended = False
        self._failed: RecordingError | None = None
        self._stalled_s = 0.0
        self._t0_ns = 0  # perf_counter_ns of the first read (pacing with rate_fps)

    @property
    def spec(self) -> StreamSpec:
        return require_open(self._spec, "PlaybackSource")

    @property
    def ready(self) -> bool:
        return self._reader is not None and not self._ended and self._failed is None

    def default_timeout_s(self) -> float:
        return self.config.read_timeout_s or max(2.0, super().default_timeout_s())

    def open(self) -> StreamSpec:
        """Start non-real-time playback with the file's own stream settings and wait for its first pair."""
        if self._spec is not None:
            return self._spec
        path = self.config.path
        if not path.is_file():
            raise RecordingError(
                f"recording {path} does not exist" if not path.exists() else f"recording {path} is not a regular file",
                "check the path (relative paths start at the working directory) or record one with `edge-record`",
            )
        reader = _FileReader(path)
        self._spec = _spec_of(reader, path, self.config.align_to_color)
        self._reader = reader
        needs_align = self.config.align_to_color and not depth_registered_to_color(reader.depth, reader.color)
        self._align = rs.align(rs.stream.color) if needs_align else None
        self._waiting, self._sequence, self._ended, self._failed, self._stalled_s = {}, 0, False, None, 0.0
        try:
            reader.start()
            self._pending = self._next_pair(self.config.open_timeout_s)
        except (EndOfStreamError, FrameTimeoutError, RuntimeError) as err:
            self.close()
            what = {
                EndOfStreamError: "holds no complete depth+color pair",
                FrameTimeoutError: f"delivered no frames within {self.config.open_timeout_s:g} s",
            }.get(type(err), f"cannot be replayed ({err})")
            raise RecordingError(f"recording {path} {what}", f"check the file; {_REMEDY_RERECORD}") from err
        return self._spec

    def read(self, timeout_s: float, out: FrameBuffers | None = None) -> Frame:
        """Next depth+color pair in file order; EndOfStreamError at the end, RecordingError if the file stalls."""
        spec = self.spec
        if self.config.rate_fps is not None:
            self._wait_until_due(self.config.rate_fps, timeout_s)
        frames = self._pending if self._pending is not None else self._next_pair(timeout_s)
        self._pending = None
        if self._align is not None:
            frames = self._align.process(frames)
        frame = frame_from_frameset(frames, spec, sequence=self._sequence, out=out)
        assert frame is not None  # _next_pair always composes both streams
        self._sequence += 1
        return frame

    def _wait_until_due(self, rate_fps: float, timeout_s: float) -> None:
        """Sleep until frame ``sequence`` is due at ``rate_fps``; a due time beyond the timeout is a timeout."""
        if self._sequence == 0:
            self._t0_ns = time.perf_counter_ns()
        wait_until_due(
            self._t0_ns,
            self._sequence,
            rate_fps,
            timeout_s,
            what="next frame of the replay",
            remedy="read with a timeout of at least one frame period (1/rate_fps)",
        )

    def _next_pair(self, timeout_s: float) -> rs.composite_frame:
        """Take frames in file order until each stream has a new one; wait in slices of about a frame period."""
        reader = self._reader
        assert reader is not None
        if self._failed is not None:
            raise self._failed
        if self._ended:
            raise EndOfStreamError(f"recording {self.config.path.name} has ended after {self._sequence} frames")
        start = time.perf_counter()
        slice_s = min(0.1, max(0.01, 1.0 / max(self.spec.fps, 1.0)))
        while True:
            waited_from = time.perf_counter()
            frame = reader.get(slice_s)
            if frame is not None:
                self._stalled_s = 0.0
                self._waiting[frame.get_profile().stream_type()] = frame
                depth, color = self._waiting.get(rs.stream.depth), self._waiting.get(rs.stream.color)
                if depth is not None and color is not None:
                    self._waiting = {}
                    return self._composer.compose(depth, color)
                continue
            if reader.ended():
                self._ended = True
                raise EndOfStreamError(f"recording {self.config.path.name} has ended after {self._sequence} frames")
            self._stalled_s += time.perf_counter() - waited_from
            self._check_stall(start, timeout_s)

    def _check_stall(self, start: float, timeout_s: float) -> None:
        """Playing without frames past the stall limit is a corrupt file; past the caller's timeout, a miss.

        The stall time adds up the waits of consecutive reads, so short caller timeouts still reach the limit.
        """
        if self._stalled_s > self.default_timeout_s():
            assert self._reader is not None
            pb = self._reader.playback
            self._failed = RecordingError(
                f"recording {self.config.path} stopped delivering frames at "
                f"{pb.get_position() / 1e9:.3f} s of {pb.get_duration().total_seconds():.3f} s "
                f"(status {pb.current_status().name}) after {self._sequence} frames",
                f"the file is probably corrupt or truncated; {_REMEDY_RERECORD}",
            )
            raise self._failed
        if time.perf_counter() - start >= timeout_s:
            raise FrameTimeoutError(
                f"no frameset from {self.config.path.name} within {timeout_s:g} s",
                "raise the read timeout if the machine is heavily loaded",
            )

    def close(self) -> None:
        if self._reader is not None:
            self._pending, self._waiting = None, {}
            self._reader.close()
            self._reader = None
        self._spec, self._align = None, None


class _PairComposer:
    """Builds an SDK frameset from a depth and a color frame (no pixel copy), the input rs.align needs."""

    def __init__(self) -> None:
        self._pair: list[rs.frame] = []
        self._out = rs.frame_queue(1, keep_frames=True)
        self._block = rs.processing_block(self._compose)
        self._block.start(self._out)

    def _compose(self, _frame: rs.frame, source: rs.frame_source) -> None:
        source.frame_ready(source.allocate_composite_frame(self._pair))

    def compose(self, depth: rs.frame, color: rs.frame) -> rs.composite_frame:
        self._pair = [depth, color]
        self._block.invoke(depth)
        self._pair = []
        return self._out.wait_for_frame(1000).as_frameset()


def _spec_of(reader: _FileReader, path: Path, align_to_color: bool) -> StreamSpec:
    """The stream description the file itself records: sizes, calibration, depth units, serial."""
    try:
        depth_scale = reader.device.first_depth_sensor().get_depth_scale()
    except RuntimeError as err:
        raise RecordingError(
            f"recording {path} does not say its depth scale ({err})",
            "record through the SDK recorder, which stores the depth sensor's depth_units option",
        ) from err
    device = reader.device
    serial = (
        device.get_info(rs.camera_info.serial_number)
        if device.supports(rs.camera_info.serial_number)
        else f"playback:{path.name}"
    )
    return stream_spec(
        reader.depth,
        reader.color,
        align_to_color=align_to_color,
        serial=serial,
        depth_scale=depth_scale,
        source=f"playback:{path}",
    )
