"""Driver test fixtures: the shared D435 recording, and genuine .db3 recordings written by the SDK's software device.

Recordings are written in a child process (``python conftest.py …``): the SDK can lose the first framesets of a
.db3 played back in the process that recorded it (../shared/README.md).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pyrealsense2 as rs
import pytest

SHARED_BAG = (
    Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "realsense" / "single_depth_color_640x480.bag"
)
FIRST_FRAME_NUMBER = 100  # the writer numbers frames from here, so tests can tell file numbers from sequence
SERIAL = "SWDEV0001"


def depth_pixels(i: int, w: int, h: int) -> npt.NDArray[np.uint16]:
    """Depth of frame ``i``: distinct per pixel and per frame, across the whole uint16 range."""
    return ((np.arange(h * w, dtype=np.uint32).reshape(h, w) * 37 + i * 1009) % 65536).astype(np.uint16)


def rgb_pixels(i: int, w: int, h: int) -> npt.NDArray[np.uint8]:
    """RGB of frame ``i``: three different ramps, so a channel swap or a shifted row cannot go unnoticed."""
    v, u = np.mgrid[0:h, 0:w]
    return np.stack([(u * 3 + i) % 256, (v * 5 + 2 * i) % 256, (u + v + 7 * i) % 256], axis=-1).astype(np.uint8)


def _color_bytes(rgb: npt.NDArray[np.uint8], fmt: str) -> npt.NDArray[np.uint8]:
    """The bytes a camera streaming ``fmt`` would send for ``rgb`` (for yuyv: two ramps as Y and U/V)."""
    if fmt == "rgb8":
        return rgb
    if fmt == "yuyv":
        return np.ascontiguousarray(rgb[..., :2])
    if fmt == "bgr8":
        return np.ascontiguousarray(rgb[..., ::-1])
    alpha = np.full((*rgb.shape[:2], 1), 255, np.uint8)
    return np.ascontiguousarray(np.concatenate([rgb if fmt == "rgba8" else rgb[..., ::-1], alpha], axis=-1))


def _video_stream(
    kind: rs.stream, *, uid: int, fmt: rs.format, bpp: int, w: int, h: int, fps: int, f: float
) -> rs.video_stream:
    intr = rs.intrinsics()
    intr.width, intr.height, intr.fx, intr.fy = w, h, f, f
    intr.ppx, intr.ppy = w / 2 - 0.5 + uid, h / 2 + 0.25
    intr.model, intr.coeffs = rs.distortion.brown_conrady, [0.0] * 5
    vs = rs.video_stream()
    vs.type, vs.index, vs.uid, vs.width, vs.height, vs.fps, vs.bpp, vs.fmt = kind, 0, uid, w, h, fps, bpp, fmt
    vs.intrinsics = intr
    return vs


def write_recording(path: Path, *, n: int, w: int, h: int, fps: int, color_format: str, with_color: bool) -> None:
    """Record ``n`` framesets of the patterns above through rs.software_device + rs.recorder (child process only).

    Timestamps start at 0 while frame numbers start at FIRST_FRAME_NUMBER: with that the SDK's playback syncer
    cannot pair the streams and the pipeline pads framesets with stale frames, which playback must drop.
    """
    device = rs.software_device()
    device.register_info(rs.camera_info.serial_number, SERIAL)
    depth_sensor, color_sensor = device.add_sensor("Stereo Module"), device.add_sensor("RGB Camera")
    depth_profile = depth_sensor.add_video_stream(
        _video_stream(rs.stream.depth, uid=0, fmt=rs.format.z16, bpp=2, w=w, h=h, fps=fps, f=0.8 * w)
    )
    depth_sensor.add_read_only_option(rs.option.depth_units, 0.001)
    bpp = {"rgb8": 3, "bgr8": 3, "yuyv": 2}.get(color_format, 4)
    color_profile = color_sensor.add_video_stream(
        _video_stream(
            rs.stream.color, uid=1, fmt=getattr(rs.format, color_format), bpp=bpp, w=w, h=h, fps=fps, f=0.9 * w
        )
    )
    ext = rs.extrinsics()
    ext.rotation, ext.translation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], [0.015, 0.0, 0.0]
    depth_profile.register_extrinsics_to(color_profile, ext)
    device.create_matcher(rs.matchers.dlr_c)
    recorder = rs.recorder(str(path), device)
    sensors = [(depth_sensor, depth_profile.as_video_stream_profile(), 2)]
    if with_color:
        sensors.append((color_sensor, color_profile.as_video_stream_profile(), bpp))
    sync = rs.syncer()
    for sensor, profile, _ in sensors:
        sensor.open(profile)
        sensor.start(sync)
    for i in range(n):
        images = [depth_pixels(i, w, h), _color_bytes(rgb_pixels(i, w, h), color_format)]
        for (sensor, profile, px_bytes), image in zip(sensors, images, strict=False):
            frame = rs.software_video_frame()
            frame.pixels, frame.bpp, frame.stride = image, px_bytes, w * px_bytes
            frame.timestamp, frame.domain = i * 1000.0 / fps, rs.timestamp_domain.hardware_clock
            frame.frame_number, frame.profile = FIRST_FRAME_NUMBER + i, profile
            sensor.on_video_frame(frame)
        sync.wait_for_frames(2000)
    for sensor, _, _ in sensors:
        sensor.stop()
        sensor.close()
    del recorder


@dataclass(frozen=True)
class Recording:
    """A .db3 written by the software device, with what each frame must read back as."""

    path: Path
    n: int
    width: int
    height: int
    fps: int
    color_format: str

    def depth(self, i: int) -> npt.NDArray[np.uint16]:
        return depth_pixels(i, self.width, self.height)

    def rgb(self, i: int) -> npt.NDArray[np.uint8]:
        """What frame ``i`` must read back as; yuyv is lossy, so its RGB is OpenCV's decoding of the bytes sent."""
        rgb = rgb_pixels(i, self.width, self.height)
        if self.color_format == "yuyv":
            return cv2.cvtColor(_color_bytes(rgb, "yuyv"), cv2.COLOR_YUV2RGB_YUYV)
        return rgb


