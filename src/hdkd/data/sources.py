"""Finding a dataset on disk: which images (or arrays) exist, their labels, and the splits the data itself defines.

Nothing is decoded here, so discovering even a large dataset is quick; decoding happens once, in `cache.py`.
Three formats: class folders (optionally inside Training/Validation/Testing folders), a metadata CSV
(HAM-10000 style) and a MedMNIST `.npz` file. Every problem a user can fix raises one-line DataError naming the
file, folder, row or key.
"""

from __future__ import annotations

import csv
import difflib
import io
import os
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from hdkd.config import DataConfig
from hdkd.data.medmnist_labels import medmnist_class_names
from hdkd.errors import DataError

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
# Files operating systems drop into folders; ignored like hidden files rather than reported as stray files.
_OS_JUNK = {"thumbs.db", "desktop.ini"}
CSV_TEST_FRACTION = 0.2  # test share when a CSV has no split column
MEDMNIST_KEYS = tuple(f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels"))


@dataclass
class SplitData:
    """One split: either image files (`paths`) or in-memory uint8 images (`images`), with int64 `labels`.

    `groups` (e.g. lesion ids from a CSV group column) says which images must stay in the same split.
    `origin` says where the split came from, for logs and reports.
    """

    labels: np.ndarray
    paths: Optional[list[Path]] = None
    images: Optional[np.ndarray] = None
    groups: Optional[np.ndarray] = None
    origin: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray, origin: Optional[str] = None) -> "SplitData":
        indices = np.asarray(indices, dtype=np.int64)
        return SplitData(
            labels=self.labels[indices],
            paths=None if self.paths is None else [self.paths[i] for i in indices],
            images=None if self.images is None else self.images[indices],
            groups=None if self.groups is None else self.groups[indices],
            origin=self.origin if origin is None else origin,
        )


@dataclass
class DatasetSource:
    """A discovered dataset: class names, the splits it defines (None where it defines none) and hints."""

    class_names: list[str]
    train: Optional[SplitData] = None
    val: Optional[SplitData] = None
    test: Optional[SplitData] = None
    grey: Optional[bool] = None  # True: every image is single-channel (known without decoding only for arrays)
    description: str = ""
    format: str = ""
    notes: list[str] = field(default_factory=list)  # warnings for the run log (also issued as UserWarning)

    def split(self, name: str) -> Optional[SplitData]:
        return getattr(self, name)

    @property
    def groups(self) -> dict[str, Optional[np.ndarray]]:
        """Group ids per split (None where the data has no group column)."""
        return {name: (s.groups if s is not None else None) for name, s in self.splits().items()}

    def splits(self) -> dict[str, Optional[SplitData]]:
        return {name: self.split(name) for name in SPLITS}


def discover_source(cfg: DataConfig) -> DatasetSource:
    """Discover the dataset `cfg` points to (cfg.path, cfg.format and the CSV options)."""
    fmt = (cfg.format or "auto").lower()
    if fmt not in ("auto", "folder", "csv", "medmnist"):
        raise DataError(f"data.format: unknown format {cfg.format!r}; choose auto, folder, csv or medmnist")
    if cfg.path is None and cfg.csv is None:
        raise DataError("data.path: no dataset path given")
    path = Path(cfg.path).expanduser() if cfg.path is not None else Path(cfg.csv).expanduser().parent
    if not path.exists():
        raise DataError(f"{path}: data path does not exist")
    if fmt == "auto":
        fmt = _detect_format(path, cfg)
    if fmt == "medmnist":
        return read_medmnist(path)
    if fmt == "csv":
        return read_csv_source(path, cfg)
    return read_folder_source(path)


def _detect_format(path: Path, cfg: DataConfig) -> str:
    """Which reader a path needs. A CSV beside the images decides, so a broken one is refused, never read past:
    falling back to the folders would turn a CSV-labelled dataset's image folder into a one-class dataset."""
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return "medmnist"
        if path.suffix.lower() == ".csv":
            return "csv"
        raise DataError(f"{path}: not a dataset (expected a folder, a .csv file or a MedMNIST .npz file)")
    if cfg.csv is not None:
        return "csv"
    csv_files = [p for p in _visible_entries(path) if p.suffix.lower() == ".csv" and p.is_file()]
    if not csv_files:
        return "folder"
    headers = {p: _csv_header(p) for p in csv_files}  # DataError for an empty, non-UTF-8 or malformed CSV
    wanted = {cfg.image_column, cfg.label_column}
    if any(wanted <= set(header) for header in headers.values()):
        return "csv"
    if len(_class_folders_with_images(path)) >= 2:  # a real class-folder dataset with some other CSV beside it
        return "folder"
    shown = "; ".join(f"{p.name} has {', '.join(map(repr, h)) or 'no columns'}" for p, h in headers.items())
    raise DataError(
        f"{path}: cannot tell the format: no CSV has the columns {cfg.image_column!r} and {cfg.label_column!r} "
        f"({shown}) and there are not two class folders; set data.image_column and data.label_column, "
        f"or data.format=folder"
    )


