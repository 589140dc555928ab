"""The reconnect supervisor against real playback sources that drop out and come back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import Recording, RecordingFactory

from drivers.base import FrameBuffers, FrameSource
from drivers.errors import DeviceNotFoundError, EndOfStreamError, FrameTimeoutError, SourceError
from drivers.playback import PlaybackSource, PlaybackSourceConfig
from drivers.reconnect import (
    ReconnectGaveUpError,
    ReconnectingSource,
    ReconnectPolicy,
    StreamChangedError,
    check_same_stream,
)
from edge.core.frame import Frame, StreamSpec


@dataclass
class Outage:
    """The fault plan every source built by one factory shares: after ``good_reads`` frames, reads time out
    ``failing_reads`` times, and the next ``failing_opens`` reopens find no device."""

    good_reads: int = 2
    failing_reads: int = 0
    failing_opens: int = 0
    delivered: int = 0
    opens: int = 0


class FlakyPlayback(FrameSource):
    """A real playback of a recording whose reads and opens fail as the shared Outage plans (a USB drop-out)."""

    def __init__(self, recording: Recording, outage: Outage, align_to_color: bool = False) -> None:
        self.inner = PlaybackSource(PlaybackSourceConfig(path=recording.path, align_to_color=align_to_color))
        self.outage = outage

    def open(self) -> StreamSpec:
        self.outage.opens += 1
        if self.outage.opens > 1 and self.outage.failing_opens > 0:  # the first open always finds the camera
            self.outage.failing_opens -= 1
            raise DeviceNotFoundError("no camera (connected: none)", "plug it back in")
        return self.inner.open()

    def read(self, timeout_s: float, out: FrameBuffers | None = None) -> Frame:
        if self.outage.delivered >= self.outage.good_reads and self.outage.failing_reads > 0:
            self.outage.failing_reads -= 1
            raise FrameTimeoutError("no frameset within the timeout", "check the cable")
        frame = self.inner.read(timeout_s, out)
        self.outage.delivered += 1
        return frame

    def close(self) -> None:
        self.inner.close()

    @property
    def spec(self) -> StreamSpec:
        return self.inner.spec

    @property
    def ready(self) -> bool:
        return self.inner.ready


class Sleeps(list[float]):
    """An injected sleep that records instead of waiting, so back-off schedules are checked exactly and fast."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def _read_until_frame(src: ReconnectingSource, attempts: int, timeout_s: float = 5.0) -> tuple[Frame, list[str]]:
    """Read like the capture loop does: misses are logged and retried; returns the frame and the misses seen."""
    misses = []
    for _ in range(attempts):
        try:
            return src.read(timeout_s), misses
        except FrameTimeoutError as err:
            misses.append(str(err))
            assert src.spec is not None
    raise AssertionError(f"no frame after {attempts} reads: {misses}")


def _supervise(
    recording: Recording,
    outage: Outage,
    policy: ReconnectPolicy,
    hardware_reset: Callable[[], None] | None = None,
) -> tuple[ReconnectingSource, Sleeps]:
    def factory() -> FrameSource:
        return FlakyPlayback(recording, outage)

    sleeps = Sleeps()
    return ReconnectingSource(factory, policy, hardware_reset=hardware_reset, sleep=sleeps), sleeps


def test_recovers_after_misses_and_failed_restarts(recording: Recording) -> None:
    outage = Outage(good_reads=2, failing_reads=3, failing_opens=2)
    policy = ReconnectPolicy(misses_before_restart=3, backoff_initial_s=0.5, backoff_max_s=10.0)
    src, sleeps = _supervise(recording, outage, policy)
    with src:
        first = [src.read(5.0).sequence for _ in range(2)]
        assert first == [0, 1] and src.ready
        for n in (1, 2, 3):
            with pytest.raises(FrameTimeoutError):
                src.read(5.0)
            assert src.consecutive_failures == n
        assert not src.ready and src.reconnects == 0
        frame, misses = _read_until_frame(src, attempts=5)
        assert len(misses) == 2 and all("restart attempt" in m for m in misses)
        assert sleeps == [0.5, 1.0, 2.0]  # doubling back-off before each of the three attempts
        assert src.ready and src.reconnects == 1 and src.consecutive_failures == 0
        assert outage.opens == 4  # first open, two failed restarts, one good one
        # The reopened playback starts its file again: the pixels are the recording's, not a stand-in.
        np.testing.assert_array_equal(frame.color, recording.rgb(0))
        np.testing.assert_array_equal(frame.depth, recording.depth(0))
        assert src.hardware_resets == 0


def test_backoff_is_spent_in_slices_no_longer_than_the_read_timeout(recording: Recording) -> None:
    outage = Outage(good_reads=0, failing_reads=1)
    src, sleeps = _supervise(recording, outage, ReconnectPolicy(misses_before_restart=1, backoff_initial_s=1.0))
    with src:
        with pytest.raises(FrameTimeoutError):
            src.read(0.4)
        for _ in range(2):
            with pytest.raises(FrameTimeoutError, match="reconnecting; next attempt in"):
                src.read(0.4)
        assert not src.ready
        src.read(0.4)
        assert sleeps == pytest.approx([0.4, 0.4, 0.2])
        assert src.reconnects == 1


