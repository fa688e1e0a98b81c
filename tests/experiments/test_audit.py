"""Leakage audit (hdkd.data.dedup, hdkd.experiments.audit, `hdkd audit`) and data.drop_duplicates: planted
duplicates are found, exactly."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hdkd.cli import main
from hdkd.config import DataConfig
from hdkd.data import build_datasets
from hdkd.data.build import discover, select_splits
from hdkd.data.dedup import DEFAULT_THRESHOLD, hamming, near_pairs, perceptual_hashes
from hdkd.data.imageio import load_image, resize_image
from hdkd.errors import ConfigError
from hdkd.experiments.audit import audit_data


def _texture(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A grey image with detail at the frequencies the hash looks at (16 x 16 random values, bicubic)."""
    base = rng.integers(0, 256, size=(16, 16), dtype=np.uint8)
    return np.asarray(Image.fromarray(base).resize((size, size), Image.Resampling.BICUBIC))


def _audit_hash(path: Path) -> np.ndarray:
    """The hash the audit computes for a file (decoded to 3 channels at 64 px, then grey)."""
    return perceptual_hashes(resize_image(load_image(path, 3), 64)[None])[0]


def _near_copy(original: Path, path: Path) -> None:
    """Lower contrast, brighter, noisy, rescaled and JPEG re-encoded: other bytes, the same picture; the first
    noise seed whose copy lies 2 to 16 bits from the original (a near copy that is not a hash twin)."""
    image = np.asarray(Image.open(original).convert("L")).astype(np.float32)
    for seed in range(100):
        noise = np.random.default_rng(seed).normal(0, 12, image.shape)
        changed = np.clip(image * 0.8 + 20 + noise, 0, 255).astype(np.uint8)
        Image.fromarray(changed).resize((80, 80), Image.Resampling.BILINEAR).save(path, quality=60)
        if 2 <= int(hamming(_audit_hash(original), _audit_hash(path))) <= 16:
            return
    raise AssertionError("no near copy within 2..16 bits")


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    """train/val/test class folders with planted duplicates; returns (root, {name: path})."""
    root = tmp_path_factory.mktemp("leaky")
    rng = np.random.default_rng(7)
    files: dict[str, Path] = {}
    layout = {"train": {"a": 8, "b": 8}, "val": {"a": 3, "b": 3}, "test": {"a": 3, "b": 3}}
    for split, classes in layout.items():
        for cls, count in classes.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                path = root / split / cls / f"{split}_{cls}{i}.png"
                Image.fromarray(_texture(rng)).save(path)
                files[f"{split}_{cls}{i}"] = path
    copies = {  # exact copies (same bytes)
        "train_a0_copy": (files["train_a0"], root / "train" / "a" / "train_a0_copy.png"),  # within train
        "test_a_exact": (files["train_a1"], root / "test" / "a" / "test_a_exact.png"),  # train/test
        "test_b_conflict": (files["train_a2"], root / "test" / "b" / "test_b_conflict.png"),  # train/test, a vs b
    }
    for name, (src, dst) in copies.items():
        shutil.copyfile(src, dst)
        files[name] = dst
    near = {  # near copies (other bytes)
        "test_a_near": (files["train_a3"], root / "test" / "a" / "test_a_near.jpg"),  # train/test
        "val_b_near": (files["train_b1"], root / "val" / "b" / "val_b_near.jpg"),  # train/val
    }
    for name, (src, dst) in near.items():
        _near_copy(src, dst)
        files[name] = dst
    return root, files


def _group_sets(groups) -> set[frozenset[str]]:
    return {frozenset(Path(m["path"]).name for m in g["members"]) for g in groups}


def test_hash_separates_copies_from_other_images(leaky):
    root, files = leaky
    h = {name: _audit_hash(files[name]) for name in ("train_a3", "test_a_near", "train_a4")}
    assert h["train_a3"].shape == (4,) and h["train_a3"].dtype == np.uint64  # 256 bits
    assert sum(int(w).bit_count() for w in h["train_a3"]) == 128  # half the bits: compared with the median
    close = int(hamming(h["train_a3"], h["test_a_near"]))
    assert 0 < close <= DEFAULT_THRESHOLD  # a near copy, not the same hash
    assert int(hamming(h["train_a3"], h["train_a4"])) > 3 * DEFAULT_THRESHOLD


