"""Live Intel RealSense D4xx camera as a frame source, pinned by serial, with presets, options and a reset hook."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Literal

import pyrealsense2 as rs
from pydantic import Field, field_validator

from drivers._rsconvert import StalePairFilter, frame_from_frameset, stream_spec, video_profile
from drivers.base import FrameBuffers, FrameSource, require_open
from drivers.errors import DeviceNotFoundError, FrameTimeoutError, SourceError
from drivers.reconnect import ReconnectingSource, ReconnectPolicy, check_same_stream
from edge.core.config import EdgeModel
from edge.core.frame import Frame, StreamSpec

_REMEDY_NOT_FOUND = (
    "check the USB3 cable and port (a USB2 port or hub is not enough), the udev rules "
    "(99-realsense-libusb.rules), and the serial in the config; `rs-enumerate-devices -s` lists cameras"
)


class RealSenseSourceConfig(EdgeModel):
    """A live camera: which one, what it streams, and how it is tuned."""

    type: Literal["realsense"] = Field("realsense", description="discriminator: a live RealSense camera")
    serial: str | None = Field(
        None, description="camera serial to pin; None accepts the only connected camera (refused if several)"
    )
    width: int = Field(640, gt=0, description="width of both the depth and the color stream (pixels)")
    height: int = Field(480, gt=0, description="height of both streams (pixels)")
    fps: int = Field(30, gt=0, description="frame rate of both streams")
    align_to_color: bool = Field(True, description="register depth to the color stream with rs.align")
    preset_json: Path | None = Field(None, description="advanced-mode JSON preset (realsense-viewer export)")
    options: dict[str, float] = Field(
        default_factory=dict, description="sensor options by rs.option name, e.g. {'emitter_enabled': 1}"
    )
    read_timeout_s: float | None = Field(None, gt=0, description="read timeout; None is four frame periods")
    reconnect: ReconnectPolicy = Field(
        default_factory=ReconnectPolicy, description="restart/back-off/hardware-reset policy of the supervisor"
    )

    @field_validator("options")
    @classmethod
    def _known_options(cls, options: dict[str, float]) -> dict[str, float]:
        unknown = sorted(name for name in options if not isinstance(getattr(rs.option, name, None), rs.option))
        if unknown:
            raise ValueError(f"unknown RealSense options {unknown}; names are rs.option attributes, e.g. exposure")
        return options


@functools.cache
def shared_context() -> rs.context:
    """The process's one long-lived SDK context: device events and reconnects need it to outlive pipelines."""
    return rs.context()


def connected_serials(ctx: rs.context | None = None) -> list[str]:
    """Serials of the RealSense cameras connected now."""
    devices = (ctx or shared_context()).query_devices()
    return [d.get_info(rs.camera_info.serial_number) for d in devices if d.supports(rs.camera_info.serial_number)]


def _resolve_serial(wanted: str | None) -> str:
    serials = connected_serials()
    listed = ", ".join(serials) or "none"
    if wanted is None and len(serials) == 1:
        return serials[0]
    if wanted is None and serials:
        raise SourceError(f"several RealSense cameras connected ({listed})", "set `serial` to the one to use")
    if wanted is None or wanted not in serials:
        what = f"RealSense camera {wanted}" if wanted else "RealSense camera"
        raise DeviceNotFoundError(f"no {what} found (connected: {listed})", _REMEDY_NOT_FOUND)
    return wanted


