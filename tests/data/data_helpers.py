"""Helpers writing tiny datasets for the data tests (unique module name: no clash with other test folders)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def write_image(path: Path, value: int, size: int = 8, mode: str = "L") -> Path:
    """A constant image of `value` (grey) or (value, 255 - value, value // 2) (RGB), so files are told apart."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        array = np.full((size, size), value % 256, dtype=np.uint8)
    else:
        array = np.zeros((size, size, 3), dtype=np.uint8)
        array[...] = (value % 256, 255 - value % 256, (value % 256) // 2)
    Image.fromarray(array).save(path)
    return path


def folder_dataset(root: Path, layout: dict[str, dict[str, int]], size: int = 8) -> Path:
    """layout: {split folder or "" for a single pool: {class: count}}; pixel value = a running image number."""
    number = 0
    for split, classes in layout.items():
        for name, count in classes.items():
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                write_image(folder / f"{name}_{i:03d}.png", number, size)
                number += 1
    return root


def csv_dataset(
    root: Path,
    rows: list[dict[str, str]],
    size: int = 8,
    image_folder: str = "images",
    csv_name: str = "labels.csv",
    ext: str = ".png",
    missing: tuple[str, ...] = (),
) -> Path:
    """Writes rows (dicts with an image_id) to root/csv_name and an image per row into root/image_folder."""
    root.mkdir(parents=True, exist_ok=True)
    for number, row in enumerate(rows):
        if row["image_id"] not in missing:
            write_image(root / image_folder / f"{row['image_id']}{ext}", number, size)
    with open(root / csv_name, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def class_rows(
    counts: dict[str, int],
    split: str | None = None,
    groups_per_class: int | None = None,
    rng: np.random.Generator | None = None,
) -> list[dict[str, str]]:
    rows = []
    for name, count in counts.items():
        for i in range(count):
            row = {"image_id": f"{name}_{i:04d}", "dx": name}
            if split is not None:
                row["split"] = split
            if groups_per_class is not None:
                row["lesion_id"] = f"{name}_lesion{int(rng.integers(groups_per_class)):03d}"
            rows.append(row)
    return rows
