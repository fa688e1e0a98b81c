"""Training criteria, all called the same way: `criterion(model, images, labels) -> LossOutput`.

`HDKDLoss` runs the frozen teacher once and the student once per step and takes both logits and the three stage
maps from those single passes. The authors' code re-runs teacher and student stage prefixes once per distilled
stage; the loss value is the same, the cost is not (HDKD_SPEC section 3).

Departure from the paper, off by default: ``feature_norm="variance"`` divides each stage's feature MSE by the
variance of the teacher's map at that stage, taken over the whole batch and every element (``F_t.var()``, the
population variance, detached, floored at 1e-8). The paper's raw MSE scales with the magnitude of the teacher's
activations, so lambda x MSE can be hundreds of times the cross-entropy (docs/RESULTS.md section 10); the
normalised term is about 1 for a student that predicts the teacher's map by its mean, whatever the map's scale.

Every criterion also returns its weighted, differentiable terms (``LossOutput.terms``; they sum to ``total``), so
the trainer can measure each term's share of the gradient norm (``hdkd.training.engine.gradient_shares``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from hdkd.errors import ConfigError, HDKDError
from hdkd.models.fuse import fold_batchnorm
from hdkd.runtime import compile_model, unwrap_model


@dataclass
class LossOutput:
    """`total` is differentiable; the components are detached and turned into floats only when read."""

    total: torch.Tensor
    logits: torch.Tensor  # the student's prediction (both heads averaged, as at inference), detached
    ce_t: torch.Tensor
    kd_t: Optional[torch.Tensor] = None
    feature_t: Optional[torch.Tensor] = None
    # the weighted terms as they enter `total` (ce, kd, feature), still attached to the graph; they sum to `total`
    terms: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def ce(self) -> float:
        """Cross-entropy of the class head."""
        return float(self.ce_t)

    @property
    def kd(self) -> float:
        """The logit-distillation term D (before weighting by alpha)."""
        return float(self.kd_t) if self.kd_t is not None else 0.0

    @property
    def feature(self) -> float:
        """sum_i i^beta * MSE(F_t^i, F_s^i) (before weighting by lambda; each MSE / Var(F_t^i) with
        feature_norm="variance")."""
        return float(self.feature_t) if self.feature_t is not None else 0.0

    def components(self) -> dict[str, float]:
        return {"loss": float(self.total.detach()), "ce": self.ce, "kd": self.kd, "feature": self.feature}


def _split_heads(out):
    """A distilled student returns (cls, dist) in train mode; a plain model returns one tensor."""
    if isinstance(out, (tuple, list)):
        return out[0], out[1]
    return out, None


class SupervisedLoss(nn.Module):
    """Cross-entropy for a model trained alone (teacher, student baseline); both heads if it has two."""

    def __init__(self, weight: Optional[torch.Tensor] = None, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.label_smoothing = label_smoothing

    def forward(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        z_cls, z_dist = _split_heads(model(images))
        ce = F.cross_entropy(z_cls.float(), labels, weight=self.weight, label_smoothing=self.label_smoothing)
        total = ce
        if z_dist is not None:
            total = (
                ce + F.cross_entropy(z_dist.float(), labels, weight=self.weight, label_smoothing=self.label_smoothing)
            ) / 2
        logits = z_cls if z_dist is None else (z_cls + z_dist) / 2
        return LossOutput(total=total, logits=logits.detach(), ce_t=ce.detach(), terms={"ce": total})


FEATURE_NORMS = ("none", "variance")
VARIANCE_FLOOR = 1e-8  # a constant teacher map would otherwise divide by zero


def stage_distance(student_map: torch.Tensor, teacher_map: torch.Tensor, norm: str = "none") -> torch.Tensor:
    """MSE over all elements; with norm="variance" divided by the teacher map's population variance over the
    batch and every element (detached: the teacher is frozen anyway)."""
    mse = F.mse_loss(student_map.float(), teacher_map.float())
    if norm == "variance":
        mse = mse / teacher_map.detach().float().var(unbiased=False).clamp_min(VARIANCE_FLOOR)
    return mse


class HDKDLoss(nn.Module):
    """L = (1 - alpha) CE(z_cls, y) + alpha D(z_t, z_dist) + lam * sum_i i^beta MSE(F_t^i, F_s^i).

    kd: "soft" (KL at temperature tau), "hard" (CE against the teacher's argmax) or "none" (feature-only).
    kd_reduction: "deit" divides the summed KL by B*C (the authors' and DeiT's scaling), "batchmean" by B.
    lam = 0 gives logit-only distillation; then any timm classifier can be the teacher. A student without a
    distillation token distils the logits through its single head.
    fold_teacher_bn: distil from a copy of the teacher with its BatchNorms folded into the convs
    (`hdkd.models.fuse.fold_batchnorm`); the caller's teacher is left untouched.
    feature_norm: "none" (the paper) or "variance" (each stage's MSE divided by Var(F_t^i); module docstring).
    """

    def __init__(
        self,
        teacher: nn.Module,
        alpha: float = 0.5,
        tau: float = 1.0,
        lam: float = 10.0,
        kd: str = "soft",
        beta: float = 1.0,
        kd_reduction: str = "deit",
        feature_stages: Sequence[int] = (1, 2, 3),
        class_weight: Optional[torch.Tensor] = None,
        fold_teacher_bn: bool = False,
        feature_norm: str = "none",
    ):
        super().__init__()
        if feature_norm not in FEATURE_NORMS:
            raise ConfigError(f"distill.feature_norm: unknown {feature_norm!r}; choose {' or '.join(FEATURE_NORMS)}")
        self.feature_norm = feature_norm
        if kd not in ("soft", "hard", "none"):
            raise ConfigError(f"distill.kd: unknown {kd!r}; choose soft, hard or none")
        if kd_reduction not in ("deit", "batchmean"):
            raise ConfigError(f"distill.kd_reduction: unknown {kd_reduction!r}; choose deit or batchmean")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"distill.alpha: must be in [0, 1], got {alpha}")
        if tau <= 0:
            raise ConfigError(f"distill.tau: must be positive, got {tau}")
        if lam < 0:
            raise ConfigError(f"distill.lam: must be >= 0, got {lam}")
        if kd == "none" and lam == 0:
            raise ConfigError("distill: kd=none with lam=0 distils nothing; train the student alone instead")
        if lam > 0 and not hasattr(teacher, "forward_intermediates"):
            raise ConfigError(
                "distill.lam > 0 needs a teacher with stage maps (forward_intermediates); "
                "use lam=0 for a logit-only teacher"
            )
        if fold_teacher_bn:  # the frozen teacher's eval-mode BNs folded into its convs (same outputs, less work)
            teacher = fold_batchnorm(teacher)
        self.teacher = teacher
        self.alpha, self.tau, self.lam, self.kd, self.beta = alpha, tau, lam, kd, beta
        self.kd_reduction = kd_reduction
        self.feature_stages = tuple(int(i) for i in feature_stages)
        if any(i < 1 for i in self.feature_stages):
            raise ConfigError(f"distill.feature_stages: stages are numbered from 1, got {list(feature_stages)}")
        self.register_buffer("class_weight", class_weight, persistent=False)
        self._checked_shapes = False
        self.teacher.eval()
        self.teacher.requires_grad_(False)

    def compile_teacher(self, mode: Optional[str] = None, backend: str = "inductor") -> None:
        """torch.compile the frozen teacher (the criterion owns it: moved with ``.to``, folded at construction)."""
        self.teacher = compile_model(self.teacher, mode, backend)

    def train(self, mode: bool = True):
        """The teacher stays frozen in eval mode whatever mode the criterion is put in."""
        super().train(mode)
        self.teacher.eval()
        return self

    def _stage_maps(self, model: nn.Module, images: torch.Tensor):
        core = unwrap_model(model)  # DistributedDataParallel and torch.compile wrap the student
        if getattr(core, "supports_return_stages", False):
            logits, maps = model(images, return_stages=True)
        else:
            final, maps = model.forward_intermediates(images)
            logits = model.forward_head(final)
        if max(self.feature_stages) > len(maps):
            raise HDKDError(
                f"feature distillation: distill.feature_stages {list(self.feature_stages)} asks for stage "
                f"{max(self.feature_stages)} but {type(core).__name__} has {len(maps)}"
            )
        return logits, [maps[i - 1] for i in self.feature_stages]

    def _check_shapes(self, t_maps, s_maps) -> None:
        for i, t, s in zip(self.feature_stages, t_maps, s_maps):
            if t.shape != s.shape:
                raise HDKDError(
                    f"feature distillation: stage {i} of the teacher has shape {tuple(t.shape[1:])} "
                    f"but the student's has {tuple(s.shape[1:])}; teacher and student must share "
                    f"stage widths, stem stride and img_size (or use distill.lam=0)"
                )
        self._checked_shapes = True

    def forward(self, student: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        use_features = self.lam > 0
        with torch.no_grad():
            if use_features:
                z_t, t_maps = self._stage_maps(self.teacher, images)
            else:
                z_t, t_maps = self.teacher(images), None
        if use_features:
            s_out, s_maps = self._stage_maps(student, images)
        else:
            s_out, s_maps = student(images), None
        z_cls, z_dist = _split_heads(s_out)
        z_kd = z_dist if z_dist is not None else z_cls
        z_cls, z_kd, z_t = z_cls.float(), z_kd.float(), z_t.float()

        ce = F.cross_entropy(z_cls, labels, weight=self.class_weight)
        logits = (z_cls + z_dist.float()) / 2 if z_dist is not None else z_cls
        kd_term = None
        if self.kd == "none":
            total = (
                ce if z_dist is None else (ce + F.cross_entropy(z_dist.float(), labels, weight=self.class_weight)) / 2
            )
            terms = {"ce": total}
        else:
            if self.kd == "soft":
                kl = F.kl_div(
                    F.log_softmax(z_kd / self.tau, dim=1),
                    F.log_softmax(z_t / self.tau, dim=1),
                    reduction="sum",
                    log_target=True,
                )
                denom = z_kd.numel() if self.kd_reduction == "deit" else z_kd.shape[0]
                kd_term = kl * (self.tau * self.tau) / denom
            else:
                kd_term = F.cross_entropy(z_kd, z_t.argmax(dim=1))
            terms = {"ce": (1 - self.alpha) * ce, "kd": self.alpha * kd_term}
            total = terms["ce"] + terms["kd"]

        feature_term = None
        if use_features:
            if not self._checked_shapes:
                self._check_shapes(t_maps, s_maps)
            feature_term = sum(
                (float(i) ** self.beta) * stage_distance(s, t, self.feature_norm)
                for i, t, s in zip(self.feature_stages, t_maps, s_maps)
            )
            terms["feature"] = self.lam * feature_term
            total = total + terms["feature"]
        return LossOutput(
            total=total,
            logits=logits.detach(),
            ce_t=ce.detach(),
            kd_t=None if kd_term is None else kd_term.detach(),
            feature_t=None if feature_term is None else feature_term.detach(),
            terms=terms,
        )
