"""Write genuine RealSense recordings (ROS2 ``.db3``) from any Frame stream via a software device and rs.recorder.

What was found with pyrealsense2 2.59.1 (see tests/drivers/test_recorder.py):
- ``rs.recorder`` writes only ROS2 ``.db3`` (SQLite) files and refuses any other extension, so the caller's name is
  kept and must end in ``.db3``; an existing file is silently overwritten by the SDK, hence the ``overwrite`` guard.
- The recorder writes on its own thread. While the recorder (or the software device/sensors it wraps) is alive,
  a playback of the file in the same process misses the first frameset. Stopping and closing both sensors and then
  dropping every reference to the recorder and device makes the destructor flush *all* frames (300 frames of
  640×480 checked) before it returns; after that, playing back in the same process sees every frame. That full
  release is what :func:`record_frames` does, and it then re-reads the file to prove the frame count.
- Timestamps are stored with 1 µs resolution (a frame stamped 1000.123456789 ms plays back as 1000.123457 ms), the
  depth-units option as float32 (0.001 plays back as 0.0010000000474974513).
- ``rs.align`` is not lossless even between identical calibrations with identity extrinsics: it changed ~7–11 % of
  the depth pixels of registered 160×120 test frames. Registered depth (synthetic) is therefore recorded with the color
  calibration and an identity transform, which playback recognises and then skips ``rs.align``.
- Reading a file back can itself lose frames: a pipeline playback lost the first frame(s) of a complete 2-frame
  file in ~1–2 % of reads, and bare playback sensors lost color frames whenever the playback started with the first
  sensor, before the second was started. :func:`count_recorded_frames` pauses the playback until every sensor runs
  (0 losses in 200 reads).
- A writer-thread failure (e.g. the disk filling up) is not raised to Python, so free space is checked while
  writing and the frame count is verified afterwards.
"""

from __future__ import annotations

import gc
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyrealsense2 as rs

from drivers._rsconvert import extrinsics_to_rs, intrinsics_to_rs
from drivers.errors import RecordingError
from edge.core.frame import Extrinsics, Frame, Intrinsics, StreamSpec

DEVICE_NAME = "drumsight synthetic"
TimestampDomain = Literal["hardware_clock", "system_time", "global_time"]
_MIN_FREE_BYTES = 256 * 1024 * 1024
_FREE_CHECK_EVERY = 16


@dataclass(frozen=True, slots=True)
class RecordingSummary:
    """What was written: enough for a caller to report and for a test to check against playback."""

    path: Path
    n_frames: int
    first_frame_number: int
    last_frame_number: int
    first_device_ts_ns: int
    last_device_ts_ns: int
    size_bytes: int
    write_s: float


def check_output_path(path: Path, *, overwrite: bool = False) -> Path:
    """Fail early, with the path and a remedy, on a name the SDK refuses or a place that cannot be written."""
    path = Path(path)
    if path.suffix != ".db3":
        raise RecordingError(
            f"cannot record to {path}: pyrealsense2 {rs.__version__} writes only ROS2 .db3 recordings",
            f"name the output {path.with_suffix('.db3').name}",
        )
    if path.exists() and not overwrite:
        raise RecordingError(f"{path} already exists", "choose another name or pass overwrite (--overwrite)")
    remedy = "choose a writable directory for the output or fix its permissions"
    if path.parent.exists() and not path.parent.is_dir():
        raise RecordingError(f"cannot write the recording {path}: {path.parent} is a file, not a directory", remedy)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb"):
            pass
        path.unlink()
    except OSError as err:
        raise RecordingError(f"cannot write the recording {path}: {err.strerror or err}", remedy) from err
    return path


