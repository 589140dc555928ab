"""The release: the files that decide OK/NG — every model's ONNX, its scoring file, the ROI — by sha256, and signed.

A station runs a *bundle*: the ROI and, per configured model, its ONNX and its scoring file. Each file has a key
(``roi``, ``model:<name>``, ``scoring:<name>``) and a sha256. At start and on SIGHUP the daemon logs the digests,
exports them as metric labels and writes a ``config_changes`` row (what changed since the last accepted bundle).

With ``release.public_key`` set, the bundle must be signed: ``edge-sign`` writes a manifest (``release.json``: the
keys, file names and sha256 of the bundle, canonical JSON) and a detached Ed25519 signature of its exact bytes
(``release.json.sig``, base64). :func:`verify_release` — the one check the start, SIGHUP, ``--check-config`` and
``edge-verify`` run — refuses a missing or bad signature, a manifest signed by another key, and any file of the
bundle whose sha256 differs from the signed one, or that the manifest does not list (and the reverse).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import Field

from edge.core.config import EdgeModel
from edge.core.errors import EdgeError
from edge.core.scoring import ScoringError, file_sha256

if TYPE_CHECKING:
    from edge.daemon.config import EdgeConfig
    from edge.daemon.store import ResultStore

log = logging.getLogger(__name__)

MANIFEST_SCHEMA_VERSION = 1
MANIFEST_NAME = "release.json"


class ReleaseError(EdgeError):
    """The release bundle cannot be verified: unsigned, badly signed, altered, or a key/manifest is unusable."""


class ReleaseConfig(EdgeModel):
    """Who may release what the station runs (optional: without a key, digests are still logged and recorded)."""

    type: Literal["release"] = Field("release", description="discriminator")
    public_key: Path | None = Field(
        None,
        description="Ed25519 public key (PEM, from edge-sign --keygen); when set, the daemon refuses a model + "
        "scoring + ROI bundle that is not signed by its private key (relative paths: from the config file)",
    )
    manifest: Path = Field(
        Path(MANIFEST_NAME),
        description="signed manifest written by edge-sign; its signature is the same path + .sig (relative paths: "
        "from the config file)",
    )


def signature_path(manifest: Path) -> Path:
    """``release.json`` → ``release.json.sig`` (the detached signature beside the manifest)."""
    return manifest.with_name(manifest.name + ".sig")


def bundle_files(config: EdgeConfig) -> dict[str, Path]:
    """Key → file of everything that decides a verdict, in a fixed order: ``roi`` (when the config names one), then
    each model's pair."""
    files = {"roi": config.roi} if config.roi is not None else {}
    for m in config.models:
        files[f"model:{m.name}"] = m.onnx
        files[f"scoring:{m.name}"] = m.scoring
    return files


def bundle_digests(files: dict[str, Path]) -> dict[str, str]:
    """Key → sha256 of each file; an unreadable file is a ReleaseError naming its key."""
    out: dict[str, str] = {}
    for key, path in files.items():
        try:
            out[key] = file_sha256(path)
        except ScoringError as err:
            raise ReleaseError(
                f"{key}: {err.problem}", "check the path in the config and the file's permissions"
            ) from None
    return out


def key_fingerprint(key: Ed25519PublicKey) -> str:
    """A short name of a public key: the first 16 hex digits of the sha256 of its 32 raw bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (``edge-sign --keygen`` writes one)."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as err:
        raise ReleaseError(f"cannot read the release public key {path}: {err.strerror or err}",
                           "check release.public_key in the config and the file's permissions") from None  # fmt: skip
    except (ValueError, UnsupportedAlgorithm) as err:
        raise ReleaseError(
            f"{path} is not a PEM public key ({err})", "use the .pub file edge-sign --keygen wrote"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ReleaseError(f"{path} is not an Ed25519 public key", "use the .pub file edge-sign --keygen wrote")
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file (unencrypted PKCS#8, as ``edge-sign --keygen`` writes)."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as err:
        raise ReleaseError(f"cannot read the signing key {path}: {err.strerror or err}", "pass --key KEY.pem") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise ReleaseError(f"{path} is not an unencrypted PEM private key ({err})",
                           "use the key edge-sign --keygen wrote") from None  # fmt: skip
    if not isinstance(key, Ed25519PrivateKey):
        raise ReleaseError(f"{path} is not an Ed25519 private key", "use the key edge-sign --keygen wrote")
    return key


def generate_keypair(private_path: Path, public_path: Path) -> str:
    """Write a new Ed25519 key pair (private key 0600, never overwritten); returns the public key's fingerprint."""
    for p in (private_path, public_path):
        if p.exists():
            raise ReleaseError(f"{p} already exists", "choose another name; a key is never overwritten")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        private_path.parent.mkdir(parents=True, exist_ok=True)
        private_path.touch(mode=0o600, exist_ok=False)
        private_path.write_bytes(private_pem)
        public_path.write_bytes(public_pem)
    except OSError as err:
        raise ReleaseError(f"cannot write the key pair: {err}", "choose a writable folder") from None
    return key_fingerprint(key.public_key())


