"""The embedded synthetic dataset: counts, classes, determinism, reuse and atomic creation."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from hdkd.config import DataConfig
from hdkd.data import build_datasets, make_synthetic_dataset
from hdkd.data.sources import discover_source
from hdkd.errors import DataError


def file_bytes(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_counts_classes_and_format(tmp_path):
    start = time.perf_counter()
    root = make_synthetic_dataset(tmp_path / "syn")
    assert time.perf_counter() - start < 10  # about 0.5 s normally; generous for a loaded machine
    source = discover_source(DataConfig(path=str(root)))
    assert source.class_names == ["blob", "ring", "spots", "streak"]
    assert list(np.bincount(source.train.labels)) == [80] * 4
    assert list(np.bincount(source.test.labels)) == [30] * 4
    with Image.open(source.train.paths[0]) as img:
        assert img.mode == "L" and img.size == (48, 48)
    assert not [p for p in tmp_path.iterdir() if p.name != "syn"]  # no temporary folder left


def test_deterministic_per_seed_and_reused(tmp_path):
    small = dict(train_per_class=3, test_per_class=2, size=32)
    a = make_synthetic_dataset(tmp_path / "a", **small)
    b = make_synthetic_dataset(tmp_path / "b", **small)
    c = make_synthetic_dataset(tmp_path / "c", seed=1, **small)
    assert file_bytes(a) == file_bytes(b)
    assert file_bytes(a).keys() == file_bytes(c).keys() and file_bytes(a) != file_bytes(c)
    stamp = (a / "Training" / "blob" / "blob_0000.png").stat().st_mtime_ns
    assert make_synthetic_dataset(a, **small) == a
    assert (a / "Training" / "blob" / "blob_0000.png").stat().st_mtime_ns == stamp  # reused, not rewritten

    (a / "Testing" / "ring" / "ring_0001.png").unlink()  # no longer complete
    with pytest.raises(DataError, match="not a complete synthetic dataset"):
        make_synthetic_dataset(a, **small)
    with pytest.raises(DataError, match="exists"):
        make_synthetic_dataset(b, train_per_class=4, test_per_class=2, size=32)  # other parameters


def test_classes_differ_in_their_lesions(tmp_path):
    """The class is visible in the pixels: class-mean images differ more than noise between halves of a class."""
    root = make_synthetic_dataset(tmp_path / "syn", train_per_class=40, test_per_class=1, size=32)
    source = discover_source(DataConfig(path=str(root)))
    images = np.stack([np.asarray(Image.open(p), dtype=float) for p in source.train.paths])
    # a radial profile around the brightest point is rotation invariant and separates blob / ring / spots / streak
    bright = images.reshape(len(images), -1).max(axis=1)
    spread = (images > (bright[:, None, None] - 40)).sum(axis=(1, 2))  # size of the bright region
    by_class = [spread[source.train.labels == k] for k in range(4)]
    medians = sorted(np.median(s) for s in by_class)
    assert medians[-1] > 1.5 * medians[0]


def test_default_build_uses_synthetic_data(cache_dir):
    built = build_datasets(DataConfig(cache_dir=cache_dir), img_size=16, in_chans=None, splits=("val", "test"))
    assert built.class_names == ["blob", "ring", "spots", "streak"]
    assert sum(built.counts["val"].values()) == 32 and sum(built.counts["test"].values()) == 120
    assert "synthetic" in built.description and built.in_chans == 3
