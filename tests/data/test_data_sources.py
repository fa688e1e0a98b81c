"""Dataset discovery: folder layouts, metadata CSVs and MedMNIST files, and the errors for each kind of mistake."""

from __future__ import annotations

import numpy as np
import pytest
from data_helpers import class_rows, csv_dataset, folder_dataset, write_image

from hdkd.config import DataConfig
from hdkd.data.sources import discover_source
from hdkd.errors import DataError


def discover(path, **options):
    return discover_source(DataConfig(path=str(path), **options))


# ------------------------------------------------------------------------------------------------- folders


def test_single_pool_becomes_train_with_sorted_classes(tmp_path):
    folder_dataset(tmp_path, {"": {"zeta": 2, "alpha": 3, "Mid": 1}})
    source = discover(tmp_path)
    assert source.class_names == ["Mid", "alpha", "zeta"]
    assert source.val is None and source.test is None
    assert list(source.train.labels) == [0, 1, 1, 1, 2, 2]
    assert [p.parent.name for p in source.train.paths] == ["Mid", "alpha", "alpha", "alpha", "zeta", "zeta"]
    assert source.train.labels.dtype == np.int64


def test_split_folders_are_matched_case_insensitively(tmp_path):
    folder_dataset(tmp_path, {"TRAINING": {"a": 3, "b": 2}, "Valid": {"a": 1, "b": 1}, "test": {"a": 2, "b": 2}})
    source = discover(tmp_path)
    assert (len(source.train), len(source.val), len(source.test)) == (5, 2, 4)
    assert all("TRAINING" in str(p) for p in source.train.paths)
    assert all("Valid" in str(p) for p in source.val.paths)


def test_kaggle_layout_has_no_val_split(tmp_path):
    folder_dataset(tmp_path, {"Training": {"glioma": 2, "notumor": 2}, "Testing": {"glioma": 1, "notumor": 1}})
    source = discover(tmp_path)
    assert source.val is None
    assert source.class_names == ["glioma", "notumor"]
    assert list(source.test.labels) == [0, 1]


def test_hidden_files_ignored_and_uppercase_extensions_accepted(tmp_path):
    folder_dataset(tmp_path, {"": {"a": 1, "b": 1}})
    (tmp_path / "a" / ".DS_Store").write_text("junk")
    (tmp_path / ".hidden_class").mkdir()
    write_image(tmp_path / ".hidden_class" / "x.png", 1)
    write_image(tmp_path / "b" / "UPPER.JPG", 5)
    source = discover(tmp_path)
    assert source.class_names == ["a", "b"]
    assert len(source.train) == 3


def test_non_image_file_in_class_folder(tmp_path):
    folder_dataset(tmp_path, {"": {"a": 1, "b": 1}})
    (tmp_path / "b" / "readme.txt").write_text("notes")
    with pytest.raises(DataError, match=r"readme\.txt: not an image file \(unsupported extension \.txt"):
        discover(tmp_path)


def test_empty_class_folder(tmp_path):
    folder_dataset(tmp_path, {"Training": {"a": 1}, "Testing": {"a": 1}})
    (tmp_path / "Training" / "b").mkdir()
    with pytest.raises(DataError, match=r"Training/b: class folder holds no images"):
        discover(tmp_path)


