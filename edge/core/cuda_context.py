"""The CUDA device context the GPU stages share (the CUDA crop and the TensorRT runner): the device's *primary*
context, so both work in one context and their buffers are visible to each other.

Importing this module imports neither pycuda nor TensorRT: each caller passes the ``pycuda.driver`` module it
imported itself (with its own error when it is missing), and the crop stays free of the TensorRT runtime.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from edge.core.errors import EdgeError


def retain_primary(cuda: ModuleType, device: int, error: type[EdgeError], remedy: str) -> Any:
    """``device``'s primary context, retained (release it with ``detach()``), after initialising the driver; a
    device CUDA cannot use raises ``error`` naming it, with ``remedy``."""
    try:
        cuda.init()
        return cuda.Device(device).retain_primary_context()
    except cuda.Error as e:
        raise error(f"CUDA device {device} is not usable ({e})", remedy) from None


@contextmanager
def current(cuda: ModuleType, ctx: Any) -> Iterator[None]:
    """``ctx`` the current context for the block (pushed, and popped again however the block ends)."""
    ctx.push()
    try:
        yield
    finally:
        cuda.Context.pop()
