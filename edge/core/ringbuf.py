"""Zero-copy shared-memory frame ring: one segment per stream, per-slot seqlock, futex wake-ups.

Layout of the one ``multiprocessing.shared_memory`` segment (all integers little-endian int64 unless noted)::

    header   magic, layout version, slot count, slot bytes, slots offset, policy, spec-JSON length,
             resource-tracker pipe identity, closed flag, cursors, counters, two int32 futex words
    spec     StreamSpec.to_dict() as UTF-8 JSON, from byte HEADER_BYTES
    slot[i]  64-byte metadata block (seq, sequence, color/depth frame numbers, device/host/publish ns)
             then color H×W×3 uint8 and depth H×W uint16, every part 64-byte aligned

Concurrency model: exactly one writer and one consuming reader (other processes may attach for
``stats()``). Every cursor or counter has a single writing process, so no atomic read-modify-write is
needed: the writer owns ``reserved``/``head``/``abandoned``, the reader owns ``tail``/``released``/
``skipped``/``overruns``/``torn``/``delivered``. Frame ``k`` goes to slot ``k % N``; its slot's ``seq``
is ``2k+1`` while written and ``2k+2`` once published, so a reader that re-reads ``seq`` after use knows
whether the pixels it used were overwritten. Python has no memory fences, so this relies on aligned
8-byte stores being single stores seen by other cores in program order: true on x86-64 (TSO), where the
torn-read test runs. On aarch64 (Jetson) the writer's side is ordered by the futex syscall after each
publish, but the reader's re-check is not fenced; validate there before trusting it on weakly ordered CPUs.
A second consuming reader is not supported: it would race the first on ``tail``.

Wake-ups use a Linux futex on an int32 word inside the segment (``FUTEX_WAIT``/``FUTEX_WAKE`` through
``libc.syscall``): it needs no file descriptor to pass between processes, so attaching by name is all a
consumer does, and it leaves nothing besides the segment to clean up. ``tools/benchmarks/ring.py``
measures its cross-process handoff latency.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import platform
import signal
import struct
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from types import FrameType
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.core.errors import EdgeError
from edge.core.frame import Frame, FrameBuffers, StreamSpec

MAGIC = b"DRUMRING"
LAYOUT_VERSION = 1
HEADER_BYTES = 256
ALIGN = 64
META_WORDS = 8  # int64 words of a slot's metadata block (64 bytes)

# Header int64 word indices.
_H_VERSION, _H_SLOTS, _H_SLOT_BYTES, _H_SLOTS_OFFSET, _H_POLICY, _H_SPEC_LEN = 1, 2, 3, 4, 5, 6
_H_TRACKER_DEV, _H_TRACKER_INO, _H_CLOSED = 7, 8, 9
_H_RESERVED, _H_HEAD, _H_ABANDONED = 10, 11, 12  # written by the writer only
_H_TAIL, _H_RELEASED, _H_SKIPPED, _H_OVERRUNS, _H_TORN, _H_DELIVERED = 13, 14, 15, 16, 17, 18  # reader only
_H_WORDS = 20
_WAKE_PUBLISH_OFFSET = _H_WORDS * 8  # int32 futex word bumped on publish and close_stream
_WAKE_RELEASE_OFFSET = _WAKE_PUBLISH_OFFSET + 4  # int32 futex word bumped when the reader frees a slot

# Slot metadata word indices.
_M_SEQ, _M_SEQUENCE, _M_COLOR_FN, _M_DEPTH_FN, _M_DEVICE_TS, _M_HOST_TS, _M_PUBLISH_NS = range(7)

_FUTEX_WAIT, _FUTEX_WAKE = 0, 1
_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}.get(platform.machine().lower())
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None

_OWNED: dict[str, SharedMemory] = {}  # segments this process created and has not unlinked yet
_ATEXIT_INSTALLED = False
_LINGERING: list[SharedMemory] = []  # closed while callers still held frame views; unmapped at exit


class RingError(EdgeError):
    """The ring buffer cannot be created, attached or used as asked."""


class RingAttachError(RingError):
    """A segment name does not refer to a usable ring (missing, foreign, other layout version, truncated)."""


class RingFullError(RingError):
    """Lossless policy: no slot was freed by the reader within the writer's timeout."""