class _SoftwareCamera:
    """A software device that looks like a D4xx to the recorder: a depth (z16) and a color (rgb8) sensor."""

    def __init__(self, spec: StreamSpec, path: Path, domain: TimestampDomain, compress: bool = False) -> None:
        self._domain = getattr(rs.timestamp_domain, domain)
        self._depth_scale = spec.depth_scale
        # Registered depth is in the color frame: record it with the color calibration and identity extrinsics,
        # so an align on playback is a no-op instead of shifting pixels a second time.
        depth_intr = spec.color_intrinsics if spec.depth_aligned_to_color else spec.depth_intrinsics
        to_color = Extrinsics() if spec.depth_aligned_to_color else spec.depth_to_color
        fps = max(1, round(spec.fps))
        self.device = rs.software_device()
        self.device.register_info(rs.camera_info.name, DEVICE_NAME)
        self.device.register_info(rs.camera_info.serial_number, spec.serial)
        self.depth_sensor = self.device.add_sensor("Stereo Module")
        self.color_sensor = self.device.add_sensor("RGB Camera")
        self.depth_profile = self._add_stream(
            self.depth_sensor, rs.stream.depth, fmt=rs.format.z16, bpp=2, intr=depth_intr, fps=fps, uid=0
        )
        self.color_profile = self._add_stream(
            self.color_sensor, rs.stream.color, fmt=rs.format.rgb8, bpp=3, intr=spec.color_intrinsics, fps=fps, uid=1
        )
        self.depth_sensor.add_read_only_option(rs.option.depth_units, spec.depth_scale)
        self.depth_profile.register_extrinsics_to(self.color_profile, extrinsics_to_rs(to_color))
        try:
            self.recorder: Any = rs.recorder(str(path), self.device, compress)
        except RuntimeError as err:
            raise RecordingError(
                f"the RealSense recorder cannot open {path}: {err}",
                "check that the directory is writable and the disk has space",
            ) from err
        self.depth_sensor.open(self.depth_profile)
        self.color_sensor.open(self.color_profile)
        self.depth_sensor.start(lambda _f: None)
        self.color_sensor.start(lambda _f: None)

    @staticmethod
    def _add_stream(
        sensor: Any, kind: rs.stream, *, fmt: rs.format, bpp: int, intr: Intrinsics, fps: int, uid: int
    ) -> rs.video_stream_profile:
        vs = rs.video_stream()
        vs.type, vs.index, vs.uid = kind, 0, uid
        vs.width, vs.height, vs.fps, vs.bpp, vs.fmt = intr.width, intr.height, fps, bpp, fmt
        vs.intrinsics = intrinsics_to_rs(intr)
        return sensor.add_video_stream(vs).as_video_stream_profile()

    def _frame(self, pixels: np.ndarray, profile: Any, bpp: int, number: int, ts_ms: float) -> rs.software_video_frame:
        f = rs.software_video_frame()
        f.pixels = np.ascontiguousarray(pixels)
        f.bpp = bpp
        f.stride = pixels.shape[1] * bpp
        f.timestamp = ts_ms
        f.domain = self._domain
        f.frame_number = number
        f.profile = profile
        return f

    def push(self, frame: Frame) -> None:
        ts_ms = frame.device_ts_ns / 1e6
        depth = self._frame(frame.depth, self.depth_profile, 2, frame.depth_frame_number, ts_ms)
        depth.depth_units = self._depth_scale
        self.depth_sensor.on_video_frame(depth)
        self.color_sensor.on_video_frame(
            self._frame(frame.color, self.color_profile, 3, frame.color_frame_number, ts_ms)
        )

    def release(self) -> None:
        """Stop, close and drop everything the recorder holds; its destructor then flushes every frame."""
        for sensor in (self.depth_sensor, self.color_sensor):
            sensor.stop()
            sensor.close()
        del self.recorder, self.depth_profile, self.color_profile, self.depth_sensor, self.color_sensor, self.device
        gc.collect()


def _check_frame(frame: Frame, spec: StreamSpec, previous: Frame | None) -> None:
    if frame.color.shape != spec.color_shape or frame.depth.shape != spec.depth_shape:
        raise RecordingError(
            f"frame {frame.sequence} has color {frame.color.shape} / depth {frame.depth.shape}, the stream spec says "
            f"{spec.color_shape} / {spec.depth_shape}",
            "record frames from one source with the spec that source reported",
        )
    if previous is not None and (
        frame.color_frame_number <= previous.color_frame_number or frame.device_ts_ns < previous.device_ts_ns
    ):
        raise RecordingError(
            f"frame {frame.sequence} (number {frame.color_frame_number}) comes after number "
            f"{previous.color_frame_number}: a recording must be written in increasing frame order",
            "feed the frames in the order the source produced them",
        )


def _check_free_space(path: Path, min_free_bytes: int) -> None:
    free = shutil.disk_usage(path.parent).free
    if free < min_free_bytes:
        raise RecordingError(
            f"only {free / 2**20:.0f} MiB free on the disk of {path} (need {min_free_bytes / 2**20:.0f} MiB to go on)",
            "free disk space or record to another disk; the partial recording was kept",
        )


