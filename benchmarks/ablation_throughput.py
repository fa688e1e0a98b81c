"""How long an `hdkd ablate` grid takes: measured training throughput of every distinct model it trains, times the
images it trains on.

For a preset (`-c`) and the variants/seeds of the grid, the grid is planned with
`hdkd.experiments.ablation.plan.plan_ablation` (so the
count of distinct teachers and models, their epochs and training fractions are exactly what `hdkd ablate` would
train, shared teachers and models counted once). Each distinct architecture + loss is built as training builds it
(`build_model`, `build_criterion`'s `HDKDLoss` around a randomly initialised teacher) and timed for a few training
steps (forward, loss, backward, optimiser step) on random images of the preset's size, batch and channel count; the
authors' augmentation and validation inference are timed too. No data is decoded: the split sizes are arguments.

    OMP_NUM_THREADS=1 python benchmarks/ablation_throughput.py -c configs/ablation_cpu_brain_mri.yaml \
        --train 5141 --val 571 --test 1311 --classes 4 --in-chans 3 --seeds 0 1 2

Estimate per training = epochs x (train images x fraction / (1 / (1/model img/s + 1/augment img/s))
+ val images / eval img/s), i.e. augmentation and the model counted as if sequential on one core (conservative: the
data-loader worker runs on the other core when it is free); plus each run's test and validation pass.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hdkd.config import build_config
from hdkd.data.datasets import CachedImageDataset
from hdkd.data.transforms import train_transform
from hdkd.distillation import HDKDLoss, SupervisedLoss
from hdkd.experiments.ablation.plan import plan_ablation
from hdkd.experiments.ablation.variants import resolve_variants
from hdkd.training import build_model
from hdkd.training.optim import build_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/timing.py, however this file is loaded
from timing import write_result_json  # noqa: E402


def _arch(cfg, teacher=None) -> str:
    """What decides a training step's cost: the model's architecture, its loss, and its teacher's architecture."""
    m, d = cfg.model, cfg.distill
    key = {
        "name": m.name,
        "block": m.block,
        "stem": m.stem_stride,
        "depths": m.depths,
        "widths": m.widths,
        "dflt_depth": m.dflt_depth,
        "role": cfg.role,
    }
    if cfg.role == "hdkd":
        key.update(kd=d.kd, features=d.lam > 0, teacher=teacher.model.name if teacher is not None else None)
    return json.dumps(key, sort_keys=True, default=str)


def time_steps(cfg, teacher_cfg, classes: int, in_chans: int, batch: int, steps: int, warmup: int) -> float:
    """Median images/s of training steps of cfg's model (with its loss) on random data."""
    torch.manual_seed(0)
    model = build_model(cfg, classes, in_chans).train()
    if cfg.role == "hdkd":
        teacher = build_model(teacher_cfg, classes, in_chans)
        d = cfg.distill
        criterion = HDKDLoss(teacher, alpha=d.alpha, tau=d.tau, lam=d.lam, kd=d.kd, beta=d.beta)
    else:
        criterion = SupervisedLoss()
    opt = build_optimizer(model, cfg.optim)
    x = torch.randn(batch, in_chans, cfg.model.img_size, cfg.model.img_size)
    y = torch.randint(0, classes, (batch,))
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        out = criterion(model, x, y)
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


@torch.no_grad()
def time_eval(cfg, classes: int, in_chans: int, batch: int, repeats: int = 3) -> float:
    model = build_model(cfg, classes, in_chans).eval()
    x = torch.randn(batch, in_chans, cfg.model.img_size, cfg.model.img_size)
    model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def time_augment(img_size: int, in_chans: int, n: int = 256) -> float:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, img_size, img_size, in_chans), dtype=np.uint8)
    ds = CachedImageDataset(images, np.zeros(n, dtype=np.int64), train_transform("authors", in_chans))
    ds.set_epoch(0, 0)
    ds[0]
    start = time.perf_counter()
    for i in range(n):
        ds[i]
    return n / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--config", action="append", default=[])
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--variants", nargs="+", default=["all"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train", type=int, required=True, help="train images (after the validation carve-out)")
    p.add_argument("--val", type=int, required=True)
    p.add_argument("--test", type=int, required=True)
    p.add_argument("--classes", type=int, required=True)
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="timed steps per architecture (median)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the measurements and the estimate here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    cfg = build_config(None, args.config, args.set)
    plan = plan_ablation(cfg, resolve_variants(args.variants), args.seeds, "/nonexistent/ablation-estimate")
    trainings: dict[str, tuple] = {}  # model folder -> (config, teacher config or None)
    for run in plan.runs:
        if run.teacher is not None:
            trainings.setdefault(run.teacher.output, (run.teacher, None))
        trainings.setdefault(str(run.model_dir), (run.config, run.teacher))
    arch_rate: dict[str, float] = {}
    eval_rate: dict[str, float] = {}
    batch = cfg.for_role("hdkd").train.batch_size
    for _out, (tcfg, teacher) in sorted(trainings.items()):
        key = _arch(tcfg, teacher)
        if key not in arch_rate:
            arch_rate[key] = time_steps(tcfg, teacher, args.classes, args.in_chans, batch, args.steps, args.warmup)
            eval_rate[key] = time_eval(tcfg, args.classes, args.in_chans, cfg.train.eval_batch_size)
            print(
                f"{arch_rate[key]:7.1f} train img/s  {eval_rate[key]:7.1f} eval img/s  {key}",
                file=sys.stderr,
                flush=True,
            )
    img = cfg.model.img_size
    aug = time_augment(img, args.in_chans)
    print(f"{aug:7.1f} augment img/s (authors' recipe, {img} px, one thread)", file=sys.stderr)

    total, rows = 0.0, []
    for out, (tcfg, teacher) in sorted(trainings.items()):
        key = _arch(tcfg, teacher)
        train_rate = 1.0 / (1.0 / arch_rate[key] + 1.0 / aug)
        n_train = args.train * tcfg.data.train_fraction
        seconds = tcfg.train.epochs * (n_train / train_rate + args.val / eval_rate[key])
        rows.append(
            {
                "folder": str(Path(out).relative_to(plan.output)),
                "model": tcfg.model.name,
                "epochs": tcfg.train.epochs,
                "train_images": n_train,
                "seconds": seconds,
            }
        )
        total += seconds
    for run in plan.runs:  # each run's test + validation pass
        total += (args.test + args.val) / eval_rate[_arch(run.config, run.teacher)]
    teachers = sum(1 for r in rows if r["folder"].startswith("teachers"))
    summary = {
        "img_size": img,
        "batch": batch,
        "threads": args.threads,
        "augment_img_per_s": aug,
        "train_img_per_s": arch_rate,
        "eval_img_per_s": eval_rate,
        "runs": len(plan.runs),
        "teachers": teachers,
        "models": len(rows) - teachers,
        "trainings": rows,
        "estimate_s": total,
        "estimate_h": total / 3600,
    }
    print(
        f"{len(plan.runs)} runs, {teachers} teacher and {len(rows) - teachers} model trainings: "
        f"estimated {total / 3600:.2f} h ({total / len(plan.runs) / 60:.1f} min per run on average)"
    )
    if args.json:
        write_result_json(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
