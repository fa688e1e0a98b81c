"""Ablations: named variants of the HDKD pipeline, run over seeds into one resumable results file (``hdkd ablate``).

A **variant** is a set of config overrides (dotted ``KEY=VALUE`` strings, exactly as ``--set`` takes them; a
variant's value wins over the base config and over a preset's per-role value for the same key) plus the role whose
model it evaluates: ``student`` (trained alone) or ``hdkd`` (distilled, so a teacher is trained first). Named
**groups** select variants (``distillation``, ``lambda``, ``block``, ``dflt_depth``, ``stem``, ``data_efficiency``,
``timm_teacher``, ``all``; ``frac_10`` ... ``frac_100`` select both arms of one training fraction; outside ``all``:
``speed``, ``loss_balance`` (lambda 0.001 ... 10 x soft/hard logit KD x raw/variance-normalised feature term) and
``peers`` (timm models of similar size trained from scratch in the student role)).

Issue 15: each record carries the run's mean gradient shares (``grad_shares``: the share of the gradient norm of the
CE, KD and feature terms, averaged over the epochs); the console warns when a teacher is weaker on validation than
the same seed's student alone (the teacher guard), and the report's teachers section says so too.

Sharing. Every trained model lives in a folder named after a key of its resolved, result-relevant config:

* teachers in ``OUTPUT/teachers/<teacher model>-<key>/seed_<s>/``: the key hashes the teacher's resolved config
  with what cannot change the teacher's training normalised away (the ``distill`` section, the DFLT options of an
  ``hdkd_teacher``, every HDKD architecture option of a timm teacher, output and logging options). Variants that
  only change the student (``distill.*``, ``model.dflt_depth``) therefore share ONE teacher per seed; variants
  that change the teacher (``model.block``, ``model.stem_stride``, ``data.train_fraction``, another teacher model)
  get their own, as a user changing those settings would have to train one;
* students in ``OUTPUT/models/<role>-<key>/seed_<s>/`` (the key includes the teacher's key): two variants with the
  same resolved settings (``hdkd``, ``lam_10``, ``dflt_depth_3``, ``frac_100_hdkd``) share one trained model.

Every training goes through ``train_or_reuse(..., resume=True)``: a finished model is reused, an interrupted one
continues from its last epoch. Each (variant, seed) is tested once on the TEST split, at the checkpoint selected
on validation, with the pipeline's evaluation (``hdkd.evaluation.evaluate.evaluate_model``), and appended as one
JSON line to ``OUTPUT/results.jsonl`` (the file is rewritten atomically); a (variant, seed) already there with the same
settings is skipped, so an interrupted grid resumes where it stopped. One grid per output folder at a time.

Decisions (documented here, reported in the results):

* ``feature_only`` (feature distillation without logit distillation, ``distill.kd=none``) trains the
  ``hdkd_student`` architecture (class token only) with the HDKD loss: with no logit term the distillation token of
  the ``hdkd`` model would only be a second, label-trained class head, so the variant would differ from
  ``student_alone`` in two ways. With ``hdkd_student`` it differs from ``student_alone`` by the feature loss alone.
* ``teacher_resnet18`` distils logits only (``distill.lam=0``): a timm ResNet-18's stage maps do not match the
  student's in shape. Its reference is ``logit_soft`` (the same logit-only distillation from the HDKD teacher).
* ``stem_stride_4`` needs ``model.img_size`` to be a multiple of 32 (stem stride 4, two halving stages, 2 x 2 DFLT
  patches: 4 x 4 x 2); the configurations of every requested variant are checked before anything is trained.
* the data-efficiency arms ``frac_<p>_student`` / ``frac_<p>_hdkd`` train on p % of the configured training set:
  ``data.train_fraction`` = p / 100 x the base config's ``data.train_fraction`` (1.0 unless a CPU preset shrinks the
  train split; then 100 % is the preset's training set, and p % is a subset of it, not of the official split).
  ``train_fraction`` takes a stratified subset of the train split fixed by ``data.split_seed`` (validation and
  test are unchanged), and the teacher of ``frac_<p>_hdkd`` is trained on the same subset, as a user holding only
  that data would. The number of epochs stays the role's, so a smaller fraction also gets fewer optimiser steps
  (what a user with less data running the same recipe gets). ``data.max_per_class`` caps every split *after* the
  fraction is taken, so with a cap the larger fractions can end up equal; to shrink the training set for CPU
  runs, set ``data.train_fraction`` in the base config instead (as ``configs/ablation_*.yaml`` do).

Parallel trainings (``jobs`` > 1, ``hdkd ablate --jobs N``): the grid's trainings are independent once their
teacher exists, so N worker processes train them side by side, each with ``cpus // N`` torch threads (at least
one). A free worker takes the first training in plan order (seed by seed) that can start, a distilled model once
its teacher is done, and the main process tests and records each run, in the usual order, as soon as its
trainings are finished (so an interrupted grid keeps the records of its finished runs). On a small CPU this is the
fast way to use every core: one single-threaded training per core keeps them all busy without the synchronisation
cost of multi-threaded small convolutions.
Each training is seeded and runs the same code whichever process runs it, so with the same number of threads per
process the trained weights do not depend on N (a different thread count changes floating-point reductions, which
Adam's first steps can amplify on near-zero gradients).
Not under torchrun. The report: ``hdkd.experiments.ablation.report``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from hdkd.config import Config
from hdkd.data import build_datasets
from hdkd.data.loaders import make_loader, resolve_num_workers
from hdkd.distillation.guard import compare_val_metrics
from hdkd.errors import ConfigError
from hdkd.evaluation.evaluate import evaluate_model
from hdkd.evaluation.metrics import headline_metrics
from hdkd.experiments.ablation.plan import AblationPlan, PlannedRun, plan_ablation
from hdkd.experiments.ablation.records import RESULTS_FILE, append_record, read_results
from hdkd.experiments.ablation.report import write_ablation_report
from hdkd.experiments.ablation.variants import GROUPS, REPORT_GROUPS, Variant
from hdkd.runtime import resolve_device, run_metadata
from hdkd.training import train_or_reuse
from hdkd.training.parallel import train_in_processes

__all__ = ["run_ablation", "train_in_parallel"]


def mean_grad_shares(history) -> dict[str, float]:
    """Each loss term's gradient share averaged over the epochs that measured it (train.grad_share_every)."""
    shares = {}
    for term in ("ce", "kd", "feature"):
        values = [r[f"grad_share_{term}"] for r in history if r.get(f"grad_share_{term}") is not None]
        if values:
            shares[term] = sum(values) / len(values)
    return shares


