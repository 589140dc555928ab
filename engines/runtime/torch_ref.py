"""PyTorch reference runner: an nn.Module behind the same Runner interface, for parity checks, benchmarks, and
the GPU stand-in engine (``runtime.backend: torch``) on CUDA machines where TensorRT cannot be installed."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from engines.contract import OUTPUT_NAMES
from engines.runtime.base import EngineError, Runner, TensorSpec


class TorchRunner(Runner):
    """Runs ``module(**{name: tensor})`` in inference mode on the CPU or a CUDA device.

    ``module`` is an ``nn.Module`` or a zero-argument callable that builds one (called at activate(), so a
    checkpoint loader plugs in without loading anything at construction). Output specs come from one dry run
    on zeros; outputs are copied into buffers allocated then, like the other runners. On a CUDA ``device`` the
    inputs live in device tensors allocated once (``device_buffers()``: a producer such as the CUDA crop writes
    them in place, ``infer_device`` then runs on the producer's stream) and outputs come back in pinned memory.
    """

    def __init__(
        self,
        module: Any | Callable[[], Any],
        inputs: Sequence[TensorSpec],
        output_names: Sequence[str] = OUTPUT_NAMES,
        *,
        threads: int = 0,
        device: str = "cpu",
        cuda_graph: bool = False,
        tf32: bool = False,
    ) -> None:
        super().__init__(f"torch[{device}]")
        self.device = device
        self.cuda_graph = cuda_graph  # CUDA: replay the forward pass as one captured graph (no per-kernel launches)
        self.graph_note = ""  # why no graph is used, when one was asked for
        self.tf32 = tf32  # CUDA: let convolutions and matmuls use TF32 (fp16/int8 precision asked for); off: true fp32
        self._graph: Any = None
        self._graph_out: tuple[Any, ...] = ()
        self._source = module
        self._input_specs = tuple(inputs)
        self._output_names = tuple(output_names)
        self.threads = threads  # 0 keeps torch's default
        self._module: Any = None
        self._out: dict[str, np.ndarray] = {}
        self._dev_in: dict[str, Any] = {}  # CUDA: input tensors on the device, written in place
        self._out_host: list[Any] = []  # CUDA: pinned host tensors behind self._out

    @property
    def on_gpu(self) -> bool:
        return self.device != "cpu"

    def _forward(self, feed: Mapping[str, Any]) -> tuple[Any, ...]:
        """``feed`` holds numpy arrays (CPU) or device tensors (CUDA)."""
        import torch  # noqa: PLC0415  (torch is the optional training dependency)

        with torch.inference_mode():
            tensors = {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(v) for k, v in feed.items()}
            result = self._module(**tensors)
        result = tuple(result) if isinstance(result, (tuple, list)) else (result,)
        if len(result) != len(self._output_names):
            raise EngineError(
                f"the torch module returned {len(result)} outputs, expected {len(self._output_names)} "
                f"({list(self._output_names)})",
                "pass output_names matching the module's forward()",
            )
        return result

    def _activate_impl(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        import torch  # noqa: PLC0415

        if self.threads:
            torch.set_num_threads(self.threads)
        if self.on_gpu and not torch.cuda.is_available():
            raise EngineError(f"torch {torch.__version__} sees no CUDA GPU for {self.device}", "run on the CPU")
        if self.on_gpu:  # process-wide switches: cuDNN convolutions default to TF32, which is not fp32
            torch.backends.cudnn.allow_tf32 = self.tf32
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
        module = self._source if isinstance(self._source, torch.nn.Module) else self._source()
        if not isinstance(module, torch.nn.Module):
            raise EngineError(f"the reference builder returned a {type(module).__name__}", "return a torch.nn.Module")
        self._module = module.eval().to(self.device)
        if self.on_gpu:
            self._dev_in = {
                s.name: torch.zeros(s.shape, dtype=torch.from_numpy(s.empty()).dtype, device=self.device)
                for s in self._input_specs
            }
            dry = self._forward(self._dev_in)
        else:
            dry = self._forward({s.name: np.zeros(s.shape, s.dtype) for s in self._input_specs})
        outputs = tuple(
            TensorSpec(n, tuple(t.shape), np.dtype(str(t.dtype).removeprefix("torch.")))
            for n, t in zip(self._output_names, dry, strict=True)
        )
        if self.on_gpu:
            self._out_host = [torch.empty(tuple(t.shape), dtype=t.dtype, pin_memory=True) for t in dry]
            self._out = {s.name: h.numpy() for s, h in zip(outputs, self._out_host, strict=True)}
            if self.cuda_graph:
                self._capture()
        else:
            self._out = {s.name: s.empty() for s in outputs}
        return self._input_specs, outputs

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.on_gpu:
            for name, t in zip(self._output_names, self._forward(feed), strict=True):
                np.copyto(self._out[name], t.numpy())
            return self._out
        import torch  # noqa: PLC0415

        for name, a in feed.items():
            self._dev_in[name].copy_(torch.from_numpy(a), non_blocking=False)
        return self._run_on(torch.cuda.current_stream(self.device))

    def _capture(self) -> None:
        """Capture the forward pass on the static device inputs into a CUDA graph (after warm-up runs on a side
        stream, as CUDA graph capture requires); a model that cannot be captured runs eagerly and says why."""
        import torch  # noqa: PLC0415

        side = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._forward(self._dev_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph):
                out = self._module(**self._dev_in)
            self._graph, self._graph_out = graph, tuple(out) if isinstance(out, (tuple, list)) else (out,)
            self.name = f"torch[{self.device},cuda-graph]"
        except RuntimeError as err:  # e.g. a host synchronisation inside forward(): not capturable
            self._graph, self.graph_note = None, f"eager: the forward pass cannot be captured ({err})"
            torch.cuda.synchronize(self.device)

    def _run_on(self, stream: Any) -> dict[str, np.ndarray]:
        """Forward on ``stream`` from the device inputs (graph replay when captured), copy outputs to pinned memory,
        wait for the stream."""
        import torch  # noqa: PLC0415

        with torch.cuda.stream(stream):
            if self._graph is not None:
                self._graph.replay()
                result = self._graph_out
            else:
                result = self._forward(self._dev_in)
            for host, t in zip(self._out_host, result, strict=True):
                host.copy_(t, non_blocking=True)
        stream.synchronize()
        return self._out

    def device_buffers(self) -> dict[str, int]:
        """Device addresses of the input tensors (CUDA only): a producer may write the inputs there."""
        self._require_active()
        if not self.on_gpu:
            raise EngineError(f"{self.name} runs on the CPU: it has no device buffers", "use infer()")
        return {name: int(t.data_ptr()) for name, t in self._dev_in.items()}

    def infer_device(self, device_inputs: Mapping[str, int], stream: Any = None) -> dict[str, np.ndarray]:
        """Run on inputs already written into :meth:`device_buffers` (``device_inputs`` may only name those).

        ``stream`` is the producer's pycuda stream: the forward pass is queued behind the producer's kernel on that
        same stream (torch ``ExternalStream``), so no host synchronisation separates crop and engine.
        """
        import torch  # noqa: PLC0415

        t0 = time.perf_counter_ns()
        self._require_active()
        own = self.device_buffers() if device_inputs else {}
        foreign = sorted(k for k, ptr in device_inputs.items() if own.get(k) != int(ptr))
        if foreign:
            raise EngineError(
                f"{self.name}: inputs {foreign} are not this runner's device buffers",
                "write the inputs into device_buffers() first",
            )
        s = (
            torch.cuda.current_stream(self.device)
            if stream is None
            else torch.cuda.ExternalStream(int(stream.handle), device=self.device)  # type: ignore[no-untyped-call]
        )
        out = self._run_on(s)
        self.last_latency_ns = time.perf_counter_ns() - t0
        return out

    def _deactivate_impl(self) -> None:
        self._module = self._graph = None
        self._graph_out = ()
        self._out, self._dev_in, self._out_host = {}, {}, []
