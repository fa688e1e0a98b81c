"""Decode and resize every image once, and keep the result, so training never decodes a JPEG again.

A split of image files becomes one uint8 array (N, size, size, C), saved as `<cache dir>/images/<key>.npy`.
The key hashes the files' contents (in order), the size, the channel count and CACHE_FORMAT_VERSION, so editing,
adding or removing an image (or changing the size) makes a new entry, even when size and mtime are restored. Files
are written to a temporary file in the same folder and then renamed (os.replace): a killed run never leaves a
half-written cache behind. A cache that cannot be written only costs a warning: the arrays are still returned.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from hdkd.data.imageio import load_image, resize_image, to_channels
from hdkd.data.sources import SplitData
from hdkd.errors import DataError
from hdkd.io import atomic_write
from hdkd.runtime import available_cpus

CACHE_FORMAT_VERSION = 2  # 2: keyed on file contents (1: paths, sizes, mtimes)
_STALE_TEMP_SECONDS = 24 * 3600
log = logging.getLogger(__name__)


def cache_root(cache_dir: Optional[str] = None) -> Path:
    """cache_dir if given, else $HDKD_CACHE_DIR, else ~/.cache/hdkd."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("HDKD_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hdkd"


def split_images(split: SplitData, size: int, channels: int, cache_dir: Optional[str] = None) -> np.ndarray:
    """The uint8 (N, size, size, channels) images of a split: arrays are resized in memory, files via the cache."""
    if split.images is not None:
        return prepare_arrays(split.images, size, channels)
    return cached_file_images(split.paths or [], size, channels, cache_dir)


def prepare_arrays(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """In-memory uint8 (N, H, W) or (N, H, W, 3) -> (N, size, size, channels); no resampling when already `size`."""
    if images.ndim == 3:
        images = images[..., None]
    if channels == 1:
        images = to_channels(images, 1)  # luma first: resizing one channel is cheaper than three
    n, height, width, c = images.shape
    if (height, width) != (size, size):
        resized = np.empty((n, size, size, c), dtype=np.uint8)

        def work(chunk: np.ndarray) -> None:
            for i in chunk:
                resized[i] = resize_image(images[i], size)

        _run_parallel(work, np.array_split(np.arange(n), max(1, min(n, available_cpus() * 4))))
        images = resized
    return to_channels(images, channels)


def cached_file_images(paths: Sequence[Path], size: int, channels: int, cache_dir: Optional[str] = None) -> np.ndarray:
    """Load the decoded images of `paths` from the cache, or decode them all (in parallel) and store them."""
    key = cache_key(paths, size, channels)
    folder = cache_root(cache_dir) / "images"
    target = folder / f"{len(paths)}x{size}x{size}x{channels}-{key}.npy"
    cached = _load_cached(target, (len(paths), size, size, channels))
    if cached is not None:
        return cached
    log.info("decoding %d images to %dx%d (cache: %s)", len(paths), size, size, target)
    images = decode_files(paths, size, channels)
    _save_atomically(images, target)
    return images


def cache_key(paths: Sequence[Path], size: int, channels: int) -> str:
    """Hash of the files' contents (SHA-256 of each file's bytes, in order), size, channels and the format version.

    The contents, not size and modification time: a file rewritten with its old size and mtime restored (a sync
    tool, `touch -r`) gets a new entry, and a moved or copied dataset keeps its entry. Reading and hashing
    Brain Tumor MRI's 7,023 files (159 MB) takes about 0.2 s with a warm page cache (docs/RESULTS.md).
    """
    digests: list[bytes] = [b""] * len(paths)

    def work(chunk: np.ndarray) -> None:
        for i in chunk:
            digests[i] = _file_digest(paths[i])

    n = len(paths)
    _run_parallel(work, np.array_split(np.arange(n), max(1, min(n, available_cpus() * 4))))
    digest = hashlib.sha256(f"hdkd-image-cache v{CACHE_FORMAT_VERSION} {size} {channels} {n}\n".encode())
    for file_digest in digests:
        digest.update(file_digest)
    return digest.hexdigest()[:32]


def _file_digest(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").digest()
    except OSError as exc:
        raise DataError(f"{path}: image file not accessible ({exc.strerror or exc})") from None


def decode_files(paths: Sequence[Path], size: int, channels: int) -> np.ndarray:
    """Decode and resize every file into one array, with a thread pool sized to the machine.

    PIL releases the GIL while decoding and resampling, so threads run in parallel without copying arrays
    between processes. Every file is tried; the first failure (in dataset order) is raised as DataError,
    mentioning how many others failed, so the user sees all that is wrong at once.
    """
    out = np.empty((len(paths), size, size, channels), dtype=np.uint8)
    errors: dict[int, DataError] = {}

    def work(chunk: np.ndarray) -> None:
        for i in chunk:
            try:
                out[i] = resize_image(load_image(paths[i], channels), size)
            except DataError as exc:
                errors[int(i)] = exc

    n = len(paths)
    _run_parallel(work, np.array_split(np.arange(n), max(1, min(n, available_cpus() * 8))))
    if errors:
        first = errors[min(errors)]
        more = f" (and {len(errors) - 1} more unreadable image(s))" if len(errors) > 1 else ""
        raise DataError(f"{first}{more}")
    return out


def _run_parallel(work, chunks) -> None:
    workers = min(available_cpus(), len(chunks))
    if workers <= 1:
        for chunk in chunks:
            work(chunk)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hdkd-decode") as pool:
        for _ in pool.map(work, chunks):  # re-raises unexpected exceptions from the workers
            pass


def _load_cached(path: Path, shape: tuple[int, ...]) -> Optional[np.ndarray]:
    if not path.is_file():
        return None
    try:
        array = np.load(path, mmap_mode=None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        log.warning("ignoring unreadable cache file %s (%s)", path, exc)
        return None
    if array.shape != shape or array.dtype != np.uint8:
        log.warning("ignoring cache file %s with unexpected shape %s", path, array.shape)
        return None
    return array


def _save_atomically(array: np.ndarray, target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temp_files(target.parent)
        atomic_write(target, lambda handle: np.save(handle, array, allow_pickle=False))
    except OSError as exc:
        warnings.warn(
            f"{target.parent}: cannot write the image cache ({exc.strerror or exc}); "
            f"images will be decoded again next time (set data.cache_dir)",
            stacklevel=3,
        )


def _remove_stale_temp_files(folder: Path) -> None:
    """Temp files left by runs killed mid-write; only old ones, so a concurrent writer is never disturbed."""
    now = time.time()
    for tmp in folder.glob(".*.npy.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TEMP_SECONDS:
                tmp.unlink()
        except OSError:
            pass
