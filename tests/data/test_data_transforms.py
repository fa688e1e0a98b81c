"""The authors' augmentation (order and parameters), normalisation statistics and the Dataset item format."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from hdkd.data import CachedImageDataset, eval_transform, mean_std, train_transform
from hdkd.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from hdkd.errors import ConfigError


def test_mean_std():
    assert mean_std(3) == (IMAGENET_MEAN, IMAGENET_STD) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert mean_std(1) == ((0.449,), (0.226,))
    with pytest.raises(ConfigError):
        mean_std(2)


def test_authors_recipe_order_and_parameters():
    steps = train_transform("authors", 3).transforms
    assert [type(t) for t in steps] == [
        v2.RandomRotation,
        v2.RandomHorizontalFlip,
        v2.RandomVerticalFlip,
        v2.ColorJitter,
        v2.RandomAdjustSharpness,
        v2.GaussianBlur,
        v2.ToDtype,
        v2.Normalize,
    ]
    rotation, hflip, vflip, jitter, sharp, blur, to_dtype, normalize = steps
    assert list(rotation.degrees) == [-180.0, 180.0]
    assert hflip.p == 0.5 and vflip.p == 0.5
    assert tuple(jitter.brightness) == pytest.approx((0.7, 1.3)) and tuple(jitter.contrast) == pytest.approx((0.7, 1.3))
    assert jitter.saturation is None and jitter.hue is None
    assert sharp.sharpness_factor == 2 and sharp.p == 0.5
    assert list(blur.kernel_size) == [3, 3] and list(blur.sigma) == [0.1, 2.0]
    assert to_dtype.dtype == torch.float32 and to_dtype.scale
    assert list(normalize.mean) == list(IMAGENET_MEAN) and list(normalize.std) == list(IMAGENET_STD)


@pytest.mark.parametrize("channels", [1, 3])
def test_train_output_shape_dtype_and_randomness(channels):
    torch.manual_seed(0)
    image = torch.randint(0, 256, (channels, 16, 16), dtype=torch.uint8)
    augment = train_transform("authors", channels)
    first, second = augment(image), augment(image)
    assert first.shape == (channels, 16, 16) and first.dtype == torch.float32
    assert not torch.equal(first, second)
    torch.manual_seed(1)
    a = augment(image)
    torch.manual_seed(1)
    assert torch.equal(a, augment(image))  # reproducible under a seed


def test_none_recipe_is_plain_normalisation_and_deterministic():
    image = torch.full((3, 4, 4), 255, dtype=torch.uint8)
    image[:, 0, 0] = 0
    plain = train_transform("none", 3)
    out = plain(image)
    assert torch.equal(out, plain(image)) and torch.equal(out, eval_transform(3)(image))
    for c in range(3):
        assert out[c, 1, 1].item() == pytest.approx((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c], abs=1e-6)
        assert out[c, 0, 0].item() == pytest.approx(-IMAGENET_MEAN[c] / IMAGENET_STD[c], abs=1e-6)
    grey = eval_transform(1)(torch.full((1, 2, 2), 255, dtype=torch.uint8))
    assert grey.flatten()[0].item() == pytest.approx((1 - 0.449) / 0.226, abs=1e-6)


def test_unknown_recipe():
    with pytest.raises(ConfigError, match="data.augment"):
        train_transform("randaugment", 3)


def test_dataset_items_are_chw_float_and_int():
    images = np.zeros((3, 5, 7, 3), dtype=np.uint8)
    images[1, 0, 0] = (255, 0, 10)
    dataset = CachedImageDataset(images, np.array([2, 0, 1]), eval_transform(3), ["x", "y", "z"])
    image, label = dataset[1]
    assert len(dataset) == 3 and image.shape == (3, 5, 7) and image.dtype == torch.float32
    assert label == 0 and type(label) is int
    expected = (torch.tensor([1.0, 0.0, 10 / 255]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(image[:, 0, 0], expected, atol=1e-6)  # HWC -> CHW keeps channels apart
    raw, _ = CachedImageDataset(images, np.array([2, 0, 1]))[1]
    assert raw.dtype == torch.uint8 and raw[:, 0, 0].tolist() == [255, 0, 10]
