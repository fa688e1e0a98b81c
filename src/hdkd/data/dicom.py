"""Reading DICOM files into the 8-bit pictures a model takes, as a radiology viewer would show them.

Grey images (MONOCHROME1/2), per frame, in the order of the DICOM display pipeline (PS3.3 C.11, PS3.4 N.2):

1. the modality LUT: Rescale Slope/Intercept or a Modality LUT Sequence (stored values -> e.g. Hounsfield units);
2. the VOI transform: the file's VOI LUT Sequence or its first Window Center/Width (with its VOI LUT Function),
   or the caller's explicit ``window=(center, width)`` instead, applied as LINEAR (PS3.3 C.11.2.1.2); its output
   range is the one the standard defines (pydicom's). Without any window the frame's own min..max is used;
3. MONOCHROME1 (white is low) inverted, so that every picture has white as high, as the training images do;
4. the range mapped linearly to 0..255 (uint8).

Colour images (RGB, YBR_FULL, YBR_FULL_422, YBR_ICT, YBR_RCT, PALETTE COLOR) become RGB with their stored range
mapped to 0..255. Enhanced multi-frame files take each frame's rescale and window from their functional groups.
Every step is pydicom's (`pydicom.pixels`); this module only chooses the tags and maps the result to 8 bits.

A file is DICOM by its content (the 'DICM' marker after the 128-byte preamble), never by its name. Anything a user
can fix (not DICOM, truncated, no image, a compressed transfer syntax without its decoder plugin) is a one-line
DataError naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, apply_windowing, get_decoder, pixel_array
from pydicom.pixels.utils import get_nr_frames

from ..errors import ConfigError, DataError

PREAMBLE_BYTES = 128
MAGIC = b"DICM"
GREY = ("MONOCHROME1", "MONOCHROME2")
# pydicom returns these as RGB: YBR_FULL(_422) converted by pixel_array, YBR_ICT/RCT by the JPEG 2000 decoders.
RGB_LIKE = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
FUNCTIONAL_GROUP_ITEMS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")

Window = tuple[float, float]


def is_dicom(path: str | Path) -> bool:
    """Whether the file starts like a DICOM Part 10 file: a 128-byte preamble, then 'DICM'."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(PREAMBLE_BYTES + len(MAGIC))
    except OSError:
        return False
    return head[PREAMBLE_BYTES:] == MAGIC


def read_dicom_frames(path: str | Path, window: Optional[Window] = None) -> list[np.ndarray]:
    """Every frame of a DICOM file as uint8 (H, W) (grey) or (H, W, 3) (colour), following the module docstring;
    ``window`` (center, width) replaces the file's VOI transform of grey images (colour images have none)."""
    path = Path(path)
    check_window(window)
    ds = _read_dataset(path)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in GREY + RGB_LIKE + ("PALETTE COLOR",):
        raise DataError(
            f"{path}: unsupported DICOM Photometric Interpretation {photometric or '(none)'!r}; "
            f"expected one of {', '.join(GREY + RGB_LIKE)} or PALETTE COLOR"
        )
    frames = []
    try:
        # The whole array at once: pydicom 3.0's frame iterator fails on some JPEG 2000 sign corrections.
        pixels = pixel_array(ds)
        count = get_nr_frames(ds, warn=False)
        for index, frame in enumerate(pixels if count > 1 else [pixels]):
            if photometric in GREY:
                frames.append(_grey_to_uint8(frame, _frame_tags(ds, index, window), photometric))
            else:
                frames.append(_colour_to_uint8(frame, ds, photometric))
    except DataError:
        raise
    except Exception as exc:  # pydicom raises RuntimeError, ValueError, AttributeError... for undecodable data
        raise DataError(f"{path}: cannot decode the DICOM pixel data ({_one_line(exc)}){_decoder_hint(ds)}") from None
    if not frames:
        raise DataError(f"{path}: DICOM file holds no frames (Number of Frames is 0)")
    return frames


def check_window(window: Optional[Window]) -> None:
    if window is None:
        return
    center, width = window
    if not (np.isfinite(center) and np.isfinite(width)) or width < 1:
        raise ConfigError(
            f"--window: expected a finite CENTER and a WIDTH of at least 1 (DICOM LINEAR window), "
            f"got {center:g} {width:g}"
        )


