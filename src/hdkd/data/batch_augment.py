"""The authors' training augmentation applied to a whole uint8 batch on the batch's device.

On a GPU, per-image torchvision transforms in CPU loader workers are the bottleneck; this module applies the same
recipe as `transforms.train_transform("authors", channels)` as batched tensor ops, with per-image parameters.

Each image's random parameters are a counter-based hash of its seed alone (`batch_seeds` gives the same per-item
seed as CachedImageDataset), so an image's augmentation does not depend on the batch it lands in, the order of the
batch, the device or the process, which keeps resume and data-parallel runs reproducible.

Not bit-identical to the loader path: the random numbers come from our hash, not torch's generator, and we work in
float32 in [0, 1] throughout, whereas torchvision on uint8 input rounds back to uint8 after every step. The
distribution of augmentations is the same; the pixels differ by those roundings.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from hdkd.data.transforms import RECIPES, mean_std
from hdkd.errors import ConfigError

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_MIX1 = _U64(0xBF58476D1CE4E5B9)
_MIX2 = _U64(0x94D049BB133111EB)
_TWO64 = 1 << 64

# one hash stream per random parameter; the numbers are part of the augmentation's definition, so never renumber
_ANGLE, _HFLIP, _VFLIP, _BRIGHTNESS, _CONTRAST, _ORDER, _SHARPEN, _SIGMA = range(8)

ROTATION_DEGREES = 180.0
FLIP_P = 0.5
BRIGHTNESS = (0.7, 1.3)
CONTRAST = (0.7, 1.3)
SHARPNESS_FACTOR = 2.0
SHARPNESS_P = 0.5
BLUR_SIGMA = (0.1, 2.0)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: numpy uint64 arithmetic wraps modulo 2**64 by definition, unlike signed torch int64."""
    x = x ^ (x >> _U64(30))
    x = x * _MIX1
    x = x ^ (x >> _U64(27))
    x = x * _MIX2
    return x ^ (x >> _U64(31))


def _uniforms(seeds: torch.Tensor, streams: int) -> np.ndarray:
    """(B, streams) float64 in [0, 1): draw j of seed s is splitmix64 output j of a generator keyed by mix64(s)."""
    s = np.ascontiguousarray(seeds.detach().to("cpu", torch.int64).numpy()).view(_U64)
    with np.errstate(over="ignore"):
        key = _mix64(s + _GOLDEN)
        counters = (np.arange(1, streams + 1, dtype=_U64) * _GOLDEN)[None, :]
        bits = _mix64(key[:, None] + counters)
    return (bits >> _U64(11)).astype(np.float64) * (1.0 / (1 << 53))  # the top 53 bits: exact doubles in [0, 1)


def batch_seeds(augment_seed: int, indices: torch.Tensor) -> torch.Tensor:
    """Per-item seeds `augment_seed + index`, as CachedImageDataset uses, wrapped to int64 two's complement.

    `set_epoch` makes seeds larger than 2**63, so the sum is taken modulo 2**64 rather than overflowing.
    """
    idx = torch.as_tensor(indices)
    base = _U64(int(augment_seed) % _TWO64)
    idx_u = np.ascontiguousarray(idx.detach().to("cpu", torch.int64).numpy()).view(_U64)
    with np.errstate(over="ignore"):
        out = (idx_u + base).view(np.int64)
    return torch.from_numpy(np.ascontiguousarray(out)).to(idx.device)


