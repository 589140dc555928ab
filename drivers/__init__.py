"""Frame sources: live RealSense, recorded .bag/.db3 playback, and the synthetic drum line.

``SourceConfig`` is the discriminated union a config file names with ``type:``; ``create_source`` is the one
place that maps a config to its source, so the daemon, the tools and the tests build sources the same way.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from drivers.base import FrameSource
from drivers.playback import PlaybackSource, PlaybackSourceConfig
from drivers.realsense import RealSenseSourceConfig, supervised
from drivers.synthetic import SyntheticSource, SyntheticSourceConfig

SourceConfig = Annotated[
    RealSenseSourceConfig | PlaybackSourceConfig | SyntheticSourceConfig, Field(discriminator="type")
]


def create_source(config: RealSenseSourceConfig | PlaybackSourceConfig | SyntheticSourceConfig) -> FrameSource:
    """The source a config describes; a live camera always runs under the reconnect supervisor."""
    if isinstance(config, RealSenseSourceConfig):
        return supervised(config)
    if isinstance(config, PlaybackSourceConfig):
        return PlaybackSource(config)
    return SyntheticSource(config)


__all__ = ["FrameSource", "SourceConfig", "create_source"]