def check_teacher(teacher_info, run: PlannedRun, results_path: Path, log: Callable[[str], None], seen: set) -> None:
    """The teacher guard of a grid: warn (once per teacher and seed) when the teacher is weaker on validation than
    the same seed's student alone (when that is recorded already; the report compares them all)."""
    if (run.teacher_key, run.seed) in seen:
        return
    seen.add((run.teacher_key, run.seed))
    alone = [r for r in read_results(results_path) if r.get("variant") == "student_alone" and r.get("seed") == run.seed]
    if teacher_info is None or not alone:
        return
    verdict = compare_val_metrics(
        teacher_info["val_metrics"], alone[-1].get("val_metrics"), run.config.train.select_metric
    )
    if verdict["weaker"]:
        log(f"  teacher {run.teacher_key} (seed {run.seed}): {verdict['message']}")


class _DataCache:
    """Decoded datasets and their evaluation loaders, by data settings (the last two kept)."""

    def __init__(self, keep: int = 2):
        self.keep = keep
        self.entries: dict[str, Any] = {}

    def get(self, cfg: Config):

        key = json.dumps(
            [dataclasses.asdict(cfg.data), cfg.model.img_size, cfg.model.in_chans], sort_keys=True, default=str
        )
        if key not in self.entries:
            data = build_datasets(cfg.data, cfg.model.img_size, cfg.model.in_chans)
            if data.test is None:
                raise ConfigError(f"data: {cfg.data.path or 'the embedded dataset'} has no test split to report on")
            workers = resolve_num_workers(cfg.data.num_workers)
            loaders = {
                name: None
                if getattr(data, name) is None
                else make_loader(getattr(data, name), cfg.train.eval_batch_size, False, workers)
                for name in ("val", "test")
            }
            while len(self.entries) >= self.keep:
                self.entries.pop(next(iter(self.entries)))
            self.entries[key] = (data, loaders)
        return self.entries[key]


