"""Leakage audit: exact and near-duplicate images within and across splits and classes.

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

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from ..config import DataConfig
from ..errors import ConfigError, DataError
from ..io import atomic_write_text
from .cache import cached_file_images
from .imageio import rgb_to_luma
from .sources import SPLITS, SplitData

DEFAULT_THRESHOLD = 24  # Hamming distance, in bits of the 256-bit pHash (DataConfig.duplicate_threshold)
HASH_DECODE_SIZE = 64  # decoded (cached) image size; the DCT runs on the grey image at this size
_LOW = 16  # the LOW x LOW lowest DCT frequencies make the hash
HASH_BITS = _LOW * _LOW
HASH_WORDS = HASH_BITS // 64  # a hash is HASH_WORDS uint64 words
DROP_MODES = ("test", "train")
_MD_TABLE_ROWS = 500


# ------------------------------------------------------------------------------------------------- hashing


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
        block = dctn(grey[start:start + 1024], type=2, axes=(1, 2), norm="ortho")
        coefficients[start:start + 1024] = block[:, :_LOW, :_LOW].reshape(-1, HASH_BITS)
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
        rows = hashes[start:start + block]
        distances = hamming(rows[:, None], hashes[None, start:])  # rows x (all hashes from `start` on)
        i, j = np.nonzero(distances <= threshold)
        keep = j > i  # the upper triangle: j counts from `start`, like i
        found_i.append(i[keep] + start)
        found_j.append(j[keep] + start)
        found_d.append(distances[i[keep], j[keep]])
    if not found_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return (np.concatenate(found_i).astype(np.int64), np.concatenate(found_j).astype(np.int64),
            np.concatenate(found_d).astype(np.int64))


def match_masks(a: np.ndarray, b: np.ndarray, threshold: int, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(a has a hash within `threshold` of some hash in b, the same for b against a), as boolean masks."""
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    in_a = np.zeros(len(a), dtype=bool)
    in_b = np.zeros(len(b), dtype=bool)
    if len(a) and len(b):
        for start in range(0, len(a), block):
            close = hamming(a[start:start + block, None], b[None, :]) <= threshold
            in_a[start:start + block] = close.any(axis=1)
            in_b |= close.any(axis=0)
    return in_a, in_b


class _UnionFind:
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


# -------------------------------------------------------------------------------------------------- audit


@dataclass
class Member:
    split: str
    label: int
    class_name: str
    path: str  # the file, or `<file.npz>:<split>_images[<row>]` for arrays

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "class": self.class_name, "path": self.path}


@dataclass
class DuplicateGroup:
    kind: str  # exact | near
    members: list[Member]
    sha256: Optional[str] = None  # exact groups
    max_distance: Optional[int] = None  # near groups: the largest Hamming distance of a linking pair

    @property
    def splits(self) -> list[str]:
        present = {m.split for m in self.members}
        return [s for s in SPLITS if s in present]

    @property
    def classes(self) -> list[str]:
        return sorted({m.class_name for m in self.members})

    @property
    def cross_split(self) -> bool:
        return len(self.splits) > 1

    @property
    def label_conflict(self) -> bool:
        return len({m.label for m in self.members}) > 1

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "size": len(self.members), "splits": self.splits,
                               "classes": self.classes, "cross_split": self.cross_split,
                               "label_conflict": self.label_conflict}
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        if self.max_distance is not None:
            out["max_distance"] = self.max_distance
        out["members"] = [m.to_dict() for m in self.members]
        return out


