"""Exact and near-duplicate images: content hashes, perceptual hashes and dropping duplicates across splits.

Public datasets often hold the same scan more than once (the Kaggle Brain Tumor MRI set has byte-identical files
in Training and in Testing); a test image that is also a training image makes the test score optimistic. This
module finds such images and, on request, drops them before training (`data.drop_duplicates`).

Two kinds of duplicates, each reported as groups of images:

- **exact**: the same content, by SHA-256 of the file's bytes (image files) or of the image array's bytes (MedMNIST
  `.npz`, where one image is one array row). Re-encoded copies are not exact duplicates.
- **near**: images whose perceptual hashes differ in at most `threshold` of 256 bits (Hamming distance), although
  their bytes differ (re-encoded, resized, re-windowed copies, and adjacent slices of one scan). The hash is a DCT
  pHash: the image is decoded once into the image cache at 64 x 64 px (`hdkd.data.cache`: the very entry a 64 px
  training run uses; arrays are resized in memory), turned grey (ITU-R 601 luma), transformed with a 2-D DCT-II,
  and the 16 x 16 lowest-frequency coefficients are compared with their median: one bit per coefficient, 1 when
  above it. Every hash has 128 bits set, so distances are even. Near groups are the connected components of the
  graph "distance <= threshold" over distinct contents (single linkage: A~B and B~C put A, B and C in one group
  even when A and C are further apart); each holds at least two distinct contents, with all their exact copies.

**Threshold.** `DEFAULT_THRESHOLD` = 24 of 256 bits (data.duplicate_threshold, `hdkd audit --threshold N`). Chosen
on the shared data: on Brain Tumor MRI no two images of different classes lie within 28 bits (the first such pair
appears at 32, 14 at 40), while random samples of same-class pairs up to 44 bits, inspected by eye, were nearly all
the same slice re-encoded, re-windowed or rescaled, or an adjacent slice of the same scan; on BreastMNIST pairs up to
32 bits were the same ultrasound image (some with two labels: real label conflicts). A 64-bit pHash (8 x 8
frequencies) was rejected: it put clearly different glioma and meningioma scans within 2 bits of each other.

All pairs are compared with a vectorised popcount (blocks of rows against all later hashes): Brain Tumor MRI's
7,023 images take about a second once decoded; the cost grows with the square of the image count (about 100,000
images take minutes).

A group whose members carry different labels is a **label conflict** (the same image with two diagnoses); a
group whose members lie in more than one split is **cross-split** (leakage between train, val and test).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from hdkd.data.cache import cached_file_images
from hdkd.data.imageio import rgb_to_luma
from hdkd.data.sources import SPLITS, SplitData
from hdkd.errors import ConfigError, DataError

DEFAULT_THRESHOLD = 24  # Hamming distance, in bits of the 256-bit pHash (DataConfig.duplicate_threshold)


HASH_DECODE_SIZE = 64  # decoded (cached) image size; the DCT runs on the grey image at this size


HASH_FREQUENCIES = 16  # the LOW x LOW lowest DCT frequencies make the hash


HASH_BITS = HASH_FREQUENCIES * HASH_FREQUENCIES


HASH_WORDS = HASH_BITS // 64  # a hash is HASH_WORDS uint64 words


DROP_MODES = ("test", "train")


def content_hashes(split: SplitData) -> list[str]:
    """SHA-256 (hex) per image: of the file's bytes, or of the image array's bytes (with its shape) for arrays."""
    if split.images is not None:
        out = []
        for image in split.images:
            digest = hashlib.sha256(f"{image.dtype.str} {image.shape}\n".encode())
            digest.update(np.ascontiguousarray(image).tobytes())
            out.append(digest.hexdigest())
        return out
    out = []
    for path in split.paths or []:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: image file not readable ({exc.strerror or exc})") from None
        out.append(hashlib.sha256(data).hexdigest())
    return out


def grey_images(split: SplitData, cache_dir: Optional[str] = None) -> np.ndarray:
    """uint8 (N, H, W) grey images to hash: arrays as they are, files decoded via the image cache at 64 px."""
    if split.images is not None:
        images = split.images
        return rgb_to_luma(images) if images.ndim == 4 else images
    paths = split.paths or []
    if not paths:
        return np.zeros((0, HASH_DECODE_SIZE, HASH_DECODE_SIZE), dtype=np.uint8)
    # 3 channels: the very cache entry a 64 px training run writes for the same split (grey files are repeated
    # to 3 channels there, so their luma is the grey value itself)
    return rgb_to_luma(cached_file_images(paths, HASH_DECODE_SIZE, 3, cache_dir))


def perceptual_hashes(images: np.ndarray) -> np.ndarray:
    """256-bit DCT pHash of each uint8 image (N, H, W) or (N, H, W, C): (N, HASH_WORDS) uint64 words.

    Grey (luma), resized to 64 x 64 (bilinear; no resampling when already that size), 2-D DCT-II (orthonormal),
    the 16 x 16 lowest frequencies, one bit per coefficient: 1 when it is above their median.
    """
    from scipy.fft import dctn  # scipy comes with scikit-learn

    images = np.asarray(images)
    if images.ndim == 4:
        images = rgb_to_luma(images) if images.shape[-1] == 3 else images[..., 0]
    n, size = len(images), HASH_DECODE_SIZE
    if n == 0:
        return np.zeros((0, HASH_WORDS), dtype=np.uint64)
    if images.shape[1:] == (size, size):
        grey = images.astype(np.float32)
    else:
        grey = np.empty((n, size, size), dtype=np.float32)
        for i, image in enumerate(images):
            grey[i] = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    coefficients = np.empty((n, HASH_BITS), dtype=np.float32)
    for start in range(0, n, 1024):  # bounded temporary memory
        block = dctn(grey[start : start + 1024], type=2, axes=(1, 2), norm="ortho")
        coefficients[start : start + 1024] = block[:, :HASH_FREQUENCIES, :HASH_FREQUENCIES].reshape(-1, HASH_BITS)
    bits = coefficients > np.median(coefficients, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").astype(np.uint64)


def _popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(values)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[values.view(np.uint8).reshape(*values.shape, 8)].sum(axis=-1)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between hashes (..., HASH_WORDS) uint64, broadcasting over the leading axes."""
    a, b = np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)
    total = None
    for word in range(a.shape[-1]):  # word by word: no temporary with a trailing words axis
        count = _popcount(np.bitwise_xor(a[..., word], b[..., word])).astype(np.uint16)
        total = count if total is None else total + count
    return total