def _read_dataset(path: Path) -> Dataset:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if not is_dicom(path):
        raise DataError(f"{path}: not a DICOM file (no 'DICM' marker after the 128-byte preamble)")
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: corrupt or unreadable DICOM file ({_one_line(exc)})") from None
    if not any(keyword in ds for keyword in PIXEL_KEYWORDS):
        raise DataError(
            f"{path}: DICOM file holds no image (no Pixel Data element: a report, a DICOMDIR or a truncated file)"
        )
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None:
        raise DataError(f"{path}: DICOM file has no Transfer Syntax UID in its file meta information")
    if syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            raise DataError(
                f"{path}: pixel data in transfer syntax {syntax.name} ({syntax}), which pydicom cannot decode"
            ) from None
        if not decoder.is_available:
            raise DataError(
                f"{path}: pixel data compressed as {syntax.name} ({syntax}) and no decoder plugin for "
                f"it is installed; install one of: {_plugins(decoder.missing_dependencies)}"
            )
    return ds


def _frame_tags(ds: Dataset, index: int, window: Optional[Window]) -> Dataset:
    """The image pixel, modality LUT and VOI LUT tags (group 0028) that apply to frame `index`: the file's, then
    an enhanced multi-frame file's shared and per-frame functional groups, then the explicit window."""
    tags = ds.group_dataset(0x0028)
    if hasattr(ds, "file_meta"):
        tags.file_meta = ds.file_meta  # LUT data stored as OW needs the file's byte order
    groups = [ds.get("SharedFunctionalGroupsSequence")]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    groups.append([per_frame[index]] if per_frame is not None and index < len(per_frame) else None)
    for sequence in groups:
        for keyword in FUNCTIONAL_GROUP_ITEMS:
            if sequence and keyword in sequence[0] and len(sequence[0][keyword].value):
                for element in sequence[0][keyword].value[0]:
                    tags.add(element)
    if window is not None:
        for keyword in ("VOILUTSequence", "VOILUTFunction"):
            if keyword in tags:
                delattr(tags, keyword)
        tags.WindowCenter, tags.WindowWidth = float(window[0]), float(window[1])
    return tags


def _grey_to_uint8(frame: np.ndarray, tags: Dataset, photometric: str) -> np.ndarray:
    values = apply_modality_lut(frame, tags)
    if tags.get("VOILUTSequence"):
        depth = int(tags.VOILUTSequence[0].LUTDescriptor[2])
        values = apply_voi_lut(np.rint(values).astype(np.int64), tags, prefer_lut=True)
        low, high = 0.0, float(2**depth - 1)
    elif "WindowCenter" in tags and "WindowWidth" in tags:
        values = apply_windowing(values, tags)
        # The output range pydicom maps a window onto (PS3.3 C.11.2.1.2: y_min..y_max): the images of -inf, +inf.
        low, high = apply_windowing(np.array([-np.inf, np.inf]), tags)
    else:
        low, high = _finite_range(values)
    values = np.asarray(values, dtype=np.float64)
    if photometric == "MONOCHROME1":
        values = low + high - values
    return _scale_to_uint8(values, low, high)


def _colour_to_uint8(frame: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
        high = float(np.iinfo(frame.dtype).max) if np.issubdtype(frame.dtype, np.integer) else 255.0
    else:
        high = float(2 ** int(ds.get("BitsStored") or 8) - 1)
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise DataError(f"expected 3 colour samples per pixel for {photometric}, got array shape {frame.shape}")
    return _scale_to_uint8(frame, 0.0, high)


def _finite_range(values: np.ndarray) -> tuple[float, float]:
    finite = np.asarray(values)[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)


def _scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """low..high linearly onto 0..255, clipped and rounded; a constant range gives 0, non-finite pixels count as low."""
    values = np.asarray(values, dtype=np.float64)
    if not high > low:
        return np.zeros(values.shape, dtype=np.uint8)
    values = np.where(np.isfinite(values), values, low)
    return np.rint(np.clip((values - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.uint8)


def _plugins(missing: list[str]) -> str:
    """pydicom's 'gdcm - requires gdcm>=3.0.10' lines -> 'gdcm (gdcm>=3.0.10)'; the packages to pip install."""
    parts = []
    for line in missing:
        name, _, needs = line.partition(" - requires ")
        parts.append(f"{name.strip()} ({needs.strip()})" if needs else line.strip())
    return "; ".join(parts) or "(pydicom names none)"


def _decoder_hint(ds: Dataset) -> str:
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None or not syntax.is_compressed:
        return ""
    missing = get_decoder(syntax).missing_dependencies
    return f"; another decoder plugin may read it: {_plugins(missing)}" if missing else ""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


__all__ = ["is_dicom", "read_dicom_frames", "check_window"]