class RingTimeoutError(RingError):
    """No frame was published within the reader's timeout."""


class RingClosedError(RingError):
    """The writer called ``close_stream()`` and every published frame has been read: a clean end of stream."""

    def __init__(self, problem: str = "ring stream closed by its writer", remedy: str = "") -> None:
        super().__init__(problem, remedy)


class TornReadError(RingError):
    """The writer overwrote the slot while the reader used it: results computed from that frame are invalid."""


class RingPolicy(StrEnum):
    """What the writer does when the reader falls ``slots`` frames behind."""

    LATEST = "latest"  # live camera: never block, overwrite the oldest unread frame and count it dropped
    LOSSLESS = "lossless"  # playback and benchmarks: wait for the reader, with a timeout


_POLICY_CODES = {RingPolicy.LATEST: 0, RingPolicy.LOSSLESS: 1}


@dataclass(frozen=True, slots=True)
class RingStats:
    """Counters of one ring, readable from any attached process.

    ``dropped`` counts frames overwritten before the reader claimed them (latest policy); it is exact
    once both sides are idle. ``torn`` counts frames overwritten *while* the reader used them; such a
    read raised TornReadError, so ``delivered`` only counts reads that validated.
    """

    name: str
    policy: RingPolicy
    slots: int
    written: int
    delivered: int
    dropped: int
    overruns: int
    torn: int
    abandoned: int
    pending: int
    closed: bool


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _slot_layout(spec: StreamSpec) -> tuple[int, int, int]:
    """Byte offsets of color and depth inside a slot, and the slot size, all 64-byte aligned."""
    h, w, c = spec.color_shape
    dh, dw = spec.depth_shape
    color_off = _align(META_WORDS * 8)
    depth_off = color_off + _align(h * w * c)
    return color_off, depth_off, depth_off + _align(dh * dw * 2)


def _require_futex() -> tuple[Any, int]:
    if _LIBC is None or _SYS_FUTEX is None:
        raise RingError(
            f"the frame ring needs Linux futexes on x86_64 or aarch64, this is {sys.platform}/{platform.machine()}",
            "run the edge pipeline on a Linux x86_64 or aarch64 host",
        )
    return _LIBC, _SYS_FUTEX


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _futex_wait(addr: int, expected: int, timeout_s: float) -> None:
    """Sleep while the int32 at ``addr`` equals ``expected`` (returns early on wake, change, signal)."""
    libc, nr = _require_futex()
    t = max(timeout_s, 0.0)
    ts = _Timespec(int(t), int((t - int(t)) * 1e9))
    libc.syscall(ctypes.c_long(nr), ctypes.c_void_p(addr), ctypes.c_int(_FUTEX_WAIT), ctypes.c_int(expected),
                 ctypes.byref(ts), ctypes.c_void_p(None), ctypes.c_int(0))  # fmt: skip


def _futex_wake(addr: int) -> None:
    libc, nr = _require_futex()
    libc.syscall(ctypes.c_long(nr), ctypes.c_void_p(addr), ctypes.c_int(_FUTEX_WAKE), ctypes.c_int(2**31 - 1),
                 ctypes.c_void_p(None), ctypes.c_void_p(None), ctypes.c_int(0))  # fmt: skip


def _tracker_identity() -> tuple[int, int]:
    """(st_dev, st_ino) of this process's resource-tracker pipe: equal in processes that share one tracker."""
    fd = resource_tracker.getfd()
    if fd is None:
        raise RingError("Python's resource tracker did not start", "check that this process may spawn a helper")
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _cleanup_owned() -> None:
    """Unlink every segment this process still owns (atexit and signal paths)."""
    for name in list(_OWNED):
        shm = _OWNED.pop(name)
        with suppress(FileNotFoundError):
            shm.unlink()


def install_signal_cleanup(signums: tuple[int, ...] = (signal.SIGTERM,)) -> None:
    """Unlink owned segments when one of ``signums`` arrives, then defer to the previous handler.

    Opt-in (call it from the main thread of the owning process) because a library must not take over
    signal handling at import. With the default disposition the signal becomes ``SystemExit(128+signum)``
    so ``with`` blocks and atexit still run.
    """
    for signum in signums:
        previous = signal.getsignal(signum)

        def handler(num: int, frame: FrameType | None, previous: Any = previous) -> None:
            _cleanup_owned()
            if callable(previous):
                previous(num, frame)
            elif previous != signal.SIG_IGN:
                raise SystemExit(128 + num)

        signal.signal(signum, handler)