def _csv_header(csv_path: Path) -> list[str]:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            header = [h.strip() for h in next(csv.reader(handle), [])]
    except UnicodeDecodeError:
        raise DataError(f"{csv_path}: not a UTF-8 CSV file (save it as UTF-8, e.g. 'CSV UTF-8' in Excel)") from None
    except (OSError, csv.Error) as exc:
        raise DataError(f"{csv_path}: unreadable CSV ({exc})") from None
    if not any(header):
        raise DataError(f"{csv_path}: empty CSV (no header row)")
    return header


def _visible_entries(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise DataError(f"{folder}: cannot list folder ({exc.strerror or exc})") from None
    return [p for p in entries if not p.name.startswith(".") and p.name.lower() not in _OS_JUNK]


def _subfolders(folder: Path) -> list[Path]:
    return [p for p in _visible_entries(folder) if p.is_dir()]


def _class_folders_with_images(path: Path) -> list[Path]:
    """Folders that hold image files, directly under `path` or inside its split folders."""
    found = []
    for sub in _subfolders(path):
        folders = _subfolders(sub) if sub.name.lower() in SPLIT_ALIASES else [sub]
        found += [f for f in folders if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in _visible_entries(f))]
    return found


# --------------------------------------------------------------------------------------------- class folders


def read_folder_source(root: Path) -> DatasetSource:
    """`root/<class>/*` (one pool: the train split) or `root/<Split>/<class>/*` with Training/Validation/Testing.

    Split folder names are matched case-insensitively (train/training, val/valid/validation, test/testing).
    Class names are the sorted class folder names and must be the same in every split.
    """
    if not root.is_dir():
        raise DataError(f"{root}: expected a folder of class folders")
    subfolders = _subfolders(root)
    split_folders = [p for p in subfolders if p.name.lower() in SPLIT_ALIASES]
    if not split_folders:
        class_names, paths, labels = _read_class_folders(root)
        train = SplitData(labels=labels, paths=paths, origin=f"class folders of {root}")
        return DatasetSource(
            class_names=class_names,
            train=train,
            format="folder",
            description=f"class folders in {root} (no split folders: all images are train)",
        )

    others = [p.name for p in subfolders if p not in split_folders]
    if others:
        raise DataError(
            f"{root}: folder(s) {', '.join(others)} next to split folders "
            f"{', '.join(p.name for p in split_folders)}; expected only Training/Validation/Testing"
        )
    by_split: dict[str, Path] = {}
    for folder in split_folders:
        split = SPLIT_ALIASES[folder.name.lower()]
        if split in by_split:
            raise DataError(f"{root}: both {by_split[split].name} and {folder.name} are {split} folders")
        by_split[split] = folder

    found: dict[str, tuple[list[str], list[Path], np.ndarray]] = {
        split: _read_class_folders(folder) for split, folder in by_split.items()
    }
    reference_split = "train" if "train" in found else next(iter(found))
    reference = found[reference_split][0]
    for split, (names, _, _) in found.items():
        if names != reference:
            missing, extra = sorted(set(reference) - set(names)), sorted(set(names) - set(reference))
            parts = ([f"lacks {', '.join(missing)}"] if missing else []) + (
                [f"has extra {', '.join(extra)}"] if extra else []
            )
            raise DataError(
                f"{by_split[split]}: class folders differ from {by_split[reference_split].name}: "
                f"{split} split {' and '.join(parts)}"
            )
    splits = {
        split: SplitData(labels=labels, paths=paths, origin=f"{by_split[split].name} folder")
        for split, (_, paths, labels) in found.items()
    }
    names = ", ".join(f"{by_split[s].name} ({s})" for s in SPLITS if s in by_split)
    return DatasetSource(
        class_names=reference, format="folder", description=f"class folders in {root}: {names}", **splits
    )


