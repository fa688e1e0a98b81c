"""The one configuration system: nested dataclasses, filled from role defaults, a YAML file and `key=value` overrides.

A run is fully described by a `Config`; it is written next to every checkpoint so a result can be traced back to
exactly what produced it.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from hdkd.errors import ConfigError
from hdkd.io import atomic_write_text

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
    # auto: channels_last for fp32 on the CPU, where the training step ran 1.08 to 1.46 x faster in it on three CPUs
    # (one loss: 0.96 x at 224 px on an Intel CPU; level at 224 px once freed memory is reused); NCHW under bf16
    # (slower in channels_last at 64 and 224 px on two CPUs) and on CUDA (not measured); docs/RESULTS.md section 13
    channels_last: Union[bool, str] = "auto"  # auto | true | false
    # on the CPU, keep freed activations in the process instead of page-faulting them back on every step
    # (hdkd.runtime.reuse_freed_memory; the fp32 step at 224 px, batch 16, 1.9-2.3 x faster; docs/RESULTS.md section 13)
    reuse_memory: bool = True
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

# ------------------------------------------------------------------------------------ what a setting means for a result
# Settings that change where or how verbosely a run happens, not what it computes: a finished run is reused, and an
# ablation run keeps its key, whatever they are.
RESULT_NEUTRAL: tuple[tuple[str, ...], ...] = (
    ("output",),
    ("roles",),
    ("train", "progress"),
    ("train", "device"),
    ("data", "num_workers"),
    ("data", "cache_dir"),
    ("train", "tensorboard"),  # logging options do not change the trained weights
    ("train", "reuse_memory"),  # the allocator's policy: bit-identical results
    ("train", "grad_share_every"),
)
# Settings that compute the same function up to float rounding: compared (and hashed into ablation keys) at one fixed
# value whatever they are (their values when the first ablation records were written; a memory format is a layout).
SAME_UP_TO_ROUNDING: dict[tuple[str, ...], Any] = {
    ("distill", "fold_teacher_bn"): False,
    ("train", "channels_last"): False,
}
# Options added after runs and records existed. A saved config without one ran with its default, so at its default it
# is left out of ablation keys and never makes a saved run look different.
ADDED_LATER: tuple[tuple[str, ...], ...] = (
    ("train", "compile"),
    ("train", "compile_mode"),
    ("train", "compile_backend"),
    ("data", "augment_on"),
    ("distill", "feature_norm"),
    ("distill", "require_stronger_teacher"),
    ("train", "grad_share_every"),
    ("train", "tensorboard"),
    ("train", "reuse_memory"),
)


def default_of(path: tuple[str, ...]) -> Any:
    """The schema's default of the setting at `path`, e.g. ("train", "compile") -> False."""
    node: Any = Config()
    for part in path:
        node = getattr(node, part)
    return node


def result_differences(saved: dict[str, Any], current: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[str]:
    """Dotted names of the result-relevant settings in which two resolved configs (as dicts) differ.

    A setting missing from `saved` (an option newer than the saved run) counts as its default."""
    out = []
    for key in sorted(set(saved) | set(current), key=str):
        path = prefix + (key,)
        if path in RESULT_NEUTRAL or path in SAME_UP_TO_ROUNDING:
            continue
        current_value = current.get(key)
        if key in saved:
            saved_value = saved[key]
        else:
            try:
                saved_value = default_of(path)
            except AttributeError:
                continue
            saved_value = dataclasses.asdict(saved_value) if dataclasses.is_dataclass(saved_value) else saved_value
        if isinstance(saved_value, dict) and isinstance(current_value, dict):
            out += result_differences(saved_value, current_value, path)
        elif saved_value != current_value:
            out.append(".".join(map(str, path)))
    return out


# ----------------------------------------------------------------------------------------------- reading and types
# String settings that are paths: a number there (--set data.path=2024) is the folder's name, not a type error.
_PATH_FIELDS = {("output",), ("data", "path"), ("data", "csv"), ("data", "cache_dir"), ("distill", "teacher")}


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        text = " or ".join(_type_name(a) for a in args)
        return f"{text} or null" if len(args) < len(typing.get_args(hint)) else text
    if origin is list:
        item = typing.get_args(hint)[0]
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}.get(item, _type_name(item))
    if origin is dict:
        return "a mapping"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