@dataclass
class AuditResult:
    data: str
    threshold: Optional[int]  # None: exact duplicates only (nothing decoded)
    split_sizes: dict[str, int]
    exact: list[DuplicateGroup] = field(default_factory=list)
    near: list[DuplicateGroup] = field(default_factory=list)
    # images that `data.drop_duplicates` would remove: test images with an exact or near duplicate in train/val,
    # and train/val images with one in test
    test_with_train_val_duplicate: int = 0
    train_val_with_test_duplicate: int = 0

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"images": sum(self.split_sizes.values()), "splits": dict(self.split_sizes)}
        for kind, groups in (("exact", self.exact), ("near", self.near)):
            if kind == "near" and self.threshold is None:
                continue
            pairs = {f"{a}/{b}": 0 for i, a in enumerate(SPLITS) for b in SPLITS[i + 1:]}
            for group in groups:
                present = group.splits
                for i, a in enumerate(present):
                    for b in present[i + 1:]:
                        pairs[f"{a}/{b}"] += 1
            out[kind] = {
                "groups": len(groups),
                "images": sum(len(g.members) for g in groups),
                "within_split_groups": sum(not g.cross_split for g in groups),
                "cross_split_groups": sum(g.cross_split for g in groups),
                "groups_by_split_pair": pairs,
                "groups_touching_test_and_train_val": sum("test" in g.splits and len(g.splits) > 1
                                                          for g in groups),
                "label_conflicts": sum(g.label_conflict for g in groups),
            }
        out["test_images_with_train_val_duplicate"] = self.test_with_train_val_duplicate
        out["train_val_images_with_test_duplicate"] = self.train_val_with_test_duplicate
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "method": method_text(self.threshold), "threshold": self.threshold,
                "summary": self.summary(), "exact_groups": [g.to_dict() for g in self.exact],
                "near_groups": [g.to_dict() for g in self.near]}

    def one_line(self) -> str:
        s = self.summary()
        e = s["exact"]
        text = (f"{s['images']} images; exact duplicates: {e['groups']} groups ({e['images']} images), "
                f"{e['cross_split_groups']} across splits")
        if "near" in s:
            n = s["near"]
            text += (f"; near duplicates (pHash distance <= {self.threshold}): {n['groups']} groups "
                     f"({n['images']} images), {n['cross_split_groups']} across splits")
        conflicts = e["label_conflicts"] + s.get("near", {}).get("label_conflicts", 0)
        return text + f"; label conflicts: {conflicts}"


def method_text(threshold: Optional[int]) -> str:
    text = "exact: SHA-256 of the file bytes (or of each image array)"
    if threshold is not None:
        text += (f"; near: {HASH_BITS}-bit DCT pHash of the grey image at {HASH_DECODE_SIZE} px "
                 f"({_LOW} x {_LOW} lowest frequencies against their median), Hamming distance <= {threshold} "
                 f"of {HASH_BITS} bits")
    return text


def _members(splits: dict[str, Optional[SplitData]], class_names: Sequence[str],
             array_source: Optional[str]) -> list[Member]:
    members = []
    for name in SPLITS:
        split = splits.get(name)
        if split is None:
            continue
        for i, label in enumerate(split.labels):
            if split.paths is not None:
                path = str(split.paths[i])
            else:
                path = f"{array_source or 'arrays'}:{name}_images[{i}]"
            members.append(Member(name, int(label), class_names[int(label)], path))
    return members


def audit_splits(splits: dict[str, Optional[SplitData]], class_names: Sequence[str],
                 threshold: Optional[int] = DEFAULT_THRESHOLD, cache_dir: Optional[str] = None,
                 description: str = "", array_source: Optional[str] = None) -> AuditResult:
    """Exact (and, unless threshold is None, near) duplicate groups over the given splits."""
    if threshold is not None:
        _check_threshold(threshold, "threshold")
    members = _members(splits, class_names, array_source)
    present = [name for name in SPLITS if splits.get(name) is not None]
    shas = [h for name in present for h in content_hashes(splits[name])]
    split_of = np.array([m.split for m in members])

    by_sha: dict[str, list[int]] = {}
    for index, sha in enumerate(shas):
        by_sha.setdefault(sha, []).append(index)
    exact = [DuplicateGroup("exact", [members[i] for i in idx], sha256=sha)
             for sha, idx in by_sha.items() if len(idx) > 1]

    result = AuditResult(data=description, threshold=threshold,
                         split_sizes={name: len(splits[name]) for name in present}, exact=exact)
    test_mask = split_of == "test"
    sha_array = np.array(shas, dtype=object)
    test_shas, other_shas = set(sha_array[test_mask]), set(sha_array[~test_mask])
    dup_test = np.array([s in other_shas for s in sha_array[test_mask]], dtype=bool)
    dup_other = np.array([s in test_shas for s in sha_array[~test_mask]], dtype=bool)

    if threshold is not None and members:
        phashes = np.concatenate([perceptual_hashes(grey_images(splits[name], cache_dir)) for name in present])
        unique = list(by_sha.values())  # distinct contents, each a list of member indices
        reps = np.array([idx[0] for idx in unique])
        i, j, d = near_pairs(phashes[reps], threshold)
        links = _UnionFind(len(unique))
        for a, b in zip(i.tolist(), j.tolist()):
            links.union(a, b)
        components: dict[int, list[int]] = {}
        for u in range(len(unique)):
            components.setdefault(links.find(u), []).append(u)
        largest: dict[int, int] = {}
        for a, dist in zip(i.tolist(), d.tolist()):
            root = links.find(a)
            largest[root] = max(largest.get(root, 0), dist)
        for root, contents in components.items():
            if len(contents) > 1:
                indices = sorted(k for u in contents for k in unique[u])
                result.near.append(DuplicateGroup("near", [members[k] for k in indices],
                                                  max_distance=largest.get(root, 0)))
        near_test, near_other = match_masks(phashes[test_mask], phashes[~test_mask], threshold)
        dup_test |= near_test
        dup_other |= near_other
    result.test_with_train_val_duplicate = int(dup_test.sum())
    result.train_val_with_test_duplicate = int(dup_other.sum())
    return result


