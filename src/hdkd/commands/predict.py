"""`hdkd predict MODEL INPUT... [-o predictions.csv]`: a trained model over image files, folders and DICOM files.

Exit status: 0 when every row was predicted, 1 when some files could not be read (the CSV is still written, with
their errors), 2 for a user error (bad option, model or input path; nothing is written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..deploy.predict import PredictionTable

DEFAULT_OUTPUT = "predictions.csv"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="predict the class of image files, folders or DICOM files with a trained model",
        description="One CSV row per image or DICOM frame: path, frame, predicted, p_<class> per class, error. "
        "Images are prepared exactly as the model was trained (size, channels, normalisation read "
        "from the model). Exit status 1 when some files could not be read.",
    )
    p.add_argument("model", metavar="MODEL", help="a .safetensors checkpoint or an exported .onnx model")
    p.add_argument(
        "inputs",
        metavar="INPUT",
        nargs="+",
        help="image files (JPEG, PNG, ...), DICOM files or folders (searched recursively)",
    )
    p.add_argument(
        "--output",
        "-o",
        default=DEFAULT_OUTPUT,
        help=f"the CSV file to write (default {DEFAULT_OUTPUT}; '-' for standard output)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where a .safetensors model runs (default auto: cuda when available); ONNX runs on the CPU",
    )
    p.add_argument(
        "--window",
        nargs=2,
        type=float,
        metavar=("CENTER", "WIDTH"),
        help="DICOM VOI window (linear) instead of the files' own window tags",
    )
    p.add_argument(
        "--no-calibration",
        action="store_true",
        help="plain softmax probabilities, without the temperature fitted on validation",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # torch, timm, pydicom and onnxruntime load when the command runs, not when `hdkd` builds its parser.
    from ..deploy.loading import load_classifier
    from ..deploy.predict import predict_files

    output = None if args.output == "-" else Path(args.output)
    _check_options(args, output)
    classifier = load_classifier(args.model, device=args.device)
    table = predict_files(
        classifier,
        args.inputs,
        batch_size=args.batch_size,
        calibrated=not args.no_calibration,
        window=_window(args),
        progress=not args.no_progress,
    )
    if output is None:
        sys.stdout.write(table.to_csv())
    else:
        try:
            table.write_csv(output)
        except OSError as exc:
            raise ConfigError(f"--output: cannot write {output} ({exc.strerror or exc})") from None
    print(summary(table, output), file=sys.stderr)
    return 1 if table.failed else 0


def summary(table: "PredictionTable", output: Path | None) -> str:
    rows, skipped = len(table.rows), len(table.skipped)
    done = f"{rows - table.failed} of {rows} rows predicted"
    failed = f", {table.failed} failed (see the error column)" if table.failed else ""
    skipped = f", {skipped} file{'s' if skipped != 1 else ''} skipped (neither images nor DICOM)" if skipped else ""
    calibration = f"temperature {table.temperature:g}" if table.temperature is not None else "uncalibrated"
    where = "standard output" if output is None else str(output)
    return f"hdkd predict: {done}{failed}{skipped}; probabilities {calibration}; written to {where}"


def _window(args: argparse.Namespace) -> tuple[float, float] | None:
    return None if args.window is None else (float(args.window[0]), float(args.window[1]))


def _check_options(args: argparse.Namespace, output: Path | None) -> None:
    """Everything that can be checked before the model runs, so that a typo costs nothing."""
    import torch

    from ..data.dicom import check_window

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: expected a positive number of images, got {args.batch_size}")
    check_window(_window(args))
    if output is not None and output.is_dir():
        raise ConfigError(f"--output: {output} is a folder; give the CSV file to write, e.g. {output / DEFAULT_OUTPUT}")
    if args.device == "cuda":
        if Path(args.model).suffix == ".onnx":
            raise ConfigError(
                "--device cuda: an ONNX model runs on the CPU (ONNX Runtime's CPU provider); "
                "use --device cpu or a .safetensors checkpoint"
            )
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available here; use --device cpu or auto")