def _mapped(shm: SharedMemory) -> memoryview:
    """The segment's mapping; ``shm.buf`` is None only after ``shm.close()``, which the ring calls last."""
    buf = shm.buf
    if buf is None:
        raise RingError(f"ring segment {shm.name!r} is already unmapped", "create or attach the ring again")
    return buf


class _Segment:
    """Numpy views over a mapped ring segment, shared by FrameRing, RingWriter and RingReader."""

    def __init__(self, shm: SharedMemory, spec: StreamSpec) -> None:
        self.shm = shm
        self.spec = spec
        self.closed = False
        self.u8 = np.frombuffer(_mapped(shm), dtype=np.uint8)
        self.header = self.u8[:HEADER_BYTES].view(np.int64)
        self.wake_publish = int(self.u8.ctypes.data) + _WAKE_PUBLISH_OFFSET
        self.wake_release = int(self.u8.ctypes.data) + _WAKE_RELEASE_OFFSET
        self.wake_words = self.u8[_WAKE_PUBLISH_OFFSET : _WAKE_PUBLISH_OFFSET + 8].view(np.int32)
        self.n = int(self.header[_H_SLOTS])
        self.policy = RingPolicy.LOSSLESS if self.header[_H_POLICY] == 1 else RingPolicy.LATEST
        color_off, depth_off, slot_bytes = _slot_layout(spec)
        first = int(self.header[_H_SLOTS_OFFSET])
        self.meta: list[npt.NDArray[np.int64]] = []
        self.color: list[npt.NDArray[np.uint8]] = []
        self.depth: list[npt.NDArray[np.uint16]] = []
        h, w, c = spec.color_shape
        dh, dw = spec.depth_shape
        for i in range(self.n):
            base = first + i * slot_bytes
            self.meta.append(self.u8[base : base + META_WORDS * 8].view(np.int64))
            self.color.append(self.u8[base + color_off : base + color_off + h * w * c].reshape(h, w, c))
            self.depth.append(
                self.u8[base + depth_off : base + depth_off + dh * dw * 2].view(np.uint16).reshape(dh, dw)
            )

    def bump(self, which: int) -> None:
        """Change a futex word and wake its sleepers (0: publish, 1: release)."""
        self.wake_words[which] = (int(self.wake_words[which]) + 1) & 0x7FFFFFFF
        _futex_wake(self.wake_publish if which == 0 else self.wake_release)

    def wait(self, which: int, expected: int, deadline_ns: int) -> bool:
        """Sleep until the futex word changes or the deadline passes; False once past the deadline."""
        left = deadline_ns - time.perf_counter_ns()
        if left <= 0:
            return False
        _futex_wait(self.wake_publish if which == 0 else self.wake_release, expected, left / 1e9)
        return True

    def check_open(self, name: str) -> None:
        if self.closed:
            raise RingError(f"ring {name!r} is closed", "create or attach the ring again")

    def release_views(self) -> None:
        self.closed = True
        self.meta, self.color, self.depth = [], [], []
        del self.header, self.wake_words, self.u8


def _header_words(shm: SharedMemory) -> tuple[int, ...]:
    """The header's int64 words, copied out (a numpy view would pin the mapping through error paths)."""
    return struct.unpack_from(f"<{_H_WORDS}q", _mapped(shm), 0)


def _validate_header(shm: SharedMemory, name: str) -> StreamSpec:
    """Check magic, version and sizes of an attached segment and return its StreamSpec."""
    foreign = f"segment {name!r} exists but is not a drumsight frame ring"
    remedy = "check the ring name; another program owns this shared-memory name"
    buf = _mapped(shm)
    if shm.size < HEADER_BYTES or bytes(buf[:8]) != MAGIC:
        raise RingAttachError(f"{foreign} (size {shm.size} B, magic {bytes(buf[:8])!r})", remedy)
    header = _header_words(shm)
    if header[_H_VERSION] != LAYOUT_VERSION:
        raise RingAttachError(
            f"ring {name!r} has layout version {header[_H_VERSION]}, this build reads {LAYOUT_VERSION}",
            "run producer and consumers from the same drumsight-edge release",
        )
    try:
        raw = bytes(buf[HEADER_BYTES : HEADER_BYTES + header[_H_SPEC_LEN]])
        spec = StreamSpec.from_dict(json.loads(raw))
    except (ValueError, KeyError, TypeError) as exc:
        raise RingAttachError(f"ring {name!r} has an unreadable stream description: {exc}", remedy) from exc
    _, _, slot_bytes = _slot_layout(spec)
    need = header[_H_SLOTS_OFFSET] + header[_H_SLOTS] * slot_bytes
    if header[_H_SLOT_BYTES] != slot_bytes or header[_H_SLOTS] < 2 or shm.size < need:
        raise RingAttachError(f"ring {name!r} is truncated or inconsistent ({shm.size} B, need {need} B)", remedy)
    return spec


