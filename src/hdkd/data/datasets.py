"""A Dataset over images decoded once into memory: indexing costs a view and the transform, never a decode."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


class CachedImageDataset(Dataset):
    """uint8 images (N, H, W, C) + int64 labels (N,); items are (transform(uint8 C x H x W tensor), int label).

    With `transform=None` the item is the uint8 tensor itself; `build_datasets` always gives a transform that
    returns a normalised float32 tensor. With `raw = True` items are (uint8 C x H x W tensor, int label, int index)
    and the transform is skipped, for loaders that augment whole batches on the device (see batch_augment.py),
    which need the index to derive each image's seed.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        transform: Optional[Callable] = None,
        class_names: Optional[Sequence[str]] = None,
    ):
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.class_names = list(class_names) if class_names is not None else None
        self.augment_seed: Optional[int] = None  # set by the trainer each epoch; see set_epoch
        self.raw: bool = False

    def set_epoch(self, seed: int, epoch: int) -> None:
        """Make each item's random augmentation a function of (seed, epoch, index) alone.

        Then a run's augmentations do not depend on the number of loader workers or processes, nor on where a
        resumed run restarts, which is what makes resume and data-parallel runs reproduce a single uninterrupted run.
        """
        self.augment_seed = (int(seed) * 1_000_003 + int(epoch)) * 1_000_003

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple:
        # contiguous CHW: several v2 kernels (colour jitter, sharpness) are several times slower on a strided view
        image = torch.from_numpy(self.images[index]).permute(2, 0, 1).contiguous()
        if self.raw:
            return image, int(self.labels[index]), int(index)
        if self.transform is not None:
            if self.augment_seed is None:
                image = self.transform(image)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.augment_seed + int(index))
                    image = self.transform(image)
        return image, int(self.labels[index])

    @property
    def num_channels(self) -> int:
        return int(self.images.shape[-1])