def _read_class_folders(folder: Path) -> tuple[list[str], list[Path], np.ndarray]:
    class_folders = _subfolders(folder)
    if not class_folders:
        raise DataError(f"{folder}: no class folders found (expected {folder}/<class name>/<images>)")
    for class_folder in class_folders:
        _check_text_name(class_folder, "class folder")
    class_names = sorted(p.name for p in class_folders)
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        images = _image_files(folder / name)
        if not images:
            raise DataError(f"{folder / name}: class folder holds no images")
        paths.extend(images)
        labels.extend([label] * len(images))
    return class_names, paths, np.asarray(labels, dtype=np.int64)


def _check_text_name(path: Path, what: str) -> None:
    """A class name goes into reports and checkpoints as UTF-8 text: a folder name that is not UTF-8 is refused."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path.name)
        raise DataError(
            f"{path.parent}: {what} name {shown!r} is not UTF-8 text (it becomes a class name); rename it"
        ) from None


def _image_files(class_folder: Path) -> list[Path]:
    """Image files in a class folder and its subfolders (sorted, symlinked folders followed); any other visible file
    is an error, and so is a symlink loop."""
    files = []
    seen: set[str] = set()

    def on_error(exc: OSError) -> None:
        raise DataError(f"{exc.filename}: cannot list folder ({exc.strerror or exc})")

    for dirpath, dirnames, filenames in os.walk(class_folder, onerror=on_error, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            raise DataError(
                f"{dirpath}: leads back to {real}, already read (a symlink loop, or two links to one folder)"
            )
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.lower() in _OS_JUNK:
                continue
            path = Path(dirpath) / name
            if path.is_symlink() and not path.exists():
                raise DataError(f"{path}: a broken symlink or a symlink loop ({os.readlink(path)!r})")
            suffix = path.suffix.lower()
            if suffix not in IMAGE_EXTENSIONS:
                raise DataError(
                    f"{path}: not an image file (unsupported extension {suffix or '(none)'}; "
                    f"expected one of {', '.join(IMAGE_EXTENSIONS)})"
                )
            files.append(path)
    return files


# ------------------------------------------------------------------------------------------------------ CSV


def read_csv_source(path: Path, cfg: DataConfig) -> DatasetSource:
    """A metadata CSV with one row per image (HAM-10000 style): image id, label, optional group and split columns.

    Without a split column, a stratified 20% test split is made here (seed cfg.split_seed; group-aware when
    cfg.group_column is set); the validation split is then carved from train by `build_datasets`.
    """
    root = path.parent if path.is_file() else path
    csv_path = _find_csv(path, cfg)
    header, rows = _read_csv_rows(csv_path)

    split_column = cfg.split_column
    if split_column is None and "split" in header:
        split_column = "split"
    required = [cfg.image_column, cfg.label_column] + [c for c in (cfg.group_column, split_column) if c]
    for column in required:
        if column not in header:
            raise DataError(f"{csv_path}: column {column!r} not found; columns present: {', '.join(header)}")

    finder = _ImageFinder(_image_dirs(root, cfg), cfg.image_ext)
    paths, labels_text, groups, splits, numbers = [], [], [], [], []
    for number, row in enumerate(rows, start=1):
        where = f"{csv_path}: row {number}"
        image_id = (row.get(cfg.image_column) or "").strip()
        label = (row.get(cfg.label_column) or "").strip()
        if not image_id:
            raise DataError(f"{where}: empty {cfg.image_column!r}")
        if not label:
            raise DataError(f"{where}: empty label column {cfg.label_column!r} for image {image_id!r}")
        image = finder.find(image_id, where)
        if image is None:
            raise DataError(f"{where}: image {image_id!r} not found in {finder.describe()}")
        paths.append(image)
        labels_text.append(label)
        numbers.append(number)
        if cfg.group_column:
            group = (row.get(cfg.group_column) or "").strip()
            if not group or group.lower() in _MISSING_VALUES:
                raise DataError(
                    f"{where}: group column {cfg.group_column!r} is {group!r} for image {image_id!r} "
                    f"(a missing value; every image needs its group id, e.g. its patient or lesion)"
                )
            groups.append(group)
        if split_column:
            value = (row.get(split_column) or "").strip()
            if value.lower() not in SPLIT_ALIASES:
                raise DataError(
                    f"{where}: unknown split {value!r} in column {split_column!r} "
                    f"(expected train/training, val/valid/validation or test/testing)"
                )
            splits.append(SPLIT_ALIASES[value.lower()])
    if not paths:
        raise DataError(f"{csv_path}: no data rows")
    keep, notes = _check_repeated_images(csv_path, paths, labels_text, splits, numbers)
    paths, labels_text, numbers = [paths[i] for i in keep], [labels_text[i] for i in keep], [numbers[i] for i in keep]
    groups = [groups[i] for i in keep] if groups else groups
    splits = [splits[i] for i in keep] if splits else splits
    notes += _single_image_classes(csv_path, labels_text, numbers, cfg.label_column)
    for note in notes:
        warnings.warn(note, stacklevel=2)

    class_names = sorted(set(labels_text))
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.asarray([index[t] for t in labels_text], dtype=np.int64)
    group_array = np.asarray(groups, dtype=object) if cfg.group_column else None
    everything = SplitData(labels=labels, paths=paths, groups=group_array)

    description = f"CSV {csv_path} ({len(paths)} rows, label column {cfg.label_column!r}"
    description += f", groups {cfg.group_column!r})" if cfg.group_column else ")"
    out: dict[str, Optional[SplitData]] = {}
    if split_column:
        split_array = np.asarray(splits)
        for split in SPLITS:
            selected = np.flatnonzero(split_array == split)
            out[split] = everything.subset(selected, origin=f"CSV {split_column}={split}") if len(selected) else None
        description += f", splits from column {split_column!r}"
    else:
        train_idx, test_idx = split_indices(
            labels, CSV_TEST_FRACTION, cfg.split_seed, group_array, f"{csv_path}: test split", class_names
        )
        how = f"{CSV_TEST_FRACTION:.0%} stratified{', grouped' if cfg.group_column else ''}, seed {cfg.split_seed}"
        out["train"] = everything.subset(train_idx, origin=f"CSV rows not in test ({how})")
        out["test"] = everything.subset(test_idx, origin=f"CSV rows ({how})")
        out["val"] = None
        description += f", no split column: test is {how}"
    return DatasetSource(class_names=class_names, format="csv", description=description, notes=notes, **out)


def _find_csv(path: Path, cfg: DataConfig) -> Path:
    if path.is_file():
        return path
    if cfg.csv is not None:
        given = Path(cfg.csv).expanduser()
        candidate = given if given.is_absolute() or not (path / given).is_file() else path / given
        if not candidate.is_file():
            raise DataError(f"{candidate}: CSV file not found (data.csv)")
        return candidate
    found = [p for p in _visible_entries(path) if p.suffix.lower() == ".csv" and p.is_file()]
    if len(found) != 1:
        which = "no CSV file" if not found else f"{len(found)} CSV files ({', '.join(p.name for p in found)})"
        raise DataError(f"{path}: {which}; set data.csv to the metadata CSV")
    return found[0]


def _read_csv_text(csv_path: Path) -> str:
    """The CSV's text: UTF-8 (with or without a BOM); UTF-16 and other encodings are refused, not misread."""
    try:
        data = csv_path.read_bytes()
    except OSError as exc:
        raise DataError(f"{csv_path}: unreadable CSV ({exc.strerror or exc})") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data[:4096]:
        raise DataError(f"{csv_path}: a UTF-16 CSV file; save it as UTF-8 (e.g. 'CSV UTF-8' in Excel)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{csv_path}: not a UTF-8 CSV file (byte {exc.start} is not UTF-8); save it as UTF-8") from None


