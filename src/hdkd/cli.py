"""The command line: a thin layer over the Python API (`hdkd.training.train`,
`hdkd.experiments.pipeline.run_pipeline`, ...)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

from hdkd.commands import add_config_options
from hdkd.commands import explain as explain_command
from hdkd.commands import export as export_command
from hdkd.commands import predict as predict_command
from hdkd.commands import serve as serve_command
from hdkd.errors import ConfigError, HDKDError

DEPLOY_COMMANDS = (predict_command, export_command, explain_command, serve_command)
QUICKSTART = Path(__file__).parent / "presets" / "quickstart.yaml"


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        "-c",
        action="append",
        default=[],
        metavar="YAML",
        help="config file (repeatable; later files override earlier ones)",
    )
    p.add_argument(
        "--data",
        help="dataset: class folders, a CSV-labelled folder or a MedMNIST .npz "
        "(default: the embedded synthetic dataset)",
    )
    p.add_argument("--output", "-o", help="output folder")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--img-size", type=int, help="input resolution (a multiple of 16)")
    p.add_argument("--in-chans", type=int, choices=(1, 3))
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--amp",
        choices=("auto", "none", "bf16"),
        help="bf16 autocast (train.amp; default auto: bf16 where the CPU or GPU has native bf16)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train in channels_last (train.channels_last; default auto: for fp32 on the CPU)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the trained model and the teacher (train.compile; see also "
        "train.compile_mode and train.compile_backend)",
    )
    p.add_argument("--max-per-class", type=int, help="cap images per class and split (quick runs)")
    p.add_argument("--workers", type=int, help="data-loader workers (-1: sized to the machine)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config value, e.g. --set distill.lam=1 --set optim.lr=1e-4",
    )


def _build(args, role: Optional[str]):
    from hdkd.config import Config, build_config

    sections = {
        "data": {"path": args.data, "max_per_class": args.max_per_class, "num_workers": args.workers},
        "model": {"img_size": args.img_size, "in_chans": args.in_chans},
        "optim": {"lr": args.lr},
        "train": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "device": args.device,
            "amp": args.amp,
            "channels_last": args.channels_last,
            "compile": args.compile,
            "progress": False if args.no_progress else None,
        },
        "distill": {"teacher": getattr(args, "teacher", None)},
    }
    files = list(args.config)
    if args.data is None and not files:  # the embedded synthetic dataset gets a schedule sized for it
        files = [str(QUICKSTART)]
    cfg = build_config(role, files, args.set, **sections)
    if args.output:
        cfg.output = args.output
    elif cfg.output == Config.output:  # not set by a file or --set: name the folder after the job
        cfg.output = f"runs/{role or 'pipeline'}"
    return cfg


def cmd_train(args) -> int:
    from hdkd.config import validate
    from hdkd.training import train

    cfg = _build(args, args.role)
    validate(cfg)
    if cfg.role == "hdkd" and cfg.distill.teacher:  # the teacher guard's first half: how good is the teacher?
        from hdkd.distillation.guard import describe_teacher_score

        print(describe_teacher_score(cfg.distill.teacher, cfg.resolved().train.select_metric), flush=True)
    result = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if not result.best_val:  # a non-zero rank under torchrun: rank 0 reports
        return 0
    print(
        f"best epoch {result.best_epoch}: validation "
        + ", ".join(f"{k} {result.best_val[k]:.4f}" for k in ("accuracy", "balanced_accuracy", "macro_f1"))
    )
    print(f"checkpoints: {result.best_checkpoint} (best), {result.last_checkpoint} (last)")
    return 0


def cmd_evaluate(args) -> int:
    from hdkd.config import build_config
    from hdkd.evaluation.evaluate import evaluate_checkpoint
    from hdkd.io import atomic_write_text
    from hdkd.reporting.tables import format_metrics_table

    data = build_config("teacher", args.config, args.set, data={"path": args.data}).data
    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap: expected a number of resamples >= 0, got {args.bootstrap}")
    metrics = evaluate_checkpoint(
        args.checkpoint,
        data,
        split=args.split,
        batch_size=args.batch_size,
        device=args.device,
        amp=args.amp,
        n_boot=args.bootstrap,
    )
    print(f"{metrics['model']} on {metrics['split']} ({metrics['data']})")
    print(format_metrics_table(metrics))
    out = (
        Path(args.output)
        if args.output
        else Path(args.checkpoint).with_name(f"{Path(args.checkpoint).stem}_{args.split}_metrics.json")
    )
    atomic_write_text(out, json.dumps(metrics, indent=2))
    print(f"metrics written to {out}")
    return 0


def cmd_pipeline(args) -> int:
    from hdkd.config import validate
    from hdkd.experiments.pipeline import run_pipeline, run_seeds

    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap: expected a number of resamples >= 0, got {args.bootstrap}")
    cfg = _build(args, None)
    validate(cfg, roles=args.roles)
    if args.folds is not None:  # k-fold estimate (hdkd.experiments.cv)
        from hdkd.experiments.cv import run_cv

        if args.seeds or args.jobs > 1:
            raise ConfigError("--folds: runs one training seed in one process; drop --seeds and --jobs")
        outcome = run_cv(cfg, args.folds, roles=args.roles, n_boot=args.bootstrap, resume=args.resume)
        print(outcome["table"])
        print(f"k-fold report: {outcome['paths']['markdown']}")
        return 0
    if args.seeds:
        outcome = run_seeds(
            cfg, args.seeds, roles=args.roles, n_boot=args.bootstrap, resume=args.resume, jobs=args.jobs
        )
        print(outcome["table"])
        print(f"summary over seeds: {outcome['paths']['markdown']}")
        return 0
    outcome = run_pipeline(cfg, roles=args.roles, n_boot=args.bootstrap, resume=args.resume, jobs=args.jobs)
    print(outcome["table"])
    print(f"report: {outcome['paths'].get('markdown', Path(cfg.output) / 'report.md')}")
    return 0


def cmd_benchmark(args) -> int:
    import torch

    from hdkd.experiments.benchmark import (
        DEFAULT_MODELS,
        FOLD_SUFFIX,
        benchmark_meta,
        format_table,
        run_benchmark,
        write_benchmark,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    models = list(args.models or DEFAULT_MODELS)
    if args.fold_bn:  # add an inference-only BN-folded variant of each HDKD model
        models += [m + FOLD_SUFFIX for m in list(models) if m.startswith("hdkd") and not m.endswith(FOLD_SUFFIX)]
    rows = run_benchmark(
        models,
        img_size=args.img_size,
        batch_sizes=args.batch,
        device=args.device,
        amp=args.amp,
        repeats=args.repeats,
        warmup=args.warmup,
        num_classes=args.num_classes,
        progress=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    print(format_table(rows))
    device = next((r["device"] for r in rows if r["status"] == "ok"), "cpu")
    paths = write_benchmark(rows, args.output, benchmark_meta(device))
    print(f"written: {paths['json']}, {paths['markdown']}, {paths['plot']}")
    if args.onnx:  # the same models exported as `hdkd export` does, ONNX Runtime against PyTorch eager, batch 1
        from hdkd.deploy.onnx_benchmark import format_onnx_rows, onnx_latency_rows
        from hdkd.io import atomic_write_text
        from hdkd.runtime import available_cpus

        names = [m for m in dict.fromkeys(m.split("+")[0] for m in models)]
        threads = sorted({args.threads or 1, available_cpus()})
        onnx_rows = onnx_latency_rows(names, args.img_size, args.num_classes, threads, args.repeats, args.warmup)
        print(format_onnx_rows(onnx_rows))
        written = atomic_write_text(Path(args.output) / "onnx_latency.json", json.dumps(onnx_rows, indent=2))
        print(f"written: {written}")
    return 0


def cmd_audit(args) -> int:
    from hdkd.config import build_config
    from hdkd.experiments.audit import audit_data, write_audit

    data = build_config("teacher", args.config, args.set, data={"path": args.data}).data
    result = audit_data(data, threshold=args.threshold, exact_only=args.exact_only)
    paths = write_audit(result, args.output, root=data.path)
    print(f"audit: {result.one_line()}")
    print(f"report: {paths['markdown']}, {paths['json']}")
    return 0


def cmd_data_download(args) -> int:
    from hdkd.data.download import download_medmnist

    path = download_medmnist(
        args.name,
        size=args.size,
        cache=args.cache,
        url_base=args.url_base,
        md5=args.md5,
        log=lambda message: print(message, file=sys.stderr, flush=True),
    )
    print(path)
    print(f"use it with: hdkd pipeline --data {path}", file=sys.stderr)
    return 0


def cmd_ablate(args) -> int:
    from hdkd.config import ROLES, validate
    from hdkd.experiments.ablation.plan import plan_ablation
    from hdkd.experiments.ablation.report import claim_labels, write_ablation_report, write_claims_across
    from hdkd.experiments.ablation.run import run_ablation
    from hdkd.experiments.ablation.variants import describe_registry, resolve_variants

    if args.list:
        print(describe_registry())
        return 0
    for option, given in (("--labels", args.labels), ("--remeasure-latency", args.remeasure_latency)):
        if given and not args.report:
            raise ConfigError(f"{option}: only with --report")
    if args.report:
        if len(args.report) > 1 and not args.output:
            raise ConfigError("--report with several results files: give -o DIR for the claims across them")
        if len(args.report) > 1:
            claim_labels(args.report, args.labels)  # checked before any report is written
        elif args.labels:
            raise ConfigError("--labels: only with several results files (they name the rows of the claims table)")
        for results in args.report:  # several: each report beside its results file, the comparison into -o
            out = args.output if len(args.report) == 1 else None
            paths = write_ablation_report(results, out, remeasure_latency=args.remeasure_latency)
            print(f"report: {', '.join(str(p) for p in paths.values())}")
        if len(args.report) > 1:
            paths = write_claims_across(args.report, args.output, args.labels)
            print(f"claims across datasets: {', '.join(str(p) for p in paths.values())}")
        return 0
    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap: expected a number of resamples >= 0, got {args.bootstrap}")
    variants = resolve_variants(args.variants)
    cfg = _build(args, None)
    validate(cfg, roles=ROLES)
    output = args.output or (cfg.output if cfg.output != "runs/pipeline" else "runs/ablation")
    if args.dry_run:
        print(plan_ablation(cfg, variants, args.seeds, output).describe())
        return 0
    results = run_ablation(cfg, variants, args.seeds, output, n_boot=args.bootstrap, jobs=args.jobs)
    print(f"results: {results}; report: {Path(output) / 'ablation_report.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hdkd", description="Hybrid data-efficient knowledge distillation for medical image classification."
    )
    from hdkd.version import __version__

    parser.add_argument("--version", action="version", version=f"hdkd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one model: teacher, student (alone) or hdkd (distilled)")
    p.add_argument("role", choices=("teacher", "student", "hdkd"))
    _add_run_options(p)
    p.add_argument("--teacher", help="teacher checkpoint for the hdkd role")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/last_state.pt (of this same run)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an earlier run's files in OUTPUT (default: move them to OUTPUT.old-<time>/ beside it)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metrics of a checkpoint on a dataset split")
    p.add_argument("checkpoint", help="best.safetensors or last.safetensors from `hdkd train`")
    p.add_argument("--data", help="dataset (default: the embedded synthetic dataset)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    add_config_options(p, "config file whose data section describes the dataset")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--amp",
        default="auto",
        choices=("auto", "none", "bf16"),
        help="precision of inference, as train.amp (default auto, as the pipeline's test metrics; none: "
        "fp32, the same numbers on every machine)",
    )
    p.add_argument("--output", "-o", help="JSON file for the metrics (default: next to the checkpoint)")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples for 95%% confidence intervals of the headline metrics (0: none)",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("pipeline", help="teacher, student and HDKD, then a side-by-side report on the test split")
    _add_run_options(p)
    p.add_argument("--roles", nargs="+", default=["teacher", "student", "hdkd"], choices=("teacher", "student", "hdkd"))
    p.add_argument("--teacher", help="reuse this teacher checkpoint instead of training one")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="S",
        help="run the whole pipeline once per training seed into OUTPUT/seed_<S>/ and summarise "
        "mean and std over seeds in OUTPUT/seeds_summary.md/.json (replaces --seed)",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples for 95%% confidence intervals of the test metrics (0: none)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="reuse models already trained in OUTPUT/<role>/ with the same settings; continue an "
        "interrupted one from its last epoch",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="train in N processes: teacher and student side by side, HDKD after the teacher "
        "(e.g. 2 on a 2-core CPU, with OMP_NUM_THREADS=1 and --workers 0)",
    )
    p.add_argument(
        "--folds",
        type=int,
        metavar="K",
        help="k-fold estimate: the pipeline once per stratified fold of the train + validation pool into "
        "OUTPUT/fold_<i>_of_<K>/, mean and std over folds in OUTPUT/cv_report.md (the official test split unused)",
    )
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("benchmark", help="parameters, FLOPs, latency and throughput of HDKD models and timm peers")
    p.add_argument(
        "--models",
        nargs="+",
        metavar="NAME",
        help="timm model names (default: hdkd_teacher, hdkd_student, hdkd and seven timm peers)",
    )
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, nargs="+", default=[32], help="batch size(s) for the throughputs")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", default="none", choices=("none", "bf16"))
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed samples per measurement (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--num-classes", type=int, default=4)
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument(
        "--fold-bn", action="store_true", help="also measure each HDKD model with BatchNorm folded (inference only)"
    )
    p.add_argument(
        "--onnx",
        action="store_true",
        help="also export each model as `hdkd export` does and time ONNX Runtime against PyTorch eager (batch 1, "
        "the --threads count and all CPUs); onnx_latency.json in --output",
    )
    p.add_argument(
        "--output", "-o", default="runs/benchmark", help="folder for benchmark.json, benchmark.md and benchmark.png"
    )
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("audit", help="leakage audit: exact and near-duplicate images within and across splits")
    p.add_argument("data", help="dataset: class folders, a CSV-labelled folder or a MedMNIST .npz")
    p.add_argument("--output", "-o", default="runs/audit", help="folder for audit.json and audit.md")
    p.add_argument(
        "--threshold",
        type=int,
        metavar="N",
        help="near duplicate: pHash Hamming distance <= N of 256 bits (default: data.duplicate_threshold)",
    )
    p.add_argument("--exact-only", action="store_true", help="byte-identical duplicates only (decodes nothing)")
    add_config_options(
        p,
        "config file whose data section describes the dataset",
        "data options, e.g. --set data.format=csv --set data.val_fraction=0.2",
    )
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("data", help="dataset utilities")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("download", help="download an official dataset file, checksum-verified")
    p.add_argument("source", choices=("medmnist",))
    p.add_argument("name", help="MedMNIST dataset, e.g. breastmnist, dermamnist, pneumoniamnist")
    p.add_argument("--size", type=int, default=28, choices=(28, 64, 128, 224), help="image size in pixels")
    p.add_argument(
        "--cache",
        metavar="DIR",
        help="folder for the file (default: ~/.cache/hdkd/medmnist, or $HDKD_CACHE_DIR/medmnist)",
    )
    p.add_argument("--url-base", metavar="URL", help="where the files are (default: the MedMNIST v3 Zenodo record)")
    p.add_argument("--md5", help="expected MD5 (required for files without a published checksum in hdkd)")
    p.set_defaults(func=cmd_data_download)

    p = sub.add_parser("ablate", help="ablation grid: named variants x seeds into OUTPUT/results.jsonl and a report")
    _add_run_options(p)
    p.add_argument("--variants", nargs="+", metavar="NAME", help="variants and/or groups (default: all; see --list)")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        metavar="S",
        help="training seeds (default: 0 1 2; replaces --seed)",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        metavar="N",
        help="bootstrap resamples for 95%% confidence intervals of each run's test metrics (0: none)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="train in N processes side by side (e.g. one per core; default 1)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the runs, teachers and models; train nothing")
    p.add_argument("--list", action="store_true", help="list the variants and groups")
    p.add_argument(
        "--report",
        metavar="RESULTS.jsonl",
        nargs="+",
        help="only write the report of a results file (into --output, default: beside it); with "
        "several (e.g. one per dataset), each report beside its file and the claims side by side "
        "in --output (ablation_claims.md)",
    )
    p.add_argument(
        "--labels",
        nargs="+",
        metavar="NAME",
        help="with --report: a name per results file for the claims table (default: its folder's name)",
    )
    p.add_argument(
        "--remeasure-latency",
        action="store_true",
        help="with --report: measure the peers' CPU latency again on this machine instead of reusing the "
        "measurement kept in ablation_latency.json beside the report",
    )
    p.set_defaults(func=cmd_ablate)

    for command in DEPLOY_COMMANDS:  # use a trained model: predict, export, explain, serve
        command.register(sub)
    return parser


def _add_debug_flag(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """--debug before or after the sub-command: a user error is then shown with its traceback."""
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="show the traceback of an error (for bug reports)",
    )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                _add_debug_flag(subparser)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"hdkd: warning: {message}\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit status 0 on success, 2 on a user error (one line, no traceback unless --debug; argparse's own usage
    errors are 2 as well), 130 on Ctrl-C."""
    parser = build_parser()
    _add_debug_flag(parser, top=True)
    args = parser.parse_args(argv)
    if not args.debug:
        warnings.formatwarning = _one_line_warning
    try:
        return args.func(args)
    except HDKDError as exc:
        if args.debug:
            raise
        print(f"hdkd: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the user gave that cannot be read or written (permissions, a folder, disk full)
        if args.debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"hdkd: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("hdkd: interrupted (outputs are written atomically: nothing half-written is left)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
