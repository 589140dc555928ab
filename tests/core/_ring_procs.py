"""Process entry points for the ring-buffer tests: spawn targets, and a CLI for owner-lifecycle runs.

CLI: ``python _ring_procs.py <mode> <ring name>`` with mode ``exit`` (create, then return without close:
atexit must unlink), ``sigterm`` (opt into signal cleanup, then wait to be terminated), ``sigkill`` (wait
to be killed: only the resource tracker can unlink), ``sigkill-after-child`` (the same after a
multiprocessing child attached and exited) or ``attach`` (attach to a live ring and exit). Each
prints ``ready`` once the ring is usable.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from edge.core.frame import Extrinsics, Intrinsics, StreamSpec
from edge.core.ringbuf import FrameRing, RingPolicy, install_signal_cleanup


def small_spec(width: int = 32, height: int = 24) -> StreamSpec:
    intr = Intrinsics(width, height, 30.0, 30.0, width / 2, height / 2)
    return StreamSpec("test", intr, intr, Extrinsics(), 0.001, 30.0, True, source="synthetic:test")


def color_value(k: int) -> int:
    return k % 251


def depth_value(k: int) -> int:
    return (k * 7919) % 65521


def fill_slot_frames(name: str, count: int, timeout_s: float, stop: Event | None = None) -> None:
    """Writer: frame ``k`` is filled entirely with values derived from ``k``; closes the stream at the end."""
    with FrameRing.attach(name) as ring:
        writer = ring.writer()
        k = 0
        while (count < 0 or k < count) and not (stop is not None and stop.is_set()):
            with writer.reserve(timeout_s) as slot:
                slot.color.fill(color_value(k))
                slot.depth.fill(depth_value(k))
                slot.sequence, slot.color_frame_number, slot.depth_frame_number = k, 1000 + k, 2000 + k
            k += 1
        writer.close_stream()


def shm_ranges(name: str) -> list[tuple[int, int]]:
    """Address ranges where this process maps /dev/shm/<name>, from the kernel's own account."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.rstrip().endswith(f"/dev/shm/{name}"):
            lo, hi = line.split()[0].split("-")
            ranges.append((int(lo, 16), int(hi, 16)))
    return ranges


def zero_copy_consumer(name: str, out: Any) -> None:
    """Reader: report where the frame's arrays live and whether they hold what the writer wrote."""
    with FrameRing.attach(name) as ring:
        reader = ring.reader()
        with reader.read(timeout_s=10.0) as frame:
            result = {
                "color_addr": frame.color.__array_interface__["data"][0],
                "depth_addr": frame.depth.__array_interface__["data"][0],
                "color_nbytes": frame.color.nbytes,
                "depth_nbytes": frame.depth.nbytes,
                "ranges": shm_ranges(name),
                "content_ok": bool(
                    (frame.color == color_value(frame.sequence)).all()
                    and (frame.depth == depth_value(frame.sequence)).all()
                ),
                "writeable": bool(frame.color.flags.writeable),
                "sequence": frame.sequence,
                "color_frame_number": frame.color_frame_number,
            }
        del frame
        out.put(result)


def die_holding_a_reserved_slot(name: str) -> None:
    """A writer killed between reserve and publish (no exception handler runs, as under SIGKILL)."""
    ring = FrameRing.attach(name)
    with ring.writer().reserve() as slot:
        slot.color.fill(1)
        os._exit(9)


def attach_and_report_stats(name: str, out: Any) -> None:
    with FrameRing.attach(name) as ring:
        out.put(ring.stats())


def _main(mode: str, name: str) -> None:
    if mode == "attach":
        with FrameRing.attach(name):
            print("ready", flush=True)
        return
    if mode == "sigterm":
        install_signal_cleanup()
    ring = FrameRing.create(small_spec(), name=name, slots=3, policy=RingPolicy.LATEST)
    with ring.writer().reserve() as slot:
        slot.color.fill(1)
    if mode == "sigkill-after-child":  # a multiprocessing child shares this process's resource tracker
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        child = ctx.Process(target=attach_and_report_stats, args=(name, out))
        child.start()
        out.get(timeout=60)
        child.join(30)
    print("ready", flush=True)
    if mode != "exit":
        time.sleep(60)


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
