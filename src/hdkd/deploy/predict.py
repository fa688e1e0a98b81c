"""A trained model over image files, folders and DICOM files: one prediction row per image or per DICOM frame.

Every image reaches the model as in training (`read_model_image` for picture files, `fit_array` for DICOM frames
after `hdkd.data.dicom`'s display pipeline), with the size, channels and normalisation the model itself records,
so the caller passes nothing but the files. A file that cannot be read gets a row saying why and no prediction;
the others are predicted. The table becomes a CSV (`PredictionTable.to_csv`, written atomically by `write_csv`):

    path, frame, predicted, p_<class> (one per class, in the model's class order), error

``frame`` is the 1-based DICOM frame number (empty for other images); ``error`` is empty when the row was
predicted, and the prediction columns are empty when it was not.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from ..data.dicom import Window, check_window, is_dicom, read_dicom_frames
from ..data.sources import IMAGE_EXTENSIONS
from ..errors import DataError, HDKDError
from ..evaluation.inference import Classifier, ModelInfo, fit_array, read_model_image
from ..io import atomic_write_text

# Picture files PIL decodes (the suffixes the dataset folders accept) and DICOM files by their usual names; files
# with no suffix are taken when their content is DICOM (scanners often write IM0001-style names).
IMAGE_SUFFIXES = IMAGE_EXTENSIONS
DICOM_SUFFIXES = (".dcm", ".dicom")
_IGNORED_NAMES = {"thumbs.db", "desktop.ini", "dicomdir"}  # OS junk and DICOM media indexes (no pixels)
PROBABILITY_FORMAT = "{:.8g}"


@dataclass
class PredictionRow:
    path: str
    frame: Optional[int] = None  # 1-based DICOM frame number; None for picture files
    probabilities: Optional[np.ndarray] = None  # (classes,); None when the row failed
    error: str = ""


@dataclass
class PredictionTable:
    class_names: tuple[str, ...]
    rows: list[PredictionRow] = field(default_factory=list)
    temperature: Optional[float] = None  # the temperature applied (None: uncalibrated probabilities)
    skipped: list[Path] = field(default_factory=list)  # files in the folders that are neither images nor DICOM

    @property
    def failed(self) -> int:
        return sum(1 for row in self.rows if row.error)

    def predicted(self, row: PredictionRow) -> Optional[str]:
        return None if row.probabilities is None else self.class_names[int(np.argmax(row.probabilities))]

    def columns(self) -> list[str]:
        return ["path", "frame", "predicted"] + [f"p_{name}" for name in self.class_names] + ["error"]

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns())
        empty = [""] * len(self.class_names)
        for row in self.rows:
            probs = empty if row.probabilities is None else [PROBABILITY_FORMAT.format(p) for p in row.probabilities]
            writer.writerow(
                [row.path, "" if row.frame is None else row.frame, self.predicted(row) or "", *probs, row.error]
            )
        return buffer.getvalue()

    def write_csv(self, path: str | Path) -> Path:
        """Atomically: the file is either the complete table or whatever was there before."""
        return atomic_write_text(path, self.to_csv())


def collect_inputs(inputs: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """(files to predict, files skipped): given files as they are, folders searched recursively in sorted order."""
    files: list[Path] = []
    skipped: list[Path] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found, ignored = _folder_files(path)
            files.extend(found)
            skipped.extend(ignored)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    first: dict[Path, Path] = {}  # a file given twice (or inside two given folders) is predicted once
    for path in files:
        first.setdefault(path.resolve(), path)
    unique = list(first.values())
    if not unique:
        raise DataError(
            f"no image or DICOM files found in {', '.join(str(p) for p in inputs)} (image suffixes "
            f"{', '.join(IMAGE_SUFFIXES + DICOM_SUFFIXES)}, or DICOM content)"
        )
    return unique, skipped


def _folder_files(folder: Path) -> tuple[list[Path], list[Path]]:
    found, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.lower() in _IGNORED_NAMES:
                continue
            path = Path(dirpath) / name
            suffix = path.suffix.lower()
            if suffix in IMAGE_SUFFIXES + DICOM_SUFFIXES or (not suffix and is_dicom(path)):
                found.append(path)
            else:
                skipped.append(path)
    return sorted(found), sorted(skipped)  # by path: a subfolder sorts among the files by its name


def read_inputs(path: Path, info: ModelInfo, window: Optional[Window] = None) -> list[tuple[Optional[int], np.ndarray]]:
    """(frame number, uint8 image at the model's size) for each picture in the file: DICOM by content, not name."""
    if is_dicom(path):
        return [
            (number, fit_array(frame, info)) for number, frame in enumerate(read_dicom_frames(path, window), start=1)
        ]
    return [(None, read_model_image(path, info))]


def predict_files(
    classifier: Classifier,
    inputs: Sequence[str | Path],
    batch_size: int = 64,
    calibrated: bool = True,
    window: Optional[Window] = None,
    progress: bool = True,
) -> PredictionTable:
    """Predict every image and DICOM frame in `inputs` (files and folders), ``batch_size`` images at a time.

    ``calibrated`` divides the logits by the model's temperature (when it has one) before the softmax; ``window``
    (center, width) replaces DICOM files' own VOI windows. A file that cannot be read gets an error row.
    """
    check_window(window)
    files, skipped = collect_inputs(inputs)
    temperature = classifier.info.temperature if calibrated else None
    table = PredictionTable(tuple(classifier.info.class_names), temperature=temperature, skipped=skipped)
    pending: list[tuple[int, np.ndarray]] = []  # (row index, image) waiting for a batch
    for path in tqdm(files, desc="predict", unit="file", disable=not progress, dynamic_ncols=True):
        try:
            images = read_inputs(path, classifier.info, window)
        except HDKDError as exc:
            table.rows.append(PredictionRow(str(path), error=str(exc)))
            continue
        for frame, image in images:
            pending.append((len(table.rows), image))
            table.rows.append(PredictionRow(str(path), frame))
        if len(pending) >= batch_size:
            _predict_pending(classifier, table, pending, calibrated, batch_size)
            pending = []
    _predict_pending(classifier, table, pending, calibrated, batch_size)
    return table


def _predict_pending(
    classifier: Classifier,
    table: PredictionTable,
    pending: list[tuple[int, np.ndarray]],
    calibrated: bool,
    batch_size: int,
) -> None:
    if not pending:
        return
    probabilities = classifier.probabilities(
        [image for _, image in pending], calibrated=calibrated, batch_size=batch_size
    )
    for (index, _), probs in zip(pending, probabilities, strict=True):
        table.rows[index].probabilities = probs


__all__ = [
    "PredictionRow",
    "PredictionTable",
    "collect_inputs",
    "read_inputs",
    "predict_files",
    "IMAGE_SUFFIXES",
    "DICOM_SUFFIXES",
]
