"""Planning a grid: each variant's config, the result-relevant key that names its folder, the teacher it shares."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from hdkd.config import (
    ADDED_LATER,
    RESULT_NEUTRAL,
    SAME_UP_TO_ROUNDING,
    Config,
    DistillConfig,
    ModelConfig,
    default_of,
    from_dict,
    img_size_multiple,
    merge,
    parse_override,
)
from hdkd.errors import ConfigError
from hdkd.experiments.ablation.records import RESULTS_FILE, read_results
from hdkd.experiments.ablation.variants import VARIANTS, Variant

# ------------------------------------------------------------------------------------------------ configurations
# which settings leave a result unchanged is the schema's knowledge: hdkd.config.RESULT_NEUTRAL, SAME_UP_TO_ROUNDING
# and ADDED_LATER


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


def _at_default(values: dict[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = values
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return True
        node = node[part]
    return node == default_of(path)


def config_key(cfg: Config | dict[str, Any], extra: Any = None) -> str:
    """A short hash of a resolved config's result-relevant settings (the seed excluded: it names the folder)."""
    values = cfg.to_dict() if isinstance(cfg, Config) else cfg
    later = tuple(path for path in ADDED_LATER if _at_default(values, path))
    values = _strip(values, RESULT_NEUTRAL + (("train", "seed"),) + later)
    for (section, key), value in SAME_UP_TO_ROUNDING.items():
        if key in values.get(section, {}):
            values[section][key] = value
    text = json.dumps(_canonical([values, extra]), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def unused_distill() -> DistillConfig:
    """The distill section a teacher or a student trained alone carries (it trains with cross-entropy only). Its
    lambda is pinned to the paper's 10, the default issue 15's point 6 may move, so that such a change neither
    retrains these models nor orphans the committed grids' records; the other fields still follow the defaults."""
    return DistillConfig(lam=10.0)


def teacher_config(vcfg: Config) -> Config:
    """The teacher a variant config distils from, resolved, with what cannot change its training normalised."""
    tcfg = vcfg.for_role("teacher")
    defaults = ModelConfig()
    tcfg.distill = unused_distill()
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
        mcfg.distill = unused_distill()
    mcfg.roles = {}
    return mcfg


def _check_architecture(cfg: Config, where: str) -> None:
    m = cfg.model
    if not m.name.startswith("hdkd"):
        return
    dflt = m.name != "hdkd_teacher"
    reduction = img_size_multiple(m)
    if m.img_size % reduction:
        raise ConfigError(
            f"{where}: model.img_size {m.img_size} must be a multiple of {reduction} for "
            f"{m.name} with stem stride {m.stem_stride}" + (f" and DFLT patch size {m.dflt_patch_size}" if dflt else "")
        )


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
        lines = [
            f"{len(self.runs)} run(s) ({len(self.runs) - len(self.pending)} already in "
            f"{self.output / RESULTS_FILE}); pending runs need {len(t['teachers'])} teacher(s) and "
            f"{len(t['models'])} model(s) (each trained unless already finished in its folder):"
        ]
        for r in self.pending:
            teacher = f", teacher {r.teacher_key}" if r.teacher_key else ""
            lines.append(
                f"  seed {r.seed} {r.variant.name:<20} {r.config.model.name} -> "
                f"{r.model_dir.relative_to(self.output)}{teacher}"
            )
        return "\n".join(lines)


def plan_ablation(
    cfg: Config, variants: Sequence[Variant | str], seeds: Sequence[int], output: str | Path
) -> AblationPlan:
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
