"""The batched on-device augmentation: each op against torchvision, seed determinism, parameter distributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from hdkd.data import CachedImageDataset, eval_transform
from hdkd.data.batch_augment import (
    BatchAugment,
    adjust_brightness,
    adjust_contrast,
    adjust_sharpness,
    batch_seeds,
    draw_params,
    flip,
    gaussian_blur,
    rotate,
)
from hdkd.errors import ConfigError

SHAPES = [(3, 16, 16), (1, 17, 17)]


def _images(shape, n=4, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)


def _floats(shape, n=4, seed=0) -> torch.Tensor:
    return _images(shape, n, seed).float() / 255.0


@pytest.mark.parametrize("shape", SHAPES + [(3, 12, 17)])
def test_rotate_matches_torchvision(shape):
    angles = [0.0, 90.0, -90.0, -37.5, 180.0, 12.3, -179.0, 135.0, 45.0, 270.0]
    images = _floats(shape, n=len(angles))
    out = rotate(images, torch.tensor(angles))
    for img, angle, got in zip(images, angles, out):
        want = TF.rotate(img, angle, interpolation=InterpolationMode.NEAREST)
        # the grid is built as torchvision builds it, so nearest sampling picks the same pixels: exact equality
        assert torch.equal(got, want), angle


def test_rotate_direction_and_corners():
    # a single bright pixel right of centre goes up (counter-clockwise) for +90 degrees, corners go black
    img = torch.zeros(1, 1, 5, 5)
    img[0, 0, 2, 4] = 1.0
    out = rotate(img, torch.tensor([90.0]))
    assert out[0, 0, 0, 2] == 1.0 and out.sum() == 1.0
    ones = rotate(torch.ones(1, 1, 16, 16), torch.tensor([45.0]))
    assert ones[0, 0, 0, 0] == 0.0 and ones[0, 0, 8, 8] == 1.0


def test_flip():
    images = _floats((3, 5, 6), n=4)
    out = flip(images, torch.tensor([True, False, True, False]), torch.tensor([True, True, False, False]))
    assert torch.equal(out[0], images[0].flip(-1).flip(-2))
    assert torch.equal(out[1], images[1].flip(-2))
    assert torch.equal(out[2], images[2].flip(-1))
    assert torch.equal(out[3], images[3])


@pytest.mark.parametrize("shape", SHAPES)
def test_colour_ops_match_torchvision(shape):
    images = _floats(shape, n=4)
    factors = [0.7, 1.0, 1.13, 1.3]
    bright = adjust_brightness(images, torch.tensor(factors))
    contrast = adjust_contrast(images, torch.tensor(factors))
    for i, f in enumerate(factors):
        torch.testing.assert_close(bright[i], TF.adjust_brightness(images[i], f), rtol=0, atol=1e-6)
        torch.testing.assert_close(contrast[i], TF.adjust_contrast(images[i], f), rtol=0, atol=1e-6)
    assert torch.equal(bright[1], images[1])  # factor 1 is the identity, which the random jitter order relies on


@pytest.mark.parametrize("shape", SHAPES)
def test_sharpness_matches_torchvision(shape):
    images = _floats(shape, n=3)
    factors = [2.0, 1.0, 0.5]
    out = adjust_sharpness(images, torch.tensor(factors))
    for i, f in enumerate(factors):
        torch.testing.assert_close(out[i], TF.adjust_sharpness(images[i], f), rtol=0, atol=1e-6)
    assert torch.equal(out[1], images[1])
    assert torch.equal(out[0, :, 0], images[0, :, 0])  # border rows and columns unsmoothed
    assert not torch.allclose(out[0], images[0])


@pytest.mark.parametrize("shape", SHAPES)
def test_gaussian_blur_matches_torchvision(shape):
    images = _floats(shape, n=4)
    sigmas = [0.1, 0.5, 1.234, 2.0]
    out = gaussian_blur(images, torch.tensor(sigmas))
    for i, s in enumerate(sigmas):
        want = TF.gaussian_blur(images[i], [3, 3], [s, s])
        torch.testing.assert_close(out[i], want, rtol=0, atol=1e-6)
    assert not torch.allclose(out[2], out[3])


def test_same_seed_same_augmentation_whatever_the_batch():
    aug = BatchAugment(3, "authors")
    images = _images((3, 16, 16), n=6)
    seeds = batch_seeds(12345, torch.arange(6))
    out = aug(images, seeds)
    perm = torch.tensor([4, 2, 5, 0, 3, 1])
    assert torch.equal(aug(images[perm], seeds[perm]), out[perm])
    # a different batch composition: a subset, alongside other images
    others = _images((3, 16, 16), n=2, seed=9)
    mixed = aug(torch.cat([others, images[[3, 1]]]), torch.cat([torch.tensor([7, 8]), seeds[[3, 1]]]))
    assert torch.equal(mixed[2:], out[[3, 1]])
    # different seeds, different augmentations
    again = aug(images, seeds + 1000)
    assert all(not torch.allclose(again[i], out[i]) for i in range(6))


def test_augmentation_changes_images_and_is_finite():
    for channels in (1, 3):
        images = _images((channels, 17, 17), n=5)
        out = BatchAugment(channels, "authors")(images, torch.arange(5))
        plain = BatchAugment(channels, "none")(images)
        assert out.dtype == torch.float32 and out.shape == images.shape and torch.isfinite(out).all()
        assert all(not torch.allclose(out[i], plain[i]) for i in range(5))


def test_authors_pipeline_order_for_one_image():
    # the full recipe equals the chain of torchvision functionals with this image's drawn parameters
    images = _images((3, 16, 16), n=8)
    seeds = torch.arange(100, 108)
    out = BatchAugment(3, "authors")(images, seeds)
    p = draw_params(seeds)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    for i in range(8):
        x = images[i].float() / 255.0
        x = TF.rotate(x, float(p.angles[i]), interpolation=InterpolationMode.NEAREST)
        if p.hflip[i]:
            x = TF.horizontal_flip(x)
        if p.vflip[i]:
            x = TF.vertical_flip(x)
        jitter = [(TF.adjust_brightness, p.brightness[i]), (TF.adjust_contrast, p.contrast[i])]
        for fn, f in jitter if p.brightness_first[i] else jitter[::-1]:
            x = fn(x, float(f))
        if p.sharpen[i]:
            x = TF.adjust_sharpness(x, 2.0)
        x = TF.gaussian_blur(x, [3, 3], [float(p.sigmas[i])] * 2)
        x = TF.normalize(x, mean, std)
        torch.testing.assert_close(out[i], x, rtol=0, atol=1e-5)


def test_parameter_distribution():
    n = 20000
    p = draw_params(batch_seeds(987654321, torch.arange(n)))
    a = p.angles.double()
    assert abs(a.mean()) < 5 and a.min() > -180.5 and a.min() < -179 and a.max() < 180 and a.max() > 179
    hist = torch.histc(a, bins=8, min=-180, max=180)
    assert (hist - n / 8).abs().max() < 0.06 * n / 8  # uniform: every eighth of the range near n / 8
    for flag in (p.hflip, p.vflip, p.sharpen, p.brightness_first):
        assert flag.dtype == torch.bool and abs(flag.double().mean() - 0.5) < 0.02
    assert abs(float((p.hflip & p.vflip).double().mean()) - 0.25) < 0.02  # the streams are independent
    for factors in (p.brightness, p.contrast):
        assert factors.min() >= 0.7 and factors.max() <= 1.3 and abs(factors.double().mean() - 1.0) < 0.01
    assert p.sigmas.min() >= 0.1 and p.sigmas.max() <= 2.0 and abs(p.sigmas.double().mean() - 1.05) < 0.02
    assert torch.corrcoef(torch.stack([p.angles, p.sigmas, p.brightness]))[0, 1:].abs().max() < 0.05


def test_batch_seeds_convention():
    indices = torch.tensor([0, 1, 5, 99])
    assert batch_seeds(1000, indices).tolist() == [1000, 1001, 1005, 1099]
    assert batch_seeds(1000, indices).dtype == torch.int64
    ds = CachedImageDataset(np.zeros((1, 2, 2, 3), np.uint8), np.zeros(1))
    ds.set_epoch(2**40, 7)  # the dataset's seeds exceed int64; they wrap modulo 2**64
    wrapped = batch_seeds(ds.augment_seed, indices)
    assert [(int(s) - ds.augment_seed - int(i)) % 2**64 for s, i in zip(wrapped, indices)] == [0] * 4
    assert torch.equal(draw_params(wrapped).angles, draw_params(wrapped.clone()).angles)


@pytest.mark.parametrize("channels", [1, 3])
def test_none_recipe_equals_eval_transform(channels):
    images = _images((channels, 16, 16), n=3)
    out = BatchAugment(channels, "none")(images, torch.arange(3))
    want = torch.stack([eval_transform(channels)(img) for img in images])
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)


def test_unknown_recipe():
    with pytest.raises(ConfigError, match="data.augment"):
        BatchAugment(3, "randaugment")


def test_dataset_raw_mode():
    images = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    ds = CachedImageDataset(images, np.array([3, 1]), transform=eval_transform(3))
    assert ds[1][0].dtype == torch.float32 and len(ds[1]) == 2  # the default is unchanged
    ds.raw = True
    image, label, index = ds[1]
    assert image.dtype == torch.uint8 and image.shape == (3, 4, 5) and image.is_contiguous()
    assert torch.equal(image, torch.from_numpy(images[1]).permute(2, 0, 1))
    assert (label, index) == (1, 1) and isinstance(label, int) and isinstance(index, int)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    images = _images((3, 16, 16), n=6)
    seeds = batch_seeds(42, torch.arange(6))
    # the grid is computed on each device; a sample position within an ulp of a pixel boundary may round to the
    # neighbouring pixel on one device only, so nearest rotation is compared pixel by pixel, not as a whole
    angles = draw_params(seeds).angles
    x = images.float() / 255.0
    same = (rotate(x.cuda(), angles).cpu() == rotate(x, angles)).double().mean()
    assert same >= 0.99
    aug = BatchAugment(3, "authors")
    got = aug.to("cuda")(images.cuda(), seeds.cuda())
    assert got.device.type == "cuda"
    assert (got.cpu() - aug.cpu()(images, seeds)).abs().mean() < 1e-3