RecordingFactory = Callable[..., Recording]


@pytest.fixture(scope="session")
def make_recording(tmp_path_factory: pytest.TempPathFactory) -> RecordingFactory:
    """Write (once per parameter set) a genuine .db3 recording in a child process."""
    cache: dict[tuple[int, int, int, int, str, bool], Recording] = {}

    def make(
        *,
        n: int = 12,
        width: int = 64,
        height: int = 48,
        fps: int = 15,
        color_format: str = "rgb8",
        with_color: bool = True,
    ) -> Recording:
        key = (n, width, height, fps, color_format, with_color)
        if key not in cache:
            path = tmp_path_factory.mktemp("rec") / f"sw_{color_format}_{n}{'' if with_color else '_nocolor'}.db3"
            args = [str(a) for a in (path, n, width, height, fps, color_format, int(with_color))]
            subprocess.run([sys.executable, __file__, *args], check=True, timeout=60, capture_output=True)
            cache[key] = Recording(path, n, width, height, fps, color_format)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def recording(make_recording: RecordingFactory) -> Recording:
    """The default recording: 12 framesets of 64×48 rgb8 at 15 fps."""
    return make_recording()


@pytest.fixture(scope="session")
def shared_bag() -> Path:
    """The real D435 recording from ../shared; tests that need it skip when the shared folder is not beside the repo."""
    if not SHARED_BAG.is_file():
        pytest.skip(f"shared fixture {SHARED_BAG} is absent (it lives in ../shared beside the repository)")
    return SHARED_BAG


if __name__ == "__main__":
    out, count, width, height, rate, fmt, color = sys.argv[1:8]
    write_recording(
        Path(out), n=int(count), w=int(width), h=int(height), fps=int(rate), color_format=fmt, with_color=color == "1"
    )