class FrameRing:
    """One stream's shared-memory ring. ``create`` in the owning process, ``attach`` by name elsewhere.

    The creator unlinks the segment on ``close()``, on interpreter exit, on SIGTERM once
    ``install_signal_cleanup()`` was called, and (through Python's resource tracker) after a SIGKILL.
    Attaching processes never unlink it. One writer and one consuming reader are supported; any number
    of processes may attach to read ``stats()``.
    """

    def __init__(self, seg: _Segment, owner: bool) -> None:
        self._seg: _Segment | None = seg
        self.name = seg.shm.name.lstrip("/")
        self.spec = seg.spec
        self.slots = seg.n
        self.policy = seg.policy
        self.is_owner = owner
        self._writer: RingWriter | None = None
        self._reader: RingReader | None = None

    @classmethod
    def create(
        cls,
        spec: StreamSpec,
        *,
        name: str | None = None,
        slots: int = 4,
        policy: RingPolicy | str = RingPolicy.LATEST,
    ) -> FrameRing:
        """Create and own a new segment sized for ``spec`` (``name`` defaults to a unique one)."""
        _require_futex()
        policy = RingPolicy(policy)
        if slots < 2:
            raise RingError(f"a ring needs at least 2 slots, got {slots}", "pass slots=2 or more (4 is typical)")
        name = name or f"drumsight-{uuid.uuid4().hex[:12]}"
        spec_json = json.dumps(spec.to_dict()).encode()
        first = _align(HEADER_BYTES + len(spec_json))
        _, _, slot_bytes = _slot_layout(spec)
        try:
            shm = SharedMemory(name=name, create=True, size=first + slots * slot_bytes)
        except FileExistsError as exc:
            raise RingError(
                f"a shared-memory segment named {name!r} already exists",
                f"stop the producer that uses it, or remove /dev/shm/{name} if a crashed run left it",
            ) from exc
        except (OSError, ValueError) as exc:
            raise RingError(f"cannot create ring segment {name!r}: {exc}", "use a short name without '/'") from exc
        _register_owned(shm)
        buf = _mapped(shm)
        header = np.frombuffer(buf, dtype=np.int64, count=_H_WORDS)
        header[_H_VERSION], header[_H_SLOTS], header[_H_SLOT_BYTES] = LAYOUT_VERSION, slots, slot_bytes
        header[_H_SLOTS_OFFSET], header[_H_POLICY], header[_H_SPEC_LEN] = first, _POLICY_CODES[policy], len(spec_json)
        header[_H_TRACKER_DEV], header[_H_TRACKER_INO] = _tracker_identity()
        del header
        buf[HEADER_BYTES : HEADER_BYTES + len(spec_json)] = spec_json
        buf[:8] = MAGIC  # last: a half-built segment never validates
        return cls(_Segment(shm, spec), owner=True)

    @classmethod
    def attach(cls, name: str) -> FrameRing:
        """Map an existing ring by name without taking ownership (the segment outlives this process)."""
        _require_futex()
        try:
            shm = SharedMemory(name=name, create=False)
        except FileNotFoundError as exc:
            raise RingAttachError(
                f"no ring buffer segment named {name!r} in /dev/shm",
                "start the producer first, or check the ring name it logged",
            ) from exc
        except (OSError, ValueError) as exc:
            raise RingAttachError(f"cannot open ring segment {name!r}: {exc}", "check the ring name") from exc
        _forget_attached(shm)
        try:
            spec = _validate_header(shm, name)
        except RingAttachError:
            shm.close()
            raise
        return cls(_Segment(shm, spec), owner=False)

    def _live(self) -> _Segment:
        if self._seg is None:
            raise RingError(f"ring {self.name!r} is closed", "create or attach the ring again")
        return self._seg

    def memory(self) -> npt.NDArray[np.uint8]:
        """The whole mapped segment as bytes (every slot's pixels lie in it): what a GPU consumer page-locks once."""
        return self._live().u8

    def writer(self) -> RingWriter:
        """The ring's one writer handle (the same object on every call).

        A writer process killed between reserving a slot and publishing it leaves the slot reserved; the next
        writer handle abandons it, as the killed writer's exception would have (``abandoned`` + 1, the index is
        reused), so the reader never skips an index no frame was published to and ``dropped`` stays the count of
        frames overwritten unread.
        """
        if self._writer is None:
            seg = self._live()
            h = seg.header
            if (stale := int(h[_H_RESERVED]) - int(h[_H_HEAD])) > 0:
                h[_H_RESERVED] = int(h[_H_HEAD])
                h[_H_ABANDONED] += stale
            self._writer = RingWriter(seg, self.name)
        return self._writer

    def reader(self, poll_interval_s: float | None = None) -> RingReader:
        """The ring's consuming reader handle; use it from one process only.

        By default an idle reader sleeps in FUTEX_WAIT (no CPU while waiting). ``poll_interval_s`` makes it
        poll the cursor with short sleeps instead: lower wake-up latency on VMs where waking a halted vCPU
        is slow, at a measured CPU cost (see tools/benchmarks/ring.py). Fixed when the handle is created.
        """
        if self._reader is None:
            self._reader = RingReader(self._live(), self.name, poll_interval_s)
        return self._reader

    def stats(self) -> RingStats:
        """A snapshot of cursors and counters."""
        h = self._live().header
        reserved, head, tail = int(h[_H_RESERVED]), int(h[_H_HEAD]), int(h[_H_TAIL])
        return RingStats(
            name=self.name,
            policy=self.policy,
            slots=self.slots,
            written=head,
            delivered=int(h[_H_DELIVERED]),
            dropped=int(h[_H_SKIPPED]) + max(0, reserved - self.slots - tail),
            overruns=int(h[_H_OVERRUNS]),
            torn=int(h[_H_TORN]),
            abandoned=int(h[_H_ABANDONED]),
            pending=max(0, head - max(tail, reserved - self.slots)),
            closed=bool(h[_H_CLOSED]),
        )

    def close(self) -> None:
        """Unmap; the owner also unlinks. Frames read earlier must be dropped first (they are views)."""
        seg, self._seg = self._seg, None
        if seg is None:
            return
        self._writer = self._reader = None
        seg.release_views()
        try:
            seg.shm.close()
        except BufferError:
            _LINGERING.append(seg.shm)  # a caller still holds frame views; unmapped when they are gone
        if self.is_owner and _OWNED.pop(self.name, None) is not None:
            seg.shm.unlink()

    def __enter__(self) -> FrameRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _register_owned(shm: SharedMemory) -> None:
    global _ATEXIT_INSTALLED  # noqa: PLW0603 (one process-wide atexit hook, installed on first create)
    _OWNED[shm.name.lstrip("/")] = shm
    if not _ATEXIT_INSTALLED:
        atexit.register(_cleanup_owned)
        _ATEXIT_INSTALLED = True