def near_pairs(hashes: np.ndarray, threshold: int, block: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs i < j with hamming(hashes[i], hashes[j]) <= threshold: (i, j, distance), by blocks of rows."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    found_i, found_j, found_d = [], [], []
    for start in range(0, len(hashes), block):
        rows = hashes[start : start + block]
        distances = hamming(rows[:, None], hashes[None, start:])  # rows x (all hashes from `start` on)
        i, j = np.nonzero(distances <= threshold)
        keep = j > i  # the upper triangle: j counts from `start`, like i
        found_i.append(i[keep] + start)
        found_j.append(j[keep] + start)
        found_d.append(distances[i[keep], j[keep]])
    if not found_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return (
        np.concatenate(found_i).astype(np.int64),
        np.concatenate(found_j).astype(np.int64),
        np.concatenate(found_d).astype(np.int64),
    )


def match_masks(a: np.ndarray, b: np.ndarray, threshold: int, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(a has a hash within `threshold` of some hash in b, the same for b against a), as boolean masks."""
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    in_a = np.zeros(len(a), dtype=bool)
    in_b = np.zeros(len(b), dtype=bool)
    if len(a) and len(b):
        for start in range(0, len(a), block):
            close = hamming(a[start : start + block, None], b[None, :]) <= threshold
            in_a[start : start + block] = close.any(axis=1)
            in_b |= close.any(axis=0)
    return in_a, in_b


class UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def check_threshold(value: Any, key: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= HASH_BITS:
        raise ConfigError(f"{key}: expected a Hamming distance between 0 and {HASH_BITS} bits, got {value!r}")


def drop_cross_split_duplicates(
    chosen: dict[str, Optional[SplitData]], mode: str, threshold: int, cache_dir: Optional[str] = None
) -> tuple[dict[str, Optional[SplitData]], dict[str, int]]:
    """data.drop_duplicates: remove images with an exact or near duplicate on the other side of the test boundary.

    mode "test": test images that have an exact or near duplicate (pHash distance <= threshold) in train or val
    are removed from test; mode "train": train and val images that have one in test are removed from train/val.
    Returns the new splits and how many images each split lost.
    """
    if mode not in DROP_MODES:
        raise ConfigError(f"data.drop_duplicates: unknown value {mode!r}; choose test, train or null")
    check_threshold(threshold, "data.duplicate_threshold")
    chosen = dict(chosen)
    dropped = {name: 0 for name in SPLITS}
    test = chosen.get("test")
    others = [name for name in ("train", "val") if chosen.get(name) is not None]
    if test is None or not len(test) or not others:
        return chosen, dropped

    def keys(split: SplitData) -> tuple[list[str], np.ndarray]:
        return content_hashes(split), perceptual_hashes(grey_images(split, cache_dir))

    test_sha, test_ph = keys(test)
    other_keys = {name: keys(chosen[name]) for name in others}
    other_sha = [s for name in others for s in other_keys[name][0]]
    other_ph = np.concatenate([other_keys[name][1] for name in others])
    near_test, near_other = match_masks(test_ph, other_ph, threshold)
    other_set, test_set = set(other_sha), set(test_sha)
    exact_test = np.array([s in other_set for s in test_sha], dtype=bool)
    exact_other = np.array([s in test_set for s in other_sha], dtype=bool)
    what = f"an exact or near duplicate (pHash distance <= {threshold})"
    if mode == "test":
        remove = exact_test | near_test
        dropped["test"] = int(remove.sum())
        chosen["test"] = test.subset(
            np.flatnonzero(~remove), origin=f"{test.origin}, minus {dropped['test']} image(s) with {what} in train/val"
        )
    else:
        remove = exact_other | near_other
        start = 0
        for name in others:
            split = chosen[name]
            mask = remove[start : start + len(split)]
            start += len(split)
            dropped[name] = int(mask.sum())
            chosen[name] = split.subset(
                np.flatnonzero(~mask), origin=f"{split.origin}, minus {dropped[name]} image(s) with {what} in test"
            )
    return chosen, dropped


def method_text(threshold: Optional[int]) -> str:
    text = "exact: SHA-256 of the file bytes (or of each image array)"
    if threshold is not None:
        text += (
            f"; near: {HASH_BITS}-bit DCT pHash of the grey image at {HASH_DECODE_SIZE} px "
            f"({HASH_FREQUENCIES} x {HASH_FREQUENCIES} lowest frequencies against their median), "
            f"Hamming distance <= {threshold} "
            f"of {HASH_BITS} bits"
        )
    return text