def test_hardware_reset_after_n_failed_restarts_and_bounded_backoff(recording: Recording) -> None:
    outage = Outage(good_reads=0, failing_reads=1, failing_opens=100)
    resets: list[int] = []

    def hardware_reset() -> None:  # like a USB power cycle: the device comes back afterwards
        resets.append(outage.opens)
        outage.failing_opens = 0

    policy = ReconnectPolicy(
        misses_before_restart=1, backoff_initial_s=0.5, backoff_max_s=1.5, restarts_before_hardware_reset=4
    )
    src, sleeps = _supervise(recording, outage, policy, hardware_reset=hardware_reset)
    with src:
        with pytest.raises(FrameTimeoutError):
            src.read(5.0)
        _read_until_frame(src, attempts=10)
        assert resets == [5]  # called once, right after the 4th failed restart (the 5th open)
        assert src.hardware_resets == 1 and src.reconnects == 1
        assert sleeps == [0.5, 1.0, 1.5, 1.5, 1.5]  # doubling, capped at backoff_max_s


def test_gives_up_after_the_limit_with_a_clear_error(recording: Recording) -> None:
    outage = Outage(good_reads=0, failing_reads=1, failing_opens=100)
    policy = ReconnectPolicy(misses_before_restart=1, backoff_initial_s=0.1, max_restarts=3)
    src, _ = _supervise(recording, outage, policy)
    with src:
        with pytest.raises(FrameTimeoutError):
            src.read(5.0)
        for _ in range(2):
            with pytest.raises(FrameTimeoutError, match="restart attempt"):
                src.read(5.0)
        with pytest.raises(ReconnectGaveUpError, match=r"did not come back after 3 restart attempts.*USB3 cable"):
            src.read(5.0)
        with pytest.raises(ReconnectGaveUpError):
            src.read(5.0)
        assert not src.ready and outage.opens == 4


def test_a_different_camera_after_reconnect_is_refused(recording: Recording, make_recording: RecordingFactory) -> None:
    other = make_recording(n=3, width=80, height=60)  # another camera: other sizes and calibration
    outage = Outage(good_reads=1, failing_reads=1)
    built: list[FlakyPlayback] = []

    def factory() -> FrameSource:
        built.append(FlakyPlayback(recording if not built else other, outage))
        return built[-1]

    sleeps = Sleeps()
    src = ReconnectingSource(factory, ReconnectPolicy(misses_before_restart=1), sleep=sleeps)
    with src:
        src.read(5.0)
        with pytest.raises(FrameTimeoutError):
            src.read(5.0)
        with pytest.raises(StreamChangedError, match=r"came back changed: color intrinsics .*recalibrate the ROI"):
            src.read(5.0)
        assert not built[1].ready  # the unexpected source was closed again
        with pytest.raises(StreamChangedError):
            src.read(5.0)
        assert not src.ready and src.spec.color_shape == (48, 64, 3)


def test_a_source_that_refuses_its_own_reopen_is_fatal(recording: Recording, make_recording: RecordingFactory) -> None:
    other = make_recording(n=3, width=80, height=60)

    class SelfChecking(FlakyPlayback):
        """Like RealSenseSource: it compares a reopened stream with its first one itself."""

        first: StreamSpec | None = None

        def open(self) -> StreamSpec:
            spec = super().open()
            if SelfChecking.first is None:
                SelfChecking.first = spec
            check_same_stream(SelfChecking.first, spec)
            return spec

    outage = Outage(good_reads=1, failing_reads=1)
    built: list[FlakyPlayback] = []

    def factory() -> FrameSource:
        built.append(SelfChecking(recording if not built else other, outage))
        return built[-1]

    src = ReconnectingSource(factory, ReconnectPolicy(misses_before_restart=1), sleep=Sleeps())
    with src:
        src.read(5.0)
        with pytest.raises(FrameTimeoutError):
            src.read(5.0)
        with pytest.raises(StreamChangedError, match=r"came back changed: color intrinsics"):
            src.read(5.0)
        with pytest.raises(StreamChangedError):  # fatal: not retried as if the camera were merely absent
            src.read(5.0)
        assert outage.opens == 2 and not src.ready


def test_closed_supervisor_does_not_reopen_by_itself(recording: Recording) -> None:
    src, _ = _supervise(recording, Outage(), ReconnectPolicy())
    src.open()
    src.read(5.0)
    src.close()
    with pytest.raises(SourceError, match="not open"):
        src.read(5.0)


def test_end_of_stream_passes_through(recording: Recording) -> None:
    src, sleeps = _supervise(recording, Outage(), ReconnectPolicy(misses_before_restart=1))
    with src:
        frames = list(src.frames(timeout_s=5.0))
        assert len(frames) == recording.n
        with pytest.raises(EndOfStreamError):
            src.read(5.0)
        assert (src.reconnects, src.consecutive_failures, sleeps) == (0, 0, [])