class _BadType(Exception):
    pass


def _coerce(value: Any, hint: Any, path: tuple[str, ...]) -> Any:
    """`value` checked against the annotation `hint` (numbers from YAML's `1e-3` strings parsed); _BadType if not."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        for option in typing.get_args(hint):
            if option is type(None):
                continue
            try:
                return _coerce(value, option, path)
            except _BadType:
                pass
        raise _BadType
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _BadType
        return [_coerce(v, typing.get_args(hint)[0], path) for v in value]
    if origin is dict:
        key_type, value_type = typing.get_args(hint)
        if not isinstance(value, dict):
            raise _BadType
        return {_coerce(k, key_type, path): _coerce(v, value_type, path) for k, v in value.items()}
    if isinstance(value, bool) and hint is not bool:
        raise _BadType
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise _BadType from None
        if not isinstance(value, (int, float)) or value != value or value in (float("inf"), float("-inf")):
            raise _BadType
        return value
    if hint is str and isinstance(value, (int, float)) and path in _PATH_FIELDS:
        return str(value)
    if not isinstance(value, hint):
        raise _BadType
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_section(cls, values: Any, where: str, path: tuple[str, ...]) -> dict[str, Any]:
    """A section's values with their keys and types checked: ConfigError naming the option otherwise."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: must be a mapping of options, got {_shown(values)} ({type(values).__name__})")
    hints = typing.get_type_hints(cls)
    unknown = sorted((str(k) for k in values if k not in hints), key=str)
    if unknown:
        raise ConfigError(
            f"{where}: unknown option(s) {', '.join(repr(k) for k in unknown)}; known: {', '.join(sorted(hints))}"
        )
    out = {}
    for key, value in values.items():
        try:
            out[key] = _coerce(value, hints[key], path + (key,))
        except _BadType:
            raise ConfigError(
                f"{where}.{key}: expected {_type_name(hints[key])}, got {_shown(value)} ({type(value).__name__})"
            ) from None
    return out


def from_dict(values: dict[str, Any], where: str = "config") -> Config:
    """A Config from plain data (YAML, JSON, --set); every key and type is checked, each error naming the option."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: must be a mapping of sections, got {_shown(values)}")
    values = dict(values)
    sections = {
        name: cls(**_check_section(cls, values.pop(name, None), _within(where, name), (name,)))
        for name, cls in _SECTIONS.items()
    }
    roles = _check_roles(values.pop("roles", None), where)
    top = _check_section(Config, values, where, ())
    top["roles"] = roles
    return Config(**top, **sections)


def _within(where: str, name: str) -> str:
    """How an error names a section: `train`, or `variant hdkd: train` (the whole config needs no prefix)."""
    return name if where == "config" else f"{where}: {name}"


def _check_roles(roles: Any, where: str) -> dict[str, dict[str, Any]]:
    """roles: {role: {section: {key: value}}}, every level checked now (not when that role is first resolved)."""
    roles = roles or {}
    if not isinstance(roles, dict):
        raise ConfigError(f"{where}: roles: must be a mapping of role names to sections, got {_shown(roles)}")
    unknown = sorted((str(r) for r in roles if r not in ROLES), key=str)
    if unknown:
        raise ConfigError(
            f"{where}: roles: unknown role(s) {', '.join(map(repr, unknown))}; choose from {', '.join(ROLES)}"
        )
    out = {}
    for role, sections in roles.items():
        at = _within(where, f"roles.{role}")
        if sections is None:
            sections = {}
        if not isinstance(sections, dict):
            raise ConfigError(f"{at}: must be a mapping of sections, got {_shown(sections)}")
        out[role] = {}
        for name, section in sections.items():
            if name in _SECTIONS:
                out[role][name] = _check_section(_SECTIONS[name], section, f"{at}.{name}", (name,))
            elif name == "output":
                out[role][name] = _check_section(Config, {name: section}, at, ())[name]
            else:
                raise ConfigError(
                    f"{at}: unknown section {name!r}; a role block holds {', '.join(_SECTIONS)} (or output)"
                )
    return out


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
        raise ConfigError(f"{path}: config file not found" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file (a config file is YAML text)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror or exc})") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({type(exc).__name__})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections, got {_shown(values)}")
    # an empty section (`train:` with every line commented out) means nothing set, not "erase the earlier file's"
    return {k: v for k, v in values.items() if not (v is None and (k in _SECTIONS or k == "roles"))}


_KEY_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_override(text: str) -> dict[str, Any]:
    """`train.epochs=5` -> {"train": {"epochs": 5}}; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. train.epochs=5")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    bad = [part for part in parts if not _KEY_PART.match(part)]
    if bad:
        raise ConfigError(f"--set {text}: {key.strip()!r} is not a dotted option name such as train.epochs")
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    out: dict[str, Any] = {}
    node = out
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _command_line_wins(values: dict[str, Any], command_line: dict[str, Any]) -> dict[str, Any]:
    """`command_line` merged over `values`, and each key it sets removed from every role's block (what the command
    line says wins over a preset's per-role values too)."""
    roles = values.get("roles")
    if isinstance(roles, dict):
        for role_values in roles.values():
            if not isinstance(role_values, dict):
                continue
            for name, section in command_line.items():
                if isinstance(section, dict) and isinstance(role_values.get(name), dict):
                    for key in section:
                        role_values[name].pop(key, None)
    return merge(values, command_line)


