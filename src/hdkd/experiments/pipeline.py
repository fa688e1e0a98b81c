"""The main job: teacher, then the student alone, then HDKD distilled from that teacher, all three tested once.

The test split is used only here, after every model has been trained and selected on validation.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from hdkd.config import Config, save_yaml, with_seed
from hdkd.data import DataSplits, build_datasets
from hdkd.data.loaders import make_loader, resolve_num_workers
from hdkd.distillation.guard import (
    compare_teacher,
    compare_val_metrics,
    enforce_stronger_teacher,
    teacher_checkpoint_score,
)
from hdkd.errors import ConfigError
from hdkd.evaluation.evaluate import evaluate_model
from hdkd.evaluation.metrics import headline_metrics
from hdkd.evaluation.seeds import summarise_seeds
from hdkd.io import remove_stale
from hdkd.models.checkpoint import update_checkpoint_extra
from hdkd.reporting.pipeline_report import write_pipeline_report
from hdkd.reporting.seeds import format_seeds_markdown, write_seeds_summary
from hdkd.reporting.tables import format_comparison_table
from hdkd.runtime import resolve_device, run_metadata
from hdkd.training import train_or_reuse
from hdkd.training.parallel import train_in_processes
from hdkd.training.resume import prepare_output_folder

ROLE_ORDER = ("teacher", "student", "hdkd")


def run_pipeline(
    cfg: Config,
    roles: Sequence[str] = ROLE_ORDER,
    command: Optional[str] = None,
    n_boot: int = 1000,
    resume: bool = False,
    jobs: int = 1,
    data: Optional[DataSplits] = None,
) -> dict[str, Any]:
    """Train the roles in order into cfg.output/<role>/, evaluate on test, write the report; returns its results.

    Each model is also run on the validation split at its best checkpoint: the temperature for temperature scaling
    is fitted there (never on test). ``n_boot`` bootstrap resamples of the test split give 95 % confidence intervals
    of the headline metrics (0: none). ``resume`` reuses roles already finished in OUTPUT/<role>/ with the same
    settings and continues an interrupted one from its last epoch. ``jobs`` > 1 first trains the roles in that
    many processes (``hdkd.training.parallel``): the teacher and the student side by side, HDKD once the teacher is
    done; then everything is evaluated here as usual. ``data`` (already built splits, e.g. one fold of
    ``hdkd.experiments.cv``) replaces building them from ``cfg.data``; it needs ``jobs`` = 1.

    Before HDKD trains, the teacher guard (``hdkd.distillation.guard``) compares the teacher's and the student
    alone's validation selection metric, prints its verdict and records it in the report (``teacher_check``);
    with ``distill.require_stronger_teacher`` a weaker teacher stops the run there.
    """
    if jobs < 1:
        raise ConfigError(f"--jobs: expected at least 1 process, got {jobs}")
    unknown = [r for r in roles if r not in ROLE_ORDER]
    if unknown:
        raise ConfigError(f"roles: unknown {unknown}; choose from {list(ROLE_ORDER)}")
    if "hdkd" in roles and "teacher" not in roles and not cfg.distill.teacher:
        raise ConfigError("distill.teacher: HDKD without training a teacher needs a teacher checkpoint")
    if data is not None and jobs > 1:
        raise ConfigError("--jobs: training on given splits (k-fold) runs in one process; use --jobs 1")
    base = cfg.for_role("teacher")  # data and model settings are shared by every role
    if data is None:
        data = build_datasets(base.data, base.model.img_size, base.model.in_chans)  # decode once for all three
    if data.test is None:
        raise ConfigError(f"data: {base.data.path or 'the embedded dataset'} has no test split to report on")
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale(out, ("report.md", "report.json", "report.html"))
    device = resolve_device(base.train.device)
    test_loader = make_loader(data.test, base.train.eval_batch_size, False, resolve_num_workers(base.data.num_workers))
    val_loader = (
        None
        if data.val is None
        else make_loader(data.val, base.train.eval_batch_size, False, resolve_num_workers(base.data.num_workers))
    )

    role_cfgs = {role: dataclasses.replace(cfg.for_role(role), output=str(out / role)) for role in roles}
    if "hdkd" in role_cfgs:
        trained_teacher = out / "teacher" / "best.safetensors"
        role_cfgs["hdkd"].distill.teacher = str(trained_teacher if "teacher" in roles else cfg.distill.teacher)
    if jobs > 1:
        if not resume:  # a fresh run: nothing in the role folders may be reused by the workers
            for role_cfg in role_cfgs.values():
                prepare_output_folder(role_cfg.output)  # an earlier run's files moved aside first
        needs = {"hdkd": role_cfgs["teacher"].output if "teacher" in roles else None}
        guarded = "hdkd" in role_cfgs and role_cfgs["hdkd"].distill.require_stronger_teacher
        train_in_processes(  # a guarded HDKD trains here, after the guard, not in a worker
            {
                c.output: (c.resolved(), needs.get(role))
                for role, c in role_cfgs.items()
                if not (guarded and role == "hdkd")
            },
            jobs,
            log=lambda message: print(message, file=sys.stderr, flush=True),
            root=out,
        )
    results: dict[str, dict[str, Any]] = {}
    teacher_check = None
    for role in roles:
        role_cfg = role_cfgs[role]
        if role == "hdkd":
            teacher_check = teacher_guard(role_cfg, results)
        result = train_or_reuse(role_cfg, data=data, resume=resume or jobs > 1)
        assessed = evaluate_model(
            result.best_checkpoint,
            test_loader,
            data.class_names,
            device,
            role_cfg.train.amp,
            val_loader,
            n_boot=n_boot,
            seed=base.train.seed,
            flops_input=(role_cfg.model.img_size, data.in_chans),
        )
        metrics = assessed["metrics"]
        metrics["loss"] = assessed["loss"]
        results[role] = {
            "model": role_cfg.model.name,
            "params": result.params,
            "amp": assessed["amp"],  # the precision it trained and was tested in
            "flops": assessed["flops"],
            "metrics": metrics,
            "val_metrics": result.best_val,
            "history": result.history,
            "best_epoch": result.best_epoch,
            "train_time_s": result.train_time_s,
            "checkpoint": str(result.best_checkpoint),
            "bootstrap": assessed["bootstrap"],
            "temperature_scaling": assessed["temperature_scaling"],
            "predictions": assessed["predictions"],  # for the ROC figure; not written into report.json
        }
        if assessed["temperature_scaling"] is not None:  # the fitted temperature travels with the model
            update_checkpoint_extra(
                result.best_checkpoint,
                temperature=assessed["temperature_scaling"]["temperature"],
                data=data.description,
                metrics=headline_metrics(metrics),
            )
    meta = {
        "dataset": data.description,
        "class_counts": data.counts,
        "splits": data.source,
        "img_size": base.model.img_size,
        "in_chans": data.in_chans,
        "epochs": {r: cfg.for_role(r).train.epochs for r in roles},
        "seed": base.train.seed,
        "selection": f"best validation {base.train.select_metric}; test used only for this report",
        **({"teacher_check": teacher_check["message"]} if teacher_check else {}),
        "calibration": "temperature scaling fitted on the validation split"
        if val_loader is not None
        else "no validation split: no temperature scaling",
        "confidence_intervals": f"95% percentile bootstrap, {n_boot} resamples of the test images, seed "
        f"{base.train.seed}"
        if n_boot
        else "none",
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
        **run_metadata(),
        "device": str(device),
        "timestamp": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    save_yaml(cfg, out / "config.yaml")
    paths = write_pipeline_report(out, results, meta)
    return {"results": results, "meta": meta, "paths": paths, "table": format_comparison_table(results)}


def teacher_guard(hdkd_cfg: Config, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The teacher guard before HDKD trains: the teacher's validation selection metric (this run's teacher, or the
    given checkpoint's recorded score) against the student alone's (this run's, when it trained one); printed, and
    an error with distill.require_stronger_teacher when the teacher is the weaker model."""
    metric = hdkd_cfg.train.select_metric
    student = (results.get("student") or {}).get("val_metrics")
    if "teacher" in results:
        verdict = compare_val_metrics(results["teacher"].get("val_metrics"), student, metric)
    else:
        score = teacher_checkpoint_score(hdkd_cfg.distill.teacher, metric)
        verdict = compare_teacher(score, None if student is None else student.get(metric), metric)
    print(f"teacher check: {verdict['message']}", file=sys.stderr, flush=True)
    enforce_stronger_teacher(verdict, hdkd_cfg.distill.require_stronger_teacher)
    return verdict