def _forget_attached(shm: SharedMemory) -> None:
    """Undo the resource-tracker registration that SharedMemory makes on attach (Python < 3.13).

    A tracker unlinks what is registered when its last process exits, so an attaching process with its
    own tracker would unlink the live owner's segment. But a process started by the owner through
    multiprocessing shares the owner's tracker, where the name is one set entry: unregistering there
    would cancel the owner's crash cleanup. The owner stores its tracker pipe's identity in the header.
    """
    header = _header_words(shm) if shm.size >= HEADER_BYTES else (0,) * _H_WORDS
    owner_tracker = (header[_H_TRACKER_DEV], header[_H_TRACKER_INO])
    if _tracker_identity() != owner_tracker:
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]


@dataclass(slots=True)
class WriteSlot:
    """A reserved slot: fill ``color``/``depth`` in place, set the metadata, and leave the block to publish."""

    color: npt.NDArray[np.uint8]
    depth: npt.NDArray[np.uint16]
    sequence: int
    color_frame_number: int = 0
    depth_frame_number: int = 0
    device_ts_ns: int = 0
    host_ts_ns: int = 0

    @property
    def buffers(self) -> FrameBuffers:
        """The slot's planes as a ``FrameSource.read(out=...)`` destination: the source copies straight in."""
        return FrameBuffers(self.color, self.depth)

    def stamp(self, frame: Frame) -> None:
        """Copy a source frame's numbering and timestamps (not its pixels) into the slot's metadata."""
        self.sequence = frame.sequence
        self.color_frame_number, self.depth_frame_number = frame.color_frame_number, frame.depth_frame_number
        self.device_ts_ns, self.host_ts_ns = frame.device_ts_ns, frame.host_ts_ns