def test_missing_path_and_folder_without_classes(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: data path does not exist"):
        discover(tmp_path / "nowhere")
    write_image(tmp_path / "loose.png", 3)
    with pytest.raises(DataError, match="no class folders"):
        discover(tmp_path)


def test_inconsistent_class_sets_name_split_and_classes(tmp_path):
    folder_dataset(tmp_path, {"Training": {"a": 1, "b": 1, "c": 1}, "Testing": {"a": 1, "b": 1, "d": 1}})
    with pytest.raises(DataError) as info:
        discover(tmp_path)
    message = str(info.value)
    assert "Testing" in message and "test" in message and "lacks c" in message and "extra d" in message


def test_stray_folder_next_to_split_folders(tmp_path):
    folder_dataset(tmp_path, {"Training": {"a": 1}, "Testing": {"a": 1}, "extra": {"a": 1}})
    with pytest.raises(DataError, match="extra"):
        discover(tmp_path)


# ----------------------------------------------------------------------------------------------------- CSV


def test_csv_with_split_column(tmp_path):
    rows = (
        class_rows({"nv": 3, "mel": 2}, "train")
        + class_rows({"nv": 1, "mel": 1}, "Validation")
        + class_rows({"nv": 1, "mel": 1}, "TEST")
    )
    for i, row in enumerate(rows):  # unique ids across splits
        row["image_id"] = f"img{i:03d}"
    csv_dataset(tmp_path, rows, ext=".jpg")
    source = discover(tmp_path)
    assert source.format == "csv"
    assert source.class_names == ["mel", "nv"]
    assert (len(source.train), len(source.val), len(source.test)) == (5, 2, 2)
    assert list(source.train.labels) == [1, 1, 1, 0, 0]
    assert source.train.paths[0].name == "img000.jpg" and source.train.paths[0].parent.name == "images"


def test_csv_image_id_with_extension_and_explicit_options(tmp_path):
    rows = [{"file": "x1.png", "label": "b", "part": "training"}, {"file": "x2.png", "label": "a", "part": "testing"}]
    root = tmp_path / "data"
    for i, row in enumerate(rows):
        write_image(root / "pics" / row["file"], i)
    (root / "meta.csv").write_text(
        "file,label,part\n" + "".join(f"{r['file']},{r['label']},{r['part']}\n" for r in rows)
    )
    source = discover(
        root, csv="meta.csv", image_column="file", label_column="label", split_column="part", image_dirs=["pics"]
    )
    assert source.class_names == ["a", "b"]
    assert [p.name for p in source.train.paths] == ["x1.png"] and [p.name for p in source.test.paths] == ["x2.png"]


def test_csv_missing_image_names_row_and_id(tmp_path):
    rows = class_rows({"nv": 4}, "train")
    csv_dataset(tmp_path, rows, missing=("nv_0002",))
    with pytest.raises(DataError) as info:
        discover(tmp_path)
    message = str(info.value)
    assert "labels.csv: row 3" in message and "'nv_0002'" in message and "not found" in message


def test_csv_unknown_split_value_names_row(tmp_path):
    rows = class_rows({"nv": 3}, "train")
    rows[1]["split"] = "holdout"
    csv_dataset(tmp_path, rows)
    with pytest.raises(DataError, match=r"labels\.csv: row 2: unknown split 'holdout'"):
        discover(tmp_path)


def test_csv_missing_column_lists_present_columns(tmp_path):
    csv_dataset(tmp_path, class_rows({"nv": 2}, "train"))
    with pytest.raises(DataError, match=r"column 'diagnosis' not found; columns present: image_id, dx, split"):
        discover(tmp_path, csv="labels.csv", label_column="diagnosis")


def test_csv_selection_errors(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="no CSV file"):
        discover(tmp_path / "a", format="csv")
    csv_dataset(tmp_path / "b", class_rows({"nv": 2}, "train"))
    (tmp_path / "b" / "other.csv").write_text("x\n1\n")
    with pytest.raises(DataError, match="2 CSV files"):
        discover(tmp_path / "b", format="csv")


def test_csv_without_split_column_holds_out_stratified_test(tmp_path):
    csv_dataset(tmp_path, class_rows({"nv": 50, "mel": 20, "df": 10}))
    source = discover(tmp_path)
    assert source.val is None  # carved from train later, by build_datasets
    test_counts = np.bincount(source.test.labels, minlength=3)
    assert list(test_counts) == [2, 4, 10]  # df, mel, nv: 20% of each
    assert not set(source.train.paths) & set(source.test.paths)
    again = discover(tmp_path)
    assert again.test.paths == source.test.paths


# ------------------------------------------------------------------------------------------------ MedMNIST


def medmnist_arrays(grey=True, n=(6, 2, 3), labels_2d=True):
    rng = np.random.default_rng(0)
    out = {}
    for split, count in zip(("train", "val", "test"), n):
        shape = (count, 28, 28) if grey else (count, 28, 28, 3)
        out[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        labels = np.arange(count) % 3
        out[f"{split}_labels"] = labels[:, None] if labels_2d else labels
    return out


def test_medmnist_grey_and_rgb(tmp_path):
    arrays = medmnist_arrays()
    arrays["train_labels"][0, 0] = 4  # class count = max train label + 1
    np.savez(tmp_path / "grey.npz", **arrays)
    source = discover(tmp_path / "grey.npz")
    assert source.format == "medmnist" and source.grey is True
    assert source.class_names == ["0", "1", "2", "3", "4"]
    arrays["test_labels"][0, 0] = 5  # beyond every train label: named as out of range, not as a missing class
    np.savez(tmp_path / "leaky.npz", **arrays)
    with pytest.raises(
        DataError, match=r"leaky.npz: test_labels: label 5 is out of range \(the train labels are 0..4\)"
    ):
        discover(tmp_path / "leaky.npz")
    assert (len(source.train), len(source.val), len(source.test)) == (6, 2, 3)
    np.testing.assert_array_equal(source.train.images, arrays["train_images"])
    assert source.train.labels.shape == (6,) and source.train.labels.dtype == np.int64

    np.savez(tmp_path / "rgb.npz", **medmnist_arrays(grey=False, labels_2d=False))
    assert discover(tmp_path / "rgb.npz").grey is False


def test_medmnist_known_set_gets_its_official_class_names(tmp_path):
    arrays = medmnist_arrays()  # labels 0..2
    for split in ("train", "val", "test"):
        arrays[f"{split}_labels"] = arrays[f"{split}_labels"] % 2
    np.savez(tmp_path / "breastmnist.npz", **arrays)
    np.savez(tmp_path / "pneumoniamnist_64.npz", **arrays)
    np.savez(tmp_path / "dermamnist.npz", **arrays)  # 2 classes, but DermaMNIST has 7: indices stay
    np.savez(tmp_path / "mybreastmnist.npz", **arrays)  # not a name MedMNIST uses
    assert discover(tmp_path / "breastmnist.npz").class_names == ["malignant", "normal_or_benign"]
    assert discover(tmp_path / "pneumoniamnist_64.npz").class_names == ["normal", "pneumonia"]
    assert discover(tmp_path / "dermamnist.npz").class_names == ["0", "1"]
    assert discover(tmp_path / "mybreastmnist.npz").class_names == ["0", "1"]


def test_medmnist_label_tables_match_the_official_class_counts():
    from hdkd.data.medmnist_labels import LABELS, OFFICIAL

    counts = {
        "pathmnist": 9,
        "dermamnist": 7,
        "octmnist": 4,
        "pneumoniamnist": 2,
        "retinamnist": 5,
        "breastmnist": 2,
        "bloodmnist": 8,
        "tissuemnist": 8,
        "organamnist": 11,
        "organcmnist": 11,
        "organsmnist": 11,
    }
    assert {name: len(names) for name, names in LABELS.items()} == counts
    for name, names in LABELS.items():
        assert len(set(names)) == len(names) and all(n.isidentifier() and n.islower() for n in names), name
    assert OFFICIAL["octmnist"][0] == ("choroidal_neovascularization", "choroidal neovascularization")
    assert LABELS["organamnist"][1] == "femur_left" and LABELS["bloodmnist"][3] == "immature_granulocyte"


def test_medmnist_missing_keys(tmp_path):
    arrays = medmnist_arrays()
    del arrays["val_images"], arrays["test_labels"]
    np.savez(tmp_path / "partial.npz", **arrays)
    with pytest.raises(DataError, match=r"partial\.npz: missing key\(s\) val_images, test_labels"):
        discover(tmp_path / "partial.npz")


def test_auto_format_detection(tmp_path):
    rows = class_rows({"nv": 2, "mel": 2}, "train")
    csv_dataset(tmp_path / "derm", rows)  # one image folder next to the CSV: looks like a class folder
    assert discover(tmp_path / "derm").format == "csv"
    folder_dataset(tmp_path / "folders", {"": {"a": 1, "b": 1}})
    (tmp_path / "folders" / "notes.csv").write_text("x,y\n1,2\n")
    assert discover(tmp_path / "folders").format == "folder"
    with pytest.raises(DataError, match="not a dataset"):
        discover(write_image(tmp_path / "single.png", 1))