def audit_data(cfg: DataConfig, threshold: Optional[int] = None, exact_only: bool = False) -> AuditResult:
    """Audit the splits training would use (validation carved, fractions and caps applied; nothing dropped).

    threshold None -> cfg.duplicate_threshold; exact_only -> no decoding, exact duplicates only.
    """
    from .build import discover, select_splits  # build imports this module

    if not exact_only:
        key = "data.duplicate_threshold" if threshold is None else "--threshold"
        threshold = cfg.duplicate_threshold if threshold is None else threshold
        _check_threshold(threshold, key)
    else:
        threshold = None
    source = discover(cfg)
    chosen = select_splits(source, dataclasses.replace(cfg, drop_duplicates=None))
    array_source = str(cfg.path) if source.format == "medmnist" else None
    if array_source is not None:  # rows of the npz arrays: number them as the file does
        chosen = {name: _with_array_rows(split, source.split(name), name, array_source)
                  for name, split in chosen.items()}
    return audit_splits(chosen, source.class_names, threshold, cfg.cache_dir, source.description, array_source)


def _with_array_rows(split: Optional[SplitData], original: Optional[SplitData], name: str,
                     npz: str) -> Optional[SplitData]:
    """Name each array image by its row in the npz file (found by identity of content and order)."""
    if split is None:
        return None
    if original is not None and len(original) == len(split):
        rows = np.arange(len(split))
    else:  # capped or subset: find each kept image's row (first unused row with the same bytes)
        positions: dict[bytes, list[int]] = {}
        for row, image in enumerate(original.images if original is not None else []):
            positions.setdefault(image.tobytes(), []).append(row)
        rows = np.array([positions[image.tobytes()].pop(0) for image in split.images])
    paths = [Path(f"{npz}:{name}_images[{row}]") for row in rows]
    return dataclasses.replace(split, paths=paths)


# -------------------------------------------------------------------------------------------- drop option