class RingWriter:
    """The producer side. One copy per frame: straight into the slot."""

    def __init__(self, seg: _Segment, name: str) -> None:
        self._seg = seg
        self._name = name
        self._busy = False

    @contextmanager
    def reserve(self, timeout_s: float = 1.0) -> Iterator[WriteSlot]:
        """Reserve the next slot; it is published when the block exits and abandoned if it raises.

        Latest policy never waits; lossless waits up to ``timeout_s`` for the reader to free the slot.
        """
        self._seg.check_open(self._name)
        seg, h = self._seg, self._seg.header
        if self._busy:
            raise RingError(f"ring {self._name!r} already has a reserved slot", "publish it before reserving again")
        if h[_H_CLOSED]:
            raise RingError(f"ring {self._name!r} stream was closed", "create a new ring for a new stream")
        k = int(h[_H_RESERVED])
        if seg.policy is RingPolicy.LOSSLESS:
            self._wait_free(k, timeout_s)
        i = k % seg.n
        meta = seg.meta[i]
        h[_H_RESERVED] = k + 1
        meta[_M_SEQ] = 2 * k + 1
        slot = WriteSlot(seg.color[i], seg.depth[i], sequence=k)
        self._busy = True
        try:
            yield slot
        except BaseException:
            h[_H_RESERVED] = k  # the index is reused; the old frame in the slot is gone (seq stays odd)
            h[_H_ABANDONED] += 1
            raise
        finally:
            self._busy = False
        meta[_M_SEQUENCE], meta[_M_COLOR_FN], meta[_M_DEPTH_FN] = (
            slot.sequence,
            slot.color_frame_number,
            slot.depth_frame_number,
        )
        meta[_M_DEVICE_TS], meta[_M_HOST_TS] = slot.device_ts_ns, slot.host_ts_ns
        meta[_M_PUBLISH_NS] = time.perf_counter_ns()
        meta[_M_SEQ] = 2 * k + 2
        h[_H_HEAD] = k + 1
        seg.bump(0)

    def _wait_free(self, k: int, timeout_s: float) -> None:
        seg = self._seg
        deadline = time.perf_counter_ns() + int(timeout_s * 1e9)
        while True:
            expected = int(seg.wake_words[1])
            if k - int(seg.header[_H_RELEASED]) < seg.n:
                return
            if not seg.wait(1, expected, deadline):
                raise RingFullError(
                    f"ring {self._name!r} (lossless, {seg.n} slots) had no free slot for {timeout_s:g} s: "
                    f"the reader has released {int(seg.header[_H_RELEASED])} of {k} frames",
                    "start or unblock the consumer, raise the timeout, or use policy 'latest' for live sources",
                )

    def write(self, frame: Frame, timeout_s: float = 1.0) -> int:
        """Copy ``frame`` into the next slot (one ``np.copyto`` per plane) and publish; returns its ring index."""
        with self.reserve(timeout_s) as slot:
            np.copyto(slot.color, frame.color)
            np.copyto(slot.depth, frame.depth)
            slot.stamp(frame)
        return int(self._seg.header[_H_HEAD]) - 1

    def close_stream(self) -> None:
        """Tell the reader no more frames come: it drains what is published, then gets RingClosedError."""
        self._seg.check_open(self._name)
        self._seg.header[_H_CLOSED] = 1
        self._seg.bump(0)


