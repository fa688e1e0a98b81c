"""The one configuration system: nested dataclasses, filled from role defaults, a YAML file and `key=value` overrides.

A run is fully described by a `Config`; it is written next to every checkpoint so a result can be traced back to
exactly what produced it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from hdkd.errors import ConfigError

ROLES = ("teacher", "student", "hdkd")
MODEL_FOR_ROLE = {"teacher": "hdkd_teacher", "student": "hdkd_student", "hdkd": "hdkd"}
# The distilled student is the student trained another way: its per-role settings start from the student's, and a
# roles.hdkd block only says what differs (presets do not repeat the student's block).
ROLE_INHERITS: dict[str, tuple[str, ...]] = {"hdkd": ("student",)}


@dataclass
class ModelConfig:
    name: Optional[str] = None  # timm name; None -> the role's model (hdkd_teacher / hdkd_student / hdkd)
    img_size: int = 224
    in_chans: Optional[int] = None  # None -> from the data (1 for all-grey datasets, else 3)
    block: str = "mbcsa"  # mbcsa | mbconv (stages 2 and 3)
    stem_stride: int = 2
    depths: Optional[list[int]] = None  # None -> the role's default ([6, 6, 9] teacher, [2, 2, 3] student)
    widths: list[int] = field(default_factory=lambda: [64, 96, 192])
    dflt_depth: int = 3
    dflt_heads: int = 8
    dflt_patch_size: int = 2
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra arguments for timm.create_model


@dataclass
class DataConfig:
    path: Optional[str] = None  # None -> the embedded synthetic dataset
    format: str = "auto"  # auto | folder | csv | medmnist
    val_fraction: float = 0.1  # carved from train (stratified) when the data has no validation split
    split_seed: int = 0
    train_fraction: float = 1.0  # stratified subset of the training split (data-efficiency studies)
    max_per_class: Optional[int] = None  # cap per class and split (quick runs, tests)
    cache_dir: Optional[str] = None  # where decoded, resized images are cached; None -> ~/.cache/hdkd
    num_workers: int = -1  # data-loader workers; -1 -> sized to the machine
    augment: str = "authors"  # authors | none
    augment_on: str = (
        "auto"  # loader (per image, in workers) | device (batched on the training device) | auto (device on GPU)
    )
    # CSV-labelled data (HAM-10000 defaults)
    csv: Optional[str] = None  # metadata CSV; None -> the only *.csv in path
    image_column: str = "image_id"
    label_column: str = "dx"
    group_column: Optional[str] = None
    split_column: Optional[str] = None  # None -> "split" when the CSV has it
    image_dirs: Optional[list[str]] = None  # folders holding <image_id>.<ext>; None -> path and its subfolders
    image_ext: Optional[str] = None
    # leakage and class imbalance (hdkd audit; README "Duplicates and leakage", "Class imbalance")
    drop_duplicates: Optional[str] = None  # test | train: where to drop exact/near duplicates across splits
    duplicate_threshold: int = 24  # near duplicate: 256-bit pHash Hamming distance <= this (hdkd.data.dedup)
    smote: Optional[dict[str, int] | str] = None  # class name -> target train count (or a JSON file of that)


@dataclass
class OptimConfig:
    name: Optional[str] = None  # adam | adamw; None -> the role's default
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    schedule: Optional[str] = None  # constant | cosine
    warmup_epochs: Optional[int] = None
    warmup_lr: Optional[float] = None
    min_lr: Optional[float] = None


@dataclass
class DistillConfig:
    teacher: Optional[str] = None  # checkpoint of the teacher (hdkd role); the pipeline fills it in
    teacher_model: Optional[str] = None  # timm name when the teacher is not an hdkd_teacher checkpoint
    alpha: float = 0.5
    tau: float = 1.0
    lam: float = 10.0
    kd: str = "soft"  # soft | hard | none
    kd_reduction: str = "deit"  # deit (sum / (B*C)) | batchmean (sum / B)
    beta: float = 1.0
    feature_stages: list[int] = field(default_factory=lambda: [1, 2, 3])
    # the frozen teacher's BatchNorms folded into its convs: the same outputs up to float rounding, about 7 % faster
    # at 224 px (docs/RESULTS.md section 6); false distils from the teacher as trained
    fold_teacher_bn: bool = True
    feature_norm: str = "none"  # none (the paper) | variance: each stage's MSE / the teacher map's variance
    require_stronger_teacher: bool = False  # true: a teacher weaker on validation than the student alone is an error


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 16
    eval_batch_size: int = 128
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto: bf16 autocast where the hardware multiplies bf16 natively (CPUs with AMX or AVX512-BF16, GPUs with bf16),
    # fp32 elsewhere; bf16 matched fp32's accuracy within the seed spread on real data (docs/RESULTS.md section 9)
    amp: str = "auto"  # auto | none | bf16
    channels_last: bool = False
    compile: bool = False  # torch.compile the trained model and the frozen teacher (first steps pay the compile)
    compile_mode: Optional[str] = None  # None | default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs
    compile_backend: str = "inductor"  # any of torch.compiler.list_backends()
    select_metric: str = "balanced_accuracy"  # validation metric that picks the best checkpoint
    deterministic: bool = False
    progress: bool = True
    max_steps_per_epoch: Optional[int] = None
    save_every_steps: Optional[int] = None  # also checkpoint mid-epoch, so a killed run resumes where it stopped
    sync_bn: bool = False  # SyncBatchNorm across processes under torchrun
    class_weight: Optional[str] = None  # balanced: cross-entropy weighted by sklearn's 'balanced' class weights
    sampler: str = "random"  # random | balanced (WeightedRandomSampler, inverse class frequency)
    grad_share_every: int = 20  # log each loss term's share of the gradient norm every N-th step (0: off)
    tensorboard: bool = True  # also write TensorBoard event files beside log.jsonl (rank 0)


@dataclass
class Config:
    role: str = "hdkd"
    output: str = "runs/hdkd"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # per-role overrides, e.g. {"teacher": {"train": {"epochs": 30}}, "hdkd": {"optim": {"lr": 5e-4}}}
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def for_role(self, role: str) -> "Config":
        """The same run configured for another role (pipeline: teacher, then student, then hdkd)."""
        cfg = from_dict(self.to_dict())
        cfg.role = role
        return cfg.resolved()

    def resolved(self) -> "Config":
        """A copy with every role-dependent `None` replaced by the authors' default for that role."""
        if self.role not in ROLES:
            raise ConfigError(f"role: unknown role {self.role!r}; choose one of {', '.join(ROLES)}")
        values = self.to_dict()
        unknown = sorted(set(values.get("roles") or {}) - set(ROLES))
        if unknown:
            raise ConfigError(f"roles: unknown role(s) {', '.join(unknown)}; choose from {', '.join(ROLES)}")
        for role in ROLE_INHERITS.get(self.role, ()) + (self.role,):
            values = merge(values, (values.get("roles") or {}).get(role) or {})
        cfg = from_dict(values)
        if cfg.model.name is None:
            cfg.model.name = MODEL_FOR_ROLE[cfg.role]
        for key, value in AUTHORS_OPTIM[cfg.role].items():
            if getattr(cfg.optim, key) is None:
                setattr(cfg.optim, key, value)
        return cfg


