"""Ablations: named variants of the HDKD pipeline, run over seeds into one resumable results file (``hdkd ablate``).

A **variant** is a set of config overrides (dotted ``KEY=VALUE`` strings, exactly as ``--set`` takes them; a
variant's value wins over the base config and over a preset's per-role value for the same key) plus the role whose
model it evaluates: ``student`` (trained alone) or ``hdkd`` (distilled, so a teacher is trained first). Named
**groups** select variants (``distillation``, ``lambda``, ``block``, ``dflt_depth``, ``stem``, ``data_efficiency``,
``timm_teacher``, ``all``; ``frac_10`` ... ``frac_100`` select both arms of one training fraction).

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
on validation, with the pipeline's evaluation (``predict`` + ``assess_predictions``), and appended as one JSON line
to ``OUTPUT/results.jsonl`` (the file is rewritten atomically); a (variant, seed) already there with the same
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
trainings are finished (so an interrupted grid keeps the records of its finished runs). On a small CPU this is the fast way to use every core: one single-threaded
training per core keeps them all busy without the synchronisation cost of multi-threaded small convolutions.
Each training is seeded and runs the same code whichever process runs it, so with the same number of threads per
process the trained weights do not depend on N (a different thread count changes floating-point reductions, which
Adam's first steps can amplify on near-zero gradients).
Not under torchrun. The report: ``hdkd.ablation_report``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from . import __version__
from .config import Config, DistillConfig, ModelConfig, from_dict, merge, parse_override
from .errors import ConfigError
from .io import atomic_write_text

__all__ = ["Variant", "VARIANTS", "GROUPS", "SPEED_REFERENCES", "HEADLINE_METRICS", "resolve_variants", "variant_config",
           "teacher_config", "model_config", "config_key", "plan_ablation", "run_ablation", "read_results",
           "describe_registry"]

RESULTS_FILE = "results.jsonl"
HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr_macro", "ece")
_RECORD_METRICS = HEADLINE_METRICS + ("n", "weighted_f1", "mcc", "cohen_kappa", "brier", "nll")


@dataclass(frozen=True)
class Variant:
    """One ablation arm: ``overrides`` (``--set`` strings) applied to the base config; ``role`` is the model tested.

    ``changes_teacher`` documents whether the overrides change the teacher (then the variant trains its own); it is
    what the teacher key computes, and the tests check the two agree. ``arm`` and ``fraction`` place the variant on
    the data-efficiency plot (student alone vs HDKD at a training fraction).
    """

    name: str
    group: str
    role: str  # student | hdkd
    overrides: tuple[str, ...] = ()
    description: str = ""
    changes_teacher: bool = False
    arm: Optional[str] = None  # student_alone | hdkd (data-efficiency curve)
    fraction: Optional[float] = None  # train on this fraction of the base config's training set

    def overrides_for(self, cfg: Config) -> tuple[str, ...]:
        """The overrides applied to ``cfg``: ``overrides``, plus a fraction arm's scaled ``data.train_fraction``."""
        if self.fraction is None:
            return self.overrides
        return self.overrides + (f"data.train_fraction={round(cfg.data.train_fraction * self.fraction, 10)!r}",)

    @property
    def trains(self) -> tuple[str, ...]:
        """The roles this variant trains (a teacher shared with other variants is trained only once)."""
        return ("teacher", "hdkd") if self.role == "hdkd" else ("student",)


_HDKD = ("distill.kd=soft", "distill.lam=10")  # the paper's method (HDKD_SPEC section 3 defaults)


