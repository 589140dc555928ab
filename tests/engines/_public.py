"""Small data sets in the public MVTec layouts (no ``dataset.json``), made in tests: data from outside.

The scene: a tilted table (the background plane, filling the image border) 0.5 m from a camera that is not ours,
a box standing 30 mm proud of it in the middle, and a 3×3 px speck 20 mm proud away from the box (a separate
region the foreground must drop). Defective samples (type ``hole``, free text) darken a patch of the box; their
masks hold the class id 2, not 255.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import tifffile

H, W = 64, 80  # not square: the scene crop pads it
BOX = (slice(18, 46), slice(24, 58))
SPECK = (slice(14, 17), slice(64, 67))
HOLE = (slice(26, 34), slice(36, 44))
CLASS_ID = 2


def scene(seed: int, *, hole: bool) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """(RGB H×W×3, xyz H×W×3 metres, mask with class ids) of one sample."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:H, 0:W].astype(np.float32)
    z = 0.5 + 0.0004 * v + rng.normal(0, 0.0003, (H, W)).astype(np.float32)  # the table, tilted
    z[BOX] -= 0.03
    z[SPECK] -= 0.02
    z[40, 30] = 0.0  # a pixel without depth on the box
    xyz = np.stack([(u - W / 2) * z / 60.0, (v - H / 2) * z / 60.0, z], axis=2).astype(np.float32)
    xyz[40, 30] = 0.0
    rgb = np.full((H, W, 3), 90, dtype=np.uint8)
    rgb[BOX] = (170, 120, 60)
    rgb[SPECK] = (40, 40, 40)
    rgb = np.clip(rgb.astype(np.int16) + rng.integers(-4, 5, rgb.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((H, W), dtype=np.uint8)
    if hole:
        rgb[HOLE] = (20, 20, 20)
        mask[HOLE] = CLASS_ID
    return rgb, xyz, mask


def make_public_3d(root: Path, *, with_xyz: bool = True) -> Path:
    """An MVTec 3D-AD class folder as published (``<split>/<type>/{rgb,xyz,gt}``, no ``dataset.json``)."""
    plan = [("train", "good", 6), ("validation", "good", 3), ("test", "good", 3), ("test", "hole", 3)]
    seed = 0
    for split, kind, n in plan:
        for i in range(n):
            seed += 1
            rgb, xyz, mask = scene(seed, hole=kind != "good")
            base = root / split / kind
            subs = ["rgb"] + (["xyz"] if with_xyz else []) + (["gt"] if split == "test" else [])
            for sub in subs:
                (base / sub).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(base / "rgb" / f"{i:03d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            if with_xyz:
                tifffile.imwrite(base / "xyz" / f"{i:03d}.tiff", xyz, photometric="rgb")
            if split == "test":
                cv2.imwrite(str(base / "gt" / f"{i:03d}.png"), mask)
    return root


def make_public_2d(root: Path) -> Path:
    """An MVTec AD class folder: ``train/good/*.png``, ``test/<type>/*.png``, ``ground_truth/<type>/*_mask.png``
    (class ids), no validation split."""
    seed = 100
    for split, kind, n in [("train", "good", 8), ("test", "good", 3), ("test", "hole", 3)]:
        (root / split / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            seed += 1
            rgb, _, mask = scene(seed, hole=kind != "good")
            cv2.imwrite(str(root / split / kind / f"{i:03d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            if kind != "good":
                (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / "ground_truth" / kind / f"{i:03d}_mask.png"), mask)
    return root
