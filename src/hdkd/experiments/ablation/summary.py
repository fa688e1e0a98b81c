"""What an ablation grid measured: mean ± std over seeds per variant and the paper's claims as paired differences.

Statistics. Per variant and metric: the mean and the sample standard deviation over seeds (``ddof=1``, ``None`` for a
single seed), with ``n`` the number of seeds. A claim compares two arms *paired by seed* (same seed, same data
split): per seed the difference of the test metric, then the mean ± sample std of those differences, ``n`` pairs, and
a 95 % Student-t interval of the mean difference (``mean ± t(0.975, n-1) · std / sqrt(n)``). The verdict is
"supported" when that interval lies above 0, "contradicted" when below, "inconclusive" when it contains 0 and "not
testable" with fewer than two pairs. With a handful of seeds this is a statement about training randomness on one
test split, not about the population of datasets.

Records. When one (variant, seed) appears more than once, the latest record counts; when a variant's records were
made with different settings (``settings_key``: e.g. the grid was rerun with another config into the same folder),
only the latest settings count and the report says how many records it left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

from hdkd.distillation.guard import WEAKER_TEACHER_COST
from hdkd.evaluation.metrics import HEADLINE_METRICS
from hdkd.evaluation.seeds import seeds_for_half_width, signed_rank_p, t_quantile
from hdkd.experiments.ablation.variants import GROUPS, REPORT_GROUPS, SPEED_REFERENCES, VARIANTS
from hdkd.reporting.ablation import TABLE_METRICS

REPORT_METRICS = HEADLINE_METRICS


def select_records(records: Sequence[Mapping[str, Any]]) -> tuple[dict[str, dict[int, dict]], list[str]]:
    """``{variant: {seed: record}}`` keeping the latest record per (variant, seed) of the variant's latest settings;
    plus notes on what was left out."""
    by_variant: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for order, record in enumerate(records):
        if "variant" not in record or "seed" not in record or not isinstance(record.get("metrics"), dict):
            continue
        by_variant.setdefault(str(record["variant"]), []).append((order, record))
    chosen: dict[str, dict[int, dict]] = {}
    notes = []
    for variant, items in by_variant.items():
        latest_settings = items[-1][1].get("settings_key")
        kept = [(o, r) for o, r in items if r.get("settings_key") == latest_settings]
        if len(kept) < len(items):
            notes.append(
                f"{variant}: {len(items) - len(kept)} record(s) made with other settings left out "
                f"(only the latest settings, {latest_settings}, count)"
            )
        per_seed: dict[int, dict] = {}
        for _, record in kept:
            per_seed[int(record["seed"])] = dict(record)  # a later record of the same seed replaces an earlier one
        if len(kept) > len(per_seed):
            notes.append(
                f"{variant}: {len(kept) - len(per_seed)} repeated (variant, seed) record(s); the latest of each counts"
            )
        chosen[variant] = dict(sorted(per_seed.items()))
    order = {name: i for i, name in enumerate(VARIANTS)}
    chosen = dict(sorted(chosen.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    return chosen, notes


def _stats(values: Sequence[Optional[float]]) -> dict[str, Any]:
    defined = np.array([v for v in values if v is not None], dtype=np.float64)
    return {
        "mean": float(defined.mean()) if defined.size else None,
        "std": float(defined.std(ddof=1)) if defined.size > 1 else None,
        "n": int(defined.size),
    }


def _metric(record: Mapping[str, Any], key: str) -> Optional[float]:
    value = (record.get("metrics") or {}).get(key)
    return None if value is None else float(value)


def paired_difference(
    a: Mapping[int, Mapping[str, Any]], b: Mapping[int, Mapping[str, Any]], metric: str
) -> dict[str, Any]:
    """Mean ± sample std of ``metric(a) - metric(b)`` over the seeds both have; 95 % t interval and a verdict (on
    the interval), and, as a check robust to one collapsed run, the median, the seeds where a is higher and
    Wilcoxon's signed-rank p."""
    seeds = sorted(
        s for s in set(a) & set(b) if _metric(a[s], metric) is not None and _metric(b[s], metric) is not None
    )
    diffs = np.array([_metric(a[s], metric) - _metric(b[s], metric) for s in seeds], dtype=np.float64)
    out: dict[str, Any] = {
        "metric": metric,
        "seeds": seeds,
        "n": len(seeds),
        "differences": [float(d) for d in diffs],
        "mean": None,
        "std": None,
        "ci95": None,
        "verdict": "not testable: no seed has both arms",
    }
    if not seeds:
        return out
    out["mean"] = float(diffs.mean())
    if len(seeds) < 2:
        out["verdict"] = "not testable: fewer than 2 paired seeds (no spread)"
        return out
    out.update(
        median=float(np.median(diffs)),
        above_zero=int(np.sum(diffs > 0)),
        signed_rank_p=signed_rank_p(diffs),
    )
    std = float(diffs.std(ddof=1))
    half = t_quantile(len(seeds) - 1) * std / math.sqrt(len(seeds))
    out.update(std=std, ci95=[out["mean"] - half, out["mean"] + half], half_width=half)
    out["seeds_for_goal"] = seeds_for_half_width(std)
    if out["ci95"][0] > 0:
        out["verdict"] = "supported (95% CI above 0)"
    elif out["ci95"][1] < 0:
        out["verdict"] = "contradicted (95% CI below 0)"
    else:
        out["verdict"] = "inconclusive (95% CI contains 0)"
    return out