def test_near_pairs_match_brute_force_across_blocks():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=(700, 4), dtype=np.uint64)
    for k in range(0, 690, 37):  # plant close pairs, some straddling block boundaries
        hashes[k + 7] = hashes[k] ^ np.array([1 << (k % 60), 0, 3, 0], dtype=np.uint64)
    hashes[650] = hashes[3]
    i, j, d = near_pairs(hashes, threshold=3, block=64)
    found = {(a, b): c for a, b, c in zip(i.tolist(), j.tolist(), d.tolist())}
    as_int = [sum(int(w) << (64 * n) for n, w in enumerate(row)) for row in hashes]
    expected = {}
    for a in range(len(as_int)):
        for b in range(a + 1, len(as_int)):
            dist = (as_int[a] ^ as_int[b]).bit_count()
            if dist <= 3:
                expected[(a, b)] = dist
    assert found == expected and len(expected) >= 19


def test_audit_finds_exactly_the_planted_groups(leaky, tmp_path, capsys):
    root, _ = leaky
    out = tmp_path / "audit"
    code = main(["audit", str(root), "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "exact duplicates: 3 groups (6 images), 2 across splits" in captured.out
    assert "near duplicates (pHash distance <= 24): 2 groups (4 images), 2 across splits" in captured.out
    assert "label conflicts: 1" in captured.out

    report = json.loads((out / "audit.json").read_text())
    assert _group_sets(report["exact_groups"]) == {
        frozenset({"train_a0.png", "train_a0_copy.png"}),
        frozenset({"train_a1.png", "test_a_exact.png"}),
        frozenset({"train_a2.png", "test_b_conflict.png"}),
    }
    assert _group_sets(report["near_groups"]) == {
        frozenset({"train_a3.png", "test_a_near.jpg"}),
        frozenset({"train_b1.png", "val_b_near.jpg"}),
    }
    by_members = {frozenset(Path(m["path"]).name for m in g["members"]): g for g in report["exact_groups"]}
    conflict = by_members[frozenset({"train_a2.png", "test_b_conflict.png"})]
    assert conflict["label_conflict"] and conflict["cross_split"] and conflict["classes"] == ["a", "b"]
    assert {(m["split"], m["class"]) for m in conflict["members"]} == {("train", "a"), ("test", "b")}
    within = by_members[frozenset({"train_a0.png", "train_a0_copy.png"})]
    assert not within["cross_split"] and not within["label_conflict"] and within["splits"] == ["train"]
    summary = report["summary"]
    assert summary["exact"]["groups_by_split_pair"] == {"train/val": 0, "train/test": 2, "val/test": 0}
    assert summary["near"]["groups_by_split_pair"] == {"train/val": 1, "train/test": 1, "val/test": 0}
    assert summary["test_images_with_train_val_duplicate"] == 3
    assert summary["train_val_images_with_test_duplicate"] == 3

    md = (out / "audit.md").read_text()
    assert "| groups across splits | 2 | 2 |" in md
    assert "| label conflicts (one image, several classes) | 1 | 0 |" in md
    assert "test: test/b/test_b_conflict.png" in md  # the cross-split table, paths relative to the data
    assert not list(out.glob(".*.tmp"))  # written atomically


def test_exact_only_and_threshold_options(leaky, tmp_path, capsys):
    root, _ = leaky
    assert main(["audit", str(root), "-o", str(tmp_path / "e"), "--exact-only"]) == 0
    report = json.loads((tmp_path / "e" / "audit.json").read_text())
    assert report["threshold"] is None and report["near_groups"] == [] and len(report["exact_groups"]) == 3
    assert "near" not in report["summary"]
    capsys.readouterr()
    assert main(["audit", str(root), "-o", str(tmp_path / "t0"), "--threshold", "0"]) == 0
    assert "near duplicates (pHash distance <= 0)" in capsys.readouterr().out
    strict = json.loads((tmp_path / "t0" / "audit.json").read_text())
    assert strict["threshold"] == 0 and len(strict["exact_groups"]) == 3
    assert frozenset({"train_a3.png", "test_a_near.jpg"}) not in _group_sets(strict["near_groups"])
    assert main(["audit", str(root), "-o", str(tmp_path / "bad"), "--threshold", "300"]) == 2
    assert "--threshold" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_audit_npz_names_rows_and_finds_cross_split_copies(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {
        f"{s}_images": np.stack([_texture(rng, 28) for _ in range(n)])
        for s, n in (("train", 10), ("val", 4), ("test", 5))
    }
    arrays.update({f"{s}_labels": (np.arange(n) % 2)[:, None] for s, n in (("train", 10), ("val", 4), ("test", 5))})
    arrays["test_images"][1] = arrays["train_images"][3]  # exact; labels: train 3 -> 1, test 1 -> 1
    arrays["val_images"][2] = arrays["train_images"][4]  # exact; labels: train 4 -> 0, val 2 -> 0
    arrays["test_labels"][1] = 0  # ... make the train/test copy a label conflict
    path = tmp_path / "toy.npz"
    np.savez(path, **arrays)
    result = audit_data(DataConfig(path=str(path)))
    groups = {frozenset(m.path for m in g.members): g for g in result.exact}
    assert set(groups) == {
        frozenset({f"{path}:train_images[3]", f"{path}:test_images[1]"}),
        frozenset({f"{path}:train_images[4]", f"{path}:val_images[2]"}),
    }
    assert groups[frozenset({f"{path}:train_images[3]", f"{path}:test_images[1]"})].label_conflict
    assert result.test_with_train_val_duplicate == 1


def _split_names(split) -> set[str]:
    return {Path(p).name for p in split.paths}


def test_drop_duplicates_test_and_train(leaky):
    root, _ = leaky
    base = DataConfig(path=str(root))
    clean = select_splits(discover(base), base)

    cfg = DataConfig(path=str(root), drop_duplicates="test")
    notes: list[str] = []
    dropped = select_splits(discover(cfg), cfg, notes)
    assert _split_names(clean["test"]) - _split_names(dropped["test"]) == {
        "test_a_exact.png",
        "test_b_conflict.png",
        "test_a_near.jpg",
    }
    assert dropped["train"].paths == clean["train"].paths and dropped["val"].paths == clean["val"].paths
    assert "minus 3 image(s)" in dropped["test"].origin and "3 from test" in notes[0]

    cfg = DataConfig(path=str(root), drop_duplicates="train")
    dropped = select_splits(discover(cfg), cfg)
    assert _split_names(clean["train"]) - _split_names(dropped["train"]) == {
        "train_a1.png",
        "train_a2.png",
        "train_a3.png",
    }
    assert dropped["test"].paths == clean["test"].paths
    assert dropped["val"].paths == clean["val"].paths  # its near copy of a train image does not touch test

    cfg = DataConfig(path=str(root), drop_duplicates="test", duplicate_threshold=0)
    exact_only = select_splits(discover(cfg), cfg)  # the near copy is further than 0 bits: it stays
    assert _split_names(clean["test"]) - _split_names(exact_only["test"]) == {"test_a_exact.png", "test_b_conflict.png"}

    with pytest.raises(ConfigError, match="data.drop_duplicates: unknown value 'val'"):
        select_splits(discover(base), DataConfig(path=str(root), drop_duplicates="val"))


def test_drop_duplicates_reaches_the_built_datasets(leaky):
    root, _ = leaky
    built = build_datasets(DataConfig(path=str(root), drop_duplicates="test", augment="none"), img_size=16)
    assert len(built.test) == 6 + 3 - 3 and sum(built.counts["test"].values()) == 6
    assert "minus 3 image(s) with an exact or near duplicate" in built.source["test"]
    assert "dropped cross-split duplicates" in built.description and "3 from test" in built.description


def test_brain_mri_exact_groups_equal_brute_force(brain_mri):
    """Every byte-identical group of the real Brain Tumor MRI set, including Training/Testing ones (no decoding)."""
    by_digest: dict[str, set[str]] = {}
    for folder, _, names in os.walk(brain_mri):
        for name in names:
            if not name.startswith("."):
                path = Path(folder) / name
                by_digest.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), set()).add(str(path.resolve()))
    expected = {frozenset(paths) for paths in by_digest.values() if len(paths) > 1}

    result = audit_data(DataConfig(path=str(brain_mri)), exact_only=True)
    found = {frozenset(str(Path(m.path).resolve()) for m in g.members) for g in result.exact}
    assert found == expected
    assert result.summary()["images"] == 7023
    across = [g for g in expected if {Path(p).parts[-3] for p in g} == {"Training", "Testing"}]
    assert across and sum(g.cross_split for g in result.exact) >= len(across)
