"""PyTorch reference runner: an nn.Module behind the same Runner interface, for parity checks and benchmarks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engines.contract import OUTPUT_NAMES
from engines.runtime.base import EngineError, Runner, TensorSpec


class TorchRunner(Runner):
    """Runs ``module(**{name: tensor})`` in inference mode on CPU.

    ``module`` is an ``nn.Module`` or a zero-argument callable that builds one (called at activate(), so a
    checkpoint loader plugs in without loading anything at construction). Output specs come from one dry run
    on zeros; outputs are copied into buffers allocated then, like the other runners.
    """

    def __init__(
        self,
        module: Any | Callable[[], Any],
        inputs: Sequence[TensorSpec],
        output_names: Sequence[str] = OUTPUT_NAMES,
        *,
        threads: int = 0,
    ) -> None:
        super().__init__("torch")
        self._source = module
        self._input_specs = tuple(inputs)
        self._output_names = tuple(output_names)
        self.threads = threads  # 0 keeps torch's default
        self._module: Any = None
        self._out: dict[str, np.ndarray] = {}

    def _forward(self, feed: dict[str, np.ndarray]) -> tuple[Any, ...]:
        import torch  # noqa: PLC0415  (torch is the optional training dependency)

        with torch.inference_mode():
            result = self._module(**{k: torch.from_numpy(v) for k, v in feed.items()})
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
        module = self._source if isinstance(self._source, torch.nn.Module) else self._source()
        if not isinstance(module, torch.nn.Module):
            raise EngineError(f"the reference builder returned a {type(module).__name__}", "return a torch.nn.Module")
        self._module = module.eval()
        dry = self._forward({s.name: np.zeros(s.shape, s.dtype) for s in self._input_specs})
        outputs = tuple(
            TensorSpec(n, tuple(t.shape), np.dtype(t.detach().numpy().dtype))
            for n, t in zip(self._output_names, dry, strict=True)
        )
        self._out = {s.name: s.empty() for s in outputs}
        return self._input_specs, outputs

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, t in zip(self._output_names, self._forward(feed), strict=True):
            np.copyto(self._out[name], t.numpy())
        return self._out

    def _deactivate_impl(self) -> None:
        self._module = None
        self._out = {}
