"""Class imbalance options: weighted cross-entropy, the balanced sampler and SMOTE on the train split only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from data_helpers import write_image
from sklearn.utils.class_weight import compute_class_weight

from hdkd.config import Config, DataConfig
from hdkd.data import CachedImageDataset, DataSplits, build_datasets
from hdkd.data.imbalance import apply_smote, balanced_sample_weights, check_sampler, class_weights
from hdkd.distillation import HDKDLoss, SupervisedLoss
from hdkd.errors import ConfigError
from hdkd.training import trainer
from hdkd.training.distributed import GlobalBatchSampler

LABELS = np.array([0] * 160 + [1] * 32 + [2] * 8)


def _dataset(labels=LABELS) -> CachedImageDataset:
    return CachedImageDataset(np.zeros((len(labels), 2, 2, 1), dtype=np.uint8), labels)


def _splits(labels=LABELS) -> DataSplits:
    return DataSplits(
        train=_dataset(labels), val=_dataset(labels[:10]), test=None, class_names=["a", "b", "c"], in_chans=1
    )


def test_balanced_class_weights_equal_sklearn():
    weights = class_weights("balanced", LABELS, 3)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=LABELS)
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    np.testing.assert_allclose(weights, [200 / (3 * 160), 200 / (3 * 32), 200 / (3 * 8)], rtol=1e-6)
    assert class_weights(None, LABELS, 3) is None
    with pytest.raises(ConfigError, match="train.class_weight: unknown value 'inverse'"):
        class_weights("inverse", LABELS, 3)


def test_build_criterion_passes_the_weights_to_both_losses(monkeypatch):
    expected = torch.tensor(compute_class_weight("balanced", classes=np.arange(3), y=LABELS), dtype=torch.float32)
    cfg = Config(role="student")
    cfg.train.class_weight = "balanced"
    criterion = trainer.build_criterion(cfg, _splits(), torch.device("cpu"))
    assert isinstance(criterion, SupervisedLoss) and torch.allclose(criterion.weight, expected)
    cfg.train.class_weight = None
    assert trainer.build_criterion(cfg, _splits(), torch.device("cpu")).weight is None

    monkeypatch.setattr(trainer, "load_teacher", lambda *args: nn.Sequential(nn.Flatten(), nn.Linear(4, 3)))
    cfg = Config(role="hdkd")
    cfg.train.class_weight = "balanced"
    cfg.distill.lam = 0.0  # logit-only distillation: any classifier can be the teacher
    criterion = trainer.build_criterion(cfg, _splits(), torch.device("cpu"))
    assert isinstance(criterion, HDKDLoss) and torch.allclose(criterion.class_weight, expected)


def _drawn(seed: int, sampler: str) -> np.ndarray:
    """The labels of one epoch's training batches, drawn as the trainer draws them."""
    weights = torch.as_tensor(balanced_sample_weights(LABELS)) if sampler == "balanced" else None
    batches = GlobalBatchSampler(len(LABELS), 50, seed, epoch=0, drop_last=False, weights=weights)
    return np.concatenate([LABELS[batch] for batch in batches])


def test_balanced_sampler_draws_classes_uniformly_and_deterministically():
    balanced = np.concatenate([_drawn(seed, "balanced") for seed in range(5)])
    assert len(balanced) == 5 * len(LABELS)  # num_samples = len(train) per epoch
    shares = np.bincount(balanced, minlength=3) / len(balanced)
    assert np.all(np.abs(shares - 1 / 3) < 0.05), shares  # class c (4% of the data) as often as class a (80%)
    plain = np.concatenate([_drawn(seed, "random") for seed in range(5)])
    assert np.bincount(plain, minlength=3).tolist() == [800, 160, 40]  # a permutation: the data's own shares
    np.testing.assert_array_equal(_drawn(3, "balanced"), _drawn(3, "balanced"))  # the epoch seed fixes the draw
    assert not np.array_equal(_drawn(3, "balanced"), _drawn(4, "balanced"))
    with pytest.raises(ConfigError, match="train.sampler: unknown value 'uniform'"):
        check_sampler("uniform")


@pytest.fixture
def imbalanced(tmp_path):
    """Constant grey images whose values are far apart (interpolations are new values), 12 / 5 / 3 train images."""
    layout = {"train": {"a": 12, "b": 5, "c": 3}, "val": {"a": 2, "b": 2, "c": 2}, "test": {"a": 3, "b": 2, "c": 1}}
    number = 0
    for split, classes in layout.items():
        for name, count in classes.items():
            for i in range(count):
                write_image(tmp_path / "data" / split / name / f"{i}.png", (number * 37) % 251, size=8)
                number += 1
    return tmp_path / "data"


def _build(path, **options):
    return build_datasets(DataConfig(path=str(path), augment="none", **options), img_size=8)


