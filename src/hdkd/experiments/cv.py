"""k-fold estimates for small datasets (``hdkd pipeline --folds K``): the whole pipeline once per fold.

The pool is the train and validation images the pipeline would use (after ``data.train_fraction``,
``data.max_per_class`` and ``data.drop_duplicates``; the validation split the data defines, or the one carved from
train). It is cut into K stratified folds (sklearn ``StratifiedKFold``; ``StratifiedGroupKFold`` when the data has
groups, so that no group, e.g. one patient or lesion, is in two folds), shuffled with ``data.split_seed``. For fold
i the pipeline trains teacher, student alone and HDKD on the other K-1 folds, selecting each model's checkpoint on
a stratified (grouped) ``data.val_fraction`` carved from those K-1 folds, exactly as the pipeline carves its
validation split, and tests once on fold i. Every pool image is tested exactly once, by models that never saw it.

The official test split, where the data has one, is not used at all here: neither to select nor to estimate (the
single-split pipeline reports it). Results: ``OUTPUT/fold_<i>_of_<K>/report.md`` per fold and
``OUTPUT/cv_report.md`` / ``cv_report.json`` with the mean and sample standard deviation (ddof=1) over folds.
The folds share one training seed; the spread over folds therefore mixes data variation with training randomness.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from hdkd.config import Config
from hdkd.data import DataSplits, build_datasets
from hdkd.data.build import class_counts, discover, select_splits
from hdkd.data.datasets import CachedImageDataset
from hdkd.data.sources import split_indices
from hdkd.data.transforms import eval_transform, train_transform
from hdkd.errors import ConfigError, DataError
from hdkd.evaluation.seeds import summarise_seeds
from hdkd.experiments.pipeline import ROLE_ORDER, run_pipeline
from hdkd.io import remove_stale
from hdkd.reporting.cv import format_cv_table, write_cv_report

__all__ = ["fold_indices", "run_cv", "pool_and_folds"]


@dataclasses.dataclass
class Pool:
    """The decoded train + validation images the folds are cut from."""

    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray
    groups: Optional[np.ndarray]
    class_names: list[str]
    in_chans: int
    description: str


def fold_indices(
    labels: np.ndarray, k: int, seed: int, groups: Optional[np.ndarray] = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """K stratified (and, with groups, grouped) folds of range(len(labels)): ``[(rest, held_out), ...]``."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if k < 2:
        raise ConfigError(f"--folds: expected at least 2 folds, got {k}")
    indices = np.arange(len(labels))
    try:
        if groups is None:
            splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(indices, labels)
        else:
            splits = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(indices, labels, groups)
        folds = [(np.sort(rest), np.sort(held)) for rest, held in splits]
    except ValueError as exc:
        raise DataError(f"--folds {k}: cannot cut {len(labels)} images into {k} stratified folds ({exc})") from None
    return folds


def load_pool(cfg: Config) -> Pool:
    """The pipeline's train and validation images, decoded once, with their group ids (None without groups)."""
    base = cfg.for_role("teacher")
    if base.data.smote is not None:
        raise ConfigError("data.smote: not supported with --folds (SMOTE would have to be refitted per fold)")
    if base.data.val_fraction <= 0:
        raise ConfigError("data.val_fraction: --folds carves each fold's validation split with it; set it > 0")
    data = build_datasets(base.data, base.model.img_size, base.model.in_chans, splits=("train", "val"))
    chosen = select_splits(discover(base.data), base.data)  # the same selection, for the group ids
    parts = [(data.train, chosen["train"]), (data.val, chosen["val"])]
    parts = [(d, c) for d, c in parts if d is not None]
    groups = None
    if all(c.groups is not None for _, c in parts):
        groups = np.concatenate([c.groups for _, c in parts])
    return Pool(
        images=np.concatenate([d.images for d, _ in parts]),
        labels=np.concatenate([d.labels for d, _ in parts]),
        groups=groups,
        class_names=list(data.class_names),
        in_chans=data.in_chans,
        description=data.description,
    )


