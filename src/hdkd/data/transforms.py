"""The authors' augmentation and the normalisation, as torchvision.transforms.v2 pipelines on uint8 CHW tensors.

Images reach the transforms already decoded and resized (see cache.py), so there is no Resize here.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from hdkd.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_MEAN = (0.449,)  # the average of the ImageNet channel means
GREY_STD = (0.226,)
RECIPES = ("authors", "none")


def mean_std(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet statistics for 3 channels; their channel averages (0.449,), (0.226,) for a single grey channel."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    if channels == 1:
        return GREY_MEAN, GREY_STD
    raise ConfigError(f"model.in_chans: expected 1 or 3 channels, got {channels}")


def _to_normalised_float(channels: int) -> list:
    mean, std = mean_std(channels)
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def eval_transform(channels: int = 3) -> v2.Compose:
    """uint8 CHW -> float32 in [0, 1] -> normalised; no randomness."""
    return v2.Compose(_to_normalised_float(channels))


def train_transform(recipe: str = "authors", channels: int = 3) -> v2.Compose:
    """The training transform for `recipe` ("authors": the HDKD authors' augmentation; "none": eval transform).

    Authors' order: rotation up to +-180 degrees (torchvision's default nearest interpolation, black corners),
    horizontal and vertical flips (p 0.5 each), colour jitter (brightness 0.3, contrast 0.3), sharpness
    factor 2 (p 0.5), Gaussian blur (kernel 3, sigma uniform in [0.1, 2.0], always), then normalisation.
    """
    if recipe == "none":
        return eval_transform(channels)
    if recipe != "authors":
        raise ConfigError(f"data.augment: unknown recipe {recipe!r}; choose {' or '.join(RECIPES)}")
    return v2.Compose(
        [
            v2.RandomRotation(180),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomVerticalFlip(0.5),
            v2.ColorJitter(brightness=0.3, contrast=0.3),
            v2.RandomAdjustSharpness(sharpness_factor=2, p=0.5),
            v2.GaussianBlur(kernel_size=3, sigma=(0.1, 2.0)),
            *_to_normalised_float(channels),
        ]
    )