def train_in_parallel(
    plan: AblationPlan,
    jobs: int,
    log: Callable[[str], None],
    on_trained: Callable[[set[str]], None] = lambda finished: None,
    trained: Optional[set[str]] = None,
) -> set[str]:
    """Train every teacher and model the pending runs need in `jobs` worker processes
    (`hdkd.training.parallel`), in plan order (seed by seed), a distilled model once its teacher has finished."""

    tasks: dict[str, tuple[Config, Optional[str]]] = {}  # output folder -> (config, teacher folder), plan order
    for run in plan.pending:
        if run.teacher is not None:
            tasks.setdefault(run.teacher.output, (run.teacher, None))
        tasks.setdefault(run.config.output, (run.config, None if run.teacher is None else run.teacher.output))
    n_teachers = sum(1 for _, (c, _) in tasks.items() if c.role == "teacher")
    log(f"training {n_teachers} teacher(s) and {len(tasks) - n_teachers} model(s) in {jobs} processes")
    return train_in_processes(tasks, jobs, log, on_trained, trained, root=plan.output)


def run_ablation(
    cfg: Config,
    variants: Sequence[Variant | str],
    seeds: Sequence[int],
    output: str | Path,
    n_boot: int = 0,
    log: Optional[Callable[[str], None]] = print,
    report: bool = True,
    jobs: int = 1,
) -> Path:
    """Run every (seed, variant) not yet in ``OUTPUT/results.jsonl``; returns the path of that file.

    For each seed, then each variant: train (or reuse) its teacher (shared by key, see the module docstring) and
    its model, test the model once on the test split at the checkpoint chosen on validation, append one record.
    ``n_boot`` > 0 adds bootstrap 95 % intervals of the test metrics to each record. With ``report`` the ablation
    report (``hdkd.experiments.ablation.report``) is written into OUTPUT at the end. ``jobs`` > 1 trains in that many
    processes and records each run once its trainings are done, in the same order (see the module docstring).
    """
    if jobs < 1:
        raise ConfigError(f"--jobs: expected at least 1 process, got {jobs}")

    log = log or (lambda message: None)
    plan = plan_ablation(cfg, variants, seeds, output)
    out = plan.output
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / RESULTS_FILE
    provenance = run_metadata(with_git=True)
    cache = _DataCache()
    pending = plan.pending
    log(plan.describe())
    trained_by_workers: set[str] = set()
    checked_teachers: set = set()
    if jobs > 1 and pending:
        decoded = set()
        for run in pending:  # decode every dataset once, here, before the workers read the on-disk cache
            for c in (run.config, run.teacher):
                key = (
                    None
                    if c is None
                    else json.dumps([c.data.path, c.data.format, c.model.img_size, c.model.in_chans], default=str)
                )
                if key is not None and key not in decoded:
                    cache.get(c)
                    decoded.add(key)

    def test_and_record(i: int, run: PlannedRun) -> None:
        if (run.variant.name, run.seed, run.settings_key) in {
            (r.get("variant"), r.get("seed"), r.get("settings_key")) for r in read_results(results_path)
        }:
            return  # written meanwhile (a duplicate entry in the plan)
        start = time.perf_counter()
        log(f"[{i}/{len(pending)}] seed {run.seed} variant {run.variant.name}")
        data, loaders = cache.get(run.config)
        teacher_info = None
        if run.teacher is not None:
            tdir = Path(run.teacher.output)
            reused = (tdir / "summary.json").is_file() and run.teacher.output not in trained_by_workers
            trained_by_workers.discard(run.teacher.output)  # later runs sharing it reuse it, as in one process
            t_result = train_or_reuse(run.teacher, data=cache.get(run.teacher)[0], resume=True)
            teacher_info = {
                "key": run.teacher_key,
                "model": run.teacher.model.name,
                "checkpoint": str(t_result.best_checkpoint),
                "trained": not reused,
                "best_epoch": t_result.best_epoch,
                "val_metrics": headline_metrics(t_result.best_val),
                "params": t_result.params,
                "train_time_s": t_result.train_time_s,
                "config": run.teacher.to_dict(),
            }
        check_teacher(teacher_info, run, results_path, log, checked_teachers)
        reused = (run.model_dir / "summary.json").is_file() and run.config.output not in trained_by_workers
        trained_by_workers.discard(run.config.output)
        result = train_or_reuse(run.config, data=data, resume=True)
        device = resolve_device(run.config.train.device)
        assessed = evaluate_model(
            result.best_checkpoint,
            loaders["test"],
            data.class_names,
            device,
            run.config.train.amp,
            loaders["val"],
            n_boot=n_boot,
            seed=run.seed,
            flops_input=(run.config.model.img_size, data.in_chans),
        )
        amp = assessed["amp"]  # train.amp: auto recorded as what ran
        test_loss = assessed["loss"]
        metrics = headline_metrics(assessed["metrics"])
        metrics["loss"] = test_loss
        metrics["confusion_matrix"] = assessed["metrics"]["confusion_matrix"]
        scaling = assessed["temperature_scaling"]
        if scaling is not None:
            metrics["ece_temperature_scaled"] = scaling["test_after"]["ece"]
            metrics["temperature"] = scaling["temperature"]
        record = {
            "variant": run.variant.name,
            "group": run.variant.group,
            "groups": [g for g in REPORT_GROUPS if run.variant.name in GROUPS[g]],
            "description": run.variant.description,
            "overrides": list(run.variant.overrides_for(cfg)),
            "arm": run.variant.arm,
            "train_fraction": run.config.data.train_fraction,
            "fraction_of_base": run.variant.fraction
            if run.variant.fraction is not None
            else (1.0 if run.variant.arm else None),
            "seed": run.seed,
            "role": run.variant.role,
            "model": run.config.model.name,
            "settings_key": run.settings_key,
            "config": run.config.to_dict(),
            "teacher": teacher_info,
            **provenance,
            "device": str(device),
            "amp": amp,
            "metrics": metrics,
            "bootstrap": assessed["bootstrap"],
            "best_epoch": result.best_epoch,
            "val_metrics": headline_metrics(result.best_val),
            "params": result.params,
            "flops": assessed["flops"],
            "train_time_s": result.train_time_s,
            "grad_shares": mean_grad_shares(result.history),
            "model_trained": not reused,
            "wall_time_s": time.perf_counter() - start,
            "checkpoint": str(result.best_checkpoint),
            "data": data.description,
            "class_counts": data.counts,
            "selection": f"best validation {run.config.train.select_metric}; test used once, for this record",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        append_record(results_path, record)
        log(
            f"  test accuracy {metrics['accuracy']:.4f}, balanced {metrics['balanced_accuracy']:.4f}, "
            f"macro-F1 {metrics['macro_f1']:.4f} ({record['wall_time_s']:.0f} s)"
        )

    if jobs > 1 and pending:
        recorded = 0

        def record_ready(finished: set[str]) -> None:
            """Test and record, in plan order, every run whose model (and teacher) the workers have finished."""
            nonlocal recorded
            while recorded < len(pending):
                run = pending[recorded]
                if run.config.output not in finished or (
                    run.teacher is not None and run.teacher.output not in finished
                ):
                    return
                recorded += 1
                test_and_record(recorded, run)

        train_in_parallel(plan, jobs, log, record_ready, trained=trained_by_workers)
    else:
        for i, run in enumerate(pending, 1):
            test_and_record(i, run)
    if report:
        if results_path.is_file():
            paths = write_ablation_report(results_path, out)
            for warning in json.loads(paths["json"].read_text()).get("teacher_warnings", []):
                log(f"WARNING: {warning}")
    return results_path
