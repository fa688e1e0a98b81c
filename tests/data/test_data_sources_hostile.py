"""Bad data refused with one line naming the file, row and value; doubtful data warned about and counted."""

from __future__ import annotations

import os

import numpy as np
import pytest
from data_helpers import class_rows, csv_dataset, folder_dataset, write_image

from hdkd.config import DataConfig
from hdkd.data import build_datasets
from hdkd.data.sources import discover_source
from hdkd.errors import DataError


def discover(path, **options):
    return discover_source(DataConfig(path=str(path), **options))


def ham_layout(root, rows=None):
    """HAM-10000's layout: a metadata CSV beside ONE image folder (which looks like a one-class folder dataset)."""
    return csv_dataset(root, rows or class_rows({"mel": 3, "nv": 3}), image_folder="HAM10000_images")


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "empty CSV"),
        ("image_id,dx\nmel_0000,mel\n".encode("utf-16"), "a UTF-16 CSV file; save it as UTF-8"),
        ("image_id,dx\nmel_0000,m\xe9l\n".encode("latin-1"), r"not a UTF-8 CSV file \(byte 22"),
        (b"name,diagnosis\nmel_0000,mel\n", "no CSV has the columns 'image_id' and 'dx'"),
    ],
)
def test_a_broken_or_foreign_csv_is_refused_not_read_as_a_folder(tmp_path, content, message):
    root = ham_layout(tmp_path / "ham")
    (root / "labels.csv").write_bytes(content)
    with pytest.raises(DataError, match=message):
        discover(root)


def test_a_class_folder_dataset_with_an_unrelated_csv_is_still_a_folder_dataset(tmp_path):
    root = folder_dataset(tmp_path / "d", {"": {"a": 2, "b": 2}})
    (root / "notes.csv").write_text("scanner,site\nx,y\n")
    assert discover(root).format == "folder"


def test_the_same_image_with_two_labels_is_an_error(tmp_path):
    rows = class_rows({"mel": 3, "nv": 3}) + [{"image_id": "mel_0001", "dx": "nv"}]
    with pytest.raises(DataError, match=r"rows 2 and 7 both name mel_0001.png, with labels 'mel' and 'nv'"):
        discover(ham_layout(tmp_path / "ham", rows))


def test_the_same_image_in_two_splits_is_a_leak(tmp_path):
    rows = class_rows({"mel": 3, "nv": 3}, split="train") + [{"image_id": "nv_0002", "dx": "nv", "split": "test"}]
    with pytest.raises(DataError, match=r"rows 6 and 7 .* in the train and test splits: .*leaks the test set"):
        discover(ham_layout(tmp_path / "ham", rows))


def test_a_repeated_row_is_dropped_with_a_warning_and_a_count_in_the_run_log(tmp_path, cache_dir):
    rows = class_rows({"mel": 4, "nv": 4}) + [{"image_id": "mel_0001", "dx": "mel"}] * 2
    root = ham_layout(tmp_path / "ham", rows)
    with pytest.warns(UserWarning, match="2 repeated row"):
        source = discover(root)
    assert len(source.train) + len(source.test) == 8
    with pytest.warns(UserWarning):
        built = build_datasets(DataConfig(path=str(root), cache_dir=cache_dir, val_fraction=0.0), 8)
    assert "2 repeated row(s)" in built.description


def test_a_one_image_class_is_warned_about_by_name(tmp_path):
    rows = class_rows({"mel": 3, "nv": 3}, split="train") + [{"image_id": "x", "dx": "mell", "split": "train"}]
    with pytest.warns(
        UserWarning, match=r"class 'mell' in column 'dx' has a single image \(row 7\) \(a typo of 'mel'\?\)"
    ):
        discover(ham_layout(tmp_path / "ham", rows))


@pytest.mark.parametrize("group", ["nan", "NaN", "N/A", "null", ""])
def test_a_missing_group_id_is_an_error(tmp_path, group):
    rows = class_rows({"mel": 3, "nv": 3}, groups_per_class=2, rng=np.random.default_rng(0))
    rows[4]["lesion_id"] = group
    with pytest.raises(DataError, match=rf"row 5: group column 'lesion_id' is {group!r}"):
        discover(ham_layout(tmp_path / "ham", rows), group_column="lesion_id")


@pytest.mark.parametrize(
    "image_id", ["../secret.png", "HAM10000_images/../../secret.png", "/etc/passwd", "..\\secret.png"]
)
def test_an_image_id_outside_the_data_folder_is_refused(tmp_path, image_id):
    write_image(tmp_path / "secret.png", 1)
    rows = class_rows({"mel": 3, "nv": 3})
    root = ham_layout(tmp_path / "ham", rows + [{"image_id": image_id, "dx": "nv"}])
    with pytest.raises(DataError, match="row 7: image id .* points outside the image folders"):
        discover(root)


def test_a_class_folder_name_that_is_not_utf8_is_named(tmp_path):
    root = folder_dataset(tmp_path / "d", {"": {"a": 2}})
    odd = tmp_path / "d" / os.fsdecode(b"caf\xe9")
    write_image(odd / "x.png", 3)
    with pytest.raises(DataError, match=r"class folder name b'caf\\xe9' is not UTF-8 text"):
        discover(root)


def test_symlinked_folders_are_followed_and_a_loop_is_an_error(tmp_path):
    outside = folder_dataset(tmp_path / "elsewhere", {"": {"more": 2}}) / "more"
    root = folder_dataset(tmp_path / "d", {"": {"a": 2, "b": 2}})
    (root / "a" / "linked").symlink_to(outside)
    assert len(discover(root).train) == 6
    (root / "b" / "loop").symlink_to(root / "b")
    with pytest.raises(DataError, match="loop: leads back to .* already read"):
        discover(root)
    (root / "b" / "loop").unlink()
    (root / "b" / "self.png").symlink_to(root / "b" / "self.png")
    with pytest.raises(DataError, match="self.png: a broken symlink or a symlink loop"):
        discover(root)


def test_one_class_is_not_a_dataset(tmp_path, cache_dir):
    root = folder_dataset(tmp_path / "d", {"": {"only": 4}})
    with pytest.raises(DataError, match=r"only one class \('only'\)"):
        build_datasets(DataConfig(path=str(root), cache_dir=cache_dir), 8)


def test_a_class_too_small_to_stratify_is_named_not_numbered(tmp_path):
    rows = class_rows({"mel": 5, "nv": 5}) + [{"image_id": "x", "dx": "mell"}]
    with pytest.warns(UserWarning, match="class 'mell'"):
        with pytest.raises(DataError, match=r"too few images to stratify: 'mell' \(1 image\)"):
            discover(ham_layout(tmp_path / "ham", rows))
