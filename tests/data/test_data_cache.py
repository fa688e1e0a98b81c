"""The decode-once cache: reuse without decoding, invalidation on change, atomic writes, first error reported."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from data_helpers import folder_dataset, write_image

import hdkd.data.cache as cache
from hdkd.config import DataConfig
from hdkd.data import build_datasets
from hdkd.data.cache import cache_root, cached_file_images, prepare_arrays
from hdkd.data.imageio import load_image
from hdkd.errors import DataError


def npy_files(cache_dir) -> list[Path]:
    return sorted(Path(cache_dir).rglob("*.npy"))


def counting_loader(monkeypatch) -> list:
    calls = []

    def counted(path, channels):
        calls.append(path)
        return load_image(path, channels)

    monkeypatch.setattr(cache, "load_image", counted)
    return calls


def test_second_build_does_not_decode(tmp_path, cache_dir, monkeypatch):
    root = folder_dataset(tmp_path / "data", {"Training": {"a": 6, "b": 6}, "Testing": {"a": 2, "b": 2}})
    cfg = DataConfig(path=str(root), cache_dir=cache_dir, val_fraction=0.5)
    first = build_datasets(cfg, 10, None)
    assert len(npy_files(cache_dir)) == 3  # one per split

    def no_decoding(path, channels):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(cache, "load_image", no_decoding)
    second = build_datasets(cfg, 10, None)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(second.split(name).images, first.split(name).images)


def test_changed_file_invalidates_the_cache(tmp_path, cache_dir, monkeypatch):
    paths = [write_image(tmp_path / f"img{i}.png", 10 * i) for i in range(4)]
    calls = counting_loader(monkeypatch)
    before = cached_file_images(paths, 8, 1, cache_dir)
    assert len(calls) == 4
    cached_file_images(paths, 8, 1, cache_dir)
    assert len(calls) == 4  # cache hit

    write_image(paths[2], 200)
    stat = paths[2].stat()
    os.utime(paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    after = cached_file_images(paths, 8, 1, cache_dir)
    assert len(calls) == 8  # decoded again
    assert (after[2] == 200).all() and (before[2] == 20).all()

    cached_file_images(paths, 6, 1, cache_dir)  # another size: another entry
    cached_file_images(paths, 8, 3, cache_dir)  # another channel count: another entry
    assert len(calls) == 16 and len(npy_files(cache_dir)) == 4


def test_first_decode_error_is_raised_and_nothing_written(tmp_path, cache_dir):
    paths = [write_image(tmp_path / f"img{i}.png", i) for i in range(6)]
    for bad in (paths[1], paths[4]):
        bad.write_bytes(bad.read_bytes()[:30])
    with pytest.raises(DataError) as info:
        cached_file_images(paths, 8, 3, cache_dir)
    message = str(info.value)
    assert message.startswith(str(paths[1])) and "1 more" in message and "\n" not in message
    assert not npy_files(cache_dir) and not list(Path(cache_dir).rglob("*.tmp"))


def test_failed_write_leaves_no_partial_file(tmp_path, cache_dir, monkeypatch):
    paths = [write_image(tmp_path / f"img{i}.png", i) for i in range(3)]

    def broken_save(handle, array, **kwargs):
        handle.write(b"\x93NUMPY partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.np, "save", broken_save)
    with pytest.warns(UserWarning, match="cannot write the image cache"):
        images = cached_file_images(paths, 8, 1, cache_dir)
    assert images.shape == (3, 8, 8, 1)
    assert not npy_files(cache_dir) and not list(Path(cache_dir).rglob(".*tmp"))


def test_corrupt_cache_file_is_rebuilt(tmp_path, cache_dir):
    paths = [write_image(tmp_path / f"img{i}.png", 7 * i) for i in range(3)]
    good = cached_file_images(paths, 8, 1, cache_dir)
    (entry,) = npy_files(cache_dir)
    entry.write_bytes(b"garbage")
    np.testing.assert_array_equal(cached_file_images(paths, 8, 1, cache_dir), good)


def test_cache_root_default_and_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("HDKD_CACHE_DIR", raising=False)
    assert cache_root(None) == Path.home() / ".cache" / "hdkd"
    monkeypatch.setenv("HDKD_CACHE_DIR", str(tmp_path / "env"))
    assert cache_root(None) == tmp_path / "env"
    assert cache_root(str(tmp_path / "explicit")) == tmp_path / "explicit"


def test_in_memory_arrays_resized_and_channel_converted():
    grey = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    same = prepare_arrays(grey, 4, 3)
    assert same.shape == (2, 4, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(same[..., c], grey)  # no resampling at the same size
    rgb = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    one = prepare_arrays(rgb, 8, 1)
    assert one.shape == (1, 8, 8, 1) and (one == 76).all()  # ITU-R 601 luma of pure red
    assert prepare_arrays(grey, 2, 1).shape == (2, 2, 2, 1)


def test_bytes_changed_with_size_and_mtime_restored_invalidates_the_cache(tmp_path, cache_dir, monkeypatch):
    paths = [write_image(tmp_path / f"img{i}.png", 10 * i) for i in range(3)]
    calls = counting_loader(monkeypatch)
    cached_file_images(paths, 8, 1, cache_dir)
    stat = paths[1].stat()
    write_image(paths[1], 90)  # same size (a constant 8 x 8 PNG), other pixels
    assert paths[1].stat().st_size == stat.st_size
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime restored, as sync tools do
    after = cached_file_images(paths, 8, 1, cache_dir)
    assert len(calls) == 6 and (after[1] == 90).all()


def test_a_moved_dataset_keeps_its_cache_and_odd_names_do_not_break_the_key(tmp_path, cache_dir, monkeypatch):
    odd = os.fsdecode(b"caf\xe9-\xff.png")  # a Latin-1 file name: not UTF-8
    paths = [write_image(tmp_path / "a" / name, i) for i, name in enumerate(["x.png", odd])]
    calls = counting_loader(monkeypatch)
    cached_file_images(paths, 8, 1, cache_dir)
    moved = tmp_path / "b"
    (tmp_path / "a").rename(moved)
    cached_file_images([moved / p.name for p in paths], 8, 1, cache_dir)
    assert len(calls) == 2  # decoded once


def test_a_symlink_loop_is_a_data_error(tmp_path, cache_dir):
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    with pytest.raises(DataError, match="loop.png: image file not accessible"):
        cached_file_images([loop], 8, 1, cache_dir)
