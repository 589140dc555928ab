"""Engine manifests: the JSON sidecar that says what a TensorRT engine was built from and where it can run.

An engine is only valid for the TensorRT version, GPU model and CUDA runtime that built it, and for the ONNX it
was built from. ``check_engine`` compares a manifest with the running environment and the files on disk and
decides: use the engine, rebuild it (when the caller allows), or refuse with the reason and the command to fix it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from edge.core.config import EdgeModel
from engines.runtime.base import EngineError

MANIFEST_SUFFIX = ".manifest.json"
SCHEMA_VERSION = 1
Precision = Literal["fp32", "fp16", "int8"]


class EngineMismatchError(EngineError):
    """An engine does not fit the running environment or its ONNX, or its file was altered."""


class BuildEnvironment(EdgeModel):
    """What an engine is bound to. The driver is recorded for diagnosis only: a newer driver runs old engines."""

    type: Literal["environment"] = "environment"
    tensorrt_version: str = Field(description="tensorrt.__version__ of the builder/runtime")
    cuda_version: str = Field(description="CUDA toolkit version of the CUDA bindings (pycuda), major.minor")
    driver_version: str = Field(description="CUDA driver version, major.minor (informational)")
    gpu_name: str = Field(description="device name as CUDA reports it")
    compute_capability: str = Field(description="major.minor, e.g. 8.7 for Orin")
    platform: str = Field("", description="L4T release on a Jetson (an engine is rebuilt when it changes), else empty")

    def differences(self, other: BuildEnvironment) -> list[str]:
        """What differs in ways that invalidate an engine, as readable phrases."""
        out = []
        for field, label in (
            ("tensorrt_version", "TensorRT"),
            ("gpu_name", "GPU"),
            ("compute_capability", "compute capability"),
            ("cuda_version", "CUDA"),
            ("platform", "L4T release"),
        ):
            built, now = getattr(self, field), getattr(other, field)
            if built != now:
                out.append(f"{label} changed: built with {built}, running {now}")
        return out


class IoSpec(EdgeModel):
    """One engine input or output."""

    type: Literal["tensor"] = "tensor"
    name: str = Field(description="tensor name of the model contract")
    shape: list[int] = Field(description="static shape")
    dtype: str = Field(description="numpy dtype name")


class EngineManifest(EdgeModel):
    """Everything needed to decide whether an engine file may be used here."""

    type: Literal["tensorrt-engine"] = "tensorrt-engine"
    schema_version: int = Field(SCHEMA_VERSION, description="manifest format version")
    model: str = Field(description="model name (the family, e.g. ast)")
    tag: str = Field(description="preset / training tag, e.g. edge")
    precision: Precision = Field(description="requested build precision")
    environment: BuildEnvironment
    onnx_file: str = Field(description="ONNX file name the engine was built from")
    onnx_sha256: str = Field(description="sha256 of that ONNX file")
    engine_file: str = Field(description="engine file name (beside the manifest)")
    engine_sha256: str = Field(description="sha256 of the engine file as written by the builder")
    strongly_typed: bool = Field(description="built as a strongly typed network (TensorRT 11 path)")
    flags: list[str] = Field(default_factory=list, description="builder flags set, e.g. FP16")
    inputs: list[IoSpec] = Field(default_factory=list)
    outputs: list[IoSpec] = Field(default_factory=list)
    card: dict[str, Any] | None = Field(None, description="ModelCard.to_dict() of the model, when known")
    built_at: str = Field("", description="UTC build time, ISO 8601")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (engines reach hundreds of MB)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_path(engine: Path) -> Path:
    """The sidecar of ``engine``: ``<engine file name>.manifest.json`` in the same folder."""
    return engine.with_name(engine.name + MANIFEST_SUFFIX)


def write_manifest(engine: Path, manifest: EngineManifest) -> Path:
    path = manifest_path(engine)
    path.write_text(manifest.model_dump_json(indent=2) + "\n")
    return path


def read_manifest(engine: Path) -> EngineManifest:
    """The manifest beside ``engine``, or an EngineMismatchError saying it is missing or unreadable."""
    path = manifest_path(engine)
    remedy = f"rebuild the engine with edge-build (it writes {path.name})"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EngineMismatchError(f"engine manifest {path} is missing", remedy) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EngineMismatchError(f"engine manifest {path} is unreadable ({e})", remedy) from None
    try:
        return EngineManifest.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise EngineMismatchError(f"engine manifest {path} is invalid ({where}: {first['msg']})", remedy) from None


Action = Literal["use", "rebuild", "refuse"]


@dataclass(frozen=True, slots=True)
class EngineCheck:
    """The decision about one engine file and why."""

    action: Action
    reasons: tuple[str, ...]
    engine: Path
    manifest: EngineManifest | None = None

    def raise_if_refused(self, rebuild_hint: str) -> None:
        if self.action == "refuse":
            raise EngineMismatchError(f"engine {self.engine} refused: " + "; ".join(self.reasons), rebuild_hint)


def _stale_reasons(
    m: EngineManifest, env: BuildEnvironment, onnx: Path, onnx_sha: str, precision: Precision | None
) -> list[str]:
    """Reasons the engine no longer fits (environment, ONNX or requested precision); empty when it does."""
    reasons = m.environment.differences(env)
    if onnx_sha != m.onnx_sha256:
        reasons.append(f"ONNX changed: {onnx.name} is not the file the engine was built from ({m.onnx_file})")
    if precision is not None and precision != m.precision:
        reasons.append(f"precision changed: engine is {m.precision}, {precision} requested")
    if m.schema_version != SCHEMA_VERSION:
        reasons.append(f"manifest schema {m.schema_version}, this version reads {SCHEMA_VERSION}")
    return reasons


def check_engine(
    engine: Path,
    onnx: Path,
    env: BuildEnvironment,
    *,
    allow_rebuild: bool,
    precision: Precision | None = None,
    expected_onnx_sha256: str | None = None,
) -> EngineCheck:
    """Decide whether ``engine`` may be used with ``onnx`` in ``env``.

    - an altered engine (hash ≠ manifest) or an ONNX that differs from a pinned ``expected_onnx_sha256``
      is always refused: rebuilding from an untrusted file would hide the problem;
    - a missing engine/manifest, a changed environment, ONNX or precision → "rebuild" when allowed, else "refuse";
    - otherwise "use".
    """
    if not onnx.is_file():
        return EngineCheck("refuse", (f"ONNX file {onnx} does not exist",), engine)
    onnx_sha = sha256_file(onnx)
    if expected_onnx_sha256 is not None and onnx_sha != expected_onnx_sha256:
        return EngineCheck("refuse", (f"ONNX {onnx.name} does not match its pinned sha256 (tampered?)",), engine)
    stale: Action = "rebuild" if allow_rebuild else "refuse"
    if not engine.is_file():
        return EngineCheck(stale, (f"engine file {engine} does not exist",), engine)
    try:
        m = read_manifest(engine)
    except EngineMismatchError as e:
        return EngineCheck(stale, (e.problem,), engine)
    if sha256_file(engine) != m.engine_sha256:
        reason = f"engine {engine.name} does not match the sha256 in its manifest (altered or corrupt)"
        return EngineCheck("refuse", (reason,), engine, m)
    reasons = _stale_reasons(m, env, onnx, onnx_sha, precision)
    return EngineCheck(stale if reasons else "use", tuple(reasons), engine, m)
