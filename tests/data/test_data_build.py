"""build_datasets: validation carving, fractions, caps, group-safe splits, channels and transforms."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from data_helpers import class_rows, csv_dataset, folder_dataset

from hdkd.config import DataConfig
from hdkd.data import build_datasets
from hdkd.data.build import build_eval_dataset, discover, select_splits
from hdkd.data.loaders import resolve_num_workers
from hdkd.errors import ConfigError, DataError

LAYOUT = {"Training": {"a": 60, "b": 30, "c": 10}, "Testing": {"a": 5, "b": 4, "c": 3}}


@pytest.fixture
def kaggle_like(tmp_path):
    return folder_dataset(tmp_path / "data", LAYOUT, size=6)


def chosen(path, **options):
    cfg = DataConfig(path=str(path), **options)
    return select_splits(discover(cfg), cfg)


def test_val_carved_stratified_disjoint_deterministic_and_test_untouched(kaggle_like):
    source = discover(DataConfig(path=str(kaggle_like)))
    splits = chosen(kaggle_like)
    train, val, test = splits["train"], splits["val"], splits["test"]
    assert list(np.bincount(val.labels)) == [6, 3, 1]  # 10% of each class
    assert list(np.bincount(train.labels)) == [54, 27, 9]
    assert not set(train.paths) & set(val.paths)
    assert sorted(train.paths + val.paths) == sorted(source.train.paths)
    assert test.paths == source.test.paths and np.array_equal(test.labels, source.test.labels)
    assert "carved from train (10%, stratified, seed 0)" in val.origin

    assert chosen(kaggle_like)["val"].paths == val.paths  # same seed, same split
    assert chosen(kaggle_like, split_seed=1)["val"].paths != val.paths
    for seed in (1, 2):  # whatever the seed, test never changes
        assert chosen(kaggle_like, split_seed=seed, train_fraction=0.5)["test"].paths == source.test.paths


def test_val_folder_is_used_not_carved(tmp_path):
    root = folder_dataset(tmp_path, {"train": {"a": 4, "b": 4}, "val": {"a": 2, "b": 1}, "test": {"a": 1, "b": 1}})
    splits = chosen(root, val_fraction=0.5)
    assert len(splits["train"]) == 8 and len(splits["val"]) == 3
    assert splits["val"].origin == "val folder"


def test_train_fraction_is_a_stratified_subset_that_leaves_val_alone(kaggle_like):
    full = chosen(kaggle_like)
    half = chosen(kaggle_like, train_fraction=0.5)
    counts = np.bincount(half["train"].labels)
    assert counts.sum() == 45 and np.abs(counts - np.array([54, 27, 9]) / 2).max() <= 1
    assert set(half["train"].paths) < set(full["train"].paths)
    assert half["val"].paths == full["val"].paths
    assert chosen(kaggle_like, train_fraction=0.5)["train"].paths == half["train"].paths


def test_max_per_class_caps_every_split(kaggle_like):
    splits = chosen(kaggle_like, max_per_class=4)
    assert list(np.bincount(splits["train"].labels)) == [4, 4, 4]
    assert list(np.bincount(splits["val"].labels)) == [4, 3, 1]
    assert list(np.bincount(splits["test"].labels)) == [4, 4, 3]
    assert chosen(kaggle_like, max_per_class=4)["train"].paths == splits["train"].paths
    assert chosen(kaggle_like, max_per_class=4, split_seed=3)["train"].paths != splits["train"].paths


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_grouped_csv_splits_never_share_a_group(tmp_path, seed):
    rng = np.random.default_rng(seed)
    rows = class_rows({"nv": 120, "mel": 50, "bkl": 40}, groups_per_class=40, rng=rng)
    csv_dataset(tmp_path, rows, size=4)
    splits = chosen(tmp_path, group_column="lesion_id", split_seed=seed)
    groups = {name: set(split.groups) for name, split in splits.items()}
    assert not groups["train"] & groups["val"]
    assert not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    assert sum(len(s) for s in splits.values()) == 210
    assert 0.12 < len(splits["test"]) / 210 < 0.28  # about 20%, whole groups at a time
    assert set(np.unique(splits["val"].labels)) == {0, 1, 2}  # stratified: every class in val


def test_class_missing_from_train(tmp_path):
    rows = class_rows({"nv": 3}, "train") + class_rows({"df": 2}, "test")
    csv_dataset(tmp_path, rows, size=4)
    with pytest.raises(DataError, match="train split has no images of class.*df"):
        chosen(tmp_path, val_fraction=0.0)


def test_bad_fractions_are_config_errors(kaggle_like):
    for option in ({"val_fraction": 1.0}, {"train_fraction": 0.0}, {"max_per_class": 0}):
        with pytest.raises(ConfigError, match=next(iter(option))):
            chosen(kaggle_like, **option)


def test_build_end_to_end(kaggle_like, cache_dir):
    cfg = DataConfig(path=str(kaggle_like), cache_dir=cache_dir, max_per_class=5)
    built = build_datasets(cfg, img_size=12, in_chans=None)
    assert built.class_names == ["a", "b", "c"] and built.in_chans == 3  # grey files -> 3 channels by default
    assert built.counts == {
        "train": {"a": 5, "b": 5, "c": 5},
        "val": {"a": 5, "b": 3, "c": 1},
        "test": {"a": 5, "b": 4, "c": 3},
    }
    assert "carved from train" in built.source["val"] and built.source["test"].startswith("Testing folder")
    image, label = built.test[0]
    assert image.shape == (3, 12, 12) and image.dtype == torch.float32 and isinstance(label, int)
    torch.manual_seed(0)
    assert torch.equal(built.val[0][0], built.val[0][0])  # eval transform: deterministic
    assert not all(torch.equal(built.train[0][0], built.train[0][0]) for _ in range(3))  # augmented

    grey = build_datasets(cfg, img_size=12, in_chans=1, splits=("test",))
    assert grey.train is None and grey.val is None and grey.test[0][0].shape == (1, 12, 12)
    assert list(grey.counts) == ["test"]


def test_build_eval_dataset_and_missing_test_split(tmp_path, cache_dir):
    root = folder_dataset(tmp_path / "pool", {"": {"a": 10, "b": 10}}, size=4)
    cfg = DataConfig(path=str(root), cache_dir=cache_dir)
    built = build_datasets(cfg, img_size=4, in_chans=None)
    assert built.test is None and len(built.train) + len(built.val) == 20
    with pytest.raises(DataError, match="no test split"):
        build_eval_dataset(cfg, 4, None, "test")
    val = build_eval_dataset(dataclasses.replace(cfg, augment="authors"), 4, None, "val")
    assert len(val) == 2 and val.class_names == ["a", "b"]


def test_grey_medmnist_defaults_to_one_channel(tmp_path, cache_dir):
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        arrays[f"{split}_images"] = np.full((n, 8, 8), 100, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2)[:, None]
    np.savez(tmp_path / "m.npz", **arrays)
    built = build_datasets(DataConfig(path=str(tmp_path / "m.npz"), cache_dir=cache_dir), 16, None)
    assert built.in_chans == 1 and built.train.images.shape == (6, 16, 16, 1)
    assert built.source["val"] == "npz val_*"


def test_resolve_num_workers(monkeypatch):
    monkeypatch.setattr("hdkd.data.loaders.available_cpus", lambda: 4)
    assert resolve_num_workers(-1) == 3
    monkeypatch.setattr("hdkd.data.loaders.available_cpus", lambda: 32)
    assert resolve_num_workers(-1) == 8
    monkeypatch.setattr("hdkd.data.loaders.available_cpus", lambda: 1)
    assert resolve_num_workers(-1) == 0
    assert resolve_num_workers(5) == 5
    with pytest.raises(ConfigError):
        resolve_num_workers(-2)
