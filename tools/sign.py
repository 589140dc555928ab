"""`edge-sign` / `edge-verify`: sign the model + scoring + ROI bundle an edge.yaml names, and check a signed one.

```
edge-sign --keygen --key release.key                 # new Ed25519 pair: release.key (0600) + release.key.pub
edge-sign --key release.key --config edge.yaml --release "ast-edge 2026-12"   # writes release.json + .sig
edge-verify --config edge.yaml [--public-key release.key.pub]                 # the daemon's own check
```

The bundle, the manifest and the check are ``edge.daemon.release``'s; these tools only call them (docs/daemon.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.daemon.config import ConfigError, EdgeConfig, load_config
from edge.daemon.release import (
    ReleaseError,
    generate_keypair,
    key_fingerprint,
    load_private_key,
    load_public_key,
    sign_bundle,
    signature_path,
    verify_release,
)
from tools.entry import one_line_errors

EXIT_OK = 0


def _config(path: Path) -> EdgeConfig:
    try:
        return load_config(path)
    except ConfigError as err:
        raise ReleaseError(err.lines[0] if len(err.lines) == 1 else f"{err.problem}: {'; '.join(err.lines)}",
                           "fix the config (edge-daemon --check-config lists every problem)") from None  # fmt: skip


def _sign_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-sign", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--key", type=Path, required=True, help="Ed25519 private key (PEM); with --keygen: where to write it"
    )
    p.add_argument("--keygen", action="store_true", help="write a new key pair (KEY and KEY.pub) and exit")
    p.add_argument("--pub", type=Path, help="with --keygen: the public key's path (default KEY.pub)")
    p.add_argument("--config", type=Path, help="edge.yaml naming the bundle (roi, models) and release.manifest")
    p.add_argument("--release", default="", help="a name for this release, kept in the manifest and the results DB")
    return p


@one_line_errors("edge-sign: error")
def sign_main(argv: list[str] | None = None) -> int:
    """Entry point of `edge-sign`; errors are one line, exit 2."""
    args = _sign_parser().parse_args(argv)
    if args.keygen:
        pub = args.pub or args.key.with_name(args.key.name + ".pub")
        fingerprint = generate_keypair(args.key, pub)
        print(f"edge-sign: wrote {args.key} (keep it secret) and {pub} (release.public_key), key {fingerprint}")
        return EXIT_OK
    if args.config is None:
        raise ReleaseError("nothing to sign", "pass --config edge.yaml (or --keygen to make a key pair)")
    config = _config(args.config)
    key = load_private_key(args.key)
    configured = config.release.public_key
    if configured is not None and key_fingerprint(load_public_key(configured)) != key_fingerprint(key.public_key()):
        raise ReleaseError(
            f"{args.key} is not the private key of release.public_key {configured}",
            "sign with the key the stations trust, or change release.public_key",
        )
    manifest, signature = sign_bundle(config, key, args.release)
    state = verify_release(config) if configured is not None else None  # the daemon's own check, at once
    checked = " (checked as the daemon will)" if state is not None else ""
    print(f"edge-sign: signed {manifest} → {signature} with key {key_fingerprint(key.public_key())}{checked}")
    return EXIT_OK


def _verify_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-verify", description="Check the bundle an edge.yaml names against its signed release manifest."
    )
    p.add_argument("--config", type=Path, required=True, help="edge.yaml (roi, models, release.manifest)")
    p.add_argument("--public-key", type=Path, help="Ed25519 public key (default: the config's release.public_key)")
    return p


@one_line_errors("edge-verify: error")
def verify_main(argv: list[str] | None = None) -> int:
    """Entry point of `edge-verify`: exit 0 when the daemon would accept the bundle, else one line and exit 2."""
    args = _verify_parser().parse_args(argv)
    config = _config(args.config)
    if args.public_key is not None:
        config.release.public_key = args.public_key.resolve()
    if config.release.public_key is None:
        raise ReleaseError(
            f"{args.config} sets no release.public_key", "pass --public-key KEY.pub to verify against a key"
        )
    state = verify_release(config)
    for name, digest in state.digests.items():
        print(f"{name}  sha256 {digest}  signed")
    manifest = config.release.manifest
    print(f"edge-verify: release {state.release!r} ({manifest}, {signature_path(manifest).name}) signed by key "
          f"{state.signed_by}: the daemon accepts it")  # fmt: skip
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(sign_main())