def test_smote_reaches_targets_on_train_only(imbalanced, tmp_path):
    plain = _build(imbalanced)
    smoted = _build(imbalanced, smote={"b": 12, "c": 10})
    assert smoted.counts["train"] == {"a": 12, "b": 12, "c": 10}
    assert smoted.counts["val"] == plain.counts["val"] and smoted.counts["test"] == plain.counts["test"]
    np.testing.assert_array_equal(smoted.val.images, plain.val.images)
    np.testing.assert_array_equal(smoted.test.images, plain.test.images)
    images, labels = smoted.train.images, smoted.train.labels
    assert images.dtype == np.uint8 and images.shape == (34, 8, 8, 3)
    np.testing.assert_array_equal(images[:20], plain.train.images)  # the originals, unchanged and first
    for label in (1, 2):  # each synthetic image lies between two images of its own class
        own = plain.train.images[plain.train.labels == label]
        new = images[20:][labels[20:] == label]
        assert len(new) and np.all(new >= own.min(axis=0)) and np.all(new <= own.max(axis=0))
        assert any(not any(np.array_equal(n, o) for o in own) for n in new)  # new images, not copies
    assert "SMOTE" in smoted.source["train"] and "SMOTE added 14 train image(s)" in smoted.description
    np.testing.assert_array_equal(_build(imbalanced, smote={"b": 12, "c": 10}).train.images, images)  # seeded

    targets = tmp_path / "targets.json"  # the same from a JSON file
    targets.write_text(json.dumps({"b": 12, "c": 10}))
    np.testing.assert_array_equal(_build(imbalanced, smote=str(targets)).train.images, images)


def test_smote_errors_name_the_class(imbalanced, tmp_path):
    with pytest.raises(ConfigError, match="data.smote: unknown class 'd'; classes: a, b, c"):
        _build(imbalanced, smote={"d": 10})
    with pytest.raises(ConfigError, match="class 'a': target 5 is below its 12 train images"):
        _build(imbalanced, smote={"a": 5})
    with pytest.raises(ConfigError, match="class 'b': target count must be a positive integer"):
        _build(imbalanced, smote={"b": "many"})
    with pytest.raises(ConfigError, match="missing.json.*file not found"):
        _build(imbalanced, smote=str(tmp_path / "missing.json"))


def test_apply_smote_rounds_interpolations_to_uint8():
    images = np.stack([np.full((4, 4, 1), v, dtype=np.uint8) for v in (0, 255, 10, 11, 12, 13)])
    labels = np.array([0, 0, 1, 1, 1, 1])
    out, out_labels = apply_smote(images, labels, {0: 6}, seed=0)
    assert out.dtype == np.uint8 and np.bincount(out_labels).tolist() == [6, 4]
    new = out[6:]
    assert np.all(new == new[:, :1, :1])  # constant images stay constant (no per-pixel noise)
    assert len(np.unique(new)) > 2 and np.all((new > 0) & (new < 255))  # interpolated, not copies of 0 or 255


def test_train_uses_the_configured_sampler_and_weights(imbalanced, tmp_path, monkeypatch):
    """train() wires train.sampler into the train loader (only) and train.class_weight into the criterion."""
    from hdkd.config import build_config

    samplers, made = [], []
    real_sampler, real_criterion = trainer.GlobalBatchSampler, trainer.build_criterion

    def spy_sampler(*args, **kwargs):
        samplers.append(real_sampler(*args, **kwargs))
        return samplers[-1]

    monkeypatch.setattr(trainer, "GlobalBatchSampler", spy_sampler)
    monkeypatch.setattr(trainer, "build_criterion", lambda *a: made.append(real_criterion(*a)) or made[-1])
    cfg = build_config(
        "student",
        overrides=[
            f"data.path={imbalanced}",
            "data.augment=none",
            "data.num_workers=0",
            "model.img_size=32",
            "model.depths=[1,1,1]",
            "model.widths=[8,8,16]",
            "model.dflt_depth=1",
            "model.dflt_heads=2",
            "train.epochs=1",
            "train.batch_size=4",
            "train.max_steps_per_epoch=1",
            "train.progress=false",
            "train.sampler=balanced",
            "train.class_weight=balanced",
            f"output={tmp_path / 'run'}",
        ],
    )
    trainer.train(cfg)
    assert len(samplers) == 1 and samplers[0].weights is not None  # the train batches; val is read in order
    np.testing.assert_allclose(samplers[0].weights.numpy(), balanced_sample_weights(np.repeat([0, 1, 2], [12, 5, 3])))
    expected = compute_class_weight("balanced", classes=np.arange(3), y=np.repeat([0, 1, 2], [12, 5, 3]))
    np.testing.assert_allclose(made[0].weight.numpy(), expected, rtol=1e-6)
