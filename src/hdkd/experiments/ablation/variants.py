"""The ablation variants and groups (``hdkd ablate --list``): named config overrides and the role each evaluates.

See ``hdkd.experiments.ablation.run`` for how a grid trains, shares and records them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from hdkd.config import Config
from hdkd.errors import ConfigError


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


LOSS_BALANCE_LAMBDAS = (0.001, 0.01, 0.1, 1, 10)

# timm models of similar size a user would pick instead of HDKD; each builds and trains at 32 px in the student role
PEERS = {
    "resnet18": "",
    "efficientnet_b0": "",
    "mobilevit_xs": "",
    "edgenext_x_small": "",
    "fastvit_t8": "",
    "deit_tiny_patch16_224": " (at 32 px its 16 px patches leave a 2 x 2 token grid)",
}


def _loss_balance_variants() -> list[Variant]:
    """lambda x {soft, hard logit KD} x {the paper's raw feature MSE, the variance-normalised one}.

    Names: ``lam_<lambda>`` (soft, raw: ``lam_1`` and ``lam_10`` are the lambda group's own), ``lam_<lambda>_hard``,
    ``lam_<lambda>_var``, ``lam_<lambda>_hard_var``. All distil from the shared teacher."""
    out = []
    for lam in LOSS_BALANCE_LAMBDAS:
        for kd in ("soft", "hard"):
            for norm in ("none", "variance"):
                name = f"lam_{lam}" + ("_hard" if kd == "hard" else "") + ("_var" if norm == "variance" else "")
                if name in ("lam_1", "lam_10"):
                    continue  # already in the lambda group, with these settings
                overrides = (f"distill.kd={kd}", f"distill.lam={lam}")
                if norm == "variance":
                    overrides += ("distill.feature_norm=variance",)
                feature = "feature MSE / teacher-map variance" if norm == "variance" else "feature MSE (the paper's)"
                out.append(
                    Variant(name, "loss_balance", "hdkd", overrides, f"{kd} logit KD + lambda {lam} x {feature}")
                )
    return out


def _registry() -> list[Variant]:
    v = [
        Variant(
            "student_alone",
            "distillation",
            "student",
            (),
            "the hybrid student trained alone (no teacher)",
            arm="student_alone",
        ),
        Variant(
            "logit_soft",
            "distillation",
            "hdkd",
            ("distill.kd=soft", "distill.lam=0"),
            "logit distillation only: soft KL through the distillation token",
        ),
        Variant(
            "logit_hard",
            "distillation",
            "hdkd",
            ("distill.kd=hard", "distill.lam=0"),
            "logit distillation only: hard (teacher argmax) labels for the distillation token",
        ),
        Variant(
            "feature_only",
            "distillation",
            "hdkd",
            ("distill.kd=none", "distill.lam=10", "roles.hdkd.model.name=hdkd_student"),
            "feature distillation only (stage MSE, lam 10), hdkd_student architecture (no distillation token)",
        ),
        Variant("hdkd", "distillation", "hdkd", _HDKD, "HDKD: soft logit + feature distillation, lam 10", arm="hdkd"),
    ]
    v += [
        Variant(
            f"lam_{lam}",
            "lambda",
            "hdkd",
            ("distill.kd=soft", f"distill.lam={lam}"),
            f"HDKD with feature weight lambda = {lam}",
        )
        for lam in (1, 10, 100)
    ]
    v += [
        Variant(
            "block_mbconv",
            "block",
            "hdkd",
            _HDKD + ("model.block=mbconv",),
            "HDKD with MBConv (squeeze-excitation) instead of MBCSA in teacher and student",
            changes_teacher=True,
        ),
    ]
    v += [
        Variant(
            f"dflt_depth_{d}",
            "dflt_depth",
            "hdkd",
            _HDKD + (f"model.dflt_depth={d}",),
            f"HDKD with {d} DFLT transformer layer(s) in the student (shared teacher)",
        )
        for d in (1, 3, 6)
    ]
    v += [
        Variant(
            "stem_stride_4",
            "stem",
            "hdkd",
            _HDKD + ("model.stem_stride=4",),
            "HDKD with stem stride 4 in teacher and student (img_size a multiple of 32)",
            changes_teacher=True,
        )
    ]
    for pct in (10, 25, 50, 100):
        v += [
            Variant(
                f"frac_{pct}_student",
                "data_efficiency",
                "student",
                (),
                f"student alone on {pct}% of the training set",
                arm="student_alone",
                fraction=pct / 100,
            ),
            Variant(
                f"frac_{pct}_hdkd",
                "data_efficiency",
                "hdkd",
                _HDKD,
                f"HDKD on {pct}% of the training set (teacher trained on the same subset)",
                changes_teacher=pct != 100,
                arm="hdkd",
                fraction=pct / 100,
            ),
        ]
    v += [
        Variant(
            "teacher_resnet18",
            "timm_teacher",
            "hdkd",
            ("distill.kd=soft", "distill.lam=0", "roles.teacher.model.name=resnet18"),
            "logit-only distillation from a timm ResNet-18 teacher (compare with logit_soft)",
            changes_teacher=True,
        )
    ]
    v += _loss_balance_variants()
    v += [
        Variant(
            f"peer_{name}",
            "peers",
            "student",
            (f"model.name={name}",),
            f"timm {name} trained from scratch in the student role (same data, augmentation, epochs, selection)" + note,
        )
        for name, note in PEERS.items()
    ]
    # speed settings: do they change accuracy beyond the seed-to-seed spread? (each against its fp32 / loader
    # reference, paired by seed; not part of `all`, the paper's grid)
    v += [
        Variant(
            "student_bf16",
            "speed",
            "student",
            ("train.amp=bf16",),
            "the student alone trained with bf16 autocast (compare with student_alone)",
        ),
        Variant(
            "hdkd_bf16",
            "speed",
            "hdkd",
            _HDKD + ("train.amp=bf16",),
            "HDKD with teacher and student trained in bf16 autocast (compare with hdkd)",
            changes_teacher=True,
        ),
        Variant(
            "student_augment_device",
            "speed",
            "student",
            ("data.augment_on=device",),
            "the student alone with batched augmentation on the device (compare with student_alone)",
        ),
        Variant(
            "hdkd_augment_device",
            "speed",
            "hdkd",
            _HDKD + ("data.augment_on=device",),
            "HDKD, teacher and student with batched augmentation on the device (compare with hdkd)",
            changes_teacher=True,
        ),
    ]
    return v


# each speed variant and the default-settings variant it is compared with
SPEED_REFERENCES = {
    "student_bf16": "student_alone",
    "hdkd_bf16": "hdkd",
    "student_augment_device": "student_alone",
    "hdkd_augment_device": "hdkd",
}


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
    "loss_balance": (
        "student_alone",
        "logit_soft",
        "logit_hard",
        *(v.name for v in VARIANTS.values() if v.group == "loss_balance" or v.name in ("lam_1", "lam_10")),
    ),
    "peers": ("student_alone", "hdkd", *(f"peer_{name}" for name in PEERS)),
}

# the paper's grid: not the speed settings, the loss balance or the peers (issue 15), each a group of its own
GROUPS["all"] = tuple(v.name for v in VARIANTS.values() if v.group not in ("speed", "loss_balance", "peers"))
for _fraction in (10, 25, 50, 100):
    GROUPS[f"frac_{_fraction}"] = (f"frac_{_fraction}_student", f"frac_{_fraction}_hdkd")

REPORT_GROUPS = (
    "distillation",
    "lambda",
    "block",
    "dflt_depth",
    "stem",
    "data_efficiency",
    "timm_teacher",
    "speed",
    "loss_balance",
    "peers",
)


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
            raise ConfigError(
                f"--variants: unknown variant or group {name!r}; groups: {', '.join(GROUPS)}; "
                f"variants: {', '.join(VARIANTS)}"
            )
    return [v for v in VARIANTS.values() if v.name in chosen]