class RingReader:
    """The consuming side: oldest unread frame first; frames are read-only views into the slot."""

    def __init__(self, seg: _Segment, name: str, poll_interval_s: float | None = None) -> None:
        self._seg = seg
        self._name = name
        self._poll_s = poll_interval_s
        self._current: tuple[int, int] | None = None  # (slot, expected seq) of the frame in use
        self.last_publish_ns = 0  # perf_counter_ns at which the writer published the last frame read

    def _skip(self, h: npt.NDArray[np.int64], to: int, tail: int) -> None:
        h[_H_TAIL] = to
        h[_H_RELEASED] = to
        h[_H_SKIPPED] += to - tail
        h[_H_OVERRUNS] += 1

    def _claim(self, deadline_ns: int, timeout_s: float) -> int:
        """Advance to the next intact published frame and claim it; returns its ring index."""
        seg, h = self._seg, self._seg.header
        while True:
            expected = int(seg.wake_words[0])
            j, oldest = int(h[_H_TAIL]), int(h[_H_RESERVED]) - seg.n
            if j < oldest:  # lapped: those frames were overwritten before we got to them
                self._skip(h, oldest, j)
                continue
            if j < int(h[_H_HEAD]):
                if int(seg.meta[j % seg.n][_M_SEQ]) != 2 * j + 2:  # overwritten since we looked
                    self._skip(h, j + 1, j)
                    continue
                h[_H_TAIL] = j + 1
                return j
            if h[_H_CLOSED]:
                raise RingClosedError(f"ring {self._name!r} stream closed by its writer after {j} frames")
            if not self._wait(expected, deadline_ns):
                raise RingTimeoutError(
                    f"no frame published on ring {self._name!r} within {timeout_s:g} s",
                    "check that the producer process is running and its source delivers frames",
                )

    def _wait(self, expected: int, deadline_ns: int) -> bool:
        if self._poll_s is None:
            return self._seg.wait(0, expected, deadline_ns)
        left = deadline_ns - time.perf_counter_ns()
        if left <= 0:
            return False
        time.sleep(min(self._poll_s, left / 1e9))
        return True

    @contextmanager
    def read(self, timeout_s: float = 1.0) -> Iterator[Frame]:
        """Yield the next frame as views; on exit, raise TornReadError if the writer overwrote it meanwhile."""
        self._seg.check_open(self._name)
        seg, h = self._seg, self._seg.header
        if self._current is not None:
            raise RingError(f"ring {self._name!r} reader already holds a frame", "leave the previous read block first")
        j = self._claim(time.perf_counter_ns() + int(timeout_s * 1e9), timeout_s)
        i = j % seg.n
        meta = seg.meta[i]
        color, depth = seg.color[i].view(), seg.depth[i].view()
        color.flags.writeable = False
        depth.flags.writeable = False
        self.last_publish_ns = int(meta[_M_PUBLISH_NS])
        frame = Frame(
            color=color,
            depth=depth,
            spec=seg.spec,
            color_frame_number=int(meta[_M_COLOR_FN]),
            depth_frame_number=int(meta[_M_DEPTH_FN]),
            device_ts_ns=int(meta[_M_DEVICE_TS]),
            host_ts_ns=int(meta[_M_HOST_TS]),
            sequence=int(meta[_M_SEQUENCE]),
        )
        self._current = (i, 2 * j + 2)
        try:
            yield frame
            if not self.still_valid():
                h[_H_TORN] += 1
                raise TornReadError(
                    f"ring {self._name!r}: frame {j} was overwritten while it was being read",
                    "discard results computed from it; use more slots or a faster consumer to avoid this",
                )
            h[_H_DELIVERED] += 1
        finally:
            self._current = None
            h[_H_RELEASED] = max(int(h[_H_RELEASED]), j + 1)
            seg.bump(1)

    def still_valid(self) -> bool:
        """True while the frame being read is intact (check before acting on results mid-block)."""
        if self._current is None:
            return False
        i, expected = self._current
        return int(self._seg.meta[i][_M_SEQ]) == expected


__all__ = [
    "FrameRing",
    "RingAttachError",
    "RingClosedError",
    "RingError",
    "RingFullError",
    "RingPolicy",
    "RingReader",
    "RingStats",
    "RingTimeoutError",
    "RingWriter",
    "TornReadError",
    "WriteSlot",
    "install_signal_cleanup",
]
