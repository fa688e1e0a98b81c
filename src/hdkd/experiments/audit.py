"""The leakage audit job (``hdkd audit``): every exact and near-duplicate group within and across the splits
training would use, with its members' split, class and path (hashing: ``hdkd.data.dedup``; Markdown:
``hdkd.reporting.audit``)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from hdkd.config import DataConfig
from hdkd.data.build import discover, select_splits
from hdkd.data.dedup import (
    DEFAULT_THRESHOLD,
    UnionFind,
    check_threshold,
    content_hashes,
    grey_images,
    match_masks,
    method_text,
    near_pairs,
    perceptual_hashes,
)
from hdkd.data.sources import SPLITS, SplitData
from hdkd.io import atomic_write_text
from hdkd.reporting.audit import markdown_report

# ------------------------------------------------------------------------------------------------- hashing


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
        out: dict[str, Any] = {
            "kind": self.kind,
            "size": len(self.members),
            "splits": self.splits,
            "classes": self.classes,
            "cross_split": self.cross_split,
            "label_conflict": self.label_conflict,
        }
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
            pairs = {f"{a}/{b}": 0 for i, a in enumerate(SPLITS) for b in SPLITS[i + 1 :]}
            for group in groups:
                present = group.splits
                for i, a in enumerate(present):
                    for b in present[i + 1 :]:
                        pairs[f"{a}/{b}"] += 1
            out[kind] = {
                "groups": len(groups),
                "images": sum(len(g.members) for g in groups),
                "within_split_groups": sum(not g.cross_split for g in groups),
                "cross_split_groups": sum(g.cross_split for g in groups),
                "groups_by_split_pair": pairs,
                "groups_touching_test_and_train_val": sum("test" in g.splits and len(g.splits) > 1 for g in groups),
                "label_conflicts": sum(g.label_conflict for g in groups),
            }
        out["test_images_with_train_val_duplicate"] = self.test_with_train_val_duplicate
        out["train_val_images_with_test_duplicate"] = self.train_val_with_test_duplicate
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "method": method_text(self.threshold),
            "threshold": self.threshold,
            "summary": self.summary(),
            "exact_groups": [g.to_dict() for g in self.exact],
            "near_groups": [g.to_dict() for g in self.near],
        }

    def one_line(self) -> str:
        s = self.summary()
        e = s["exact"]
        text = (
            f"{s['images']} images; exact duplicates: {e['groups']} groups ({e['images']} images), "
            f"{e['cross_split_groups']} across splits"
        )
        if "near" in s:
            n = s["near"]
            text += (
                f"; near duplicates (pHash distance <= {self.threshold}): {n['groups']} groups "
                f"({n['images']} images), {n['cross_split_groups']} across splits"
            )
        conflicts = e["label_conflicts"] + s.get("near", {}).get("label_conflicts", 0)
        return text + f"; label conflicts: {conflicts}"


def _members(
    splits: dict[str, Optional[SplitData]], class_names: Sequence[str], array_source: Optional[str]
) -> list[Member]:
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


def audit_splits(
    splits: dict[str, Optional[SplitData]],
    class_names: Sequence[str],
    threshold: Optional[int] = DEFAULT_THRESHOLD,
    cache_dir: Optional[str] = None,
    description: str = "",
    array_source: Optional[str] = None,
) -> AuditResult:
    """Exact (and, unless threshold is None, near) duplicate groups over the given splits."""
    if threshold is not None:
        check_threshold(threshold, "threshold")
    members = _members(splits, class_names, array_source)
    present = [name for name in SPLITS if splits.get(name) is not None]
    shas = [h for name in present for h in content_hashes(splits[name])]
    split_of = np.array([m.split for m in members])

    by_sha: dict[str, list[int]] = {}
    for index, sha in enumerate(shas):
        by_sha.setdefault(sha, []).append(index)
    exact = [
        DuplicateGroup("exact", [members[i] for i in idx], sha256=sha) for sha, idx in by_sha.items() if len(idx) > 1
    ]

    result = AuditResult(
        data=description, threshold=threshold, split_sizes={name: len(splits[name]) for name in present}, exact=exact
    )
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
        links = UnionFind(len(unique))
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
                result.near.append(
                    DuplicateGroup("near", [members[k] for k in indices], max_distance=largest.get(root, 0))
                )
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

    if not exact_only:
        key = "data.duplicate_threshold" if threshold is None else "--threshold"
        threshold = cfg.duplicate_threshold if threshold is None else threshold
        check_threshold(threshold, key)
    else:
        threshold = None
    source = discover(cfg)
    chosen = select_splits(source, dataclasses.replace(cfg, drop_duplicates=None))
    array_source = str(cfg.path) if source.format == "medmnist" else None
    if array_source is not None:  # rows of the npz arrays: number them as the file does
        chosen = {
            name: _with_array_rows(split, source.split(name), name, array_source) for name, split in chosen.items()
        }
    return audit_splits(chosen, source.class_names, threshold, cfg.cache_dir, source.description, array_source)


def _with_array_rows(
    split: Optional[SplitData], original: Optional[SplitData], name: str, npz: str
) -> Optional[SplitData]:
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


# ------------------------------------------------------------------------------------------------ reports


def write_audit(result: AuditResult, output: str | Path, root: Optional[str | Path] = None) -> dict[str, Path]:
    """audit.json (every group with its members) and audit.md (summary and cross-split groups), atomically.

    Both are rendered first, an earlier audit's pair is removed, and audit.json, the mark of a finished audit, is
    written last: a kill never leaves this audit's file beside an earlier one's, nor audit.json before audit.md.
    """
    output = Path(output)
    root_path = Path(root).expanduser().resolve() if root else None
    if root_path is not None and root_path.is_file():
        root_path = root_path.parent
    paths = {"json": output / "audit.json", "markdown": output / "audit.md"}
    document, markdown = json.dumps(result.to_dict(), indent=2), markdown_report(result, root_path)
    for path in (paths["json"], paths["markdown"]):
        path.unlink(missing_ok=True)
    atomic_write_text(paths["markdown"], markdown)
    atomic_write_text(paths["json"], document)
    return paths


__all__ = ["AuditResult", "DuplicateGroup", "Member", "audit_data", "audit_splits", "write_audit"]
