"""systemd readiness and liveness: sd_notify datagrams (READY, WATCHDOG fed by frame progress, STATUS, STOPPING).

A tiny sender of our own: one AF_UNIX datagram per message to ``$NOTIFY_SOCKET`` (``@name`` is the abstract
namespace). Without the variable (a foreground run, a test) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class SdNotifier:
    """Sends ``KEY=VALUE`` lines to systemd's notification socket."""

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self.address: str | None = None
        self._sock: socket.socket | None = None
        if address:
            self.address = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, message: str) -> bool:
        """Send one message; a missing or vanished socket is logged, never raised (systemd may be restarting)."""
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto(message.encode(), self.address)
        except OSError as err:
            log.warning("event=sd_notify_failed message=%s error=%r", message.split("=", 1)[0], str(err))
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Watchdog:
    """Pings ``WATCHDOG=1`` at half of ``$WATCHDOG_USEC``, but only when frames advanced since the last ping.

    A free-running timer would keep a hung camera or model "alive"; tying the ping to progress lets systemd
    restart the service when the pipeline stops moving.
    """

    def __init__(self, notifier: SdNotifier, watchdog_usec: str | None = None) -> None:
        raw = os.environ.get("WATCHDOG_USEC") if watchdog_usec is None else watchdog_usec
        pid = os.environ.get("WATCHDOG_PID")
        usec = int(raw) if raw and raw.isdigit() else 0
        if pid and pid.isdigit() and int(pid) != os.getpid():
            usec = 0  # the watchdog belongs to another process of the unit
        self.notifier = notifier
        self.interval_ns = usec * 1000 // 2
        self._last_ping_ns = time.monotonic_ns()
        self._last_progress = 0  # no ping until the first frame is accounted
        self.pings = 0

    @property
    def enabled(self) -> bool:
        return self.notifier.enabled and self.interval_ns > 0

    def feed(self, progress: int) -> bool:
        """Ping if the interval elapsed and ``progress`` (frames accounted) moved; True when a ping went out."""
        now = time.monotonic_ns()
        if not self.enabled or now - self._last_ping_ns < self.interval_ns or progress == self._last_progress:
            return False
        self._last_ping_ns, self._last_progress = now, progress
        self.pings += 1
        return self.notifier.notify("WATCHDOG=1")


def status_line(
    source: str, fps: float, p95_ms: float, counts: dict[str, int], *, runtime: str = "", bundle: str = ""
) -> str:
    """The one-line ``STATUS=`` text ``systemctl status`` shows (``runtime``: e.g. ``tensorrt/cuda:0``; ``bundle``:
    the rollout bundle that runs)."""
    return (
        f"source={source} fps={fps:.1f} p95={p95_ms:.1f}ms scored={counts.get('scored', 0)} "
        f"ng={counts.get('ng', 0)} gated={counts.get('gated', 0)} dropped={counts.get('dropped', 0)}"
        + (f" runtime={runtime}" if runtime else "")
        + (f" bundle={bundle}" if bundle else "")
    )


def runtime_summary(runtimes: dict[str, dict[str, str]]) -> str:
    """``backend/device[+cudacrop]`` per distinct runtime, ``!fallback`` marked: short enough for STATUS."""
    parts = []
    for r in runtimes.values():
        text = f"{r['backend']}/{r['device']}" + ("+cudacrop" if r["crop"] == "cuda" else "")
        parts.append(text + ("!fallback" if r.get("fallback") else ""))
    return ",".join(dict.fromkeys(parts))
