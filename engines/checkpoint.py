"""Checkpoints and resumable training state as safetensors files with JSON metadata — no pickle anywhere.

A checkpoint is one ``.safetensors`` file: the model's state_dict as tensors, and in the file's header metadata
``drumsight.card`` (the :class:`ModelCard`) and ``drumsight.info`` (:class:`TrainInfo`). The header is plain JSON,
so :func:`read_checkpoint_meta` reads the card without torch. Training state (model + optimizer state_dicts,
counters) is nested containers of tensors and plain values: tensors go into the file, the structure and the
non-tensor leaves into a JSON tree in the header. Every write goes to a temporary file that replaces the target,
so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from edge.core.errors import EdgeError
from engines.contract import ModelCard

FORMAT = "drumsight-checkpoint/1"
STATE_FORMAT = "drumsight-train-state/1"
CHECKPOINT_NAME = "model.safetensors"
_CARD_FIELDS = frozenset(ModelCard.__dataclass_fields__)


class CheckpointError(EdgeError):
    """A checkpoint or training-state file is missing, unreadable, or not what the caller needs."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's card differs from what the caller expects (family, preset, input size, crop mode, ROI)."""


def tool_version() -> str:
    """The installed drumsight-edge version, recorded with every artefact."""
    try:
        return version("drumsight-edge")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True, slots=True)
class TrainInfo:
    """How a model was trained: stored beside its card so a checkpoint explains itself."""

    epochs: int
    seed: int
    data_hash: str = ""
    started: str = ""  # ISO 8601 UTC
    finished: str = ""
    tool_version: str = field(default_factory=tool_version)
    metrics: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # batch size, learning rate, data path, …

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainInfo:
        return cls(
            epochs=int(d["epochs"]),
            seed=int(d["seed"]),
            data_hash=str(d.get("data_hash", "")),
            started=str(d.get("started", "")),
            finished=str(d.get("finished", "")),
            tool_version=str(d.get("tool_version", "")),
            metrics={str(k): float(v) for k, v in dict(d.get("metrics", {})).items()},
            settings=dict(d.get("settings", {})),
        )


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def checkpoint_path(target: Path) -> Path:
    """A directory means ``<dir>/model.safetensors``; a file path is used as given."""
    target = Path(target)
    return target / CHECKPOINT_NAME if target.is_dir() or target.suffix == "" else target


