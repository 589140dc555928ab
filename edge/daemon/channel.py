"""Message pipes between the daemon and its inference child that survive the child being killed.

``multiprocessing.Queue`` shares a lock and one pipe between processes: a child SIGKILLed while holding the lock, or
half-way through writing a message, leaves the lock held or a torn message in the pipe, and the next writer or
reader blocks forever. Here every start of the child gets its own pipes and the daemon closes its copies of the
child's ends once the child has them (:meth:`ChildPipes.started`), so a dead child's pipe reads as end of file
(a torn last message included) instead of blocking, and nothing is shared that a dead child could leave locked.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnContext
from typing import Any

log = logging.getLogger("edge.daemon")

_CLOSE = ("__close__", None, None)


class Outbox:
    """The child's sending end: ``put`` never blocks the caller (a thread writes to the pipe, in order)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._pending: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._send_all, name="outbox", daemon=True)
        self._thread.start()

    def put(self, message: tuple[Any, ...]) -> None:
        self._pending.put(message)

    def _send_all(self) -> None:
        while (message := self._pending.get()) is not _CLOSE:
            try:
                self._conn.send(message)
            except OSError:  # the daemon is gone: nobody is left to read (ParentWatch ends this process)
                return

    def close(self) -> None:
        """Send everything put so far, then close the pipe (the daemon reads end of file after the last message)."""
        self._pending.put(_CLOSE)
        self._thread.join()
        self._conn.close()


class Inbox:
    """The daemon's receiving side: the current child's pipe and dead children's pipes until they are drained."""

    def __init__(self) -> None:
        self._conns: list[Connection] = []

    def add(self, conn: Connection) -> None:
        self._conns.append(conn)

    def __len__(self) -> int:
        """Pipes still being read (a dead child's pipe leaves once it reads as end of file)."""
        return len(self._conns)

    def messages(self, timeout_s: float) -> Iterator[tuple[Any, ...]]:
        """Every message available now, oldest pipe first; waits up to ``timeout_s`` for the first one."""
        if not self._conns:  # between a child's exit and its successor: wait like an empty pipe would, not spin
            time.sleep(timeout_s)
            return
        if not wait(self._conns, timeout_s):
            return
        for conn in list(self._conns):
            while conn.poll(0):
                try:
                    message = conn.recv()
                except (EOFError, OSError) as err:  # the child has exited, or died mid-message: this pipe is done
                    if not isinstance(err, EOFError):
                        log.warning("event=torn_message_dropped error=%r", str(err))
                    self._conns.remove(conn)
                    conn.close()
                    break
                yield message

    def close(self) -> None:
        for conn in self._conns:
            conn.close()
        self._conns.clear()


class ChildPipes:
    """The pipes of the inference child: results to the daemon (:class:`Inbox`), control messages to the child.

    Call :meth:`for_child` to make a fresh pair for each start and :meth:`started` right after the process started.
    """

    def __init__(self, ctx: SpawnContext) -> None:
        self.ctx = ctx
        self.inbox = Inbox()
        self._control: Connection | None = None
        self._child_ends: tuple[Connection, ...] = ()

    def for_child(self) -> tuple[Connection, Connection]:
        """(results writer, control reader) for a new child; the daemon keeps the other ends."""
        results_r, results_w = self.ctx.Pipe(duplex=False)
        control_r, control_w = self.ctx.Pipe(duplex=False)
        self.inbox.add(results_r)
        if self._control is not None:
            self._control.close()
        self._control = control_w
        self._child_ends = (results_w, control_r)
        return results_w, control_r

    def started(self) -> None:
        """Drop the daemon's copies of the child's ends (the child has its own now), so its death reads as EOF."""
        for conn in self._child_ends:
            conn.close()
        self._child_ends = ()

    def send_control(self, message: str) -> None:
        """Tell the running child (e.g. ``reload``); a child that just died misses it, and its successor starts
        from the current files anyway."""
        if self._control is None:
            return
        try:
            self._control.send(message)
        except OSError as err:
            log.warning("event=control_not_delivered message=%s error=%r", message, str(err))

    def close(self) -> None:
        self.started()
        self.inbox.close()
        if self._control is not None:
            self._control.close()
            self._control = None


def control_messages(conn: Connection) -> Iterator[str]:
    """The control messages waiting in the child's pipe (none once the daemon has closed it)."""
    try:
        while conn.poll(0):
            yield conn.recv()
    except EOFError:
        return
