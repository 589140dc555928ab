"""`edge-build`: ONNX → TensorRT engine named for what it fits, with a timing cache and a manifest beside it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engines.build import BuildSettings, build_engine, ensure_engine
from engines.runtime.base import EngineError
from tools.entry import one_line_errors


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-build",
        description="Build a TensorRT engine from an ONNX model for this GPU and TensorRT "
        "(<model>.<tag>.<precision>.sm<XX>.trt<major>.engine plus a .manifest.json). An existing engine whose "
        "manifest fits is kept unless --force.",
    )
    p.add_argument("--onnx", type=Path, required=True, help="the exported model (fixed shapes)")
    p.add_argument("--out-dir", type=Path, required=True, help="folder for the engine and its manifest")
    p.add_argument("--model", required=True, help="model name for the file name (e.g. ast)")
    p.add_argument("--tag", required=True, help="tag for the file name (e.g. edge, or a training run)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16")
    p.add_argument("--timing-cache", type=Path, help="timing cache file (read if present, written after the build)")
    p.add_argument("--calibration", type=Path, help="INT8 calibration frames (.npz, one N×… array per input)")
    p.add_argument("--workspace-mib", type=int, default=1024)
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--card", type=Path, help="ModelCard JSON for the manifest (default: the ONNX metadata)")
    p.add_argument("--force", action="store_true", help="rebuild even when the existing engine fits")
    return p


def run(args: argparse.Namespace) -> Path:
    if not args.onnx.is_file():
        raise EngineError(f"ONNX file {args.onnx} does not exist", "export the model first, or fix --onnx")
    card = None
    if args.card is not None:
        try:
            card = json.loads(args.card.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise EngineError(f"cannot read the model card {args.card} ({e})", "pass a ModelCard JSON file") from None
    settings = BuildSettings(
        precision=args.precision,
        workspace_mib=args.workspace_mib,
        timing_cache=args.timing_cache,
        calibration=args.calibration,
        device=args.device,
    )
    names = {"model": args.model, "tag": args.tag, "settings": settings}
    if args.force or card is not None:
        return build_engine(args.onnx, args.out_dir, card=card, **names)
    return ensure_engine(args.onnx, args.out_dir, allow_rebuild=True, **names)


@one_line_errors("edge-build: error")
def main(argv: list[str] | None = None) -> int:
    """Entry point of `edge-build`; EdgeErrors exit 2 with one line, no traceback."""
    print(run(_parser().parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
