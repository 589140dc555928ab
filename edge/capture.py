"""Capture: a frame source pumped into the shared-memory ring — the producer end of the pipeline.

The source copies each frame straight into a reserved ring slot (``read(out=slot.buffers)``), so the
SDK buffer is released after exactly one copy and consumers read the slot in place.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from drivers import SourceConfig, create_source
from drivers.base import FrameSource
from drivers.errors import EndOfStreamError, FrameTimeoutError, SourceError
from edge.core.frame import StreamSpec
from edge.core.ringbuf import FrameRing, RingFullError, RingWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CaptureSummary:
    """What one capture run did: frames published, timeouts survived, and whether the source ended."""

    published: int
    timeouts: int
    ended: bool
    seconds: float


def pump(
    source: FrameSource,
    writer: RingWriter,
    stop: threading.Event | Any | None = None,
    read_timeout_s: float | None = None,
    reserve_timeout_s: float = 0.25,
) -> CaptureSummary:
    """Move frames from an open source into the ring until the source ends or ``stop`` is set.

    A full lossless ring is waited on (re-trying every ``reserve_timeout_s`` so ``stop`` is honoured);
    a read timeout abandons the slot and goes on (live sources reconnect underneath); end of stream
    closes the ring's stream so the consumer sees a clean end.
    """
    t0 = time.perf_counter()
    timeout = source.default_timeout_s() if read_timeout_s is None else read_timeout_s
    published = timeouts = 0
    ended = False
    while stop is None or not stop.is_set():
        try:
            with writer.reserve(reserve_timeout_s) as slot:
                frame = source.read(timeout, out=slot.buffers)
                slot.stamp(frame)
            published += 1
        except RingFullError:
            continue
        except FrameTimeoutError as err:
            timeouts += 1
            log.warning("capture: %s", err)
        except EndOfStreamError:
            ended = True
            break
    writer.close_stream()
    return CaptureSummary(published, timeouts, ended, time.perf_counter() - t0)


def wait_for_consumer(ready: Any, stop: threading.Event | Any, poll_s: float = 0.02) -> bool:
    """Wait until the consumer says it is ready (``ready.value`` set) before the source is opened; False if ``stop``
    is set first.

    A frame published before the consumer can read it is lost in a ``latest`` ring (overwritten, counted dropped)
    and waits in a lossless one: either way the line rate is not the consumer's while it still loads its models.
    ``ready`` is a lock-free shared value (``ctx.Value(..., lock=False)``) that one process (the supervisor) sets.
    """
    while not ready.value:
        if stop.is_set():
            return False
        time.sleep(poll_s)
    return True


def check_fits(source: StreamSpec, ring: StreamSpec) -> None:
    """Refuse a source whose frames do not fit the ring's slots (e.g. a camera reconfigured since the ring was made)."""
    if source.color_shape != ring.color_shape or source.depth_shape != ring.depth_shape:
        raise SourceError(
            f"source frames are color {source.color_shape} / depth {source.depth_shape}, the ring was sized for "
            f"color {ring.color_shape} / depth {ring.depth_shape}",
            "restart the pipeline so the ring is sized from the source's current stream profile",
        )


def capture_main(source_config: dict[str, Any], ring_name: str, stop: Any) -> None:
    """Entry point of a capture process (multiprocessing spawn): attach to the ring, open the source, pump."""
    config = TypeAdapter(SourceConfig).validate_python(source_config)
    with FrameRing.attach(ring_name) as ring, create_source(config) as source:
        check_fits(source.spec, ring.spec)
        summary = pump(source, ring.writer(), stop)
    log.info(
        "capture done: %d frames in %.2f s, %d timeouts, ended=%s",
        summary.published,
        summary.seconds,
        summary.timeouts,
        summary.ended,
    )