def _fraction(record: Mapping[str, Any]) -> float:
    """Where a record sits on the data-efficiency axis: its fraction of the configured training set."""
    if record.get("fraction_of_base") is not None:
        return float(record["fraction_of_base"])
    if record.get("train_fraction") is not None:
        return float(record["train_fraction"])
    return float(((record.get("config") or {}).get("data") or {}).get("train_fraction", 1.0))


def _train_images(record: Mapping[str, Any]) -> Optional[int]:
    counts = (record.get("class_counts") or {}).get("train")
    return int(sum(counts.values())) if isinstance(counts, dict) else None


def _arm_points(chosen: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> dict[str, dict[float, dict[int, dict]]]:
    """``{arm: {fraction of the training set: {seed: record}}}`` from the variants on the data-efficiency curve.

    ``hdkd`` and ``frac_100_hdkd`` (likewise ``student_alone`` and ``frac_100_student``) are the same model: a seed
    present in both counts once (the frac_* record first)."""
    points: dict[str, dict[float, dict[int, dict]]] = {}
    for variant, per_seed in chosen.items():
        for seed, record in per_seed.items():
            arm = record.get("arm") or getattr(VARIANTS.get(variant), "arm", None)
            if arm is None:
                continue
            slot = points.setdefault(arm, {}).setdefault(_fraction(record), {})
            if seed not in slot or variant.startswith("frac_"):
                slot[seed] = dict(record)
    return {arm: dict(sorted(fr.items())) for arm, fr in points.items()}


def summarise_ablation(records: Sequence[Mapping[str, Any]], source: str = "") -> dict[str, Any]:
    """Everything the report says, as JSON-serialisable data (fractions, not percent)."""
    chosen, notes = select_records(records)
    variants: dict[str, Any] = {}
    for name, per_seed in chosen.items():
        any_record = next(iter(per_seed.values()))
        variants[name] = {
            "group": any_record.get("group") or getattr(VARIANTS.get(name), "group", "other"),
            "description": any_record.get("description") or getattr(VARIANTS.get(name), "description", ""),
            "model": any_record.get("model"),
            "role": any_record.get("role"),
            "seeds": list(per_seed),
            "metrics": {
                k: {
                    **_stats([_metric(r, k) for r in per_seed.values()]),
                    "values": [_metric(r, k) for r in per_seed.values()],
                }
                for k in REPORT_METRICS
            },
            "params": any_record.get("params"),
            "flops": any_record.get("flops"),
            "train_time_s": _stats([r.get("train_time_s") for r in per_seed.values()]),
            "wall_time_s": _stats([r.get("wall_time_s") for r in per_seed.values()]),
            "settings_key": any_record.get("settings_key"),
            "git_commits": sorted({str(r.get("git_commit")) for r in per_seed.values()}),
        }
    groups = {g: [v for v in GROUPS[g] if v in chosen] for g in REPORT_GROUPS}
    other = [v for v in chosen if v not in VARIANTS]
    if other:
        groups["other"] = other
    groups = {
        g: names
        for g, names in groups.items()  # the speed group only once a speed setting was measured
        if names and (g != "speed" or any(n in SPEED_REFERENCES for n in names))
    }

    def compare(a: str, b: str) -> dict[str, Any]:
        present = a in chosen and b in chosen
        return {
            "a": a,
            "b": b,
            "present": present,
            "differences": {m: paired_difference(chosen.get(a, {}), chosen.get(b, {}), m) for m in TABLE_METRICS},
        }

    points = _arm_points(chosen)
    curve = {
        arm: {
            str(f): {k: _stats([_metric(r, k) for r in recs.values()]) for k in TABLE_METRICS}
            | {"seeds": list(recs), "train_images": sorted({_train_images(r) for r in recs.values()} - {None})}
            for f, recs in fr.items()
        }
        for arm, fr in points.items()
    }
    claims = {
        "distillation": {
            "claim": "distillation beats the student alone (HDKD minus student alone)",
            **compare("hdkd", "student_alone"),
        },
        "block": {
            "claim": "MBCSA beats MBConv (HDKD with MBCSA minus HDKD with MBConv, each with its own teacher)",
            **compare("hdkd", "block_mbconv"),
        },
        "data_efficiency": _data_efficiency_claim(points),
    }
    comparisons = [compare(a, b) | {"what": what} for a, b, what in ABLATION_COMPARISONS if a in chosen and b in chosen]
    return {
        "source": source,
        "std": "sample standard deviation over seeds (ddof=1)",
        "comparisons": comparisons,
        "claims_method": "paired by seed; mean ± sample std of the per-seed differences; 95% Student-t CI",
        "notes": notes,
        "variants": variants,
        "groups": groups,
        "claims": claims,
        "data_efficiency": curve,
        **summarise_teachers(chosen),
        "speed": summarise_speed(chosen, compare),
        "loss_balance": summarise_loss_balance(chosen, compare),
    }


# the grid's other questions, each as (variant, reference, what the difference measures), paired by seed like the claims
ABLATION_COMPARISONS = (
    ("logit_soft", "student_alone", "soft logit distillation alone"),
    ("logit_hard", "student_alone", "hard logit distillation alone"),
    ("feature_only", "student_alone", "feature distillation alone"),
    ("hdkd", "logit_soft", "the feature term on top of soft logits (lambda 10)"),
    ("lam_1", "lam_10", "lambda 1 against 10"),
    ("lam_100", "lam_10", "lambda 100 against 10"),
    ("dflt_depth_1", "dflt_depth_3", "DFLT depth 1 against 3"),
    ("dflt_depth_6", "dflt_depth_3", "DFLT depth 6 against 3"),
    ("hdkd", "stem_stride_4", "stem stride 2 against 4 (own teachers)"),
    ("teacher_resnet18", "logit_soft", "a timm ResNet-18 teacher against the HDKD teacher, logits only"),
)


def summarise_speed(chosen: Mapping[str, Mapping[int, Mapping[str, Any]]], compare) -> dict[str, Any]:
    """Each measured speed setting against its default-settings reference, paired by seed. "Within the spread"
    when the mean paired difference is no larger than the reference's own seed-to-seed standard deviation."""
    out = {}
    for variant, reference in SPEED_REFERENCES.items():
        if variant not in chosen:
            continue
        entry = compare(variant, reference)
        for m, d in entry["differences"].items():
            ref = _stats([_metric(r, m) for r in chosen.get(reference, {}).values()])
            d["reference_std"] = ref["std"]
            if d.get("mean") is None or ref["std"] is None or d.get("n", 0) < 2:
                d["spread_verdict"] = "not testable: fewer than 2 paired seeds"
            else:
                within = abs(d["mean"]) <= ref["std"]
                d["spread_verdict"] = ("within" if within else "outside") + " the reference's seed-to-seed spread"
        out[variant] = entry
    return out


def summarise_teachers(chosen: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> dict[str, Any]:
    """Each teacher's VALIDATION metrics over seeds (teachers are never tested: nothing is chosen on test), with the
    variants that distil from it, next to the student trained alone on validation: distillation can only help when
    the teacher is the stronger model, so a reader needs to see whether it was."""
    teachers: dict[str, dict[str, Any]] = {}
    for name, per_seed in chosen.items():
        for seed, record in per_seed.items():
            info = record.get("teacher")
            if not isinstance(info, Mapping) or not info.get("key"):
                continue
            entry = teachers.setdefault(str(info["key"]), {"model": info.get("model"), "variants": [], "per_seed": {}})
            if name not in entry["variants"]:
                entry["variants"].append(name)
            entry["per_seed"][int(seed)] = info.get("val_metrics") or {}
    out: dict[str, Any] = {}
    alone = chosen.get("student_alone", {})
    warnings = []
    for key, entry in teachers.items():
        vals = entry.pop("per_seed")
        ref_name = _student_reference(entry["variants"])
        ref = chosen.get(ref_name, {})
        metric = _select_metric(ref or alone)
        weaker = [
            s
            for s in sorted(vals)
            if s in ref
            and vals[s].get(metric) is not None
            and (ref[s].get("val_metrics") or {}).get(metric) is not None
            and float(vals[s][metric]) < float(ref[s]["val_metrics"][metric])
        ]
        compared = [s for s in sorted(vals) if s in ref]
        out[key] = {
            **entry,
            "seeds": sorted(vals),
            "val": {
                m: _stats([None if vals[s].get(m) is None else float(vals[s][m]) for s in sorted(vals)])
                for m in TABLE_METRICS
            },
            "weaker_than_student_alone": {
                "metric": metric,
                "reference": ref_name,
                "seeds": weaker,
                "compared_seeds": compared,
            },
        }
        if weaker:
            warnings.append(
                f"the teacher {key} ({entry['model']}; distilled into {', '.join(entry['variants'])}) is weaker than "
                f"the student alone ({ref_name}) on validation {metric} on seed(s) "
                f"{', '.join(str(s) for s in weaker)} of {len(compared)}; {WEAKER_TEACHER_COST}"
            )
    reference = (
        {
            m: _stats(
                [
                    None if (r.get("val_metrics") or {}).get(m) is None else float(r["val_metrics"][m])
                    for r in alone.values()
                ]
            )
            for m in TABLE_METRICS
        }
        if alone
        else None
    )
    return {"teachers": out, "student_alone_val": reference, "teacher_warnings": warnings}


def _student_reference(variants: Sequence[str]) -> str:
    """The student trained alone on the same data as a teacher's variants: ``frac_<p>_student`` for a teacher of
    the ``frac_<p>_hdkd`` arm below 100 %, else ``student_alone``."""
    fractions = {VARIANTS[v].fraction for v in variants if v in VARIANTS}
    if len(fractions) == 1 and next(iter(fractions)) not in (None, 1.0):
        fraction = next(iter(fractions))
        for name, v in VARIANTS.items():
            if v.arm == "student_alone" and v.fraction == fraction:
                return name
    return "student_alone"


def _select_metric(records: Mapping[int, Mapping[str, Any]]) -> str:
    """The selection metric the grid ran with (its records' train.select_metric; balanced accuracy by default)."""
    for record in records.values():
        metric = ((record.get("config") or {}).get("train") or {}).get("select_metric")
        if metric:
            return str(metric)
    return "balanced_accuracy"


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    defined = [float(v) for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def summarise_loss_balance(chosen: Mapping[str, Mapping[int, Mapping[str, Any]]], compare) -> dict[str, Any]:
    """The loss-balance group: per variant its settings, validation and test means, the paired difference to the
    student alone, the mean gradient shares; and the recipe chosen on VALIDATION (the highest mean validation
    selection metric among the distilled variants), with its test difference to the student alone and to HDKD."""
    names = [n for n in GROUPS["loss_balance"] if n in chosen]
    if not any(VARIANTS[n].group == "loss_balance" for n in names):
        return {}
    metric = _select_metric(chosen.get("student_alone") or next(iter(chosen.values())))
    rows = {}
    for name in names:
        per_seed = chosen[name]
        distill = ((next(iter(per_seed.values())).get("config") or {}).get("distill")) or {}
        shares = {
            t: _mean([(r.get("grad_shares") or {}).get(t) for r in per_seed.values()]) for t in ("ce", "kd", "feature")
        }
        rows[name] = {
            "role": VARIANTS[name].role,
            "kd": distill.get("kd") if VARIANTS[name].role == "hdkd" else None,
            "lam": distill.get("lam") if VARIANTS[name].role == "hdkd" else None,
            "feature_norm": distill.get("feature_norm", "none") if VARIANTS[name].role == "hdkd" else None,
            "val": _stats([(r.get("val_metrics") or {}).get(metric) for r in per_seed.values()]),
            "grad_shares": shares,
            "minus_student_alone": compare(name, "student_alone")["differences"] if "student_alone" in chosen else None,
        }
    distilled = {n: r for n, r in rows.items() if r["role"] == "hdkd" and r["val"]["mean"] is not None}
    best = max(distilled, key=lambda n: distilled[n]["val"]["mean"]) if distilled else None
    return {
        "select_metric": metric,
        "variants": rows,
        "best_on_validation": best,
        "best_minus_student_alone": compare(best, "student_alone") if best and "student_alone" in chosen else None,
        "best_minus_hdkd": compare(best, "hdkd") if best and "hdkd" in chosen and best != "hdkd" else None,
    }


def pareto_front(points: Mapping[str, tuple[Optional[float], Optional[float]]]) -> list[str]:
    """Names on the front of (cost, score) points: no other point has cost <= and score >= with one strict."""
    defined = {n: (c, v) for n, (c, v) in points.items() if c is not None and v is not None}
    front = []
    for name, (cost, score) in defined.items():
        dominated = any(
            c <= cost and v >= score and (c < cost or v > score) for other, (c, v) in defined.items() if other != name
        )
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: defined[n][0])


PARETO_METRIC = "balanced_accuracy"


def summarise_pareto(
    summary: Mapping[str, Any], latency_ms: Mapping[str, Optional[float]], latency_note: str
) -> dict[str, Any]:
    """The peers next to HDKD and the student alone: test balanced accuracy against parameters and measured CPU
    latency (batch 1, one thread; ``latency_note`` says how, where and when), with the Pareto front of each."""
    names = [n for n in GROUPS["peers"] if n in summary["variants"]]
    points = {}
    for name in names:
        v = summary["variants"][name]
        points[name] = {
            "model": v["model"],
            "params": v["params"],
            "latency_ms": latency_ms.get(name),
            PARETO_METRIC: v["metrics"][PARETO_METRIC],
            "accuracy": v["metrics"]["accuracy"],
        }
    score = {n: p[PARETO_METRIC]["mean"] for n, p in points.items()}
    return {
        "metric": PARETO_METRIC,
        "latency": latency_note,
        "points": points,
        "front_params": pareto_front({n: (p["params"], score[n]) for n, p in points.items()}),
        "front_latency": pareto_front({n: (p["latency_ms"], score[n]) for n, p in points.items()}),
    }


def _data_efficiency_claim(points: Mapping[str, Mapping[float, Mapping[int, Mapping[str, Any]]]]) -> dict[str, Any]:
    """Gain of HDKD over the student alone at each training fraction; the claim: gain(smallest) > gain(100 %)."""
    out: dict[str, Any] = {
        "claim": "the gain of HDKD over the student alone is largest with scarce data "
        "(gain at the smallest training fraction minus gain at the full training set)",
        "present": False,
        "gains": {},
        "differences": {},
    }
    student, hdkd = points.get("student_alone", {}), points.get("hdkd", {})
    fractions = sorted(set(student) & set(hdkd))
    if not fractions:
        return out
    for f in fractions:
        out["gains"][str(f)] = {m: paired_difference(hdkd[f], student[f], m) for m in TABLE_METRICS}
    means = {f: out["gains"][str(f)]["accuracy"]["mean"] for f in fractions}
    defined = {f: m for f, m in means.items() if m is not None}
    out["largest_mean_accuracy_gain_at"] = max(defined, key=defined.get) if defined else None
    lo, hi = fractions[0], fractions[-1]
    out.update(smallest_fraction=lo, largest_fraction=hi, present=len(fractions) >= 2)
    if len(fractions) < 2:
        return out
    for m in TABLE_METRICS:  # per seed: (hdkd - student) at lo minus the same at hi
        gain_lo = {
            s: {"metrics": {m: _metric(hdkd[lo][s], m) - _metric(student[lo][s], m)}}
            for s in set(hdkd[lo]) & set(student[lo])
            if _metric(hdkd[lo][s], m) is not None and _metric(student[lo][s], m) is not None
        }
        gain_hi = {
            s: {"metrics": {m: _metric(hdkd[hi][s], m) - _metric(student[hi][s], m)}}
            for s in set(hdkd[hi]) & set(student[hi])
            if _metric(hdkd[hi][s], m) is not None and _metric(student[hi][s], m) is not None
        }
        out["differences"][m] = paired_difference(gain_lo, gain_hi, m)
    return out