def build_config(
    role: Optional[str] = None,
    files: tuple[str, ...] | list[str] = (),
    overrides: tuple[str, ...] | list[str] = (),
    **sections: dict[str, Any],
) -> Config:
    """Precedence: YAML files (in order) < `sections` (named CLI options) < `--set` overrides, the last two winning over
    the files' per-role values too; unresolved (see `Config.resolved`)."""
    values: dict[str, Any] = {}
    for path in files:
        file_values = load_yaml(path)
        from_dict(copy.deepcopy(file_values), where=str(path))  # each file checked alone: errors name the file
        values = merge(values, file_values)
    if role is not None:
        values["role"] = role
    command_line: dict[str, Any] = {}
    for name, section in sections.items():
        given = {k: v for k, v in section.items() if v is not None}
        if given:  # an empty section must not replace (and so hide) what a file gave
            command_line = merge(command_line, {name: given})
    for text in overrides:
        command_line = merge(command_line, parse_override(text))
    cfg = from_dict(_command_line_wins(copy.deepcopy(values), command_line))
    if cfg.role not in ROLES:
        raise ConfigError(f"role: unknown role {cfg.role!r}; choose one of {', '.join(ROLES)}")
    return cfg


def with_overrides(cfg: Config, overrides: Sequence[str], where: str = "config") -> Config:
    """`cfg` with `--set`-style overrides applied, with the same precedence as on the command line."""
    values = cfg.to_dict()
    for text in overrides:
        values = _command_line_wins(values, parse_override(text))
    return from_dict(values, where=where)