def _csv_header(csv_path: Path) -> list[str]:
    header, _ = _read_csv_rows(csv_path)
    return header


def _read_csv_rows(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    text = _read_csv_text(csv_path)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        rows = list(reader)
    except csv.Error as exc:
        raise DataError(f"{csv_path}: unreadable CSV ({exc})") from None
    if not any(header):
        raise DataError(f"{csv_path}: empty CSV (no header row)")
    return header, rows


# values spreadsheets and pandas write for "no value"
_MISSING_VALUES = {"nan", "na", "n/a", "null", "none", "-", "?"}


def _check_repeated_images(
    csv_path: Path, paths: list[Path], labels: list[str], splits: list[str], numbers: list[int]
) -> tuple[list[int], list[str]]:
    """Rows naming the same image file: two labels or two splits (a leak) are errors; a plain repeat is dropped,
    with a note. Returns the rows to keep and the notes."""
    first: dict[str, int] = {}
    keep, repeats = [], 0
    for i, path in enumerate(paths):
        key = os.path.normpath(str(path))
        j = first.setdefault(key, i)
        if j == i:
            keep.append(i)
            continue
        both = f"{csv_path}: rows {numbers[j]} and {numbers[i]} both name {path.name}"
        if labels[i] != labels[j]:
            raise DataError(f"{both}, with labels {labels[j]!r} and {labels[i]!r}; one image has one label")
        if splits and splits[i] != splits[j]:
            raise DataError(
                f"{both}, in the {splits[j]} and {splits[i]} splits: the same image in two splits leaks "
                f"{'the test set' if 'test' in (splits[i], splits[j]) else 'validation'}; keep one row"
            )
        repeats += 1
    notes = [f"{csv_path}: {repeats} repeated row(s) naming an image already listed with the same label (ignored)"]
    return keep, notes if repeats else []


def _single_image_classes(csv_path: Path, labels: list[str], numbers: list[int], column: str) -> list[str]:
    """A class with one image is usually a typo in the label column: a warning naming it (and a likely intended
    class), not an error, since a rare class can be real; stratified splitting then refuses it with its name."""
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    common = [name for name, n in counts.items() if n > 1]
    notes = []
    for name, n in sorted(counts.items()):
        if n == 1:
            row = numbers[labels.index(name)]
            close = difflib.get_close_matches(name, common, n=1)
            hint = f" (a typo of {close[0]!r}?)" if close else ""
            notes.append(f"{csv_path}: class {name!r} in column {column!r} has a single image (row {row}){hint}")
    return notes


def _image_dirs(root: Path, cfg: DataConfig) -> list[Path]:
    if cfg.image_dirs is None:
        return [root] + _subfolders(root)
    dirs = []
    for entry in cfg.image_dirs:
        folder = Path(entry).expanduser()
        folder = folder if folder.is_absolute() else root / folder
        if not folder.is_dir():
            raise DataError(f"{folder}: image folder not found (data.image_dirs)")
        dirs.append(folder)
    return dirs


class _ImageFinder:
    """Finds `<image id>.<ext>` in a list of folders, listing each folder once (fast for 10,000s of rows)."""

    def __init__(self, folders: list[Path], image_ext: Optional[str]):
        self.folders = folders
        self.ext = None if image_ext is None else "." + image_ext.lstrip(".").lower()
        self.by_name: dict[str, Path] = {}
        self.by_stem: dict[str, Path] = {}
        rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
        for folder in folders:  # earlier folders win; within one folder, earlier extensions in the list win
            files = [p for p in _visible_entries(folder) if p.suffix.lower() in IMAGE_EXTENSIONS]
            for file in sorted(files, key=lambda p: rank[p.suffix.lower()]):
                self.by_name.setdefault(file.name, file)
                if self.ext is None or file.suffix.lower() == self.ext:
                    self.by_stem.setdefault(file.stem, file)

    def find(self, image_id: str, where: str = "") -> Optional[Path]:
        if Path(image_id).suffix.lower() in IMAGE_EXTENSIONS and image_id in self.by_name:
            return self.by_name[image_id]
        if image_id in self.by_stem:
            return self.by_stem[image_id]
        if "/" in image_id or "\\" in image_id:  # a relative path such as images/ISIC_0001.jpg
            relative = os.path.normpath(image_id.replace("\\", "/"))
            if os.path.isabs(relative) or relative == ".." or relative.startswith("../"):
                raise DataError(
                    f"{where}: image id {image_id!r} points outside the image folders ({self.describe()}); "
                    f"ids are file names or paths inside the data folder"
                )
            for folder in self.folders:
                candidate = folder / relative
                if candidate.suffix.lower() in IMAGE_EXTENSIONS and candidate.is_file():
                    return candidate
        return None

    def describe(self) -> str:
        shown = ", ".join(str(f) for f in self.folders[:3]) + (" ..." if len(self.folders) > 3 else "")
        return f"{shown} (extension {self.ext})" if self.ext else shown


def split_indices(
    labels: np.ndarray,
    fraction: float,
    seed: int,
    groups: Optional[np.ndarray] = None,
    what: str = "split",
    class_names: Optional[Sequence[str]] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of range(len(labels)) into (keep, held_out) with about `fraction` held out.

    Without groups: sklearn's train_test_split(stratify=labels), exact fraction. With groups: one fold of
    StratifiedGroupKFold(n_splits=round(1 / fraction), shuffle=True) so that no group is in both parts; the
    held-out share is then 1 / n_splits (approximate for fractions that are not 1/k). Both sorted, seeded.
    """
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    if not 0.0 < fraction < 1.0:
        raise DataError(f"{what}: fraction must be between 0 and 1, got {fraction}")
    indices = np.arange(len(labels))
    try:
        if groups is None:
            keep, held = train_test_split(indices, test_size=fraction, random_state=seed, stratify=labels)
        else:
            n_splits = max(2, int(round(1.0 / fraction)))
            folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            keep, held = next(folds.split(indices, labels, groups))
    except ValueError as exc:
        counts = np.bincount(np.asarray(labels, dtype=np.int64))
        rare = [int(c) for c in np.flatnonzero((counts > 0) & (counts < 2))]
        if rare:  # sklearn names classes by index: name them, with their counts
            named = ", ".join(f"{class_names[c] if class_names else c!r} (1 image)" for c in rare)
            reason = f"class(es) with too few images to stratify: {named}"
        else:
            reason = str(exc)
        raise DataError(
            f"{what}: cannot make a stratified {fraction:.0%} split of {len(labels)} images ({reason})"
        ) from None
    return np.sort(keep), np.sort(held)


# ------------------------------------------------------------------------------------------------- MedMNIST


def read_medmnist(path: Path) -> DatasetSource:
    """A MedMNIST v2 `.npz`: {train,val,test}_images (uint8, N x H x W or N x H x W x 3) and _labels (N or N x 1)."""
    if not path.is_file():
        raise DataError(f"{path}: expected a MedMNIST .npz file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in MEDMNIST_KEYS if key not in archive.files]
            if missing:
                raise DataError(
                    f"{path}: missing key(s) {', '.join(missing)} (keys present: {', '.join(archive.files) or 'none'})"
                )
            arrays = {key: archive[key] for key in MEDMNIST_KEYS}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: unreadable .npz file ({exc})") from None

    splits: dict[str, SplitData] = {}
    for split in SPLITS:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        key = f"{path}: {split}_images"
        if images.dtype != np.uint8:
            raise DataError(f"{key}: expected uint8 images, got {images.dtype}")
        if images.ndim == 4 and images.shape[-1] == 1:
            images = images[..., 0]
        if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
            raise DataError(f"{key}: expected shape (N, H, W) or (N, H, W, 3), got {images.shape}")
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1:
            raise DataError(
                f"{path}: {split}_labels: expected shape (N,) or (N, 1) (single-label classes), got {labels.shape}"
            )
        if len(labels) != len(images):
            raise DataError(f"{path}: {split}_labels has {len(labels)} entries but {split}_images has {len(images)}")
        if not np.issubdtype(labels.dtype, np.integer) or (len(labels) and labels.min() < 0):
            raise DataError(f"{path}: {split}_labels: expected non-negative integer class ids")
        splits[split] = SplitData(labels=labels.astype(np.int64), images=images, origin=f"npz {split}_*")
    ndims = {s.images.ndim for s in splits.values()}
    if len(ndims) != 1:
        raise DataError(f"{path}: grey and colour image arrays mixed across splits")
    if not any(len(s) for s in splits.values()):
        raise DataError(f"{path}: all splits are empty")
    num_classes, names = _medmnist_classes(path, splits)
    grey = ndims == {3}
    shape = next(iter(splits.values())).images.shape[1:]
    return DatasetSource(
        class_names=names,
        grey=grey,
        format="medmnist",
        description=f"MedMNIST {path.name} ({'grey' if grey else 'RGB'} "
        f"{'x'.join(map(str, shape))}, {num_classes} classes)",
        **splits,
    )


def _medmnist_classes(path: Path, splits: dict[str, SplitData]) -> tuple[int, list[str]]:
    """The class count (the train labels' maximum + 1) and names; a val or test label beyond the train labels is
    named as out of range, not left to look like a class missing from train."""
    reference = "train" if len(splits["train"]) else next(name for name, s in splits.items() if len(s))
    num_classes = int(splits[reference].labels.max()) + 1
    for split, data in splits.items():
        top = int(data.labels.max()) if len(data) else -1
        if top >= num_classes:
            raise DataError(
                f"{path}: {split}_labels: label {top} is out of range (the {reference} labels are 0..{num_classes - 1})"
            )
    # A MedMNIST file stores label indices only: its official names when the file name says which set it is.
    names = medmnist_class_names(path.name, num_classes) or [str(i) for i in range(num_classes)]
    return num_classes, names


__all__ = [
    "DatasetSource",
    "SplitData",
    "discover_source",
    "read_folder_source",
    "read_csv_source",
    "read_medmnist",
    "split_indices",
    "IMAGE_EXTENSIONS",
    "SPLITS",
]