def fold_splits(cfg: Config, pool: Pool, fold: int, k: int, rest: np.ndarray, held: np.ndarray) -> DataSplits:
    """Fold ``fold``: train and validation (carved like the pipeline's) from ``rest``, test = ``held``."""
    d = cfg.for_role("teacher").data
    groups = None if pool.groups is None else pool.groups[rest]
    keep, val = split_indices(pool.labels[rest], d.val_fraction, d.split_seed, groups, what=f"fold {fold} validation")
    chosen = {"train": rest[keep], "val": rest[val], "test": held}
    channels = pool.in_chans
    transforms = {"train": train_transform(d.augment, channels), "val": eval_transform(channels)}
    transforms["test"] = transforms["val"]
    sets = {
        name: CachedImageDataset(pool.images[idx], pool.labels[idx], transforms[name], pool.class_names)
        for name, idx in chosen.items()
    }
    how = f"stratified{', grouped' if pool.groups is not None else ''}, seed {d.split_seed}"
    source = {
        "train": f"fold {fold} of {k}: the other {k - 1} folds minus validation",
        "val": f"fold {fold} of {k}: {d.val_fraction:.0%} of the other {k - 1} folds ({how})",
        "test": f"fold {fold} of {k} of the train + validation pool ({how}); the official test split is not used",
    }
    sizes = ", ".join(f"{name} {len(idx)}" for name, idx in chosen.items())
    return DataSplits(
        **sets,
        class_names=pool.class_names,
        in_chans=channels,
        counts={name: class_counts(pool.labels[idx], pool.class_names) for name, idx in chosen.items()},
        description=f"{pool.description} -> fold {fold} of {k}: {sizes}",
        source=source,
    )


def pool_and_folds(cfg: Config, k: int) -> tuple[Pool, list[tuple[np.ndarray, np.ndarray]]]:
    pool = load_pool(cfg)
    seed = cfg.for_role("teacher").data.split_seed
    return pool, fold_indices(pool.labels, k, seed, pool.groups)


def run_cv(
    cfg: Config,
    folds: int,
    roles: Sequence[str] = ROLE_ORDER,
    command: Optional[str] = None,
    n_boot: int = 1000,
    resume: bool = False,
) -> dict[str, Any]:
    """The pipeline on each of ``folds`` folds into OUTPUT/fold_<i>_of_<K>/, then mean ± std over folds.

    Returns ``{"runs": {fold: run_pipeline outcome}, "summary", "paths", "table"}``; see the module docstring."""
    pool, splits = pool_and_folds(cfg, folds)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale(out, ("cv_report.json", "cv_report.md"))
    runs = {}
    for i, (rest, held) in enumerate(splits):
        fold_cfg = dataclasses.replace(cfg, output=str(out / f"fold_{i}_of_{folds}"))
        data = fold_splits(cfg, pool, i, folds, rest, held)
        runs[i] = run_pipeline(fold_cfg, roles, command, n_boot, resume=resume, data=data)
    summary = summarise_seeds(
        {i: run["results"] for i, run in runs.items()}, {i: f"fold_{i}_of_{folds}/report.json" for i in runs}
    )
    summary = {
        "folds": folds,
        "std": "sample standard deviation over folds (ddof=1)",
        "pool": {
            "images": int(len(pool.labels)),
            "class_counts": class_counts(pool.labels, pool.class_names),
            "grouped": pool.groups is not None,
            "description": pool.description,
        },
        "split_seed": cfg.for_role("teacher").data.split_seed,
        "train_seed": cfg.for_role("teacher").train.seed,
        "official_test_split": "not used (neither for selection nor for these estimates)",
        "fold_sizes": {
            str(i): {n: int(sum(c.values())) for n, c in run["meta"]["class_counts"].items()} for i, run in runs.items()
        },  # fmt: skip
        "teacher_checks": {str(i): run["meta"].get("teacher_check") for i, run in runs.items()},
        "models": summary["models"],
        "reports": summary["reports"],
    }
    paths = write_cv_report(out, summary)
    return {"runs": runs, "summary": summary, "paths": paths, "table": format_cv_table(summary)}