class RealSenseSource(FrameSource):
    """One D4xx camera. Reopening it (after ``close``) must give the same serial and calibration as the first open."""

    def __init__(self, config: RealSenseSourceConfig) -> None:
        self.config = config
        self._pipe: rs.pipeline | None = None
        self._spec: StreamSpec | None = None
        self._first: StreamSpec | None = None
        self._align: rs.align | None = None
        self._pairs = StalePairFilter()
        self._sequence = 0

    @property
    def spec(self) -> StreamSpec:
        return require_open(self._spec, "RealSenseSource")

    @property
    def ready(self) -> bool:
        return self._pipe is not None

    def default_timeout_s(self) -> float:
        return self.config.read_timeout_s or super().default_timeout_s()

    def open(self) -> StreamSpec:
        """Start the pinned camera with the configured profile, then apply the preset and options."""
        if self._spec is not None:
            return self._spec
        cfg = self.config
        serial = _resolve_serial(cfg.serial)
        rs_config = rs.config()
        rs_config.enable_device(serial)
        rs_config.enable_stream(rs.stream.depth, cfg.width, cfg.height, rs.format.z16, cfg.fps)
        rs_config.enable_stream(rs.stream.color, cfg.width, cfg.height, rs.format.rgb8, cfg.fps)
        pipe = rs.pipeline(shared_context())
        try:
            profile = pipe.start(rs_config)
        except RuntimeError as err:
            raise SourceError(
                f"camera {serial} cannot stream depth+color {cfg.width}×{cfg.height} at {cfg.fps} fps ({err})",
                "pick a mode the camera lists in `rs-enumerate-devices`, e.g. 640×480 or 848×480 at 15/30 fps",
            ) from err
        try:
            device = profile.get_device()
            self._tune(device)
            streams = profile.get_streams()
            depth, color = video_profile(streams, rs.stream.depth), video_profile(streams, rs.stream.color)
            assert depth is not None and color is not None  # both were enabled explicitly above
            spec = stream_spec(
                depth,
                color,
                align_to_color=cfg.align_to_color,
                serial=serial,
                depth_scale=device.first_depth_sensor().get_depth_scale(),
                source=f"realsense:{serial}",
            )
            if self._first is not None:
                check_same_stream(self._first, spec)
        except BaseException:
            pipe.stop()
            raise
        self._pipe, self._spec = pipe, spec
        self._first = self._first or spec
        self._align = rs.align(rs.stream.color) if cfg.align_to_color else None
        self._pairs = StalePairFilter()
        return spec

    def _tune(self, device: rs.device) -> None:
        """Apply the JSON preset, then the options (options win: they are the more specific setting)."""
        if self.config.preset_json is not None:
            load_preset(device, self.config.preset_json)
        for name, value in self.config.options.items():
            option = getattr(rs.option, name)
            sensors = [s for s in device.query_sensors() if s.supports(option)]
            if not sensors:
                raise SourceError(f"no sensor of this camera supports option {name!r}", "remove it from `options`")
            for sensor in sensors:
                try:
                    sensor.set_option(option, value)
                except RuntimeError as err:
                    raise SourceError(
                        f"option {name}={value} was refused ({err})",
                        f"use a value in the range {sensor.get_option_range(option)}",
                    ) from err

    def read(self, timeout_s: float, out: FrameBuffers | None = None) -> Frame:
        """Wait up to ``timeout_s`` for a depth+color frameset and copy it once (into ``out`` when given)."""
        spec = self.spec
        assert self._pipe is not None
        deadline = time.perf_counter() + timeout_s
        while True:
            remaining_ms = round((deadline - time.perf_counter()) * 1000)
            ok, frames = self._pipe.try_wait_for_frames(max(remaining_ms, 1)) if remaining_ms > 0 else (False, None)
            if not ok:
                raise FrameTimeoutError(
                    f"no frameset from camera {spec.serial} within {timeout_s:g} s",
                    "check the USB3 cable and power; the reconnect supervisor restarts it after repeated misses",
                )
            if not self._pairs.fresh(frames):
                continue
            if self._align is not None:
                frames = self._align.process(frames)
            frame = frame_from_frameset(frames, spec, sequence=self._sequence, out=out)
            if frame is not None:
                self._sequence += 1
                return frame

    def close(self) -> None:
        if self._pipe is not None:
            self._pipe.stop()
        self._pipe, self._spec, self._align = None, None, None

    def hardware_reset(self) -> None:
        """Power-cycle the camera over USB (the escalation after failed restarts); it re-enumerates in seconds."""
        serial = self._first.serial if self._first else self.config.serial or _resolve_serial(None)
        for device in shared_context().query_devices():
            if (
                device.supports(rs.camera_info.serial_number)
                and device.get_info(rs.camera_info.serial_number) == serial
            ):
                device.hardware_reset()
                return
        listed = ", ".join(connected_serials()) or "none"
        raise DeviceNotFoundError(
            f"cannot reset RealSense camera {serial}: not connected (connected: {listed})", _REMEDY_NOT_FOUND
        )


def load_preset(device: rs.device, path: Path) -> None:
    """Load an advanced-mode JSON preset, refusing clearly when the file or the camera cannot take it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SourceError(f"cannot read preset {path} ({err})", "check `preset_json` in the config") from err
    advanced = rs.rs400_advanced_mode(device)
    if not advanced.is_enabled():
        raise SourceError(
            "the camera's advanced mode is off, so a JSON preset cannot be loaded",
            "enable advanced mode once in realsense-viewer (it persists), or remove `preset_json`",
        )
    try:
        advanced.load_json(text)
    except RuntimeError as err:
        raise SourceError(
            f"preset {path} was refused by the camera ({err})", "export it again from realsense-viewer"
        ) from err


def supervised(config: RealSenseSourceConfig) -> ReconnectingSource:
    """The camera under the reconnect supervisor, with hardware reset as the escalation step."""
    camera = RealSenseSource(config)
    return ReconnectingSource(lambda: camera, config.reconnect, hardware_reset=camera.hardware_reset)
