"""A saliency map drawn over its image as a PNG: what `hdkd explain` writes and `hdkd serve` shows.

Rendering only: the maps are computed in `hdkd.deploy.explain`. Models see small images (32 px for the CPU
presets), so the image and its map are enlarged (bilinear) until the shorter side is at least ``min_size`` pixels.
"""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib import colormaps
from PIL import Image

DEFAULT_MIN_SIZE = 256
DEFAULT_ALPHA = 0.45
DEFAULT_COLORMAP = "jet"


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be (H, W), (H, W, 1) or (H, W, 3), got {image.shape}")
    return image


def overlay_array(
    image: np.ndarray,
    saliency: np.ndarray,
    min_size: int = DEFAULT_MIN_SIZE,
    alpha: float = DEFAULT_ALPHA,
    colormap: str = DEFAULT_COLORMAP,
) -> np.ndarray:
    """uint8 (H', W', 3): the colour-mapped ``saliency`` (H, W, values in [0, 1]) blended over ``image`` (uint8,
    same H, W), both enlarged by the smallest integer factor that makes the shorter side >= ``min_size``."""
    rgb = _as_rgb(image)
    saliency = np.asarray(saliency, dtype=np.float32)
    if saliency.shape != rgb.shape[:2]:
        raise ValueError(f"map {saliency.shape} and image {rgb.shape[:2]} differ in size")
    scale = max(1, math.ceil(min_size / min(rgb.shape[:2])))
    size = (rgb.shape[1] * scale, rgb.shape[0] * scale)  # PIL: (width, height)
    big_image = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR), dtype=np.float32)
    big_map = np.asarray(Image.fromarray(np.clip(saliency, 0, 1)).resize(size, Image.BILINEAR))
    heat = colormaps[colormap](np.clip(big_map, 0, 1))[..., :3] * 255.0
    return np.clip((1 - alpha) * big_image + alpha * heat + 0.5, 0, 255).astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def render_overlay(
    image: np.ndarray,
    saliency: np.ndarray,
    min_size: int = DEFAULT_MIN_SIZE,
    alpha: float = DEFAULT_ALPHA,
    colormap: str = DEFAULT_COLORMAP,
) -> bytes:
    """The overlay of `overlay_array` encoded as PNG bytes."""
    return png_bytes(overlay_array(image, saliency, min_size, alpha, colormap))