def _registry() -> list[Variant]:
    v = [
        Variant("student_alone", "distillation", "student", (), "the hybrid student trained alone (no teacher)",
                arm="student_alone"),
        Variant("logit_soft", "distillation", "hdkd", ("distill.kd=soft", "distill.lam=0"),
                "logit distillation only: soft KL through the distillation token"),
        Variant("logit_hard", "distillation", "hdkd", ("distill.kd=hard", "distill.lam=0"),
                "logit distillation only: hard (teacher argmax) labels for the distillation token"),
        Variant("feature_only", "distillation", "hdkd",
                ("distill.kd=none", "distill.lam=10", "roles.hdkd.model.name=hdkd_student"),
                "feature distillation only (stage MSE, lam 10), hdkd_student architecture (no distillation token)"),
        Variant("hdkd", "distillation", "hdkd", _HDKD, "HDKD: soft logit + feature distillation, lam 10",
                arm="hdkd"),
    ]
    v += [Variant(f"lam_{lam}", "lambda", "hdkd", ("distill.kd=soft", f"distill.lam={lam}"),
                  f"HDKD with feature weight lambda = {lam}") for lam in (1, 10, 100)]
    v += [
        Variant("block_mbconv", "block", "hdkd", _HDKD + ("model.block=mbconv",),
                "HDKD with MBConv (squeeze-excitation) instead of MBCSA in teacher and student", changes_teacher=True),
    ]
    v += [Variant(f"dflt_depth_{d}", "dflt_depth", "hdkd", _HDKD + (f"model.dflt_depth={d}",),
                  f"HDKD with {d} DFLT transformer layer(s) in the student (shared teacher)") for d in (1, 3, 6)]
    v += [Variant("stem_stride_4", "stem", "hdkd", _HDKD + ("model.stem_stride=4",),
                  "HDKD with stem stride 4 in teacher and student (img_size a multiple of 32)", changes_teacher=True)]
    for pct in (10, 25, 50, 100):
        v += [
            Variant(f"frac_{pct}_student", "data_efficiency", "student", (),
                    f"student alone on {pct}% of the training set", arm="student_alone", fraction=pct / 100),
            Variant(f"frac_{pct}_hdkd", "data_efficiency", "hdkd", _HDKD,
                    f"HDKD on {pct}% of the training set (teacher trained on the same subset)",
                    changes_teacher=pct != 100, arm="hdkd", fraction=pct / 100),
        ]
    v += [Variant("teacher_resnet18", "timm_teacher", "hdkd",
                  ("distill.kd=soft", "distill.lam=0", "roles.teacher.model.name=resnet18"),
                  "logit-only distillation from a timm ResNet-18 teacher (compare with logit_soft)",
                  changes_teacher=True)]
    # speed settings: do they change accuracy beyond the seed-to-seed spread? (each against its fp32 / loader
    # reference, paired by seed; not part of `all`, the paper's grid)
    v += [
        Variant("student_bf16", "speed", "student", ("train.amp=bf16",),
                "the student alone trained with bf16 autocast (compare with student_alone)"),
        Variant("hdkd_bf16", "speed", "hdkd", _HDKD + ("train.amp=bf16",),
                "HDKD with teacher and student trained in bf16 autocast (compare with hdkd)", changes_teacher=True),
        Variant("student_augment_device", "speed", "student", ("data.augment_on=device",),
                "the student alone with batched augmentation on the device (compare with student_alone)"),
        Variant("hdkd_augment_device", "speed", "hdkd", _HDKD + ("data.augment_on=device",),
                "HDKD, teacher and student with batched augmentation on the device (compare with hdkd)",
                changes_teacher=True),
    ]
    return v


# each speed variant and the default-settings variant it is compared with
SPEED_REFERENCES = {"student_bf16": "student_alone", "hdkd_bf16": "hdkd",
                    "student_augment_device": "student_alone", "hdkd_augment_device": "hdkd"}


VARIANTS: dict[str, Variant] = {v.name: v for v in _registry()}

GROUPS: dict[str, tuple[str, ...]] = {
    "distillation": ("student_alone", "logit_soft", "logit_hard", "feature_only", "hdkd"),
    "lambda": ("student_alone", "logit_soft", "lam_1", "lam_10", "lam_100"),
    "block": ("hdkd", "block_mbconv"),
    "dflt_depth": ("dflt_depth_1", "dflt_depth_3", "dflt_depth_6"),
    "stem": ("hdkd", "stem_stride_4"),
    "data_efficiency": tuple(f"frac_{p}_{arm}" for p in (10, 25, 50, 100) for arm in ("student", "hdkd")),
    "timm_teacher": ("logit_soft", "teacher_resnet18"),
    "speed": ("student_alone", "hdkd", *SPEED_REFERENCES),
}
GROUPS["all"] = tuple(v for v in VARIANTS if v not in SPEED_REFERENCES)  # the paper's grid
for _pct in (10, 25, 50, 100):
    GROUPS[f"frac_{_pct}"] = (f"frac_{_pct}_student", f"frac_{_pct}_hdkd")
