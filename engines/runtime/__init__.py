"""Model runtimes behind one Runner interface: PyTorch reference, ONNX Runtime, TensorRT (GPU, lazy)."""

from engines.runtime.base import EngineError, FeedError, Runner, TensorSpec
from engines.runtime.ort import OrtRunner, OrtRunnerConfig

__all__ = ["EngineError", "FeedError", "OrtRunner", "OrtRunnerConfig", "Runner", "TensorSpec"]