def _check_threshold(value: Any, key: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= HASH_BITS:
        raise ConfigError(f"{key}: expected a Hamming distance between 0 and {HASH_BITS} bits, got {value!r}")


def drop_cross_split_duplicates(chosen: dict[str, Optional[SplitData]], mode: str, threshold: int,
                                cache_dir: Optional[str] = None
                                ) -> tuple[dict[str, Optional[SplitData]], dict[str, int]]:
    """data.drop_duplicates: remove images with an exact or near duplicate on the other side of the test boundary.

    mode "test": test images that have an exact or near duplicate (pHash distance <= threshold) in train or val
    are removed from test; mode "train": train and val images that have one in test are removed from train/val.
    Returns the new splits and how many images each split lost.
    """
    if mode not in DROP_MODES:
        raise ConfigError(f"data.drop_duplicates: unknown value {mode!r}; choose test, train or null")
    _check_threshold(threshold, "data.duplicate_threshold")
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
        chosen["test"] = test.subset(np.flatnonzero(~remove),
                                     origin=f"{test.origin}, minus {dropped['test']} image(s) with {what} "
                                            f"in train/val")
    else:
        remove = exact_other | near_other
        start = 0
        for name in others:
            split = chosen[name]
            mask = remove[start:start + len(split)]
            start += len(split)
            dropped[name] = int(mask.sum())
            chosen[name] = split.subset(np.flatnonzero(~mask),
                                        origin=f"{split.origin}, minus {dropped[name]} image(s) with {what} "
                                               f"in test")
    return chosen, dropped


# ------------------------------------------------------------------------------------------------ reports


def _short(path: str, root: Optional[Path]) -> str:
    if root is not None:
        try:
            return str(Path(path).relative_to(root))
        except ValueError:
            pass
    return path


def markdown_report(result: AuditResult, root: Optional[Path] = None) -> str:
    s = result.summary()
    lines = ["# Leakage audit", "", f"Data: {result.data}", "",
             f"Method: {method_text(result.threshold)}.", "",
             "Images per split: " + ", ".join(f"{k} {v}" for k, v in s["splits"].items()) + f" (total {s['images']})",
             "", "## Summary", "",
             "| | exact duplicates | near duplicates |", "|---|---|---|"]
    near = s.get("near")

    def row(label: str, key: str) -> None:
        lines.append(f"| {label} | {s['exact'][key]} | {near[key] if near else 'not computed'} |")

    row("groups", "groups")
    row("images in groups", "images")
    row("groups within one split", "within_split_groups")
    row("groups across splits", "cross_split_groups")
    for pair in s["exact"]["groups_by_split_pair"]:
        lines.append(f"| groups across {pair} | {s['exact']['groups_by_split_pair'][pair]} | "
                     f"{near['groups_by_split_pair'][pair] if near else 'not computed'} |")
    row("groups touching test and train/val", "groups_touching_test_and_train_val")
    row("label conflicts (one image, several classes)", "label_conflicts")
    lines += ["", f"Test images with an exact or near duplicate in train/val (removed by "
                  f"`data.drop_duplicates=test`): {s['test_images_with_train_val_duplicate']}.",
              f"Train/val images with an exact or near duplicate in test (removed by "
              f"`data.drop_duplicates=train`): {s['train_val_images_with_test_duplicate']}.", ""]

    cross = [g for g in result.exact + result.near if g.cross_split]
    lines += ["## Groups across splits", ""]
    if not cross:
        lines += ["None.", ""]
    else:
        lines += ["| kind | splits | classes | label conflict | members (split: path) |", "|---|---|---|---|---|"]
        for group in cross[:_MD_TABLE_ROWS]:
            kind = group.kind if group.kind == "exact" else f"near (<= {group.max_distance})"
            members = "<br>".join(f"{m.split}: {_short(m.path, root)}" for m in group.members)
            lines.append(f"| {kind} | {', '.join(group.splits)} | {', '.join(group.classes)} | "
                         f"{'yes' if group.label_conflict else 'no'} | {members} |")
        if len(cross) > _MD_TABLE_ROWS:
            lines += ["", f"... and {len(cross) - _MD_TABLE_ROWS} more groups: see audit.json."]
        lines.append("")
    conflicts = [g for g in result.exact + result.near if g.label_conflict and not g.cross_split]
    if conflicts:
        lines += ["## Label conflicts within a split", "", "| kind | split | classes | members |", "|---|---|---|---|"]
        for group in conflicts[:_MD_TABLE_ROWS]:
            members = "<br>".join(_short(m.path, root) for m in group.members)
            lines.append(f"| {group.kind} | {', '.join(group.splits)} | {', '.join(group.classes)} | {members} |")
        lines.append("")
    lines.append("Every group, with all its members, is in audit.json.")
    return "\n".join(lines) + "\n"


def write_audit(result: AuditResult, output: str | Path, root: Optional[str | Path] = None) -> dict[str, Path]:
    """audit.json (every group with its members) and audit.md (summary and cross-split groups), atomically."""
    output = Path(output)
    root_path = Path(root).expanduser().resolve() if root else None
    if root_path is not None and root_path.is_file():
        root_path = root_path.parent
    paths = {"json": output / "audit.json", "markdown": output / "audit.md"}
    atomic_write_text(paths["json"], json.dumps(result.to_dict(), indent=2))
    atomic_write_text(paths["markdown"], markdown_report(result, root_path))
    return paths


__all__ = ["AuditResult", "DuplicateGroup", "Member", "DEFAULT_THRESHOLD", "audit_data", "audit_splits",
           "content_hashes", "perceptual_hashes", "near_pairs", "match_masks", "drop_cross_split_duplicates",
           "write_audit", "markdown_report"]