def with_seed(cfg: Config, seed: int, output: Optional[str | Path] = None) -> Config:
    """`cfg` with train.seed = `seed` for every role (a per-role seed is dropped) and, given, another output folder."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed: expected an integer in [0, 2**32), got {_shown(seed)}")
    values = _command_line_wins(cfg.to_dict(), {"train": {"seed": seed}})
    if output is not None:
        values["output"] = str(output)
    return from_dict(values)


def save_yaml(cfg: Config, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ------------------------------------------------------------------------------------------------------ validation
# Validation metrics that can pick the best checkpoint, and whether a higher value is better.
SELECT_METRICS: dict[str, bool] = {
    "accuracy": True,
    "balanced_accuracy": True,
    "macro_f1": True,
    "weighted_f1": True,
    "mcc": True,
    "cohen_kappa": True,
    "auc_ovr_macro": True,
    "auc_ovr_weighted": True,
    "pr_auc_macro": True,
    "nll": False,
    "brier": False,
    "ece": False,
}
AMP_CHOICES = ("auto", "none", "bf16")  # hdkd.runtime.AMP
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # hdkd.runtime
# timm arguments that load weights or files: hdkd builds models offline and loads weights itself, strictly
_LOADING_KWARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir")
_REMOTE_PREFIXES = ("hf-hub:", "hf_hub:", "timm/", "http:", "https:", "local-dir:")


def selection_score(metric: str, value: float) -> float:
    """The number the trainer maximises to pick the best checkpoint: `value`, negated for lower-is-better metrics."""
    if metric not in SELECT_METRICS:
        raise ConfigError(f"train.select_metric: unknown {metric!r}; choose {', '.join(SELECT_METRICS)}")
    return float(value) if SELECT_METRICS[metric] else -float(value)


def _in(choices):
    return (lambda v: v in choices), "one of " + ", ".join(str(c) for c in choices)


def _at_least(low, allow_none=False):
    return (lambda v: (allow_none and v is None) or (v is not None and v >= low)), f">= {low}" + (
        " or null" if allow_none else ""
    )


def _between(low, high, closed_high=True):
    if closed_high:
        return (lambda v: v is not None and low <= v <= high), f"in [{low}, {high}]"
    return (lambda v: v is not None and low <= v < high), f"in [{low}, {high})"


_POSITIVE = ((lambda v: v is not None and v > 0), "> 0")
_SEED = ((lambda v: 0 <= v < 2**32), "an integer in [0, 2**32)")
_DEVICE = ((lambda v: re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None), "auto, cpu, cuda or cuda:N")
_STAGES = ((lambda v: len(v) > 0 and all(1 <= s <= 3 for s in v)), "stage numbers from 1 to 3")
_THREE = ((lambda v: v is None or (len(v) == 3 and all(1 <= x <= 4096 for x in v))), "3 integers from 1 to 4096")

# one rule per setting: (section, key) -> (predicate on the resolved value, what is expected)
_RANGES: dict[tuple[str, str], tuple[Any, str]] = {
    ("model", "img_size"): _between(8, 4096),
    ("model", "in_chans"): _in((None, 1, 3)),
    ("model", "block"): _in(("mbcsa", "mbconv")),
    ("model", "stem_stride"): _in((1, 2, 4)),
    ("model", "depths"): _THREE,
    ("model", "widths"): _THREE,
    ("model", "dflt_depth"): _between(1, 64),
    ("model", "dflt_heads"): _between(1, 64),
    ("model", "dflt_patch_size"): _between(1, 64),
    ("data", "format"): _in(("auto", "folder", "csv", "medmnist")),
    ("data", "val_fraction"): _between(0.0, 1.0, closed_high=False),
    ("data", "split_seed"): _SEED,
    ("data", "train_fraction"): ((lambda v: 0.0 < v <= 1.0), "in (0, 1]"),
    ("data", "max_per_class"): _at_least(1, allow_none=True),
    ("data", "num_workers"): _at_least(-1),
    ("data", "augment"): _in(("authors", "none")),
    ("data", "augment_on"): _in(("auto", "loader", "device")),
    ("data", "drop_duplicates"): _in((None, "test", "train")),
    ("data", "duplicate_threshold"): _between(0, 256),
    ("optim", "name"): _in(("adam", "adamw", "sgd")),
    ("optim", "lr"): _POSITIVE,
    ("optim", "weight_decay"): _at_least(0),
    ("optim", "schedule"): _in(("constant", "cosine")),
    ("optim", "warmup_epochs"): _at_least(0),
    ("optim", "warmup_lr"): _at_least(0),
    ("optim", "min_lr"): _at_least(0),
    ("distill", "alpha"): _between(0.0, 1.0),
    ("distill", "tau"): _POSITIVE,
    ("distill", "lam"): _at_least(0),
    ("distill", "kd"): _in(("soft", "hard", "none")),
    ("distill", "kd_reduction"): _in(("deit", "batchmean")),
    ("distill", "beta"): _at_least(0),
    ("distill", "feature_stages"): _STAGES,
    ("train", "epochs"): _at_least(1),
    ("train", "batch_size"): _at_least(1),
    ("train", "eval_batch_size"): _at_least(1),
    ("train", "seed"): _SEED,
    ("train", "device"): _DEVICE,
    ("train", "amp"): _in(AMP_CHOICES),
    ("train", "channels_last"): ((lambda v: v == "auto" or isinstance(v, bool)), "auto, true or false"),
    ("train", "compile_mode"): _in((None,) + COMPILE_MODES),
    ("train", "select_metric"): _in(tuple(SELECT_METRICS)),
    ("train", "max_steps_per_epoch"): _at_least(1, allow_none=True),
    ("train", "save_every_steps"): _at_least(1, allow_none=True),
    ("train", "class_weight"): _in((None, "balanced")),
    ("train", "sampler"): _in(("random", "balanced")),
}


def spatial_reduction(stem_stride: int, patch_size: int = 1) -> int:
    """The one img_size rule of the HDKD models: the input shrinks by the stem stride, then 2 x 2 (stages 2 and 3
    halve it), then the DFLT's patch size (1 for the teacher, which has no DFLT); img_size must be a multiple."""
    return stem_stride * 4 * patch_size


