"""Engine manifests on real files (fake engine bytes, a real ONNX file): every use / rebuild / refuse decision."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.contract import ModelCard
from engines.manifest import (
    BuildEnvironment,
    EngineManifest,
    EngineMismatchError,
    check_engine,
    manifest_path,
    read_manifest,
    sha256_file,
    write_manifest,
)

ORIN = BuildEnvironment(
    tensorrt_version="10.3.0",
    cuda_version="12.6",
    driver_version="12.6",
    gpu_name="Orin",
    compute_capability="8.7",
    platform="# R36 (release), REVISION: 4.3",
)
CARD = ModelCard("ast", "edge", 256, ("rgb", "xyz", "mask"), "foreground", (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """An ONNX file (any bytes: only its hash matters here) and an engine with a manifest that fits ORIN."""
    onnx = tmp_path / "ast.onnx"
    onnx.write_bytes(b"onnx-bytes-v1" * 100)
    engine = tmp_path / "ast.edge.fp16.sm87.trt10.engine"
    engine.write_bytes(b"\x00plan" * 1000)
    write_manifest(
        engine,
        EngineManifest(
            model="ast",
            tag="edge",
            precision="fp16",
            environment=ORIN,
            onnx_file=onnx.name,
            onnx_sha256=sha256_file(onnx),
            engine_file=engine.name,
            engine_sha256=sha256_file(engine),
            strongly_typed=False,
            flags=["FP16"],
            card=CARD.to_dict(),
        ),
    )
    return onnx, engine


def test_roundtrip_and_sidecar_name(files: tuple[Path, Path]) -> None:
    _, engine = files
    assert manifest_path(engine).name == "ast.edge.fp16.sm87.trt10.engine.manifest.json"
    m = read_manifest(engine)
    assert m.environment == ORIN and ModelCard.from_dict(m.card or {}) == CARD


def test_matching_engine_is_used(files: tuple[Path, Path]) -> None:
    onnx, engine = files
    for allow in (True, False):
        check = check_engine(engine, onnx, ORIN, allow_rebuild=allow, precision="fp16")
        assert (check.action, check.reasons) == ("use", ())
        check.raise_if_refused("unused")
    # the driver is informational: a driver update alone keeps the engine
    newer_driver = ORIN.model_copy(update={"driver_version": "12.8"})
    assert check_engine(engine, onnx, newer_driver, allow_rebuild=False).action == "use"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"tensorrt_version": "10.7.0"}, "TensorRT changed: built with 10.3.0, running 10.7.0"),
        ({"gpu_name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}, "GPU changed"),
        ({"compute_capability": "8.6"}, "compute capability changed: built with 8.7, running 8.6"),
        ({"cuda_version": "12.8"}, "CUDA changed"),
        ({"platform": "# R36 (release), REVISION: 4.4"}, "L4T release changed"),
    ],
)
def test_environment_change_rebuilds_or_refuses(files: tuple[Path, Path], change: dict[str, str], reason: str) -> None:
    onnx, engine = files
    env = ORIN.model_copy(update=change)
    rebuild = check_engine(engine, onnx, env, allow_rebuild=True)
    assert rebuild.action == "rebuild" and any(reason in r for r in rebuild.reasons)
    refuse = check_engine(engine, onnx, env, allow_rebuild=False)
    assert refuse.action == "refuse"
    with pytest.raises(EngineMismatchError, match=reason) as err:
        refuse.raise_if_refused("rebuild it: edge-build --force")
    assert "edge-build" in str(err.value)


def test_changed_onnx_rebuilds_or_refuses(files: tuple[Path, Path]) -> None:
    onnx, engine = files
    onnx.write_bytes(b"onnx-bytes-v2" * 100)  # a new export
    check = check_engine(engine, onnx, ORIN, allow_rebuild=True)
    assert check.action == "rebuild" and "ONNX changed" in check.reasons[0]
    assert check_engine(engine, onnx, ORIN, allow_rebuild=False).action == "refuse"


def test_pinned_onnx_hash_refuses_a_tampered_onnx(files: tuple[Path, Path]) -> None:
    onnx, engine = files
    pinned = sha256_file(onnx)
    assert check_engine(engine, onnx, ORIN, allow_rebuild=True, expected_onnx_sha256=pinned).action == "use"
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"!")
    check = check_engine(engine, onnx, ORIN, allow_rebuild=True, expected_onnx_sha256=pinned)
    assert check.action == "refuse" and "pinned sha256" in check.reasons[0]


def test_tampered_engine_is_refused_even_when_rebuild_is_allowed(files: tuple[Path, Path]) -> None:
    onnx, engine = files
    data = bytearray(engine.read_bytes())
    data[10] ^= 0xFF
    engine.write_bytes(bytes(data))
    check = check_engine(engine, onnx, ORIN, allow_rebuild=True)
    assert check.action == "refuse" and "altered or corrupt" in check.reasons[0]


def test_precision_change_rebuilds(files: tuple[Path, Path]) -> None:
    onnx, engine = files
    check = check_engine(engine, onnx, ORIN, allow_rebuild=True, precision="fp32")
    assert check.action == "rebuild" and "precision changed: engine is fp16, fp32 requested" in check.reasons


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.unlink(), "is missing"),
        (lambda p: p.write_text("{not json"), "is unreadable"),
        (lambda p: p.write_text('{"model": "ast"}'), "is invalid"),
        (lambda p: p.write_bytes(b"\xff\xfe\x00"), "is unreadable"),
    ],
)
def test_missing_or_corrupt_manifest(files: tuple[Path, Path], damage: object, reason: str) -> None:
    onnx, engine = files
    damage(manifest_path(engine))  # type: ignore[operator]
    assert check_engine(engine, onnx, ORIN, allow_rebuild=True).action == "rebuild"
    check = check_engine(engine, onnx, ORIN, allow_rebuild=False)
    assert check.action == "refuse" and reason in check.reasons[0]
    with pytest.raises(EngineMismatchError, match=reason) as err:
        read_manifest(engine)
    assert "edge-build" in str(err.value)


def test_missing_engine_or_onnx(files: tuple[Path, Path]) -> None:
    onnx, engine = files
    engine.unlink()
    assert check_engine(engine, onnx, ORIN, allow_rebuild=True).action == "rebuild"
    assert check_engine(engine, onnx, ORIN, allow_rebuild=False).action == "refuse"
    onnx.unlink()
    check = check_engine(engine, onnx, ORIN, allow_rebuild=True)
    assert check.action == "refuse" and "does not exist" in check.reasons[0]


def test_manifest_rejects_unknown_keys(files: tuple[Path, Path]) -> None:
    _, engine = files
    path = manifest_path(engine)
    path.write_text(path.read_text().replace('"tag": "edge"', '"tag": "edge", "tagg": "x"'))
    with pytest.raises(EngineMismatchError, match="tagg"):
        read_manifest(engine)
