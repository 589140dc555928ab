"""Errors raised by frame sources."""

from __future__ import annotations

from edge.core.errors import EdgeError


class SourceError(EdgeError):
    """A source cannot deliver frames (bad file, missing camera, bad settings)."""


class DeviceNotFoundError(SourceError):
    """No camera with the requested serial is connected."""


class RecordingError(SourceError):
    """A recording is unreadable: missing, truncated, corrupt, or without the streams we need."""


class FrameTimeoutError(SourceError):
    """No frameset arrived within the read timeout."""


class EndOfStreamError(SourceError):
    """A finite source (recording, fixed-length synthetic run) has delivered its last frame."""

    def __init__(self, problem: str = "end of stream", remedy: str = "") -> None:
        super().__init__(problem, remedy)
