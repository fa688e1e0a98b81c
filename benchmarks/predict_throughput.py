"""`hdkd predict` on a folder of test images: its images/s, and whether its predictions are those of the data path
`hdkd evaluate` uses on the same checkpoint (the issue's target: identical, on the 1,311 Brain Tumor MRI test images).

    OMP_NUM_THREADS=1 python benchmarks/predict_throughput.py /work/shared_runs/brain32/hdkd/best.safetensors \
        --data ../shared/data/brain_tumor_mri -c configs/ablation_cpu_brain_mri.yaml --device cpu \
        --json docs/bench/predict_brain_mri_32.json

1. predict: the command itself (`hdkd.commands.predict.run`, i.e. `hdkd predict MODEL DATA/Testing -o CSV`:
   model loading, file discovery, decoding, resizing, batches, the CSV written atomically), timed end to end on
   the test folder; images/s = rows / wall seconds (model loading included).
2. evaluation: the test split built as `hdkd evaluate` builds it (`build_datasets` with the checkpoint's img_size
   and in_chans and the config's data section, decoded through the data cache), run in fp32 through
   `hdkd.training.engine.predict` (what `evaluate_checkpoint` calls; amp none, as predict runs fp32). Per file:
   the argmax of both, and the largest probability difference (predict with --no-calibration for that).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from hdkd.commands.predict import register
from hdkd.config import build_config
from hdkd.data import build_datasets
from hdkd.data.build import discover, select_splits
from hdkd.evaluation.evaluate import evaluate_model
from hdkd.evaluation.inference import ModelInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/timing.py, however this file is loaded
from timing import write_result_json  # noqa: E402


def run_predict(checkpoint: str, folder: Path, output: Path, device: str, batch_size: int) -> tuple[int, float]:
    """(exit status, wall seconds) of `hdkd predict CHECKPOINT FOLDER -o OUTPUT --no-calibration`."""
    parser = argparse.ArgumentParser(prog="hdkd")
    register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "predict",
            checkpoint,
            str(folder),
            "-o",
            str(output),
            "--device",
            device,
            "--batch-size",
            str(batch_size),
            "--no-calibration",
            "--no-progress",
        ]
    )
    start = time.perf_counter()
    status = args.func(args)
    return status, time.perf_counter() - start


def evaluation_predictions(
    checkpoint: str, data: str, configs: list[str], split: str, batch_size: int
) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """(paths, labels, fp32 probabilities) of `split`, built and run as `hdkd evaluate` does."""
    cfg = build_config("teacher", configs, [], data={"path": data}).data
    info = ModelInfo.from_checkpoint(checkpoint)
    paths = select_splits(discover(cfg), cfg)[split].paths
    built = build_datasets(cfg, info.img_size, info.in_chans, splits=(split,))
    if list(built.class_names) != list(info.class_names):
        raise SystemExit(f"classes differ: data {built.class_names}, checkpoint {info.class_names}")
    dataset = built.split(split)
    loader = DataLoader(dataset, batch_size=batch_size)
    assessed = evaluate_model(
        checkpoint, loader, built.class_names, torch.device("cpu"), "none"
    )  # hdkd evaluate's path
    labels, probs = assessed["predictions"]["y_true"], assessed["predictions"]["probs"]
    if len(paths) != len(labels):
        raise SystemExit(f"{len(paths)} paths but {len(labels)} evaluated images")
    return paths, labels, probs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="dataset root with a Testing (test) folder")
    parser.add_argument("--config", "-c", action="append", default=[], help="config file(s), as for evaluate")
    parser.add_argument("--split-folder", default="Testing", help="the folder of --data that is the test split")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--csv", help="keep predict's CSV here (default: a temporary file)")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        output = Path(args.csv) if args.csv else Path(tmp) / "predictions.csv"
        status, seconds = run_predict(
            args.checkpoint, Path(args.data) / args.split_folder, output, args.device, args.batch_size
        )
        with open(output, newline="") as handle:
            rows = list(csv.DictReader(handle))
    names = [c[2:] for c in rows[0] if c.startswith("p_")]
    paths, labels, probs = evaluation_predictions(args.checkpoint, args.data, args.config, "test", 256)
    by_path = {Path(r["path"]).resolve(): r for r in rows}
    disagreements, max_difference = 0, 0.0
    for path, p in zip(paths, probs, strict=True):
        row = by_path[Path(path).resolve()]
        disagreements += row["predicted"] != names[int(np.argmax(p))]
        max_difference = max(max_difference, float(np.abs(np.array([float(row[f"p_{n}"]) for n in names]) - p).max()))
    failed = sum(1 for r in rows if r["error"])
    accuracy = float(
        np.mean([by_path[Path(p).resolve()]["predicted"] == names[y] for p, y in zip(paths, labels, strict=True)])
    )
    result = {
        "checkpoint": args.checkpoint,
        "data": str(Path(args.data) / args.split_folder),
        "device": args.device,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "rows": len(rows),
        "failed_rows": failed,
        "exit_status": status,
        "predict_seconds": round(seconds, 3),
        "images_per_s": round(len(rows) / seconds, 1),
        "evaluated_images": len(paths),
        "disagreements_with_evaluation": int(disagreements),
        "max_probability_difference": max_difference,
        "accuracy_from_predict_csv": round(accuracy, 6),
    }
    for key, value in result.items():
        print(f"{key}: {value}")
    if args.json:
        write_result_json(args.json, result)


if __name__ == "__main__":
    main()
