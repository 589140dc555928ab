"""TensorRT backend: a serialised engine run with name-based I/O on one CUDA stream, optional CUDA graph replay,
and a device-pointer entry point so the CUDA crop's buffers feed the engine without a host round trip."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edge.core.cuda_context import current, retain_primary
from engines._trt_compat import import_cuda, import_trt
from engines.runtime.base import EngineError, Runner, TensorSpec


@contextmanager
def primary_context(cuda: ModuleType, device: int) -> Iterator[Any]:
    """Push the device's primary context (the one TensorRT's runtime API and CudaRoiCropper use) for a block."""
    ctx = retain_primary(cuda, device, EngineError, "check nvidia-smi and the device index")
    try:
        with current(cuda, ctx):
            yield ctx
    finally:
        ctx.detach()


class TrtRunner(Runner):
    """A TensorRT engine (plan file) behind the Runner interface.

    activate() deserialises the plan and allocates, once, a page-locked host buffer and a device buffer per I/O
    tensor and one CUDA stream; infer() copies host → device, enqueues, copies back and synchronises. With
    ``cuda_graph=True`` the enqueue is captured once into a CUDA graph (pycuda ≥ 2022.1 ``Stream.begin_capture``)
    and replayed, which cuts launch overhead for small models; a graph is captured per set of input addresses.

    Check the engine against the running environment first (``engines.build.ensure_engine``): this class trusts
    the file it is given. Use it from the thread that activated it.
    """

    def __init__(self, engine: Path | str, *, device: int = 0, cuda_graph: bool = False) -> None:
        super().__init__(f"tensorrt[{Path(engine).name}]")
        self.engine_path = Path(engine)
        self.device = device
        self.cuda_graph = cuda_graph
        self._cuda: Any = None
        self._ctx: Any = None
        self._engine: Any = None
        self._context: Any = None
        self.stream: Any = None
        self._host: dict[str, np.ndarray] = {}
        self._dev: dict[str, Any] = {}
        self._graphs: dict[tuple[int, ...], Any] = {}
        self._runtime: Any = None

    def device_buffers(self) -> dict[str, int]:
        """Device addresses of the runner's own I/O buffers: a producer (the CUDA crop) may write inputs there."""
        self._require_active()
        return {name: int(buf) for name, buf in self._dev.items()}

    def active(self) -> AbstractContextManager[None]:
        """Make the runner's CUDA context current (for the caller's pycuda calls on its buffers)."""
        return current(self._cuda, self._ctx)

    def _activate_impl(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        trt, cuda = import_trt(), import_cuda()
        if not self.engine_path.is_file():
            raise EngineError(f"engine {self.engine_path} does not exist", "build it with edge-build")
        self._cuda = cuda
        self._ctx = retain_primary(cuda, self.device, EngineError, "check nvidia-smi")
        try:
            with self.active():
                self._logger = trt.Logger(trt.Logger.WARNING)
                self._runtime = trt.Runtime(self._logger)
                self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
                if self._engine is None:
                    raise EngineError(
                        f"TensorRT cannot deserialise {self.engine_path} (built by another TensorRT/GPU, or corrupt)",
                        "rebuild it with edge-build on this machine",
                    )
                self._context = self._engine.create_execution_context()
                self.stream = cuda.Stream()
                inputs, outputs = self._allocate(trt, cuda)
        except BaseException:
            self._deactivate_impl()  # a half-activated runner frees what it got
            raise
        return inputs, outputs

    def _allocate(self, trt: ModuleType, cuda: ModuleType) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """Pinned host and device buffers per I/O tensor, addressed by name; static shapes only."""
        inputs: list[TensorSpec] = []
        outputs: list[TensorSpec] = []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            shape = tuple(self._engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise EngineError(f"engine tensor {name!r} has a dynamic shape {shape}", "build with static shapes")
            spec = TensorSpec(name, shape, np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))))
            self._host[name] = cuda.pagelocked_empty(shape, spec.dtype)
            self._dev[name] = cuda.mem_alloc(max(spec.nbytes, 1))
            self._context.set_tensor_address(name, int(self._dev[name]))
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (inputs if is_input else outputs).append(spec)
        return tuple(inputs), tuple(outputs)

    def _enqueue(self, stream: Any) -> None:
        """Run the engine on ``stream``: replay a captured graph for the current addresses, or execute_async_v3."""
        if not self.cuda_graph:
            if not self._context.execute_async_v3(stream.handle):
                raise EngineError(f"{self.name}: execute_async_v3 failed (see the TensorRT log)", "check the engine")
            return
        key = tuple(self._context.get_tensor_address(s.name) for s in self._inputs)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._capture()
            self._graphs[key] = graph
        graph.launch(stream)

    def _capture(self) -> Any:
        """Capture one enqueue into a CUDA graph (after one plain run, which finishes TensorRT's lazy setup)."""
        if not hasattr(self.stream, "begin_capture"):
            raise EngineError("this pycuda has no CUDA graph capture", "upgrade pycuda (≥ 2022.1) or cuda_graph=False")
        self._context.execute_async_v3(self.stream.handle)
        self.stream.synchronize()
        self.stream.begin_capture()
        self._context.execute_async_v3(self.stream.handle)
        return self.stream.end_capture().instantiate()

    def _download(self, stream: Any) -> dict[str, np.ndarray]:
        cuda = self._cuda
        for s in self._outputs:
            cuda.memcpy_dtoh_async(self._host[s.name], self._dev[s.name], stream)
        stream.synchronize()
        return {s.name: self._host[s.name] for s in self._outputs}

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cuda = self._cuda
        with self.active():
            for s in self._inputs:
                np.copyto(self._host[s.name], feed[s.name])
                cuda.memcpy_htod_async(self._dev[s.name], self._host[s.name], self.stream)
                self._context.set_tensor_address(s.name, int(self._dev[s.name]))
            self._enqueue(self.stream)
            return self._download(self.stream)

    def infer_device(self, device_inputs: Mapping[str, int], stream: Any = None) -> dict[str, np.ndarray]:
        """Run on inputs already on the device (e.g. ``CudaRoiCropper.crop_to_device`` outputs).

        ``device_inputs`` maps input names to device addresses holding the engine's dtype and shape (see
        describe()); inputs not named use the runner's own buffers (``device_buffers()``). ``stream`` is the
        producer's pycuda stream, so the engine runs after the crop kernel without a host synchronisation; it
        defaults to the runner's stream. Outputs come back in the preallocated pinned buffers.
        """
        t0 = time.perf_counter_ns()
        self._require_active()
        unknown = sorted(set(device_inputs) - {s.name for s in self._inputs})
        if unknown:
            raise EngineError(f"{self.name}: unknown device inputs {unknown}", f"use {[s.name for s in self._inputs]}")
        stream = stream or self.stream
        with self.active():
            for s in self._inputs:
                self._context.set_tensor_address(s.name, int(device_inputs.get(s.name, int(self._dev[s.name]))))
            self._enqueue(stream)
            out = self._download(stream)
        self.last_latency_ns = time.perf_counter_ns() - t0
        return out

    def _deactivate_impl(self) -> None:
        with self.active():
            if self.stream is not None:
                self.stream.synchronize()
            self._graphs.clear()
            for buf in self._dev.values():
                buf.free()
            self._dev, self._host = {}, {}
            self._context = self._engine = self._runtime = self.stream = None
        self._ctx.detach()
        self._ctx = None
