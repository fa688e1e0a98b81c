"""The real datasets in ../shared/data: split discovery and counts, decoding only small subsets."""

from __future__ import annotations

import numpy as np

from hdkd.config import DataConfig
from hdkd.data import build_datasets
from hdkd.data.build import discover, select_splits
from hdkd.data.sources import discover_source

BRAIN_TRAIN = {"glioma": 1321, "meningioma": 1339, "notumor": 1595, "pituitary": 1457}
BRAIN_TEST = {"glioma": 300, "meningioma": 306, "notumor": 405, "pituitary": 300}
DERMA_TRAIN = {"akiec": 228, "bcc": 359, "bkl": 769, "df": 80, "mel": 779, "nv": 4693, "vasc": 99}


def counts(split, class_names):
    return dict(zip(class_names, np.bincount(split.labels, minlength=len(class_names)).tolist()))


def test_brain_tumor_mri_discovery_and_small_build(shared_data, cache_dir):
    path = shared_data / "brain_tumor_mri"
    source = discover_source(DataConfig(path=str(path)))
    assert source.class_names == sorted(BRAIN_TRAIN)
    assert len(source.train.paths) == 5712 and len(source.test.paths) == 1311 and source.val is None
    assert counts(source.train, source.class_names) == BRAIN_TRAIN
    assert counts(source.test, source.class_names) == BRAIN_TEST

    cfg = DataConfig(path=str(path))
    chosen = select_splits(discover(cfg), cfg)
    assert len(chosen["val"]) == 572 and len(chosen["train"]) == 5140  # 10% carved, stratified
    assert chosen["test"].paths == source.test.paths

    built = build_datasets(DataConfig(path=str(path), cache_dir=cache_dir, max_per_class=2), 32, None)
    assert built.train.images.shape == (8, 32, 32, 3) and built.test.images.shape == (8, 32, 32, 3)
    assert built.train.images.std() > 5  # real pictures, not blank arrays


def test_dermamnist_csv(shared_data, cache_dir):
    path = shared_data / "dermamnist28"
    source = discover_source(DataConfig(path=str(path)))
    assert source.format == "csv"
    assert (len(source.train), len(source.val), len(source.test)) == (7007, 1003, 2005)
    assert counts(source.train, source.class_names) == DERMA_TRAIN
    built = build_datasets(DataConfig(path=str(path), cache_dir=cache_dir, max_per_class=1), 28, None)
    assert built.source["val"] == "CSV split=val, at most 1 per class"
    assert built.val.images.shape == (7, 28, 28, 3)


def test_breastmnist_npz(shared_data, cache_dir):
    path = shared_data / "medmnist" / "breastmnist.npz"
    built = build_datasets(DataConfig(path=str(path), cache_dir=cache_dir), 28, None)
    assert built.in_chans == 1 and built.class_names == ["malignant", "normal_or_benign"]  # MedMNIST INFO names
    assert (len(built.train), len(built.val), len(built.test)) == (546, 78, 156)
    with np.load(path) as arrays:
        np.testing.assert_array_equal(built.test.images[..., 0], arrays["test_images"])  # no resampling at 28
        np.testing.assert_array_equal(built.test.labels, arrays["test_labels"][:, 0])
