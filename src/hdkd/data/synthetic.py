"""The embedded default dataset: grey, scan-like images the package draws itself, so everything runs with no data.

Each image is a textured, noisy disc (the "body") holding one lesion whose shape is the class: a bright blob,
a ring, an elongated streak or two small spots (plus cross and square when more classes are asked for).
Position, size, brightness, rotation, noise and a faint distracting spot vary at random, so a small CNN learns
it well above chance in a few epochs without it being trivially separable. The result is a regular folder
dataset (`Training/<class>/*.png`, `Testing/<class>/*.png`), fully determined by the arguments.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from hdkd.errors import DataError

SYNTHETIC_VERSION = 2
LESION_KINDS = ("blob", "ring", "streak", "spots", "cross", "square")
_MARKER = ".hdkd-synthetic.json"  # hidden, so dataset discovery ignores it
_SPLIT_FOLDERS = {"Training": 0, "Testing": 1}


def make_synthetic_dataset(
    root: str | Path,
    num_classes: int = 4,
    train_per_class: int = 80,
    test_per_class: int = 30,
    size: int = 48,
    seed: int = 0,
) -> Path:
    """Write (or reuse) the synthetic folder dataset at `root` and return `root`.

    Built in a temporary sibling folder and renamed into place, so `root` either does not exist or is complete;
    an existing complete dataset made with the same arguments is reused as is.
    """
    if not 2 <= num_classes <= len(LESION_KINDS):
        raise DataError(f"synthetic dataset: num_classes must be between 2 and {len(LESION_KINDS)}, got {num_classes}")
    if size < 16 or train_per_class < 1 or test_per_class < 1:
        raise DataError("synthetic dataset: size must be >= 16 and the per-class counts >= 1")
    root = Path(root).expanduser()
    params = dict(
        version=SYNTHETIC_VERSION,
        num_classes=num_classes,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        size=size,
        seed=seed,
    )
    if root.exists():
        if _is_complete(root, params):
            return root
        raise DataError(
            f"{root}: exists but is not a complete synthetic dataset made with {params}; "
            f"delete it or choose another folder"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        counts = {"Training": train_per_class, "Testing": test_per_class}
        for split, split_id in _SPLIT_FOLDERS.items():
            for class_id, kind in enumerate(LESION_KINDS[:num_classes]):
                folder = tmp / split / kind
                folder.mkdir(parents=True)
                for i in range(counts[split]):
                    rng = np.random.default_rng([seed, split_id, class_id, i])
                    Image.fromarray(draw_scan(rng, size, kind)).save(folder / f"{kind}_{i:04d}.png", compress_level=1)
        (tmp / _MARKER).write_text(json.dumps(params, sort_keys=True))
        try:
            os.rename(tmp, root)
        except OSError:
            if not _is_complete(root, params):  # not another process that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _is_complete(root: Path, params: dict) -> bool:
    try:
        if json.loads((root / _MARKER).read_text()) != params:
            return False
        counts = {"Training": params["train_per_class"], "Testing": params["test_per_class"]}
        for split in _SPLIT_FOLDERS:
            for kind in LESION_KINDS[: params["num_classes"]]:
                if len(list((root / split / kind).glob("*.png"))) != counts[split]:
                    return False
    except (OSError, ValueError):
        return False
    return True


def draw_scan(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """One uint8 (size, size) grey image: textured disc, a `kind` lesion, maybe a faint distractor, noise."""
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size  # coordinates in [0, 1]
    cx, cy = 0.5 + rng.normal(0.0, 0.03, size=2)
    radius = rng.uniform(0.38, 0.46)
    body = _soft_step((radius - np.hypot(xx - cx, yy - cy)) * size)
    image = body * (rng.uniform(60, 100) + 10.0 * _smooth_noise(rng, size))

    angle = rng.uniform(0, 2 * np.pi)
    distance = rng.uniform(0, radius * 0.5)
    lx, ly = cx + distance * np.cos(angle), cy + distance * np.sin(angle)
    scale = rng.uniform(0.08, 0.12)
    lesion = _lesion(kind, xx - lx, yy - ly, scale, rng.uniform(0, np.pi), rng)
    image += rng.uniform(90, 140) * lesion * body

    if rng.random() < 0.3:  # a faint spot anywhere in the body, in every class
        dx, dy = rng.uniform(-radius, radius, size=2) * 0.6
        image += rng.uniform(10, 30) * _gauss(xx - cx - dx, yy - cy - dy, scale * 0.6) * body
    image += rng.normal(0.0, rng.uniform(3, 8), size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _lesion(kind: str, dx: np.ndarray, dy: np.ndarray, s: float, theta: float, rng: np.random.Generator) -> np.ndarray:
    u = dx * np.cos(theta) + dy * np.sin(theta)  # lesion-aligned coordinates
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    if kind == "blob":
        return _gauss(u, v, s)
    if kind == "ring":
        ring_radius, width = s * rng.uniform(1.2, 1.8), s * rng.uniform(0.35, 0.55)
        return np.exp(-(((np.hypot(u, v) - ring_radius) / width) ** 2))
    if kind == "streak":
        elongation = rng.uniform(2.0, 3.5)
        return np.exp(-0.5 * ((u / (s * elongation)) ** 2 + (v / (s * 0.6)) ** 2))
    if kind == "spots":
        half_gap = s * rng.uniform(1.2, 2.0)
        return np.maximum(_gauss(u - half_gap, v, s * 0.55), _gauss(u + half_gap, v, s * 0.55))
    if kind == "cross":
        arm = s * 2.2
        return np.maximum(
            np.exp(-0.5 * ((u / arm) ** 2 + (v / (s * 0.4)) ** 2)),
            np.exp(-0.5 * ((v / arm) ** 2 + (u / (s * 0.4)) ** 2)),
        )
    if kind == "square":
        return _soft_step((s * 1.3 - np.maximum(np.abs(u), np.abs(v))) * 60.0)
    raise ValueError(f"unknown lesion kind {kind!r}")


def _gauss(dx: np.ndarray, dy: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-(dx**2 + dy**2) / (2.0 * sigma**2))


def _soft_step(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30.0, 30.0)))


def _smooth_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency texture: a coarse random grid upsampled bicubically (values roughly in -1..1)."""
    coarse = rng.normal(0.0, 1.0, size=(6, 6)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))
