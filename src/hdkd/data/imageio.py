"""Decoding any image file into one predictable array: uint8, height x width x channels (1 or 3).

Medical datasets mix modes (the Brain Tumor MRI set holds RGB, L, RGBA and palette JPEGs side by side), and
16-bit or float scans are common; every mode is converted here, once, so nothing downstream has to care.

Conventions (deliberate, documented):
- 16-bit, 32-bit integer and float images (PIL modes I;16*, I, F) are rescaled linearly from their OWN minimum
  and maximum to 0..255 (never clipped; a constant image becomes all 0; NaN/inf pixels count as the minimum).
- Transparency is removed by compositing over black: an opaque pixel keeps its colour, a fully transparent one
  becomes black.
- Colour to grey uses the ITU-R 601 luma, L = (299 R + 587 G + 114 B) / 1000; grey to colour repeats the channel.
- Multi-frame files (GIF, TIFF) use their first frame. EXIF orientation is NOT applied (as in torchvision's
  ImageFolder, which the authors' code uses).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from hdkd.errors import DataError

_GREY_MODES = {"1", "L", "LA", "La"}
_HIGH_DEPTH_MODES = {"I", "F"}  # plus every "I;16..." variant
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


def load_image(path: str | Path, channels: int) -> np.ndarray:
    """Read `path` and return a uint8 array (H, W, channels); unreadable files raise DataError naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so that truncated files fail here
            return image_to_array(img, channels)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        reason = str(exc).replace(str(path), "").replace("''", "").strip() or type(exc).__name__
        raise DataError(f"{path}: corrupt or unreadable image ({reason})") from None


def image_to_array(img: Image.Image, channels: int) -> np.ndarray:
    """Convert a decoded PIL image of any mode to uint8 (H, W, channels), following the module's conventions."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    mode = img.mode
    if mode in _HIGH_DEPTH_MODES or mode.startswith("I;16"):
        array = _rescale_to_uint8(np.asarray(img))
    elif mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        composited = ((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8)
        array = composited[..., 0] if mode in _GREY_MODES else composited
    elif mode in _GREY_MODES:
        array = np.asarray(img.convert("L"))
    else:  # RGB, P, CMYK, YCbCr, LAB, HSV, RGBX, ...
        array = np.asarray(img.convert("RGB"))
    return to_channels(array, channels)


def to_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3) uint8 -> (H, W, channels); works on batches (..., H, W, C) too when C is given."""
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] == channels:
        return np.ascontiguousarray(array)
    if channels == 3 and array.shape[-1] == 1:
        return np.ascontiguousarray(np.repeat(array, 3, axis=-1))
    if channels == 1 and array.shape[-1] == 3:
        return rgb_to_luma(array)[..., None]
    raise ValueError(f"cannot convert {array.shape[-1]} channels to {channels}")


def rgb_to_luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of a uint8 (..., 3) array, rounded to the nearest integer (the same formula PIL uses)."""
    weighted = rgb.astype(np.uint32) @ np.array([299, 587, 114], dtype=np.uint32)
    return ((weighted + 500) // 1000).astype(np.uint8)


def _rescale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map an image's own min..max linearly onto 0..255 (constant -> 0); non-finite pixels count as the minimum."""
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.uint8)
    low, high = values[finite].min(), values[finite].max()
    values = np.where(finite, values, low)
    if high == low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def resize_image(array: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 (H, W, C) to (size, size, C), ignoring the aspect ratio as the authors do (224 x 224).

    PIL bilinear resampling, which is antialiased when shrinking (its filter widens with the scale factor), i.e.
    what torchvision's Resize((size, size)) does on the PIL images the authors feed it. Returned unchanged when it
    already has that size.
    """
    height, width, channels = array.shape
    if height == size and width == size:
        return array
    img = Image.fromarray(array[..., 0] if channels == 1 else array)
    resized = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))
    return resized.reshape(size, size, channels)
