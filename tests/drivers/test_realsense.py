"""Live camera source: the no-camera path runs for real here; streaming needs a connected D4xx (marker realsense)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from drivers.errors import DeviceNotFoundError
from drivers.realsense import RealSenseSource, RealSenseSourceConfig, connected_serials, supervised
from drivers.reconnect import ReconnectingSource

ABSENT_SERIAL = "000000000000"  # not a serial any RealSense camera carries


def _connected_text() -> str:
    return ", ".join(connected_serials()) or "none"


def test_absent_camera_error_lists_connected_serials_and_what_to_do() -> None:
    src = RealSenseSource(RealSenseSourceConfig(serial=ABSENT_SERIAL))
    with pytest.raises(DeviceNotFoundError) as info:
        src.open()
    message = str(info.value)
    assert f"no RealSense camera {ABSENT_SERIAL} found (connected: {_connected_text()})" in message
    assert "USB3 cable" in message and "udev rules" in message and "serial" in info.value.remedy
    assert not src.ready


def test_no_serial_and_no_camera_is_a_clear_error() -> None:
    if connected_serials():
        pytest.skip(f"cameras are connected ({_connected_text()}); this checks the empty bus")
    with pytest.raises(DeviceNotFoundError, match=r"no RealSense camera found \(connected: none\) — check the USB3"):
        RealSenseSource(RealSenseSourceConfig()).open()


def test_hardware_reset_of_an_absent_camera_names_it() -> None:
    src = RealSenseSource(RealSenseSourceConfig(serial=ABSENT_SERIAL))
    with pytest.raises(DeviceNotFoundError, match=rf"cannot reset RealSense camera {ABSENT_SERIAL}: not connected"):
        src.hardware_reset()


def test_supervised_camera_reports_the_missing_device_at_open() -> None:
    src = supervised(RealSenseSourceConfig(serial=ABSENT_SERIAL, fps=15))
    assert isinstance(src, ReconnectingSource) and not src.ready
    with pytest.raises(DeviceNotFoundError, match="connected: "):
        src.open()


def test_config_rejects_unknown_options_and_keys() -> None:
    cfg = RealSenseSourceConfig(serial="123", options={"emitter_enabled": 1, "exposure": 8500})
    assert cfg.options == {"emitter_enabled": 1.0, "exposure": 8500.0}
    assert cfg.reconnect.misses_before_restart >= 1
    with pytest.raises(ValidationError, match=r"unknown RealSense options \['laser_powr'\]"):
        RealSenseSourceConfig(options={"laser_powr": 150})
    with pytest.raises(ValidationError, match="extra"):
        RealSenseSourceConfig.model_validate({"type": "realsense", "serail": "123"})


@pytest.mark.realsense
def test_connected_camera_streams_aligned_frames() -> None:
    serials = connected_serials()
    if not serials:
        pytest.skip("no RealSense camera connected (connected: none)")
    with RealSenseSource(RealSenseSourceConfig(serial=serials[0], fps=15)) as src:
        spec = src.spec
        assert spec.serial == serials[0] and spec.depth_aligned_to_color
        frames = [src.read(src.default_timeout_s()) for _ in range(5)]
    assert [f.sequence for f in frames] == list(range(5))
    assert all(f.color.shape == spec.color_shape and f.depth.shape == spec.depth_shape for f in frames)
    assert len({f.depth_frame_number for f in frames}) == 5