def count_recorded_frames(path: Path, *, expect: int | None = None, quiet_s: float = 0.5) -> tuple[int, int]:
    """(depth, color) frames in a recording, counted on the playback sensors' own callbacks.

    Not through a pipeline: its syncer drops frames under non-real-time playback (a complete 5-frame file read
    back 1 depth / 5 color once in 30 reads), while the playback sensors deliver every frame (librealsense #1180).
    The playback reports "stopped" while callbacks may still be queued, so the end is ``expect`` frames of each
    stream, or no new frame for ``quiet_s`` after the playback stopped.
    """
    playback = rs.context().load_device(str(path)).as_playback()
    playback.set_real_time(False)
    seen: dict[rs.stream, set[int]] = {rs.stream.depth: set(), rs.stream.color: set()}
    last_change = [time.perf_counter()]

    def on_frame(f: rs.frame) -> None:
        seen.setdefault(f.get_profile().stream_type(), set()).add(f.get_frame_number())
        last_change[0] = time.perf_counter()

    sensors = playback.query_sensors()
    playback.pause()
    for sensor in sensors:
        sensor.open(sensor.get_stream_profiles())
        sensor.start(on_frame)
    playback.resume()
    try:
        while not (expect is not None and min(len(seen[rs.stream.depth]), len(seen[rs.stream.color])) >= expect):
            stopped = playback.current_status() == rs.playback_status.stopped
            if stopped and time.perf_counter() - last_change[0] > quiet_s:
                break
            time.sleep(0.005)
    finally:
        for sensor in sensors:
            sensor.stop()
            sensor.close()
    return len(seen[rs.stream.depth]), len(seen[rs.stream.color])


def record_frames(
    frames: Iterable[Frame],
    path: Path,
    spec: StreamSpec,
    *,
    overwrite: bool = False,
    domain: TimestampDomain = "hardware_clock",
    min_free_bytes: int = _MIN_FREE_BYTES,
    verify: bool = True,
    compress: bool = False,
) -> RecordingSummary:
    """Record ``frames`` (in order) to ``path`` (.db3) as a RealSense device with ``spec``'s calibration.

    ``compress`` turns on the SDK's LZ4 frame compression: about half the file size, but playback reads about 4×
    slower (48 frames at 640×480 on the 2-core dev VM: ~100 frames/s compressed, ~420 uncompressed), which caps a
    daemon or bench run from the file. Off by default: recordings here are read far more often than stored.

    Returns after the file is complete: the recorder is fully released, and with ``verify`` the file is read back
    to prove it holds every frame (the SDK's writer thread does not report its own failures).
    """
    path = check_output_path(path, overwrite=overwrite)
    _check_free_space(path, min_free_bytes)
    t0 = time.perf_counter_ns()
    camera = _SoftwareCamera(spec, path, domain, compress)
    first: Frame | None = None
    last: Frame | None = None
    n = 0
    try:
        for frame in frames:
            _check_frame(frame, spec, last)
            if n % _FREE_CHECK_EVERY == _FREE_CHECK_EVERY - 1:
                _check_free_space(path, min_free_bytes)
            camera.push(frame)
            if first is None:
                first = frame
            last = frame
            n += 1
    finally:
        camera.release()
    write_s = (time.perf_counter_ns() - t0) / 1e9
    if first is None or last is None:
        path.unlink(missing_ok=True)
        raise RecordingError(f"no frames to record to {path}", "check that the source delivers frames")
    if verify:
        _verify(path, n)
    return RecordingSummary(
        path=path,
        n_frames=n,
        first_frame_number=first.color_frame_number,
        last_frame_number=last.color_frame_number,
        first_device_ts_ns=first.device_ts_ns,
        last_device_ts_ns=last.device_ts_ns,
        size_bytes=path.stat().st_size,
        write_s=write_s,
    )


def _verify(path: Path, n: int) -> None:
    try:
        depth, color = count_recorded_frames(path, expect=n)
    except RuntimeError as err:
        raise RecordingError(f"the recording {path} cannot be read back: {err}", "check free disk space") from err
    if depth != n or color != n:
        raise RecordingError(
            f"the recording {path} holds {depth} depth / {color} color frames, {n} were written",
            "check free disk space and that nothing else writes the file, then record again",
        )
