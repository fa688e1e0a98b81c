"""The one way datasets are built (training, evaluation and the pipeline all call `build_datasets`).

Order of operations, each seeded with cfg.split_seed and never touching the test split:
1. discover the data (the embedded synthetic dataset when cfg.path is None);
2. no validation split in the data -> carve a stratified cfg.val_fraction of train (group-aware when the data
   has groups); val_fraction 0 -> no validation split;
3. cfg.train_fraction < 1 -> a stratified subset of the remaining train split;
4. cfg.max_per_class -> at most that many images per class in every split (seeded shuffle, first N);
5. cfg.drop_duplicates -> drop the images with an exact or near duplicate across the test boundary: from test
   ("test") or from train and val ("train"); see hdkd.data.dedup;
6. decode and resize the chosen images once (cached); cfg.smote -> SMOTE on the train images only
   (hdkd.data.imbalance); wrap them with the transforms.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from hdkd.config import DataConfig
from hdkd.data.cache import cache_root, split_images
from hdkd.data.datasets import CachedImageDataset
from hdkd.data.dedup import drop_cross_split_duplicates
from hdkd.data.imbalance import apply_smote, resolve_smote_targets
from hdkd.data.sources import SPLITS, DatasetSource, SplitData, discover_source, split_indices
from hdkd.data.synthetic import SYNTHETIC_VERSION, make_synthetic_dataset
from hdkd.data.transforms import eval_transform, train_transform
from hdkd.errors import ConfigError, DataError


@dataclass
class DataSplits:
    """The built datasets (None for splits not requested or absent) and what a run log should say about them."""

    train: Optional[CachedImageDataset]
    val: Optional[CachedImageDataset]
    test: Optional[CachedImageDataset]
    class_names: list[str]
    in_chans: int
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class name -> images
    description: str = ""
    source: dict[str, str] = field(default_factory=dict)  # split -> where its images came from

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> Optional[CachedImageDataset]:
        return getattr(self, name)


def build_datasets(
    cfg: DataConfig, img_size: int, in_chans: Optional[int] = None, splits: Sequence[str] = SPLITS
) -> DataSplits:
    """Build the requested splits as CachedImageDatasets (train with cfg.augment, val/test with eval transforms).

    in_chans None -> 1 for grey MedMNIST arrays, else 3 (grey files are repeated to 3 channels, as the authors'
    ImageNet-style pipeline does).
    """
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; choose from {SPLITS}")
    if not isinstance(img_size, int) or img_size < 1:
        raise ConfigError(f"model.img_size: expected a positive integer, got {img_size!r}")
    train_transform(cfg.augment)  # report a bad recipe before any decoding

    source = discover(cfg)
    notes: list[str] = list(source.notes)  # warnings about the data (repeated rows, one-image classes)
    chosen = select_splits(source, cfg, notes)
    channels = resolve_in_chans(in_chans, source)
    smote = None
    if cfg.smote is not None and "train" in splits and chosen["train"] is not None:  # checked before decoding
        smote = resolve_smote_targets(cfg.smote, source.class_names, chosen["train"].labels)

    datasets: dict[str, Optional[CachedImageDataset]] = {name: None for name in SPLITS}
    counts, origins = {}, {}
    for name in splits:
        split = chosen[name]
        if split is None:
            continue
        images = split_images(split, img_size, channels, cfg.cache_dir)
        labels, origin = split.labels, split.origin
        if name == "train" and smote:  # after decoding and caching, before augmentation; never val or test
            images, labels = apply_smote(images, labels, smote, cfg.split_seed)
            origin = f"{origin}, plus {len(labels) - len(split)} SMOTE image(s) (seed {cfg.split_seed})"
            notes.append(f"SMOTE added {len(labels) - len(split)} train image(s)")
        transform = train_transform(cfg.augment, channels) if name == "train" else eval_transform(channels)
        datasets[name] = CachedImageDataset(images, labels, transform, source.class_names)
        counts[name] = class_counts(labels, source.class_names)
        origins[name] = origin
    sizes = ", ".join(f"{name} {sum(c.values())}" for name, c in counts.items())
    description = f"{source.description}; {sizes}" if sizes else source.description
    return DataSplits(
        **datasets,
        class_names=list(source.class_names),
        in_chans=channels,
        counts=counts,
        description="; ".join([description] + notes),
        source=origins,
    )


def build_eval_dataset(
    cfg: DataConfig, img_size: int, in_chans: Optional[int] = None, split: str = "test"
) -> CachedImageDataset:
    """One split with the eval transform (for evaluation); DataError when the data has no such split."""
    built = build_datasets(cfg, img_size, in_chans, splits=(split,))
    dataset = built.split(split)
    if dataset is None:
        raise DataError(f"{cfg.path or 'synthetic dataset'}: the data has no {split} split")
    return dataset


def discover(cfg: DataConfig) -> DatasetSource:
    """discover_source, with the embedded synthetic dataset (generated in the cache dir) when no path is given."""
    if cfg.path is not None or cfg.csv is not None:
        return discover_source(cfg)
    root = make_synthetic_dataset(cache_root(cfg.cache_dir) / f"synthetic-v{SYNTHETIC_VERSION}")
    source = discover_source(dataclasses.replace(cfg, path=str(root), format="folder"))
    source.description = f"embedded synthetic dataset ({source.description})"
    return source


def select_splits(
    source: DatasetSource, cfg: DataConfig, notes: Optional[list[str]] = None
) -> dict[str, Optional[SplitData]]:
    """Steps 2-5 of the module docstring: which images (by index into the source) each split gets.

    `notes` (optional) receives a line for the run's data description when duplicates are dropped.
    """
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction: expected a value in [0, 1), got {cfg.val_fraction}")
    if not 0.0 < cfg.train_fraction <= 1.0:
        raise ConfigError(f"data.train_fraction: expected a value in (0, 1], got {cfg.train_fraction}")
    if cfg.max_per_class is not None and cfg.max_per_class < 1:
        raise ConfigError(f"data.max_per_class: expected a positive integer or null, got {cfg.max_per_class}")
    if len(source.class_names) < 2:
        raise DataError(
            f"{source.description}: only one class ({', '.join(map(repr, source.class_names))}); a classifier needs "
            f"at least two (class folders side by side, or a label column with two or more values)"
        )
    seed = cfg.split_seed
    train, val, test = source.train, source.val, source.test

    if val is None and train is not None and cfg.val_fraction > 0:
        grouped = train.groups is not None
        keep, held = split_indices(
            train.labels,
            cfg.val_fraction,
            seed,
            train.groups,
            what=f"{source.description}: validation split",
            class_names=source.class_names,
        )
        how = f"{cfg.val_fraction:.0%}, stratified{', grouped' if grouped else ''}, seed {seed}"
        val = train.subset(held, origin=f"carved from train ({how})")
        train = train.subset(keep, origin=f"{train.origin} minus validation")

    if train is not None and cfg.train_fraction < 1.0:
        keep, _ = split_indices(
            train.labels,
            1.0 - cfg.train_fraction,
            seed,
            what=f"{source.description}: train_fraction {cfg.train_fraction}",
            class_names=source.class_names,
        )
        train = train.subset(keep, origin=f"{train.origin}, {cfg.train_fraction:.0%} stratified subset (seed {seed})")

    chosen = {"train": train, "val": val, "test": test}
    if cfg.max_per_class is not None:
        for split_id, name in enumerate(SPLITS):
            if chosen[name] is not None:
                chosen[name] = cap_per_class(chosen[name], cfg.max_per_class, np.random.default_rng([seed, split_id]))

    if cfg.drop_duplicates is not None:  # last: only duplicates among the images actually used count
        chosen, dropped = drop_cross_split_duplicates(
            chosen, cfg.drop_duplicates, cfg.duplicate_threshold, cfg.cache_dir
        )
        if notes is not None:
            where = ", ".join(f"{n} from {name}" for name, n in dropped.items() if n) or "none"
            notes.append(
                f"dropped cross-split duplicates (data.drop_duplicates={cfg.drop_duplicates}, pHash "
                f"distance <= {cfg.duplicate_threshold}): {where}"
            )

    if chosen["train"] is not None:
        missing = [n for n, c in class_counts(chosen["train"].labels, source.class_names).items() if c == 0]
        if missing:
            raise DataError(f"{source.description}: the train split has no images of class(es) {', '.join(missing)}")
    return chosen


def cap_per_class(split: SplitData, limit: int, rng: np.random.Generator) -> SplitData:
    """At most `limit` images per class: the first `limit` of each class after a seeded shuffle, in data order."""
    keep = []
    for label in np.unique(split.labels):
        members = np.flatnonzero(split.labels == label)
        keep.append(rng.permutation(members)[:limit])
    indices = np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
    return split.subset(indices, origin=f"{split.origin}, at most {limit} per class")


def class_counts(labels: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(class_names))
    return {name: int(counts[i]) for i, name in enumerate(class_names)}


def resolve_in_chans(in_chans: Optional[int], source: DatasetSource) -> int:
    if in_chans is None:
        return 1 if source.grey else 3
    if in_chans not in (1, 3):
        raise ConfigError(f"model.in_chans: expected 1, 3 or null, got {in_chans!r}")
    return in_chans