def manifest_bytes(config: EdgeConfig, digests: dict[str, str], release: str) -> bytes:
    """The canonical manifest of a bundle: sorted keys, no spaces, one trailing newline (its bytes are signed)."""
    files = bundle_files(config)
    doc = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "release": release,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {k: {"name": files[k].name, "sha256": digests[k]} for k in files},
    }
    return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()


def sign_bundle(config: EdgeConfig, key: Ed25519PrivateKey, release: str) -> tuple[Path, Path]:
    """Write ``release.manifest`` and its ``.sig`` for the bundle ``config`` names; returns both paths."""
    manifest = config.release.manifest
    data = manifest_bytes(config, bundle_digests(bundle_files(config)), release)
    signature = base64.b64encode(key.sign(data)) + b"\n"
    try:
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_bytes(data)
        signature_path(manifest).write_bytes(signature)
    except OSError as err:
        raise ReleaseError(f"cannot write {manifest}: {err.strerror or err}", "pass a writable --out") from None
    return manifest, signature_path(manifest)


@dataclass(frozen=True, slots=True)
class ReleaseState:
    """A verified bundle: key → sha256, the release name (the signed manifest's, or the rollout bundle's) and, when
    signed, the signing key's fingerprint."""

    digests: dict[str, str]
    signed_by: str = ""
    release: str = ""

    def summary(self) -> str:
        """``key=sha256[:12]`` for every file, for one log line."""
        return " ".join(f"{k}={v[:12]}" for k, v in self.digests.items())


