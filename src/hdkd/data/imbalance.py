"""Class imbalance, three ways, each chosen in the config and off by default.

- `train.class_weight: balanced`: cross-entropy weighted per class by scikit-learn's
  `compute_class_weight("balanced")` on the train labels, n_samples / (n_classes * count(class)).
- `train.sampler: balanced`: each epoch draws len(train) images with replacement, class c with probability
  proportional to 1 / count(c) per image (torch's WeightedRandomSampler), so classes come up about equally often;
  the draw uses the epoch's seeded generator, so runs stay deterministic and resumable.
- `data.smote`: the authors' SMOTE (imbalanced-learn) on the training images only, as resized uint8 images
  flattened to vectors, after decoding and before augmentation. `{class name: target count}` (or a JSON file with
  that mapping): each listed class is oversampled with synthetic images, interpolated between an image and one of
  its 5 nearest neighbours of the same class (fewer neighbours when the class has 5 images or fewer), up to its
  target; classes not listed are left as they are. Seeded with data.split_seed. Validation and test splits are
  never touched.

Memory of SMOTE: the resampled training set is N_after x H x W x C bytes (uint8). While SMOTE runs it holds float
copies: our float32 input (4 bytes per value of the N original images), imbalanced-learn's own copy of it and its
stacked float32 output (4 x N_after x H x W x C), plus float64 temporaries for the largest class's new images
(about 16 bytes per value): roughly 12 x N_after x H x W x C bytes at the peak. (Float32 rather than the float64
imbalanced-learn would use on plain integers: half the memory, and exact for 0..255.) Brain Tumor MRI at 224 px,
3 channels, train split 5,140 images (1,189 / 1,205 / 1,435 / 1,311) balanced to 1,435 per class: N_after = 5,740,
so 5,740 x 224 x 224 x 3 = 0.86 GB of uint8 images and about 10.4 GB at SMOTE's peak; at 64 px, 0.07 GB and 0.85 GB.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from hdkd.errors import ConfigError, DataError

CLASS_WEIGHTS = ("balanced",)
SAMPLERS = ("random", "balanced")
SMOTE_NEIGHBOURS = 5  # imbalanced-learn's default k_neighbors


def class_weights(mode: Optional[str], labels: np.ndarray, num_classes: int) -> Optional[np.ndarray]:
    """train.class_weight: None -> None; "balanced" -> sklearn's balanced weights (float32, one per class)."""
    if mode is None:
        return None
    if mode not in CLASS_WEIGHTS:
        raise ConfigError(f"train.class_weight: unknown value {mode!r}; choose balanced or null")
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels)
    missing = sorted(set(range(num_classes)) - set(labels.tolist()))
    if missing:
        raise ConfigError(
            f"train.class_weight: the train split has no images of class id(s) "
            f"{', '.join(map(str, missing))}; balanced weights are undefined"
        )
    return compute_class_weight("balanced", classes=np.arange(num_classes), y=labels).astype(np.float32)


def check_sampler(sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise ConfigError(f"train.sampler: unknown value {sampler!r}; choose random or balanced")


def balanced_sample_weights(labels: np.ndarray) -> np.ndarray:
    """Per-image weight 1 / count(its class): every class gets the same total weight (float64, for the sampler)."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels)
    return 1.0 / counts[labels].astype(np.float64)


def load_smote_targets(smote: Any) -> dict[str, int]:
    """data.smote as a mapping: given inline, or read from a JSON file."""
    where = "data.smote"
    if isinstance(smote, (str, Path)):
        path = Path(smote).expanduser()
        where = f"{path} (data.smote)"
        if not path.is_file():
            raise ConfigError(f"{where}: file not found (expected a JSON object of class name -> target count)")
        try:
            smote = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(smote, dict) or not smote:
        raise ConfigError(f"{where}: expected a non-empty mapping of class name -> target train count, got {smote!r}")
    targets = {}
    for name, count in smote.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"{where}: class {name!r}: target count must be a positive integer, got {count!r}")
        targets[str(name)] = count
    return targets


def resolve_smote_targets(smote: Any, class_names: Sequence[str], labels: np.ndarray) -> dict[int, int]:
    """{class id: target count} for the classes that need new images; ConfigError naming a bad class or target."""
    targets = load_smote_targets(smote)
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    index = {name: i for i, name in enumerate(class_names)}
    out = {}
    for name, target in targets.items():
        if name not in index:
            raise ConfigError(f"data.smote: unknown class {name!r}; classes: {', '.join(class_names)}")
        have = int(counts[index[name]])
        if target < have:
            raise ConfigError(
                f"data.smote: class {name!r}: target {target} is below its {have} train images (SMOTE only adds images)"
            )
        if target > have:
            if have < 2:
                raise ConfigError(
                    f"data.smote: class {name!r} has {have} train image(s); SMOTE needs at least 2 "
                    f"to interpolate between"
                )
            out[index[name]] = target
    return out


def apply_smote(
    images: np.ndarray, labels: np.ndarray, targets: dict[int, int], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """SMOTE on uint8 (N, H, W, C) images: the originals (unchanged, first) then the synthetic images, as uint8.

    `targets` {class id: target count} (see resolve_smote_targets). Memory: see the module docstring.
    """
    if not targets:
        return images, labels
    from imblearn.over_sampling import SMOTE

    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels)
    smallest = min(int(counts[c]) for c in targets)
    n, shape = len(images), images.shape[1:]
    sampler = SMOTE(sampling_strategy=dict(targets), random_state=seed, k_neighbors=min(SMOTE_NEIGHBOURS, smallest - 1))
    flat = images.reshape(n, -1).astype(np.float32)  # not uint8: imbalanced-learn subtracts in the input dtype
    try:
        resampled, new_labels = sampler.fit_resample(flat, labels)
    except ValueError as exc:
        raise DataError(f"data.smote: SMOTE failed on the train split ({exc})") from None
    del flat
    synthetic = np.clip(np.rint(resampled[n:]), 0, 255).astype(np.uint8).reshape(-1, *shape)
    del resampled
    return np.concatenate([images, synthetic]), np.concatenate([labels, new_labels[n:].astype(np.int64)])


__all__ = [
    "class_weights",
    "check_sampler",
    "balanced_sample_weights",
    "load_smote_targets",
    "resolve_smote_targets",
    "apply_smote",
    "SAMPLERS",
    "CLASS_WEIGHTS",
]