def read_header_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, read from its JSON header (no torch, no tensor data)."""
    try:
        with Path(path).open("rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 2 <= n <= 100_000_000:
                raise ValueError("no safetensors header")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist", "check the path, or train a model with edge-train") from None
    except (OSError, ValueError, struct.error) as err:
        raise CheckpointError(
            f"{path} is not a safetensors file ({err})", "pass a model.safetensors written by edge-train"
        ) from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def read_checkpoint_meta(path: Path) -> tuple[ModelCard, TrainInfo]:
    """Card and training info of a checkpoint, without loading tensors (torch-free)."""
    path = checkpoint_path(path)
    meta = read_header_metadata(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a drumsight checkpoint (format {meta.get('format')!r}, expected {FORMAT!r})",
            "pass a model.safetensors written by edge-train (this build reads " + FORMAT + ")",
        )
    try:
        return ModelCard.from_dict(json.loads(meta["card"])), TrainInfo.from_dict(json.loads(meta["info"]))
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise CheckpointError(f"{path} holds a malformed card or info ({err!r})", "retrain with edge-train") from None


def check_card(card: ModelCard, expect: Mapping[str, Any], what: str) -> None:
    """Refuse ``card`` unless every field in ``expect`` has the expected value (sequences compared as lists)."""
    unknown = sorted(set(expect) - _CARD_FIELDS)
    if unknown:
        raise CheckpointError(
            f"cannot check {what} against unknown card fields {unknown}",
            f"expect only fields of ModelCard: {', '.join(sorted(_CARD_FIELDS))}",
        )
    found_d = card.to_dict()
    for key, want in expect.items():
        found = found_d[key]
        norm = list(want) if isinstance(want, tuple | list) else want
        if found != norm:
            raise CheckpointMismatchError(
                f"{what} has {key} = {found!r}, expected {norm!r}",
                "use a model trained for these settings, or retrain with edge-train "
                "(the ROI version changes whenever roi.yaml is recalibrated)"
                if key == "roi_version"
                else "use a model trained for these settings, or retrain with edge-train",
            )


def _atomic_save(tensors: dict[str, Any], metadata: dict[str, str], path: Path) -> None:
    from safetensors.torch import save_file  # noqa: PLC0415  (training-only dependency)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.chmod(0o644)  # safetensors creates the file owner-only; artefacts are shared like any other output
        tmp.replace(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write {path}: {err.strerror or err}", "choose a writable folder") from err


def _own(tensor: Any) -> Any:
    """A contiguous CPU copy: safetensors refuses views sharing storage (tied weights)."""
    return tensor.detach().to("cpu").clone().contiguous()


def save_checkpoint(target: Path, model: Any, card: ModelCard, info: TrainInfo) -> Path:
    """Write ``model.state_dict()`` with card and info; returns the file written."""
    path = checkpoint_path(target)
    tensors = {k: _own(v) for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "card": json.dumps(card.to_dict()), "info": json.dumps(info.to_dict())}
    _atomic_save(tensors, meta, path)
    return path


def load_checkpoint(
    path: Path, expect: Mapping[str, Any] | None = None, *, family: Any = None
) -> tuple[Any, ModelCard, TrainInfo]:
    """Build the card's model (via the registry unless ``family`` is given), load its weights, eval mode.

    ``expect`` maps card fields to required values; any difference raises :class:`CheckpointMismatchError`.
    """
    from safetensors.torch import load_file  # noqa: PLC0415  (training-only dependency)

    from engines._registry import get_family  # noqa: PLC0415  (a lazy family may import torch)
    from engines.models.backbones import weights_from_checkpoint  # noqa: PLC0415  (torch)

    path = checkpoint_path(path)
    card, info = read_checkpoint_meta(path)
    check_card(card, expect or {}, f"checkpoint {path}")
    with weights_from_checkpoint():  # every tensor comes from the checkpoint (strict): no ImageNet package needed
        model = (family or get_family(card.family)).build(card)
    tensors = load_file(str(path))
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:  # missing/unexpected keys or other shapes: torch lists them all
        detail = " ".join(str(err).split())[:400]
        raise CheckpointError(
            f"checkpoint {path} does not fit the {card.family}/{card.preset} model: {detail}",
            "the family's architecture changed since training: retrain with edge-train",
        ) from None
    model.eval()
    return model, card, info


def _encode(obj: Any, tensors: dict[str, Any]) -> Any:
    """JSON tree of ``obj``; tensors are moved into ``tensors`` and replaced by a reference."""
    import torch  # noqa: PLC0415  (training-only dependency)

    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors):05d}"
        tensors[key] = _own(obj)
        return {"__tensor__": key}
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) for k in obj) and "__tensor__" not in obj:
            return {"__dict__": {k: _encode(v, tensors) for k, v in obj.items()}}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise CheckpointError(
        f"training state holds a {type(obj).__qualname__}, which cannot be stored without pickle",
        "save only tensors, numbers, strings, None and dicts/lists/tuples of them",
    )


def _decode(node: Any, tensors: Mapping[str, Any]) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if "__tensor__" in node:
        return tensors[node["__tensor__"]]
    if "__dict__" in node:
        return {k: _decode(v, tensors) for k, v in node["__dict__"].items()}
    if "__items__" in node:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in node["__items__"]}
    return tuple(_decode(v, tensors) for v in node["__tuple__"])


def save_state(path: Path, phase: str, epoch: int, state: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
    """Write resumable state atomically; ``extra`` (e.g. the run's card) is stored for the resume check."""
    tensors: dict[str, Any] = {}
    tree = _encode(dict(state), tensors)
    meta = {
        "format": STATE_FORMAT,
        "phase": phase,
        "epoch": str(int(epoch)),
        "tree": json.dumps(tree),
        "extra": json.dumps(dict(extra)),
        "saved": utc_now(),
    }
    _atomic_save(tensors, meta, Path(path))


def load_state(path: Path) -> tuple[str, int, dict[str, Any], dict[str, Any]]:
    """(phase, epoch, state, extra) as saved by :func:`save_state`."""
    from safetensors.torch import load_file  # noqa: PLC0415  (training-only dependency)

    meta = read_header_metadata(Path(path))
    if meta.get("format") != STATE_FORMAT:
        raise CheckpointError(
            f"{path} is not drumsight training state (format {meta.get('format')!r})",
            "delete the state folder and train from scratch (without --resume)",
        )
    try:
        tensors = load_file(str(path))
        state = _decode(json.loads(meta["tree"]), tensors)
        return meta["phase"], int(meta["epoch"]), state, json.loads(meta["extra"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"training state {path} is damaged ({err!r})", "delete it and train from scratch (without --resume)"
        ) from None