def run_seeds(
    cfg: Config,
    seeds: Sequence[int],
    roles: Sequence[str] = ROLE_ORDER,
    command: Optional[str] = None,
    n_boot: int = 1000,
    resume: bool = False,
    jobs: int = 1,
) -> dict[str, Any]:
    """The pipeline once per training seed into OUTPUT/seed_<s>/, then the mean and std over seeds.

    Only the training seed changes (initialisation, augmentation, batch order); the data split is the same for every
    seed (``data.split_seed``). Writes OUTPUT/seeds_summary.json and OUTPUT/seeds_summary.md (see
    ``hdkd.evaluation.seeds``); returns ``{"runs": {seed: run_pipeline outcome}, "summary", "paths", "table"}``.
    """

    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: repeated seed(s) in {seeds}")
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale(out, ("seeds_summary.json", "seeds_summary.md"))
    runs = {}
    for seed in seeds:
        runs[seed] = run_pipeline(
            with_seed(cfg, int(seed), out / f"seed_{seed}"), roles, command, n_boot, resume=resume, jobs=jobs
        )
    summary = summarise_seeds(
        {seed: run["results"] for seed, run in runs.items()}, {seed: f"seed_{seed}/report.json" for seed in seeds}
    )
    paths = write_seeds_summary(out, summary)
    return {"runs": runs, "summary": summary, "paths": paths, "table": format_seeds_markdown(summary, table_only=True)}
