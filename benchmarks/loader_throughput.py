"""Is the model or the data path the bottleneck? Images/s of the training data path alone, of the HDKD training
step alone, and of both together, measured in one run on the same data.

Data paths (data.augment_on):
  loader  per-image torchvision v2 augmentation in DataLoader workers, batches of normalised float images;
  device  raw uint8 batches from the workers, moved to the device and augmented there as one batch (BatchAugment).
For the model to be the bottleneck, the data path alone must deliver more images/s than the training step takes.

    # GPU (the issue's target: HDKD at 224 px >= 5,000 img/s with the loader faster than the step)
    python benchmarks/loader_throughput.py --data ../shared/data/brain_tumor_mri --img-size 224 --batch 256 \
        --workers 8 --device cuda --amp bf16 --channels-last --json docs/bench/loader_gpu_224.json
    # CPU, one thread: per-image against batched augmentation
    OMP_NUM_THREADS=1 python benchmarks/loader_throughput.py --data ../shared/data/brain_tumor_mri --img-size 64 \
        --batch 32 --workers 0 --paths loader device --no-step --json docs/bench/loader_cpu_64.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import timm
import torch
from torch.utils.data import DataLoader

import hdkd
from hdkd.config import DataConfig
from hdkd.data import build_datasets
from hdkd.data.batch_augment import BatchAugment, batch_seeds
from hdkd.runtime import autocast

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/timing.py, however this file is loaded
from timing import write_result_json  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def data_batches(dataset, path: str, batch: int, workers: int, device: torch.device, channels: int):
    """An endless stream of training-ready (images, labels) on `device` by the given data path."""
    dataset.set_epoch(0, 0)
    dataset.raw = path == "device"
    augment = BatchAugment(channels, "authors").to(device) if path == "device" else None
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    while True:
        for item in loader:
            images = item[0].to(device, non_blocking=True)
            labels = item[1].to(device, non_blocking=True)
            if augment is not None:
                images = augment(images, batch_seeds(dataset.augment_seed, item[2]))
            yield images, labels


def images_per_s(step, batches: int, warmup: int, batch: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(batches):
        step()
    _sync(device)
    return batches * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="none", choices=["none", "bf16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile student and teacher")
    parser.add_argument("--paths", nargs="+", default=["loader", "device"], choices=["loader", "device"])
    parser.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-step", action="store_true", help="data paths only")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)

    data = build_datasets(DataConfig(path=args.data, num_workers=args.workers), args.img_size, splits=("train",))
    channels, classes = data.in_chans, data.num_classes
    rows = {
        "data": data.description,
        "img_size": args.img_size,
        "batch": args.batch,
        "workers": args.workers,
        "device": str(device),
        "amp": args.amp,
        "channels_last": args.channels_last,
        "compile": args.compile,
    }
    for path in args.paths:
        stream = data_batches(data.train, path, args.batch, args.workers, device, channels)
        rows[f"data_{path}_images_per_s"] = images_per_s(
            lambda stream=stream: next(stream), args.batches, args.warmup, args.batch, device
        )
        print(f"data path {path:>6}: {rows[f'data_{path}_images_per_s']:9.1f} img/s", flush=True)

    if not args.no_step:
        torch.manual_seed(0)
        teacher = timm.create_model("hdkd_teacher", num_classes=classes, in_chans=channels, img_size=args.img_size).to(
            device
        )
        student = (
            timm.create_model("hdkd", num_classes=classes, in_chans=channels, img_size=args.img_size).to(device).train()
        )
        if args.channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
            student = student.to(memory_format=torch.channels_last)
        criterion = hdkd.HDKDLoss(teacher, fold_teacher_bn=True)
        model = student
        if args.compile:
            model = torch.compile(student)
            criterion.teacher = torch.compile(criterion.teacher)
        opt = torch.optim.AdamW(student.parameters(), lr=5e-5, weight_decay=0.05)
        fixed = (
            torch.randn(args.batch, channels, args.img_size, args.img_size, device=device),
            torch.randint(0, classes, (args.batch,), device=device),
        )

        def train_step(images, labels):
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, args.amp):
                out = criterion(model, images, labels)
            opt.zero_grad(set_to_none=True)
            out.total.backward()
            opt.step()

        rows["step_images_per_s"] = images_per_s(
            lambda: train_step(*fixed), args.batches, args.warmup, args.batch, device
        )
        print(f"HDKD step alone : {rows['step_images_per_s']:9.1f} img/s", flush=True)
        for path in args.paths:
            stream = data_batches(data.train, path, args.batch, args.workers, device, channels)
            key = f"train_{path}_images_per_s"
            rows[key] = images_per_s(
                lambda stream=stream: train_step(*next(stream)), args.batches, args.warmup, args.batch, device
            )
            rows[f"data_{path}_over_step"] = rows[f"data_{path}_images_per_s"] / rows["step_images_per_s"]
            print(
                f"step + {path:>6}: {rows[key]:9.1f} img/s (data path alone / step alone = "
                f"{rows[f'data_{path}_over_step']:.2f})",
                flush=True,
            )
    if args.json:
        write_result_json(args.json, rows, device)


if __name__ == "__main__":
    main()
