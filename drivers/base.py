"""The one interface every frame source implements (live camera, recording, synthetic line).

Sources are plain objects: open/read/close and a context manager. Process wrappers, the ring buffer
and watchdogs live above them (``edge``), so tests and tools can drive a source in-process.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterator
from types import TracebackType

from drivers.errors import EndOfStreamError, FrameTimeoutError, SourceError
from edge.core.frame import Frame, FrameBuffers, StreamSpec

__all__ = ["FrameBuffers", "FrameSource", "require_open", "wait_until_due"]


class FrameSource(abc.ABC):
    """A stream of :class:`Frame`. ``read`` never blocks longer than its timeout."""

    @abc.abstractmethod
    def open(self) -> StreamSpec:
        """Start streaming and return the stream description (sizes, calibration, registration)."""

    @abc.abstractmethod
    def read(self, timeout_s: float, out: FrameBuffers | None = None) -> Frame:
        """Next frame. Raises FrameTimeoutError after ``timeout_s``, EndOfStreamError after the last frame.

        With ``out`` the pixels are copied once, straight into ``out`` (shapes must equal the spec's), and the
        returned frame's arrays are those buffers. Without it the source allocates arrays the caller owns.
        In both cases no SDK buffer is referenced after ``read`` returns.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Stop streaming and release the device or file. Safe to call twice."""

    @property
    @abc.abstractmethod
    def spec(self) -> StreamSpec:
        """The stream description; raises SourceError before ``open``."""

    @property
    @abc.abstractmethod
    def ready(self) -> bool:
        """True while the source is open and delivering frames (feeds readiness and the watchdog)."""

    def default_timeout_s(self) -> float:
        """A read timeout of a few frame periods, never below 0.5 s."""
        return max(0.5, 4.0 / max(self.spec.fps, 1e-3))

    def frames(self, timeout_s: float | None = None) -> Iterator[Frame]:
        """Iterate until end of stream; a timeout is an error, not an end."""
        t = self.default_timeout_s() if timeout_s is None else timeout_s
        while True:
            try:
                yield self.read(t)
            except EndOfStreamError:
                return

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def require_open(spec: StreamSpec | None, name: str) -> StreamSpec:
    """Return ``spec`` or raise the error a caller gets for using a source before ``open``."""
    if spec is None:
        raise SourceError(f"{name} is not open", "call open() (or use it as a context manager) first")
    return spec


def wait_until_due(t0_ns: int, index: int, fps: float, timeout_s: float, *, what: str, remedy: str) -> None:
    """Pace a source: sleep until frame ``index`` of a stream started at ``t0_ns`` (``perf_counter_ns``) is due at
    ``fps``. A due time beyond ``timeout_s`` sleeps the timeout, then raises ``FrameTimeoutError`` ("<what> is due in
    …", ``remedy``)."""
    wait_s = (t0_ns + round(index * 1e9 / fps) - time.perf_counter_ns()) / 1e9
    if wait_s > timeout_s:
        time.sleep(max(timeout_s, 0.0))
        raise FrameTimeoutError(f"{what} is due in {wait_s:.3f} s, after the {timeout_s:.3f} s timeout", remedy)
    if wait_s > 0:
        time.sleep(wait_s)
