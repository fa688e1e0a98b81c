"""The teacher guard: is the teacher the stronger model on validation, before anything is distilled from it?

Distillation presupposes a teacher better than the student trained alone. In our measurements a teacher that was
weaker on validation cost the distilled student 5 to 10 points whenever the feature term was on (docs/RESULTS.md
section 10), so `hdkd pipeline` and `hdkd ablate` compare the two on the validation split (the selection metric at
each model's best checkpoint; the test split is never looked at) and say so; `distill.require_stronger_teacher`
makes a weaker teacher an error in the pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from hdkd.errors import CheckpointError, ConfigError
from hdkd.models import read_checkpoint_metadata

WEAKER_TEACHER_COST = (
    "in our measurements distilling from a teacher weaker than the student alone cost the distilled student 5 to 10 "
    "points whenever the feature term was on (docs/RESULTS.md section 10)"
)


def teacher_checkpoint_score(path: str | Path, metric: str) -> Optional[float]:
    """The validation ``metric`` saved with a project checkpoint (``extra["val_<metric>"]`` of best.safetensors),
    None when the checkpoint does not record it (an authors' .pth, a timm model, another selection metric)."""
    try:
        extra = read_checkpoint_metadata(path).get("extra") or {}
    except CheckpointError:  # unreadable: the training that loads it says why
        return None
    value = extra.get(f"val_{metric}")
    return None if value is None else float(value)


def describe_teacher_score(path: str | Path, metric: str) -> str:
    """One line for `hdkd train hdkd`: the teacher's validation score, or that it is not recorded."""
    score = teacher_checkpoint_score(path, metric)
    if score is None:
        return f"teacher {path}: no validation {metric} recorded in the checkpoint"
    return f"teacher {path}: validation {metric} {score:.4f} (at its best checkpoint)"


def compare_teacher(teacher: Optional[float], student: Optional[float], metric: str) -> dict[str, Any]:
    """The guard's verdict: ``{"metric", "teacher", "student", "weaker", "message"}``; ``weaker`` is None when one
    of the two scores is unknown."""
    out: dict[str, Any] = {"metric": metric, "teacher": teacher, "student": student, "weaker": None}
    if teacher is None or student is None:
        out["message"] = f"not made (no validation {metric} for the teacher or for the student alone)"
        return out
    out["weaker"] = teacher < student
    scores = f"validation {metric} {teacher:.4f} for the teacher, {student:.4f} for the student trained alone"
    if out["weaker"]:
        out["message"] = f"WARNING: the teacher is the weaker model ({scores}); {WEAKER_TEACHER_COST}"
    else:
        out["message"] = f"the teacher is not the weaker model ({scores})"
    return out


def compare_val_metrics(
    teacher_val: Optional[Mapping[str, Any]], student_val: Optional[Mapping[str, Any]], metric: str
) -> dict[str, Any]:
    """`compare_teacher` on two validation-metric dicts (a training result's ``best_val``)."""

    def pick(values: Optional[Mapping[str, Any]]) -> Optional[float]:
        value = (values or {}).get(metric)
        return None if value is None else float(value)

    return compare_teacher(pick(teacher_val), pick(student_val), metric)


def enforce_stronger_teacher(verdict: Mapping[str, Any], required: bool) -> None:
    """With ``distill.require_stronger_teacher``, a weaker teacher stops the run before HDKD trains."""
    if required and verdict.get("weaker"):
        raise ConfigError(
            f"distill.require_stronger_teacher: the teacher's validation {verdict['metric']} "
            f"{verdict['teacher']:.4f} is below the student alone's {verdict['student']:.4f}; train a stronger "
            "teacher (more epochs, a larger model) or set distill.require_stronger_teacher=false"
        )