REPORT_GROUPS = ("distillation", "lambda", "block", "dflt_depth", "stem", "data_efficiency", "timm_teacher", "speed")


def describe_registry() -> str:
    """A plain-text listing of the variants and groups (``hdkd ablate --list``)."""
    lines = ["variants:"]
    for v in VARIANTS.values():
        shared = "own teacher" if v.changes_teacher else ("shared teacher" if v.role == "hdkd" else "no teacher")
        lines.append(f"  {v.name:<20} [{v.group}; tests {v.role}; {shared}] {v.description}")
        sets = list(v.overrides)
        if v.fraction is not None:
            sets.append(f"data.train_fraction={v.fraction:g} x the config's")
        if sets:
            lines.append(f"  {'':<20} --set {' --set '.join(sets)}")
    lines.append("groups:")
    for name, members in GROUPS.items():
        lines.append(f"  {name:<16} {' '.join(members) if name != 'all' else '(every variant)'}")
    return "\n".join(lines)


def resolve_variants(names: Optional[Sequence[str]] = None) -> list[Variant]:
    """Variant or group names -> variants, in registry order, each once; None or empty -> every variant."""
    if not names:
        names = ["all"]
    chosen: set[str] = set()
    for name in names:
        if name in GROUPS:
            chosen.update(GROUPS[name])
        elif name in VARIANTS:
            chosen.add(name)
        else:
            raise ConfigError(f"--variants: unknown variant or group {name!r}; groups: {', '.join(GROUPS)}; "
                              f"variants: {', '.join(VARIANTS)}")
    return [v for v in VARIANTS.values() if v.name in chosen]


# ------------------------------------------------------------------------------------------------ configurations
# settings that change where or how verbosely a run happens, not what it computes (as train_or_reuse ignores them)
_NEUTRAL = (("output",), ("roles",), ("train", "progress"), ("train", "device"), ("data", "num_workers"),
            ("data", "cache_dir"))
# settings hashed at one fixed value whatever they are: folding the frozen teacher's BatchNorms computes the same
# function up to float rounding (hashed as false, its value when the first results were written)
_HASHED_AS = {("distill", "fold_teacher_bn"): False}


def _apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``--set`` semantics: a section key set here also wins over the same key in every role's overrides."""
    for text in overrides:
        update = parse_override(text)
        for section, entries in update.items():
            if section == "roles" or not isinstance(entries, dict):
                continue
            for role_values in (values.get("roles") or {}).values():
                if isinstance((role_values or {}).get(section), dict):
                    for key in entries:
                        role_values[section].pop(key, None)
        values = merge(values, update)
    return values


def variant_config(cfg: Config, variant: Variant | str, seed: Optional[int] = None) -> Config:
    """The base config with the variant's overrides (and, given ``seed``, ``train.seed`` for every role)."""
    variant = VARIANTS[variant] if isinstance(variant, str) else variant
    values = _apply_overrides(cfg.to_dict(), variant.overrides_for(cfg))
    if seed is not None:
        values["train"]["seed"] = int(seed)
        for role_values in (values.get("roles") or {}).values():
            if isinstance((role_values or {}).get("train"), dict):
                role_values["train"].pop("seed", None)
    values["role"] = variant.role
    return from_dict(values, where=f"variant {variant.name}")


def _strip(values: dict[str, Any], paths: Sequence[tuple[str, ...]]) -> dict[str, Any]:
    out = json.loads(json.dumps(values))  # deep copy of plain JSON data
    for path in paths:
        node = out
        for part in path[:-1]:
            node = node.get(part) or {}
        node.pop(path[-1], None)
    return out