def img_size_multiple(model: ModelConfig) -> int:
    """What model.img_size must be a multiple of for this model config (`spatial_reduction`); 1 for timm models
    (they take any size)."""
    if not (model.name or "").startswith("hdkd"):
        return 1
    return spatial_reduction(model.stem_stride, model.dflt_patch_size if model.name != "hdkd_teacher" else 1)


def validate(cfg: Config, roles: Optional[Sequence[str]] = None) -> None:
    """Check every setting's range, and the rules between settings, for each of `roles` (default: cfg.role), before
    any work: ConfigError naming the option, the value and what is expected."""
    for role in roles or (cfg.role,):
        resolved = cfg.for_role(role)
        where = f"role {role}: " if roles else ""
        for (section, key), (ok, expected) in _RANGES.items():
            value = getattr(getattr(resolved, section), key)
            if ok(value):
                continue
            if expected.startswith("one of "):
                raise ConfigError(f"{where}{section}.{key}: unknown {_shown(value)}; choose {expected[7:]}")
            raise ConfigError(f"{where}{section}.{key}: expected {expected}, got {_shown(value)}")
        _check_rules(resolved, where)
    _check_output(Path(cfg.output))


def _check_rules(cfg: Config, where: str) -> None:
    m, d = cfg.model, cfg.distill
    name = m.name or ""
    if name.lower().startswith(_REMOTE_PREFIXES):
        raise ConfigError(f"{where}model.name: {name!r} names a model on the internet; hdkd builds models offline")
    loading = sorted(k for k in m.kwargs if k in _LOADING_KWARGS)
    if loading:
        raise ConfigError(
            f"{where}model.kwargs: {', '.join(loading)} would load weights through timm; hdkd trains from scratch "
            f"(a teacher's weights go in distill.teacher)"
        )
    multiple = img_size_multiple(m)
    if m.img_size % multiple:
        raise ConfigError(
            f"{where}model.img_size: {m.img_size} is not a multiple of {multiple}, which {name} needs with stem "
            f"stride {m.stem_stride}"
            + (f" and DFLT patch size {m.dflt_patch_size}" if multiple > 4 * m.stem_stride else "")
        )
    if cfg.role == "hdkd" and d.kd == "none" and d.lam == 0:
        raise ConfigError(f"{where}distill: kd=none with lam=0 distils nothing; train the student alone instead")
    if d.teacher_model is not None and d.teacher_model.lower().startswith(_REMOTE_PREFIXES):
        raise ConfigError(f"{where}distill.teacher_model: {d.teacher_model!r} names a model on the internet")


def _check_output(out: Path) -> None:
    for folder in (out, *out.parents):
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"output: {out} cannot be a folder: {folder} is a file")
