"""Evidence folders for NG (and sampled OK) verdicts under a disk quota; a full disk raises an alarm, never an error.

Layout: ``<root>/<YYYYMMDD>/<seq>_<verdict>/{color.png, depth.png, overlay.png, record.json}`` (the day is the
host's local date of the record). The quota counts file bytes; the oldest folders go first when a new one would
exceed it. A share of the quota (``ng_reserve``) is kept for NG (and ERROR) evidence: OK evidence (sampled with
``sample_ok_every``) never uses more than the rest, evicting older OK evidence first, so a stream of good parts
can never push out the evidence of the bad ones. Evidence is best effort: :meth:`EvidenceStore.save` returns
``None`` instead of raising, so a failing disk can never hold up or change a verdict.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edge.core.errors import EdgeError
from edge.daemon.record import Evidence, VerdictRecord

log = logging.getLogger(__name__)


class EvidenceError(EdgeError):
    """The evidence folder cannot be used at all (raised at start-up only)."""


def render_overlay(
    color_crop: npt.NDArray[np.uint8],
    anomaly_map: npt.NDArray[np.float32],
    vmax: float,
    *,
    alpha: float = 0.5,
) -> npt.NDArray[np.uint8]:
    """Blend a turbo heatmap of ``anomaly_map`` (0 … ``vmax`` → blue … red) over an RGB crop; returns RGB.

    A fixed ``vmax`` (the threshold's raw value, say) keeps colours comparable between frames, unlike
    per-image min–max scaling that paints every OK part red somewhere.
    """
    if color_crop.ndim != 3 or color_crop.shape[2] != 3 or color_crop.dtype != np.uint8:
        raise ValueError(f"color_crop must be H×W×3 uint8 RGB, got {color_crop.shape} {color_crop.dtype}")
    if anomaly_map.shape != color_crop.shape[:2]:
        raise ValueError(f"anomaly_map {anomaly_map.shape} must match the crop {color_crop.shape[:2]}")
    if not vmax > 0:
        raise ValueError(f"vmax must be positive, got {vmax}")
    level = np.clip(np.nan_to_num(anomaly_map, nan=0.0) / vmax, 0.0, 1.0)
    heat_bgr = cv2.applyColorMap((level * 255.0 + 0.5).astype(np.uint8), cv2.COLORMAP_TURBO)
    heat = cv2.cvtColor(heat_bgr, cv2.COLOR_BGR2RGB)
    blended = cv2.addWeighted(color_crop, 1.0 - alpha, heat, alpha, 0.0)
    return blended.astype(np.uint8, copy=False)


def _encode_png(image: npt.NDArray[Any], *, rgb: bool) -> bytes:
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if rgb else image
    ok, buf = cv2.imencode(".png", pixels)
    if not ok:
        raise ValueError(f"PNG encoding failed for an image of shape {image.shape} {image.dtype}")
    return buf.tobytes()


def _pictures(evidence: Evidence) -> dict[str, bytes]:
    """The evidence folder's PNG files, encoded (what :meth:`EvidenceStore.save` writes and ``warm`` rehearses)."""
    return {
        "color.png": _encode_png(evidence.color, rgb=True),
        "depth.png": _encode_png(evidence.depth, rgb=False),
        "overlay.png": _encode_png(evidence.overlay, rgb=True),
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return str(value)


def _is_ok(folder: Path) -> bool:
    """An OK evidence folder (``<seq>_OK`` or ``<seq>_OK.<n>``); NG and ERROR ones count against the reserve."""
    return folder.name.partition("_")[2].partition(".")[0] == "OK"


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


class EvidenceStore:
    """Quota-bounded evidence writer. Not thread-safe: one sink thread owns it.

    While the disk is full (``alarm``), saves are skipped; every ``recheck_every``-th skipped save checks the
    free space and resumes when there is room for the last evidence that failed (plus ``min_free_bytes``).
    """

    def __init__(
        self,
        root: Path,
        quota_bytes: int,
        sample_ok_every: int = 0,
        *,
        recheck_every: int = 10,
        min_free_bytes: int = 0,
        ng_reserve: float = 0.0,
    ) -> None:
        if quota_bytes <= 0 or sample_ok_every < 0 or recheck_every < 1 or not 0.0 <= ng_reserve <= 1.0:
            raise EvidenceError(
                f"bad evidence settings: quota_bytes={quota_bytes}, sample_ok_every={sample_ok_every}, "
                f"ng_reserve={ng_reserve}",
                "use a positive quota, sample_ok_every >= 0 (0 = keep no OK frames), 0 <= ng_reserve <= 1",
            )
        self.root = Path(root)
        self.quota_bytes = quota_bytes
        self.ok_quota_bytes = int(quota_bytes * (1.0 - ng_reserve))  # what OK evidence may use at most
        self.sample_ok_every = sample_ok_every
        self._recheck_every = recheck_every
        self._min_free = min_free_bytes
        self._ok_seen = 0
        self._skipped = 0
        self._needed = 0
        self._alarm_reason = ""
        self.saved = 0
        self.deleted = 0
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EvidenceError(f"cannot create evidence folder {self.root}: {e}", "fix the evidence path") from e
        self._folders: deque[tuple[Path, int]] = deque(self._scan())
        self.usage_bytes = sum(size for _, size in self._folders)
        self.ok_usage_bytes = sum(size for folder, size in self._folders if _is_ok(folder))

    @property
    def alarm(self) -> bool:
        """True while evidence is not being written because the disk is full or failing."""
        return bool(self._alarm_reason)

    @property
    def alarm_reason(self) -> str:
        return self._alarm_reason

    def save(self, record: VerdictRecord, evidence: Evidence) -> Path | None:
        """Write the record's evidence folder when policy says so; ``None`` when skipped or failed."""
        if not self._wanted(record):
            return None
        try:
            files = {
                **_pictures(evidence),
                "record.json": json.dumps(
                    {**record.to_json_dict(), "extra": evidence.extra}, indent=1, default=_json_default
                ).encode(),
            }
        except (ValueError, cv2.error) as e:
            log.warning("evidence for sequence %d not saved: %s", record.sequence, e)
            return None
        size = sum(len(b) for b in files.values())
        ok = record.verdict == "OK"
        limit = self.ok_quota_bytes if ok else self.quota_bytes
        if size > limit:
            log.warning("evidence of %d bytes exceeds the %s quota of %d bytes; not saved", size,
                        "OK share of the" if ok else "whole", limit)  # fmt: skip
            return None
        if self.alarm and not self._space_returned(size):
            return None
        self._make_room(size, ok)
        return self._write(record, files, size)

    def warm(self, evidence: Evidence) -> int:
        """Encode ``evidence``'s pictures as :meth:`save` does, write nothing; returns the bytes encoded.

        The daemon calls it once per inference start with the evidence of a blank frame (before the first frame is
        taken), so that the one-time costs of the first evidence — OpenCV's code pages and worker thread, the PNG
        encoder's buffers, the allocator's first large blocks — are paid at start-up and not on the first NG part
        (docs/daemon.md, "Memory over 10 minutes"). Raises what the encoder raises (``ValueError``, ``cv2.error``).
        """
        return sum(len(b) for b in _pictures(evidence).values())

    def _wanted(self, record: VerdictRecord) -> bool:
        if record.verdict == "NG":
            return True
        if record.verdict != "OK" or self.sample_ok_every == 0:
            return False
        self._ok_seen += 1
        return self._ok_seen % self.sample_ok_every == 0

    def _space_returned(self, size: int) -> bool:
        """During an alarm, look at the free space only every ``recheck_every`` skipped saves."""
        self._skipped += 1
        if self._skipped % self._recheck_every:
            return False
        try:
            free = shutil.disk_usage(self.root).free
        except OSError:
            return False
        if free < max(size, self._needed) + self._min_free:
            return False
        log.warning("evidence resumes: %d bytes free again in %s", free, self.root)
        self._alarm_reason = ""
        return True

    def _make_room(self, size: int, ok: bool) -> None:
        """Delete the oldest OK folders while OK evidence would pass its share, then the oldest of any kind while
        the whole would pass the quota (for OK evidence that can only reach NG folders beyond the reserve)."""
        while ok and self.ok_usage_bytes + size > self.ok_quota_bytes:
            oldest_ok = next((i for i, (folder, _) in enumerate(self._folders) if _is_ok(folder)), None)
            if oldest_ok is None:
                break
            self._delete(*self._folders[oldest_ok])
            del self._folders[oldest_ok]
        while self._folders and self.usage_bytes + size > self.quota_bytes:
            self._delete(*self._folders.popleft())

    def _delete(self, folder: Path, folder_size: int) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        self.usage_bytes -= folder_size
        if _is_ok(folder):
            self.ok_usage_bytes -= folder_size
        self.deleted += 1
        if folder.parent != self.root and not any(folder.parent.iterdir()):
            folder.parent.rmdir()

    def _write(self, record: VerdictRecord, files: dict[str, bytes], size: int) -> Path | None:
        day = datetime.fromtimestamp(record.host_ts_ns / 1e9).strftime("%Y%m%d")
        folder = self.root / day / f"{record.sequence:08d}_{record.verdict}"
        suffix = 1
        while folder.exists():  # sequence numbers restart with the daemon; never overwrite older evidence
            folder = folder.with_name(f"{record.sequence:08d}_{record.verdict}.{suffix}")
            suffix += 1
        try:
            folder.mkdir(parents=True)
            for name, data in files.items():
                (folder / name).write_bytes(data)
        except OSError as e:
            shutil.rmtree(folder, ignore_errors=True)
            self._raise_alarm(e, size)
            return None
        self._folders.append((folder, size))
        self.usage_bytes += size
        if _is_ok(folder):
            self.ok_usage_bytes += size
        self.saved += 1
        return folder

    def _raise_alarm(self, e: OSError, size: int) -> None:
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        self._alarm_reason = f"{'disk full' if full else 'write error'} in {self.root}: {e.strerror or e}"
        self._needed = size
        self._skipped = 0
        log.error("evidence stopped (%s); verdicts continue", self._alarm_reason)

    def _scan(self) -> list[tuple[Path, int]]:
        """Existing evidence folders, oldest first (day folder, then modification time)."""
        found: list[tuple[str, int, Path, int]] = []
        for day in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for folder in day.iterdir():
                if folder.is_dir():
                    found.append((day.name, folder.stat().st_mtime_ns, folder, _folder_bytes(folder)))
        found.sort(key=lambda t: (t[0], t[1]))
        return [(folder, size) for _, _, folder, size in found]
