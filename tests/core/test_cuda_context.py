"""The shared CUDA context helpers, against a recording stand-in for ``pycuda.driver`` (the GPU tests,
``tests/edge/test_crop_cuda.py`` and ``tests/engines/test_runtime_trt.py``, run them on a real device)."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from edge.core.cuda_context import current, retain_primary
from edge.core.errors import EdgeError


class DeviceError(EdgeError):
    """The caller's own error class."""


class DriverError(Exception):
    """pycuda.driver.Error's stand-in."""


def driver(calls: list[str], *, usable: bool = True) -> Any:
    """A stand-in for pycuda.driver recording init, retain, push and pop in ``calls``."""

    class Context:
        def push(self) -> None:
            calls.append("push")

        @staticmethod
        def pop() -> None:
            calls.append("pop")

    def device(index: int) -> Any:
        def retain() -> Context:
            if not usable:
                raise DriverError("cuDevicePrimaryCtxRetain failed: no CUDA-capable device is detected")
            calls.append(f"retain {index}")
            return Context()

        return SimpleNamespace(retain_primary_context=retain)

    return SimpleNamespace(init=lambda: calls.append("init"), Device=device, Error=DriverError, Context=Context)


def test_the_primary_context_is_current_inside_the_block_and_popped_however_it_ends() -> None:
    calls: list[str] = []
    cuda = driver(calls)
    ctx = retain_primary(cuda, 1, DeviceError, "check nvidia-smi")
    with current(cuda, ctx):
        calls.append("work")
    with pytest.raises(ValueError, match="boom"), current(cuda, ctx):
        raise ValueError("boom")
    assert calls == ["init", "retain 1", "push", "work", "pop", "push", "pop"]


def test_an_unusable_device_raises_the_callers_error_naming_it() -> None:
    with pytest.raises(DeviceError, match=r"CUDA device 3 is not usable \(.*no CUDA-capable device") as err:
        retain_primary(driver([], usable=False), 3, DeviceError, "use the CPU path")
    assert err.value.remedy == "use the CPU path"


def test_importing_it_or_the_cuda_crop_imports_neither_pycuda_nor_tensorrt() -> None:
    code = (
        "import sys, edge.core.cuda_context, edge.crop_cuda; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pycuda', 'tensorrt', 'engines')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
