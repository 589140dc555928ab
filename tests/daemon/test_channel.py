"""The daemon ↔ inference pipes with real spawned children: killed mid-message, killed holding nothing, restarted."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import struct
import time
from multiprocessing.connection import Connection

import pytest

from edge.daemon.channel import ChildPipes, Outbox, control_messages

CTX = mp.get_context("spawn")


def torn_tail(results: Connection, control: Connection) -> None:
    """Two whole messages, then the first 10 kB of a 1 MB one, then SIGKILL: what a kill mid-send leaves."""
    results.send(("record", 1, None))
    results.send(("record", 2, None))
    os.write(results.fileno(), struct.pack("!i", 1_000_000) + b"x" * 10_000)
    os.kill(os.getpid(), signal.SIGKILL)


def echo_control_then_finish(results: Connection, control: Connection) -> None:
    out = Outbox(results)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for message in control_messages(control):
            out.put(("control", message, None))
            if message == "stop":
                out.put(("done", None, None))
                out.close()
                return
        time.sleep(0.01)


def start(pipes: ChildPipes, target: object) -> mp.process.BaseProcess:
    proc = CTX.Process(target=target, args=pipes.for_child(), daemon=True)
    proc.start()
    pipes.started()
    return proc


def drain(pipes: ChildPipes, seconds: float) -> list[tuple[object, ...]]:
    got: list[tuple[object, ...]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got += list(pipes.inbox.messages(0.1))
    return got


@pytest.mark.timeout(60)
def test_a_child_killed_mid_message_leaves_its_whole_messages_and_then_end_of_file() -> None:
    """A torn last message must read as end of file, not block the daemon: the earlier messages are kept."""
    pipes = ChildPipes(CTX)
    proc = start(pipes, torn_tail)
    proc.join(20)
    assert proc.exitcode == -signal.SIGKILL
    t0 = time.monotonic()
    got = drain(pipes, 1.0)
    assert time.monotonic() - t0 < 5
    assert got == [("record", 1, None), ("record", 2, None)]
    assert len(pipes.inbox) == 0, "the dead child's pipe is closed and forgotten"
    pipes.close()


@pytest.mark.timeout(60)
def test_a_successor_gets_fresh_pipes_and_the_dead_childs_messages_come_first() -> None:
    pipes = ChildPipes(CTX)
    dead = start(pipes, torn_tail)
    dead.join(20)
    pipes.send_control("reload")  # the dead child's control pipe: logged, not raised
    live = start(pipes, echo_control_then_finish)
    pipes.send_control("reload")
    pipes.send_control("stop")
    got = drain(pipes, 3.0)
    live.join(10)
    assert live.exitcode == 0
    assert got == [
        ("record", 1, None),
        ("record", 2, None),
        ("control", "reload", None),
        ("control", "stop", None),
        ("done", None, None),
    ]
    pipes.close()


def test_outbox_put_does_not_wait_for_the_reader() -> None:
    """put() returns at once even when far more than a pipe buffer is queued; close() delivers all of it in order."""
    reader, writer = CTX.Pipe(duplex=False)
    out = Outbox(writer)
    t0 = time.perf_counter()
    for i in range(50):
        out.put(("record", i, b"x" * 100_000))  # 5 MB against a 64 kB pipe buffer
    assert time.perf_counter() - t0 < 1.0
    got = [reader.recv()[1] for _ in range(50)]
    out.close()
    assert got == list(range(50))
    with pytest.raises(EOFError):
        reader.recv()


def test_an_inbox_without_pipes_waits_instead_of_spinning() -> None:
    pipes = ChildPipes(CTX)
    t0 = time.monotonic()
    assert list(pipes.inbox.messages(0.2)) == []
    assert time.monotonic() - t0 >= 0.19
