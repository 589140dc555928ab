"""One engine interface for every backend (PyTorch, ONNX Runtime, TensorRT): named tensors in, named tensors out."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import numpy as np

from edge.core.errors import EdgeError


class EngineError(EdgeError):
    """A model runtime cannot load, build or run (missing backend, bad file, mismatched engine)."""


class FeedError(EngineError):
    """The tensors given to ``infer`` do not match the model's inputs (names, shapes or dtypes)."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, static shape and dtype of one model input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype.name}

    def empty(self) -> np.ndarray:
        return np.empty(self.shape, dtype=self.dtype)


def check_feed(feed: Mapping[str, np.ndarray], specs: tuple[TensorSpec, ...], runner: str) -> dict[str, np.ndarray]:
    """The feed as C-contiguous arrays in spec order, or a FeedError naming every wrong tensor.

    Contiguous arrays pass through untouched (no copy); only strided views are made contiguous.
    """
    want = {s.name for s in specs}
    missing, extra = sorted(want - feed.keys()), sorted(feed.keys() - want)
    if missing or extra:
        raise FeedError(
            f"{runner}: feed names do not match the model (missing {missing or 'none'}, unexpected {extra or 'none'})",
            f"pass exactly the inputs {[s.name for s in specs]} (see describe())",
        )
    problems, out = [], {}
    for s in specs:
        a = feed[s.name]
        if not isinstance(a, np.ndarray):
            problems.append(f"{s.name} is a {type(a).__name__}, not a numpy array")
        elif a.shape != s.shape:
            problems.append(f"{s.name} has shape {a.shape}, the model wants {s.shape}")
        elif a.dtype != s.dtype:
            problems.append(f"{s.name} has dtype {a.dtype}, the model wants {s.dtype}")
        else:
            out[s.name] = np.ascontiguousarray(a)
    if problems:
        raise FeedError(f"{runner}: bad feed: " + "; ".join(problems), "convert the arrays to the specs of describe()")
    return out


class Runner(ABC):
    """Lifecycle shared by all backends (the Polygraphy pattern).

    Construction is cheap and touches no file or device; ``activate()`` loads the model once and allocates every
    buffer; ``infer()`` validates the feed and runs without allocating outputs: the returned arrays are the runner's
    own preallocated buffers, overwritten by the next call, so copy them if you keep them; ``deactivate()`` frees
    everything. Subclasses implement the ``_*_impl`` methods only.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.last_latency_ns = 0  # wall time of the last infer() call, validation included
        self._inputs: tuple[TensorSpec, ...] = ()
        self._outputs: tuple[TensorSpec, ...] = ()
        self._active = False

    @property
    def is_active(self) -> bool:
        return self._active

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        self._require_active()
        return self._inputs

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]:
        self._require_active()
        return self._outputs

    def activate(self) -> Self:
        """Load the model and allocate buffers; a second call does nothing."""
        if not self._active:
            self._inputs, self._outputs = self._activate_impl()
            self._active = True
        return self

    def deactivate(self) -> None:
        """Free the model and its buffers; safe to call twice. Arrays returned by infer() become invalid."""
        if self._active:
            self._deactivate_impl()
            self._active = False

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once. The returned arrays are reused buffers, valid until the next ``infer`` or ``deactivate``."""
        t0 = time.perf_counter_ns()
        self._require_active()
        out = self._infer_impl(check_feed(feed, self._inputs, self.name))
        self.last_latency_ns = time.perf_counter_ns() - t0
        return out

    def warmup(self, n: int = 3) -> None:
        """Run ``n`` times on zeros so lazy initialisation (kernels, arenas, autotuning) is paid before timing."""
        self._require_active()
        feed = {s.name: np.zeros(s.shape, s.dtype) for s in self._inputs}
        for _ in range(n):
            self.infer(feed)

    def describe(self) -> dict[str, list[dict[str, Any]]]:
        """Input and output specs as plain data (name, shape, dtype) for logs, manifests and reports."""
        self._require_active()
        return {"inputs": [s.to_dict() for s in self._inputs], "outputs": [s.to_dict() for s in self._outputs]}

    def __enter__(self) -> Self:
        return self.activate()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.deactivate()

    def _require_active(self) -> None:
        if not self._active:
            raise EngineError(f"{self.name} is not active", "call activate() or use the runner as a context manager")

    @abstractmethod
    def _activate_impl(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """Load, allocate, and return (input specs, output specs)."""

    @abstractmethod
    def _infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on a validated feed and return the preallocated output buffers."""

    @abstractmethod
    def _deactivate_impl(self) -> None:
        """Release everything ``_activate_impl`` acquired."""
