"""Reconnect supervisor: restarts any frame source after repeated misses, with back-off and a hardware-reset hook."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pydantic import Field

from drivers.base import FrameBuffers, FrameSource, require_open
from drivers.errors import EndOfStreamError, FrameTimeoutError, SourceError
from edge.core.config import EdgeModel
from edge.core.frame import Frame, StreamSpec

log = logging.getLogger(__name__)


class StreamChangedError(SourceError):
    """The source came back as a different camera or calibration; the calibrated ROI no longer fits."""


class ReconnectGaveUpError(SourceError):
    """The source stayed unreachable for the configured number of restart attempts."""


class ReconnectPolicy(EdgeModel):
    """When to restart a source that stopped delivering, how long to wait, and when to escalate."""

    misses_before_restart: int = Field(
        3, ge=1, description="consecutive read timeouts/errors that trigger a restart (K)"
    )
    backoff_initial_s: float = Field(0.5, gt=0, description="wait before the first restart attempt")
    backoff_max_s: float = Field(8.0, gt=0, description="upper bound of the doubling wait between attempts")
    restarts_before_hardware_reset: int = Field(
        3, ge=1, description="failed restart attempts after which hardware_reset is called, and every N after (N)"
    )
    max_restarts: int | None = Field(
        None, ge=1, description="give up after this many consecutive failed attempts; None keeps trying"
    )

    def backoff_s(self, failed_attempts: int) -> float:
        """Wait before the next attempt: doubling from ``backoff_initial_s``, capped at ``backoff_max_s``."""
        return min(self.backoff_max_s, self.backoff_initial_s * 2.0 ** min(failed_attempts, 30))


def check_same_stream(first: StreamSpec, now: StreamSpec) -> None:
    """Raise StreamChangedError when ``now`` is not the camera and calibration ``first`` described."""
    changes = []
    if now.serial != first.serial:
        changes.append(f"serial {first.serial!r} → {now.serial!r}")
    if not now.color_intrinsics.close_to(first.color_intrinsics):
        changes.append(f"color intrinsics {first.color_intrinsics} → {now.color_intrinsics}")
    if not now.depth_intrinsics.close_to(first.depth_intrinsics):
        changes.append(f"depth intrinsics {first.depth_intrinsics} → {now.depth_intrinsics}")
    if abs(now.depth_scale - first.depth_scale) > 1e-6 * max(abs(first.depth_scale), 1e-12):
        changes.append(f"depth scale {first.depth_scale} → {now.depth_scale}")
    if now.depth_aligned_to_color != first.depth_aligned_to_color:
        changes.append(f"depth_aligned_to_color {first.depth_aligned_to_color} → {now.depth_aligned_to_color}")
    if changes:
        raise StreamChangedError(
            f"{first.source or 'the source'} came back changed: {'; '.join(changes)}",
            f"reconnect the calibrated camera (serial {first.serial}) or recalibrate the ROI for the new one",
        )


class ReconnectingSource(FrameSource):
    """A FrameSource that survives a flaky inner source (USB drop-outs, stalled pipelines).

    After ``misses_before_restart`` consecutive failed reads the inner source is closed and ``ready`` turns
    False; later reads wait out a doubling back-off (in slices no longer than their timeout, so ``read`` keeps
    its contract) and then build a fresh source with ``factory``. Every ``restarts_before_hardware_reset``
    failed attempts ``hardware_reset`` is called. A reopened source must describe the same stream as the
    first one, else StreamChangedError: the calibrated ROI would silently stop fitting. End of stream is
    passed through untouched; it is not a failure.
    """

    def __init__(
        self,
        factory: Callable[[], FrameSource],
        policy: ReconnectPolicy,
        *,
        hardware_reset: Callable[[], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._factory = factory
        self._policy = policy
        self._hardware_reset = hardware_reset
        self._sleep = sleep
        self._inner: FrameSource | None = None
        self._first: StreamSpec | None = None
        self._wait_left_s = 0.0
        self._failed_attempts = 0
        self._fatal: SourceError | None = None
        self._closed = True
        self.reconnects = 0
        self.hardware_resets = 0
        self.consecutive_failures = 0

    def open(self) -> StreamSpec:
        """Open the first inner source; its spec is the reference every reconnect is checked against."""
        if self._inner is not None and self._first is not None:
            return self._first
        self._closed = False
        inner = self._factory()
        spec = inner.open()
        if self._first is None:
            self._first = spec
        else:
            self._adopt(inner, spec)
        self._inner = inner
        return self._first

    @property
    def spec(self) -> StreamSpec:
        return require_open(self._first, "ReconnectingSource")

    @property
    def ready(self) -> bool:
        return self._inner is not None and self._inner.ready and self._fatal is None

    def default_timeout_s(self) -> float:
        return self._inner.default_timeout_s() if self._inner is not None else super().default_timeout_s()

    def read(self, timeout_s: float, out: FrameBuffers | None = None) -> Frame:
        """Next frame from the inner source; misses count towards a restart and are re-raised to the caller.

        While reconnecting, a call sleeps at most ``timeout_s`` of the back-off, and when it reopens the source
        it then waits up to ``timeout_s`` for the first frame: one open attempt plus twice the timeout, at most.
        """
        require_open(None if self._closed else self._first, "ReconnectingSource")
        if self._fatal is not None:
            raise self._fatal
        if self._inner is None:
            self._attempt_reconnect(timeout_s)
        inner = self._inner
        assert inner is not None
        try:
            frame = inner.read(timeout_s, out)
        except (EndOfStreamError, StreamChangedError):
            raise
        except (SourceError, RuntimeError) as err:
            self._count_miss(err)
            raise
        self.consecutive_failures = 0
        return frame

    def close(self) -> None:
        self._closed = True
        self._drop_inner()

    def _drop_inner(self) -> None:
        if self._inner is not None:
            self._inner.close()
            self._inner = None

    def _count_miss(self, err: BaseException) -> None:
        self.consecutive_failures += 1
        if self.consecutive_failures < self._policy.misses_before_restart:
            return
        log.warning("%d consecutive misses (%s); restarting the source", self.consecutive_failures, err)
        self._drop_inner()
        self._wait_left_s = self._policy.backoff_s(0)

    def _attempt_reconnect(self, timeout_s: float) -> None:
        """Spend up to ``timeout_s`` of the back-off, then try one reopen; raise FrameTimeoutError if not back."""
        step = min(self._wait_left_s, max(timeout_s, 0.0))
        if step > 0:
            self._sleep(step)
            self._wait_left_s -= step
        if self._wait_left_s > 1e-9:
            raise FrameTimeoutError(
                f"source is reconnecting; next attempt in {self._wait_left_s:.2f} s",
                "wait; readiness reports False until frames flow again",
            )
        try:
            inner = self._factory()
            spec = inner.open()
        except StreamChangedError as err:  # a source that checks its own calibration on reopen
            self._fatal = err
            raise
        except (SourceError, RuntimeError) as err:  # RuntimeError: what the SDK raises for USB trouble
            self._attempt_failed(err)
            raise FrameTimeoutError(
                f"restart attempt {self._failed_attempts} failed: {err}",
                "the supervisor keeps retrying with back-off; check the camera's cable and power",
            ) from err
        self._adopt(inner, spec)
        self._inner = inner
        self._failed_attempts = 0
        self.reconnects += 1
        log.info("source reconnected (%d reconnects so far)", self.reconnects)

    def _adopt(self, inner: FrameSource, spec: StreamSpec) -> None:
        """Accept a reopened source only if it is the same stream as the first one."""
        assert self._first is not None
        try:
            check_same_stream(self._first, spec)
        except StreamChangedError as err:
            inner.close()
            self._fatal = err
            raise

    def _attempt_failed(self, err: Exception) -> None:
        self._failed_attempts += 1
        self.consecutive_failures += 1
        limit = self._policy.max_restarts
        if limit is not None and self._failed_attempts >= limit:
            self._fatal = ReconnectGaveUpError(
                f"source did not come back after {self._failed_attempts} restart attempts (last error: {err})",
                "check the camera's USB3 cable, power and serial, then restart the service",
            )
            raise self._fatal from err
        if (
            self._hardware_reset is not None
            and self._failed_attempts % self._policy.restarts_before_hardware_reset == 0
        ):
            log.warning("%d failed restarts; hardware-resetting the device", self._failed_attempts)
            try:
                self._hardware_reset()
                self.hardware_resets += 1
            except (SourceError, RuntimeError) as reset_err:
                log.warning("hardware reset failed: %s", reset_err)
        self._wait_left_s = self._policy.backoff_s(self._failed_attempts)