# The authors' optimisers and schedules (HDKD_SPEC section 4).
AUTHORS_OPTIM: dict[str, dict[str, Any]] = {
    "teacher": dict(
        name="adam", lr=1e-3, weight_decay=0.0, schedule="constant", warmup_epochs=0, warmup_lr=1e-3, min_lr=1e-3
    ),
    "student": dict(
        name="adamw", lr=5e-5, weight_decay=0.05, schedule="cosine", warmup_epochs=5, warmup_lr=2e-5, min_lr=2e-5
    ),
}
AUTHORS_OPTIM["hdkd"] = AUTHORS_OPTIM["student"]

_SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "distill": DistillConfig,
    "train": TrainConfig,
}


def _check_keys(cls, values: dict, where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def from_dict(values: dict[str, Any], where: str = "config") -> Config:
    values = dict(values or {})
    _check_keys(Config, values, where)
    sections = {}
    for name, cls in _SECTIONS.items():
        section = values.pop(name, None) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{where}: section {name!r} must be a mapping, got {type(section).__name__}")
        _check_keys(cls, section, f"{where}: {name}")
        sections[name] = cls(**section)
    return Config(**values, **sections)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections")
    return values


def parse_override(text: str) -> dict[str, Any]:
    """`train.epochs=5` -> {"train": {"epochs": 5}}; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. train.epochs=5")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def build_config(
    role: Optional[str] = None,
    files: tuple[str, ...] | list[str] = (),
    overrides: tuple[str, ...] | list[str] = (),
    **sections: dict[str, Any],
) -> Config:
    """YAML files (in order) <- `sections` (named CLI options) <- `--set` overrides; unresolved (see `resolved`)."""
    values: dict[str, Any] = {}
    for path in files:
        values = merge(values, load_yaml(path))
    if role is not None:
        values["role"] = role
    command_line: dict[str, Any] = {}
    for name, section in sections.items():
        command_line = merge(command_line, {name: {k: v for k, v in section.items() if v is not None}})
    for text in overrides:
        command_line = merge(command_line, parse_override(text))
    values = merge(values, command_line)
    # what the command line sets wins over a preset's per-role values too
    for role_values in (values.get("roles") or {}).values():
        for name, section in command_line.items():
            if isinstance(section, dict) and isinstance((role_values or {}).get(name), dict):
                for key in section:
                    role_values[name].pop(key, None)
    cfg = from_dict(values)
    if cfg.role not in ROLES:
        raise ConfigError(f"role: unknown role {cfg.role!r}; choose one of {', '.join(ROLES)}")
    return cfg


def save_yaml(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