@dataclass
class AugmentParams:
    """One image's random draws per row; kept together so that tests can check their distribution without images."""

    angles: torch.Tensor  # float32 degrees in [-180, 180], counter-clockwise as torchvision
    hflip: torch.Tensor  # bool
    vflip: torch.Tensor  # bool
    brightness: torch.Tensor  # float32 factor
    contrast: torch.Tensor  # float32 factor
    brightness_first: torch.Tensor  # bool: the order of the two colour-jitter ops
    sharpen: torch.Tensor  # bool
    sigmas: torch.Tensor  # float32 Gaussian blur sigma

    def to(self, device: torch.device | str) -> "AugmentParams":
        return AugmentParams(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def draw_params(seeds: torch.Tensor) -> AugmentParams:
    """The authors' recipe's random parameters, on the CPU, as a function of each seed alone (no per-image loop)."""
    u = _uniforms(torch.as_tensor(seeds).reshape(-1), 8)

    def span(col: int, lo: float, hi: float) -> torch.Tensor:
        return torch.from_numpy(lo + (hi - lo) * u[:, col]).to(torch.float32)

    def coin(col: int, p: float) -> torch.Tensor:
        return torch.from_numpy(u[:, col] < p)

    return AugmentParams(
        angles=span(_ANGLE, -ROTATION_DEGREES, ROTATION_DEGREES),
        hflip=coin(_HFLIP, FLIP_P),
        vflip=coin(_VFLIP, FLIP_P),
        brightness=span(_BRIGHTNESS, *BRIGHTNESS),
        contrast=span(_CONTRAST, *CONTRAST),
        brightness_first=coin(_ORDER, 0.5),  # ColorJitter's randperm puts either op first with probability 1/2
        sharpen=coin(_SHARPEN, SHARPNESS_P),
        sigmas=span(_SIGMA, *BLUR_SIGMA),
    )


def _per_image(values: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return values.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)


def rotate(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate each image by its angle (degrees, counter-clockwise) about its centre; nearest, zero fill.

    Builds the sampling grid exactly as torchvision's rotate does (pixel-centred coordinates, inverse matrix from
    float64 trigonometry of `angle % 360`, divided by half the size), so that nearest sampling picks the same pixels.
    """
    b, _, h, w = images.shape
    a = torch.deg2rad(torch.remainder(angles.detach().to("cpu", torch.float64), 360.0))
    cos, sin = torch.cos(a), torch.sin(a)
    zero = torch.zeros_like(a)
    # torchvision's inverse matrix for rotate(angle): [[cos, -sin, 0], [sin, cos, 0]] (y pointing down)
    theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
    dtype, device = images.dtype, images.device
    theta = theta.to(device=device, dtype=dtype)
    rescaled = theta.transpose(1, 2) / torch.tensor([0.5 * w, 0.5 * h], dtype=dtype, device=device)
    base = torch.empty(1, h, w, 3, dtype=dtype, device=device)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=device))
    base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=device).unsqueeze(-1))
    base[..., 2].fill_(1)
    grid = base.view(1, h * w, 3).expand(b, -1, -1).bmm(rescaled).view(b, h, w, 2)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def flip(images: torch.Tensor, horizontal: torch.Tensor, vertical: torch.Tensor) -> torch.Tensor:
    """Flip the images whose flag is set; the others pass through unchanged."""
    h = horizontal.to(images.device).view(-1, 1, 1, 1)
    v = vertical.to(images.device).view(-1, 1, 1, 1)
    images = torch.where(h, images.flip(-1), images)
    return torch.where(v, images.flip(-2), images)


def adjust_brightness(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """torchvision's brightness: blend with black, i.e. scale and clamp to [0, 1]; factor 1 is the identity."""
    return (images * _per_image(factors, images)).clamp_(0.0, 1.0)


def adjust_contrast(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """torchvision's contrast: blend with the mean of the greyscale image (ITU-R 601-2 luma for RGB), clamp."""
    if images.shape[1] == 3:
        r, g, b = images.unbind(1)
        grey = r * 0.2989 + g * 0.587 + b * 0.114
    else:
        grey = images[:, 0]
    mean = grey.mean(dim=(-2, -1)).view(-1, 1, 1, 1)
    f = _per_image(factors, images)
    return (images * f + mean * (1.0 - f)).clamp_(0.0, 1.0)


def adjust_sharpness(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """torchvision's sharpness: blend with the [[1,1,1],[1,5,1],[1,1,1]]/13 smoothing, border pixels unsmoothed.

    Factor 1 is the identity, which is how RandomAdjustSharpness's "not applied" case is batched.
    """
    b, c, h, w = images.shape
    if images.numel() == 0 or h <= 2 or w <= 2:
        return images
    a, m = 1.0 / 13.0, 5.0 / 13.0
    kernel = torch.tensor([[a, a, a], [a, m, a], [a, a, a]], dtype=images.dtype, device=images.device)
    smoothed = F.conv2d(images.reshape(b * c, 1, h, w), kernel.view(1, 1, 3, 3)).view(b, c, h - 2, w - 2)
    out = images.clone()
    inner = out[..., 1:-1, 1:-1]
    inner.add_((smoothed - inner) * (1.0 - _per_image(factors, images)))
    return out.clamp_(0.0, 1.0)


def gaussian_blur(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """3x3 Gaussian blur with a per-image sigma: torchvision's kernel and reflect padding, one grouped conv."""
    b, c, h, w = images.shape
    lim = (3 - 1) / (2.0 * 2.0**0.5)  # torchvision's sample points: the kernel is softmax(-(x / sigma) ** 2)
    x = torch.linspace(-lim, lim, steps=3, dtype=images.dtype, device=images.device)
    s = sigmas.to(device=images.device, dtype=images.dtype).view(-1, 1)
    k1 = torch.softmax((x.view(1, 3) / s).pow(2).neg(), dim=1)  # (B, 3)
    k2 = k1.unsqueeze(-1) * k1.unsqueeze(-2)  # (B, 3, 3): rows the y kernel, columns the x kernel
    weight = k2.repeat_interleave(c, dim=0).unsqueeze(1)  # (B*C, 1, 3, 3), one kernel per image per channel
    padded = F.pad(images.reshape(1, b * c, h, w), [1, 1, 1, 1], mode="reflect")
    return F.conv2d(padded, weight, groups=b * c).view(b, c, h, w)


class BatchAugment(torch.nn.Module):
    """uint8 (B, C, H, W) + int64 seeds (B,) -> normalised float32 (B, C, H, W), on the images' device.

    recipe "authors" is transforms.train_transform("authors") batched; "none" is the eval transform.
    """

    def __init__(self, channels: int = 3, recipe: str = "authors"):
        super().__init__()
        if recipe not in RECIPES:
            raise ConfigError(f"data.augment: unknown recipe {recipe!r}; choose {' or '.join(RECIPES)}")
        mean, std = mean_std(channels)
        self.channels = channels
        self.recipe = recipe
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, seeds: torch.Tensor | None = None) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(
                f"expected uint8 (B, {self.channels}, H, W) images, got {images.dtype} {tuple(images.shape)}"
            )
        x = images.to(torch.float32).mul_(1.0 / 255.0)  # as v2.ToDtype(float32, scale=True)
        if self.recipe == "authors":
            if seeds is None or torch.as_tensor(seeds).numel() != len(images):
                raise ValueError(f"need one seed per image ({len(images)})")
            p = draw_params(seeds)  # stays on the CPU: the ops move what they need, and rotate wants CPU angles
            x = rotate(x, p.angles)
            x = flip(x, p.hflip, p.vflip)
            # the random order of ColorJitter's two ops: brightness before or after contrast; factor 1 is the identity
            one = torch.ones_like(p.brightness)
            x = adjust_brightness(x, torch.where(p.brightness_first, p.brightness, one))
            x = adjust_contrast(x, p.contrast)
            x = adjust_brightness(x, torch.where(p.brightness_first, one, p.brightness))
            x = adjust_sharpness(x, torch.where(p.sharpen, torch.full_like(one, SHARPNESS_FACTOR), one))
            x = gaussian_blur(x, p.sigmas)
        mean = self.mean.to(x.device)
        std = self.std.to(x.device)
        return x.sub_(mean).div_(std)