def _read_signed(manifest: Path, key: Ed25519PublicKey) -> dict[str, Any]:
    """The manifest's content, after its signature was verified over its exact bytes."""
    sig_path = signature_path(manifest)
    remedy = "sign this bundle with edge-sign (it writes the manifest and its .sig), or remove release.public_key"
    try:
        data = manifest.read_bytes()
    except FileNotFoundError:
        raise ReleaseError(f"the release is unsigned: no manifest {manifest}", remedy) from None
    except OSError as err:
        raise ReleaseError(f"cannot read {manifest}: {err.strerror or err}", "check its permissions") from None
    try:
        signature = base64.b64decode(sig_path.read_bytes().strip(), validate=True)
    except FileNotFoundError:
        raise ReleaseError(f"the release is unsigned: no signature {sig_path}", remedy) from None
    except (OSError, binascii.Error) as err:
        raise ReleaseError(f"cannot read the signature {sig_path}: {err}", remedy) from None
    try:
        key.verify(signature, data)
    except InvalidSignature:
        raise ReleaseError(
            f"the signature {sig_path} does not match {manifest} under key {key_fingerprint(key)}: the manifest was "
            "altered or signed with another key",
            "sign the bundle again with the release key (edge-sign)",
        ) from None
    try:
        doc = json.loads(data)
        if doc["schema_version"] != MANIFEST_SCHEMA_VERSION:
            raise ValueError(f"schema_version {doc['schema_version']!r}, this daemon reads {MANIFEST_SCHEMA_VERSION}")
        files = {str(k): str(v["sha256"]) for k, v in doc["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ReleaseError(
            f"{manifest} is signed but not a release manifest ({err})", "sign it again with edge-sign"
        ) from None
    return {"release": str(doc.get("release", "")), "files": files}


def verify_release(config: EdgeConfig) -> ReleaseState:
    """The sha256 of every bundle file; with ``release.public_key``, also the signed manifest must match exactly.

    The one release check: start, SIGHUP, ``--check-config`` and ``edge-verify`` call it. Raises ReleaseError.
    """
    digests = bundle_digests(bundle_files(config))
    if config.release.public_key is None:
        return ReleaseState(digests)
    key = load_public_key(config.release.public_key)
    signed = _read_signed(config.release.manifest, key)
    files: dict[str, str] = signed["files"]
    problems = [f"{k} is not in the signed release" for k in digests if k not in files]
    problems += [f"{k} is signed but not configured" for k in files if k not in digests]
    problems += [
        f"{k} has sha256 {digests[k][:12]}…, the signed release says {files[k][:12]}…"
        for k in digests
        if k in files and files[k] != digests[k]
    ]
    if problems:
        raise ReleaseError(
            f"the bundle differs from the signed release {config.release.manifest}: {'; '.join(problems)}",
            "deploy the files that were signed, or sign this bundle with edge-sign",
        )
    return ReleaseState(digests, key_fingerprint(key), signed["release"])


def changes(previous: dict[str, str] | None, current: dict[str, str]) -> list[dict[str, str | None]]:
    """What differs between two digest maps: ``{"file", "old", "new"}`` per key (None: absent on that side)."""
    if previous is None:
        return [{"file": k, "old": None, "new": v} for k, v in current.items()]
    keys = list(current) + [k for k in previous if k not in current]
    return [
        {"file": k, "old": previous.get(k), "new": current.get(k)} for k in keys if previous.get(k) != current.get(k)
    ]


def _short(digest: str | None) -> str:
    return digest[:12] if digest else "-"


class ReleaseTracker:
    """The main process's view of the running release: metrics, log lines and ``config_changes`` rows."""

    def __init__(self, registry: CollectorRegistry, store: ResultStore, run_id: int) -> None:
        self.store, self.run_id = store, run_id
        self.current: ReleaseState | None = None
        self.file_info = Gauge(
            "edge_release_file_info",
            "1 for the sha256 of each file that decides verdicts (roi, model:<name>, scoring:<name>).",
            ["file", "sha256"],
            registry=registry,
        )
        self.signed = Gauge(
            "edge_release_signed",
            "1 when the running bundle's Ed25519 signature was verified, else 0.",
            registry=registry,
        )
        self.alarm = Gauge(
            "edge_release_alarm",
            "1 after a SIGHUP reload was refused (bundle unsigned, altered or unreadable); the previous one runs.",
            registry=registry,
        )
        self.rejected = Counter(
            "edge_release_rejected_total", "SIGHUP reloads refused by the release check.", registry=registry
        )

    def accept(self, state: ReleaseState, event: Literal["start", "reload"]) -> None:
        """Record ``state`` as running: log what changed since the last accepted bundle, metrics, one table row."""
        previous = self.current.digests if self.current is not None else self.store.last_release_digests()
        diff = changes(previous, state.digests)
        signed = f"signed_by={state.signed_by}" if state.signed_by else "signed=no"
        signed += f" release={state.release!r}" if state.release else ""
        log.info("event=release_%s %s %s changed=%d", event, signed, state.summary(), len(diff))
        for c in diff if previous is not None else []:
            log.warning("event=release_changed file=%s old=%s new=%s", c["file"], _short(c["old"]), _short(c["new"]))
        self.store.add_config_change(self.run_id, event, True, state.digests, diff, state.release, state.signed_by)
        if self.current is not None:
            for k, v in self.current.digests.items():
                self.file_info.remove(k, v)
        for k, v in state.digests.items():
            self.file_info.labels(file=k, sha256=v).set(1)
        self.signed.set(int(bool(state.signed_by)))
        self.alarm.set(0)
        self.current = state

    def reload(self, config: EdgeConfig) -> bool:
        """SIGHUP: verify the bundle on disk; True to go on with the reload, False to keep the running bundle."""
        try:
            state = verify_release(config)
        except ReleaseError as err:
            log.error("event=release_rejected action=keep_running error=%r", str(err))
            self.rejected.inc()
            self.alarm.set(1)
            try:  # what was refused, as far as it can be read
                found = bundle_digests(bundle_files(config))
            except ReleaseError:
                found = {}
            running = self.current.digests if self.current is not None else None
            diff = changes(running, found)
            self.store.add_config_change(self.run_id, "reload", False, found, diff, "", "", error=str(err))
            return False
        self.accept(state, "reload")
        return True