def _canonical(value: Any) -> Any:
    """Numbers compared by value (``lam: 10`` and ``lam: 10.0`` are one setting), tuples as lists."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return str(value)


# options added after results files existed: left out of the key while they hold their default, so a new option
# never orphans finished runs (their settings are what the default now means)
_ADDED_LATER = (("train", "compile"), ("train", "compile_mode"), ("train", "compile_backend"), ("data", "augment_on"))


def _at_default(values: dict[str, Any], path: tuple[str, ...]) -> bool:
    default: Any = Config()
    node: Any = values
    for part in path:
        default = getattr(default, part)
        if not isinstance(node, dict) or part not in node:
            return True
        node = node[part]
    return node == default


def config_key(cfg: Config | dict[str, Any], extra: Any = None) -> str:
    """A short hash of a resolved config's result-relevant settings (the seed excluded: it names the folder)."""
    values = cfg.to_dict() if isinstance(cfg, Config) else cfg
    later = tuple(path for path in _ADDED_LATER if _at_default(values, path))
    values = _strip(values, _NEUTRAL + (("train", "seed"),) + later)
    for (section, key), value in _HASHED_AS.items():
        if key in values.get(section, {}):
            values[section][key] = value
    text = json.dumps(_canonical([values, extra]), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def teacher_config(vcfg: Config) -> Config:
    """The teacher a variant config distils from, resolved, with what cannot change its training normalised."""
    tcfg = vcfg.for_role("teacher")
    defaults = ModelConfig()
    tcfg.distill = DistillConfig()  # the teacher trains with cross-entropy only
    reset = ("dflt_depth", "dflt_heads", "dflt_patch_size")  # the teacher has a linear head, no DFLT
    if not tcfg.model.name.startswith("hdkd"):  # a timm teacher takes none of the HDKD architecture options
        reset += ("block", "stem_stride", "depths", "widths")
    for name in reset:
        setattr(tcfg.model, name, getattr(defaults, name))
    tcfg.roles = {}
    return tcfg


def teacher_key(tcfg: Config) -> str:
    return f"{tcfg.model.name}-{config_key(tcfg)}"


def model_config(vcfg: Config, role: str, teacher_checkpoint: Optional[str] = None) -> Config:
    """The tested model's resolved config (``distill.teacher`` set for hdkd; the unused distill options of a student
    trained alone normalised, so it is one model whatever the base config's distillation settings)."""
    mcfg = vcfg.for_role(role)
    if role == "hdkd":
        mcfg.distill.teacher = teacher_checkpoint
    else:
        mcfg.distill = DistillConfig()
    mcfg.roles = {}
    return mcfg


def _check_architecture(cfg: Config, where: str) -> None:
    m = cfg.model
    if not m.name.startswith("hdkd"):
        return
    dflt = m.name != "hdkd_teacher"
    reduction = m.stem_stride * 4 * (m.dflt_patch_size if dflt else 1)
    if m.img_size % reduction:
        raise ConfigError(f"{where}: model.img_size {m.img_size} must be a multiple of {reduction} for "
                          f"{m.name} with stem stride {m.stem_stride}" + (f" and DFLT patch size {m.dflt_patch_size}"
                                                                           if dflt else ""))


@dataclass
class PlannedRun:
    """One (variant, seed): what it trains and where, and the key that decides whether it is already done."""

    variant: Variant
    seed: int
    config: Config  # the tested model's resolved config
    model_dir: Path
    teacher: Optional[Config] = None
    teacher_key: Optional[str] = None
    settings_key: str = ""


@dataclass
class AblationPlan:
    output: Path
    runs: list[PlannedRun] = field(default_factory=list)
    done: set = field(default_factory=set)  # (variant, seed, settings_key) already in results.jsonl

    @property
    def pending(self) -> list[PlannedRun]:
        return [r for r in self.runs if (r.variant.name, r.seed, r.settings_key) not in self.done]

    def trainings(self, pending_only: bool = True) -> dict[str, list[Path]]:
        """Distinct model folders the (pending) runs need: ``{"teachers": [...], "models": [...]}``."""
        runs = self.pending if pending_only else self.runs
        teachers = sorted({r.teacher.output for r in runs if r.teacher is not None})
        models = sorted({str(r.model_dir) for r in runs})
        return {"teachers": [Path(t) for t in teachers], "models": [Path(m) for m in models]}

    def describe(self) -> str:
        t = self.trainings()
        lines = [f"{len(self.runs)} run(s) ({len(self.runs) - len(self.pending)} already in "
                 f"{self.output / RESULTS_FILE}); pending runs need {len(t['teachers'])} teacher(s) and "
                 f"{len(t['models'])} model(s) (each trained unless already finished in its folder):"]
        for r in self.pending:
            teacher = f", teacher {r.teacher_key}" if r.teacher_key else ""
            lines.append(f"  seed {r.seed} {r.variant.name:<20} {r.config.model.name} -> "
                         f"{r.model_dir.relative_to(self.output)}{teacher}")
        return "\n".join(lines)


def plan_ablation(cfg: Config, variants: Sequence[Variant | str], seeds: Sequence[int],
                  output: str | Path) -> AblationPlan:
    """Resolve every (seed, variant) into configs, teacher keys and model folders; check them before any training."""
    variants = [VARIANTS[v] if isinstance(v, str) else v for v in variants]
    seeds = [int(s) for s in seeds]
    if not variants:
        raise ConfigError("--variants: no variant selected")
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: repeated seed(s) in {seeds}")
    out = Path(output)
    plan = AblationPlan(output=out)
    for seed in seeds:
        for variant in variants:
            vcfg = variant_config(cfg, variant, seed)
            tcfg = tkey = None
            if variant.role == "hdkd":
                tcfg = teacher_config(vcfg)
                _check_architecture(tcfg, f"variant {variant.name} (teacher)")
                tkey = teacher_key(tcfg)
                tcfg.output = str(out / "teachers" / tkey / f"seed_{seed}")
                mcfg = model_config(vcfg, "hdkd", str(Path(tcfg.output) / "best.safetensors"))
            else:
                mcfg = model_config(vcfg, "student")
            _check_architecture(mcfg, f"variant {variant.name}")
            key_values = _strip(mcfg.to_dict(), (("distill", "teacher"),))
            mkey = f"{variant.role}-{config_key(key_values, tkey)}"
            mcfg.output = str(out / "models" / mkey / f"seed_{seed}")
            settings = config_key(key_values, [variant.name, variant.role, tkey])
            plan.runs.append(PlannedRun(variant, seed, mcfg, Path(mcfg.output), tcfg, tkey, settings))
    plan.done = {(r.get("variant"), r.get("seed"), r.get("settings_key")) for r in read_results(out / RESULTS_FILE)}
    return plan


# ------------------------------------------------------------------------------------------------------ running
def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The records of a results.jsonl (a line that is not complete JSON, e.g. a torn last line, is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: such a float (a diverged run's loss) is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line by rewriting the file atomically: readers never see a torn line."""
    old = path.read_text() if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write_text(path, old + json.dumps(_finite(record), allow_nan=False, default=str) + "\n")


def git_commit(where: Optional[Path] = None) -> tuple[Optional[str], Optional[bool]]:
    """(HEAD commit, whether the work tree has changes) of the git checkout holding hdkd's source; (None, None)
    when it is not a git checkout or git is absent."""
    where = where or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=20)
        if head.returncode != 0:
            return None, None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True, timeout=20)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return head.stdout.strip() or None, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def _headline(metrics: Optional[dict[str, Any]]) -> dict[str, Any]:
    metrics = metrics or {}
    return {k: metrics[k] for k in _RECORD_METRICS if k in metrics}


class _DataCache:
    """Decoded datasets and their evaluation loaders, by data settings (the last two kept)."""

    def __init__(self, keep: int = 2):
        self.keep = keep
        self.entries: dict[str, Any] = {}

    def get(self, cfg: Config):
        from .data import build_datasets
        from .data.build import resolve_num_workers
        from .training.trainer import make_loader

        key = json.dumps([dataclasses.asdict(cfg.data), cfg.model.img_size, cfg.model.in_chans], sort_keys=True,
                         default=str)
        if key not in self.entries:
            data = build_datasets(cfg.data, cfg.model.img_size, cfg.model.in_chans)
            if data.test is None:
                raise ConfigError(f"data: {cfg.data.path or 'the embedded dataset'} has no test split to report on")
            workers = resolve_num_workers(cfg.data.num_workers)
            loaders = {name: None if getattr(data, name) is None else
                       make_loader(getattr(data, name), cfg.train.eval_batch_size, False, workers)
                       for name in ("val", "test")}
            while len(self.entries) >= self.keep:
                self.entries.pop(next(iter(self.entries)))
            self.entries[key] = (data, loaders)
        return self.entries[key]


def train_in_parallel(plan: AblationPlan, jobs: int, log: Callable[[str], None],
                      on_trained: Callable[[set[str]], None] = lambda finished: None,
                      trained: Optional[set[str]] = None) -> set[str]:
    """Train every teacher and model the pending runs need in `jobs` worker processes
    (`hdkd.training.parallel`), in plan order (seed by seed), a distilled model once its teacher has finished."""
    from .training.parallel import train_in_processes

    tasks: dict[str, tuple[Config, Optional[str]]] = {}  # output folder -> (config, teacher folder), plan order
    for run in plan.pending:
        if run.teacher is not None:
            tasks.setdefault(run.teacher.output, (run.teacher, None))
        tasks.setdefault(run.config.output, (run.config, None if run.teacher is None else run.teacher.output))
    n_teachers = sum(1 for _, (c, _) in tasks.items() if c.role == "teacher")
    log(f"training {n_teachers} teacher(s) and {len(tasks) - n_teachers} model(s) in {jobs} processes")
    return train_in_processes(tasks, jobs, log, on_trained, trained, root=plan.output)


def run_ablation(cfg: Config, variants: Sequence[Variant | str], seeds: Sequence[int], output: str | Path,
                 n_boot: int = 0, log: Optional[Callable[[str], None]] = print, report: bool = True,
                 jobs: int = 1) -> Path:
    """Run every (seed, variant) not yet in ``OUTPUT/results.jsonl``; returns the path of that file.

    For each seed, then each variant: train (or reuse) its teacher (shared by key, see the module docstring) and
    its model, test the model once on the test split at the checkpoint chosen on validation, append one record.
    ``n_boot`` > 0 adds bootstrap 95 % intervals of the test metrics to each record. With ``report`` the ablation
    report (``hdkd.ablation_report``) is written into OUTPUT at the end. ``jobs`` > 1 trains in that many processes
    and records each run once its trainings are done, in the same order (see the module docstring).
    """
    if jobs < 1:
        raise ConfigError(f"--jobs: expected at least 1 process, got {jobs}")
    import torch

    from .evaluation import assess_predictions
    from .models import count_flops, create_model_from_checkpoint
    from .training import predict, resolve_amp, resolve_device, train_or_reuse

    log = log or (lambda message: None)
    plan = plan_ablation(cfg, variants, seeds, output)
    out = plan.output
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / RESULTS_FILE
    commit, dirty = git_commit()
    cache = _DataCache()
    pending = plan.pending
    log(plan.describe())
    trained_by_workers: set[str] = set()
    if jobs > 1 and pending:
        decoded = set()
        for run in pending:  # decode every dataset once, here, before the workers read the on-disk cache
            for c in (run.config, run.teacher):
                key = None if c is None else json.dumps([c.data.path, c.data.format, c.model.img_size,
                                                          c.model.in_chans], default=str)
                if key is not None and key not in decoded:
                    cache.get(c)
                    decoded.add(key)

    def test_and_record(i: int, run: PlannedRun) -> None:
        if (run.variant.name, run.seed, run.settings_key) in {(r.get("variant"), r.get("seed"), r.get("settings_key"))
                                                               for r in read_results(results_path)}:
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
            teacher_info = {"key": run.teacher_key, "model": run.teacher.model.name,
                            "checkpoint": str(t_result.best_checkpoint), "trained": not reused,
                            "best_epoch": t_result.best_epoch, "val_metrics": _headline(t_result.best_val),
                            "params": t_result.params, "train_time_s": t_result.train_time_s,
                            "config": run.teacher.to_dict()}
        reused = (run.model_dir / "summary.json").is_file() and run.config.output not in trained_by_workers
        trained_by_workers.discard(run.config.output)
        result = train_or_reuse(run.config, data=data, resume=True)
        device = resolve_device(run.config.train.device)
        model = create_model_from_checkpoint(result.best_checkpoint).to(device)
        amp = resolve_amp(run.config.train.amp, device)  # train.amp: auto recorded as what ran
        y, probs, test_loss = predict(model, loaders["test"], device, amp)
        y_val = probs_val = None
        if loaders["val"] is not None:  # same checkpoint on validation: temperature scaling is fitted there only
            y_val, probs_val, _ = predict(model, loaders["val"], device, amp)
        assessed = assess_predictions(y, probs, data.class_names, y_val, probs_val, n_boot=n_boot, seed=run.seed)
        metrics = _headline(assessed["metrics"])
        metrics["loss"] = test_loss
        metrics["confusion_matrix"] = assessed["metrics"]["confusion_matrix"]
        scaling = assessed["temperature_scaling"]
        if scaling is not None:
            metrics["ece_temperature_scaled"] = scaling["test_after"]["ece"]
            metrics["temperature"] = scaling["temperature"]
        record = {
            "variant": run.variant.name, "group": run.variant.group,
            "groups": [g for g in REPORT_GROUPS if run.variant.name in GROUPS[g]],
            "description": run.variant.description, "overrides": list(run.variant.overrides_for(cfg)),
            "arm": run.variant.arm, "train_fraction": run.config.data.train_fraction,
            "fraction_of_base": run.variant.fraction if run.variant.fraction is not None else
            (1.0 if run.variant.arm else None),
            "seed": run.seed, "role": run.variant.role, "model": run.config.model.name,
            "settings_key": run.settings_key, "config": run.config.to_dict(), "teacher": teacher_info,
            "git_commit": commit, "git_dirty": dirty, "hdkd_version": __version__, "torch": torch.__version__,
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "device": str(device),
            "amp": amp, "metrics": metrics, "bootstrap": assessed["bootstrap"], "best_epoch": result.best_epoch,
            "val_metrics": _headline(result.best_val), "params": result.params,
            "flops": count_flops(model.cpu(), run.config.model.img_size, data.in_chans),
            "train_time_s": result.train_time_s, "model_trained": not reused,
            "wall_time_s": time.perf_counter() - start, "checkpoint": str(result.best_checkpoint),
            "data": data.description, "class_counts": data.counts,
            "selection": f"best validation {run.config.train.select_metric}; test used once, for this record",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _append_record(results_path, record)
        log(f"  test accuracy {metrics['accuracy']:.4f}, balanced {metrics['balanced_accuracy']:.4f}, "
            f"macro-F1 {metrics['macro_f1']:.4f} ({record['wall_time_s']:.0f} s)")

    if jobs > 1 and pending:
        recorded = 0

        def record_ready(finished: set[str]) -> None:
            """Test and record, in plan order, every run whose model (and teacher) the workers have finished."""
            nonlocal recorded
            while recorded < len(pending):
                run = pending[recorded]
                if run.config.output not in finished or (run.teacher is not None and run.teacher.output not in finished):
                    return
                recorded += 1
                test_and_record(recorded, run)

        train_in_parallel(plan, jobs, log, record_ready, trained=trained_by_workers)
    else:
        for i, run in enumerate(pending, 1):
            test_and_record(i, run)
    if report:
        from .ablation_report import write_ablation_report

        if results_path.is_file():
            write_ablation_report(results_path, out)
    return results_path
