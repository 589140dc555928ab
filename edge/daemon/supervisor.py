"""Child processes of the daemon, restarted within a budget when they crash — never silently lost."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import Any

from edge.core.errors import EdgeError

log = logging.getLogger(__name__)


class KeyValueFormatter(logging.Formatter):
    """``ts level logger role message`` on one line; the timestamp is left out under journald (it adds its own)."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role
        self.journald = bool(os.environ.get("JOURNAL_STREAM"))

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage().replace("\n", " | ")
        if record.exc_info:
            text += " traceback=" + repr(self.formatException(record.exc_info))
        head = f"level={record.levelname.lower()} role={self.role} logger={record.name}"
        if self.journald:
            return f"{head} {text}"
        return f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}.{int(record.msecs):03d} {head} {text}"


def configure_logging(role: str = "main", level: int = logging.INFO) -> None:
    """One line per event on stdout (journald captures it under systemd)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(KeyValueFormatter(role))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class SupervisorError(EdgeError):
    """A child crashed more often than its restart budget allows: the daemon exits so systemd can act."""


class RestartBudget:
    """At most ``max_restarts`` restarts inside any sliding window of ``window_s`` seconds."""

    def __init__(self, max_restarts: int, window_s: float) -> None:
        self.max_restarts = max_restarts
        self.window_ns = int(window_s * 1e9)
        self._times: deque[int] = deque()

    def take(self) -> bool:
        """Spend one restart if the budget allows it."""
        now = time.monotonic_ns()
        while self._times and now - self._times[0] > self.window_ns:
            self._times.popleft()
        if len(self._times) >= self.max_restarts:
            return False
        self._times.append(now)
        return True


def child_init() -> None:
    """Run first in every child: signals belong to the supervisor (it stops children through events).

    Under systemd ``KillMode=mixed`` only the main process gets SIGTERM; in a terminal, Ctrl-C reaches the
    whole process group, so children ignore SIGINT/SIGTERM/SIGHUP and wait for the supervisor's orderly stop.
    """
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)


class ParentWatch:
    """A stop flag that is also set when the parent died (a SIGKILLed supervisor must not leave orphans).

    ``flag`` is a lock-free shared value (``ctx.Value(..., lock=False)``): an ``mp.Event`` takes a shared lock
    on every ``is_set()``, and a child killed inside it would leave that lock held for the next child.
    """

    def __init__(self, flag: Any, parent_pid: int) -> None:
        self.flag = flag
        self.parent_pid = parent_pid

    def is_set(self) -> bool:
        return bool(self.flag.value) or os.getppid() != self.parent_pid


class MonitoredProcess:
    """One named child: started from ``args()`` (re-evaluated per start), restarted after a crash."""

    def __init__(
        self,
        ctx: SpawnContext,
        name: str,
        *,
        target: Callable[..., None],
        args: Callable[[int], tuple[Any, ...]],
        budget: RestartBudget,
        on_restart: Callable[[str], None],
        after_start: Callable[[], None] | None = None,
    ) -> None:
        self.ctx, self.name, self.target, self.args = ctx, name, target, args
        self.budget, self.on_restart, self.after_start = budget, on_restart, after_start
        self.process: SpawnProcess | None = None
        self.restarts = 0
        self.finished = False  # exited with code 0: its job is done (e.g. end of a recording)

    def start(self) -> None:
        self.process = self.ctx.Process(
            target=self.target, args=self.args(self.restarts), name=f"edge.{self.name}", daemon=True
        )
        self.process.start()
        if self.after_start is not None:  # e.g. close the parent's copies of pipe ends handed to the child
            self.after_start()
        log.info("event=child_started process=%s pid=%s restarts=%d", self.name, self.process.pid, self.restarts)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def check(self) -> None:
        """Restart the child if it died with a failure; raise SupervisorError once the budget is spent."""
        p = self.process
        if p is None or self.finished or p.is_alive():
            return
        p.join()
        code = p.exitcode
        if code == 0:
            self.finished = True
            log.info("event=child_finished process=%s", self.name)
            return
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        if not self.budget.take():
            raise SupervisorError(
                f"process {self.name} died ({how}) more than {self.budget.max_restarts} times within "
                f"{self.budget.window_ns / 1e9:g} s",
                "read the log lines before this one for the cause; the service manager restarts the daemon",
            )
        log.error("event=child_crashed process=%s cause=%r action=restart", self.name, how)
        self.restarts += 1
        self.on_restart(self.name)
        self.start()

    def stop(self, timeout_s: float) -> None:
        """Wait for an orderly exit (the caller set the child's stop event), then terminate, then kill."""
        p = self.process
        if p is None:
            return
        p.join(timeout_s)
        if p.is_alive():
            log.error("event=child_stop_timeout process=%s action=kill timeout_s=%g", self.name, timeout_s)
            p.kill()
            p.join(5.0)
        self.finished = True
