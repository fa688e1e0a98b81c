"""The ablation report (``hdkd ablate --report RESULTS.jsonl``): mean ± std over seeds per variant, the paper's three
claims as measured differences, and the data-efficiency plot.

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

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .ablation import GROUPS, REPORT_GROUPS, SPEED_REFERENCES, VARIANTS, read_results
from .io import atomic_write, atomic_write_text

__all__ = ["REPORT_METRICS", "select_records", "summarise_ablation", "format_ablation_markdown",
           "plot_data_efficiency", "write_ablation_report", "format_claims_across", "write_claims_across",
           "claim_labels"]

REPORT_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr_macro", "ece")
TABLE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
_NAMES = {"accuracy": "Accuracy (%)", "balanced_accuracy": "Balanced accuracy (%)", "macro_f1": "Macro-F1 (%)",
          "auc_ovr_macro": "AUC (OvR macro)", "ece": "ECE (%)"}
_PERCENT = {"accuracy", "balanced_accuracy", "macro_f1", "ece"}
_FIGURE_LINK = "![accuracy, balanced accuracy and macro-F1 against training fraction](ablation_data_efficiency.png)"


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
            notes.append(f"{variant}: {len(items) - len(kept)} record(s) made with other settings left out "
                         f"(only the latest settings, {latest_settings}, count)")
        per_seed: dict[int, dict] = {}
        for _, record in kept:
            per_seed[int(record["seed"])] = dict(record)  # a later record of the same seed replaces an earlier one
        if len(kept) > len(per_seed):
            notes.append(f"{variant}: {len(kept) - len(per_seed)} repeated (variant, seed) record(s); the latest "
                         f"of each counts")
        chosen[variant] = dict(sorted(per_seed.items()))
    order = {name: i for i, name in enumerate(VARIANTS)}
    chosen = dict(sorted(chosen.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    return chosen, notes


def _stats(values: Sequence[Optional[float]]) -> dict[str, Any]:
    defined = np.array([v for v in values if v is not None], dtype=np.float64)
    return {"mean": float(defined.mean()) if defined.size else None,
            "std": float(defined.std(ddof=1)) if defined.size > 1 else None,
            "n": int(defined.size)}


def _metric(record: Mapping[str, Any], key: str) -> Optional[float]:
    value = (record.get("metrics") or {}).get(key)
    return None if value is None else float(value)


def _t_quantile(df: int) -> float:
    from scipy.stats import t  # scipy comes with scikit-learn

    return float(t.ppf(0.975, df))


def paired_difference(a: Mapping[int, Mapping[str, Any]], b: Mapping[int, Mapping[str, Any]],
                      metric: str) -> dict[str, Any]:
    """Mean ± sample std of ``metric(a) - metric(b)`` over the seeds both have; 95 % t interval and a verdict."""
    seeds = sorted(s for s in set(a) & set(b)
                   if _metric(a[s], metric) is not None and _metric(b[s], metric) is not None)
    diffs = np.array([_metric(a[s], metric) - _metric(b[s], metric) for s in seeds], dtype=np.float64)
    out: dict[str, Any] = {"metric": metric, "seeds": seeds, "n": len(seeds),
                           "differences": [float(d) for d in diffs], "mean": None, "std": None,
                           "ci95": None, "verdict": "not testable: no seed has both arms"}
    if not seeds:
        return out
    out["mean"] = float(diffs.mean())
    if len(seeds) < 2:
        out["verdict"] = "not testable: fewer than 2 paired seeds (no spread)"
        return out
    std = float(diffs.std(ddof=1))
    half = _t_quantile(len(seeds) - 1) * std / math.sqrt(len(seeds))
    out.update(std=std, ci95=[out["mean"] - half, out["mean"] + half])
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
            "model": any_record.get("model"), "role": any_record.get("role"),
            "seeds": list(per_seed),
            "metrics": {k: {**_stats([_metric(r, k) for r in per_seed.values()]),
                            "values": [_metric(r, k) for r in per_seed.values()]} for k in REPORT_METRICS},
            "params": any_record.get("params"), "flops": any_record.get("flops"),
            "train_time_s": _stats([r.get("train_time_s") for r in per_seed.values()]),
            "wall_time_s": _stats([r.get("wall_time_s") for r in per_seed.values()]),
            "settings_key": any_record.get("settings_key"),
            "git_commits": sorted({str(r.get("git_commit")) for r in per_seed.values()}),
        }
    groups = {g: [v for v in GROUPS[g] if v in chosen] for g in REPORT_GROUPS}
    other = [v for v in chosen if v not in VARIANTS]
    if other:
        groups["other"] = other
    groups = {g: names for g, names in groups.items()  # the speed group only once a speed setting was measured
              if names and (g != "speed" or any(n in SPEED_REFERENCES for n in names))}

    def compare(a: str, b: str) -> dict[str, Any]:
        present = a in chosen and b in chosen
        return {"a": a, "b": b, "present": present,
                "differences": {m: paired_difference(chosen.get(a, {}), chosen.get(b, {}), m) for m in TABLE_METRICS}}

    points = _arm_points(chosen)
    curve = {arm: {str(f): {k: _stats([_metric(r, k) for r in recs.values()]) for k in TABLE_METRICS}
                   | {"seeds": list(recs), "train_images": sorted({_train_images(r) for r in recs.values()} - {None})}
                   for f, recs in fr.items()} for arm, fr in points.items()}
    claims = {
        "distillation": {"claim": "distillation beats the student alone (HDKD minus student alone)",
                         **compare("hdkd", "student_alone")},
        "block": {"claim": "MBCSA beats MBConv (HDKD with MBCSA minus HDKD with MBConv, each with its own teacher)",
                  **compare("hdkd", "block_mbconv")},
        "data_efficiency": _data_efficiency_claim(points),
    }
    comparisons = [compare(a, b) | {"what": what} for a, b, what in ABLATION_COMPARISONS if a in chosen and b in chosen]
    return {"source": source, "std": "sample standard deviation over seeds (ddof=1)", "comparisons": comparisons,
            "claims_method": "paired by seed; mean ± sample std of the per-seed differences; 95% Student-t CI",
            "notes": notes, "variants": variants, "groups": groups, "claims": claims, "data_efficiency": curve,
            **summarise_teachers(chosen), "speed": summarise_speed(chosen, compare)}


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
    for key, entry in teachers.items():
        vals = entry.pop("per_seed")
        out[key] = {**entry, "seeds": sorted(vals),
                    "val": {m: _stats([None if vals[s].get(m) is None else float(vals[s][m]) for s in sorted(vals)])
                            for m in TABLE_METRICS}}
    alone = chosen.get("student_alone", {})
    reference = {m: _stats([None if (r.get("val_metrics") or {}).get(m) is None else float(r["val_metrics"][m])
                            for r in alone.values()]) for m in TABLE_METRICS} if alone else None
    return {"teachers": out, "student_alone_val": reference}


def _data_efficiency_claim(points: Mapping[str, Mapping[float, Mapping[int, Mapping[str, Any]]]]) -> dict[str, Any]:
    """Gain of HDKD over the student alone at each training fraction; the claim: gain(smallest) > gain(100 %)."""
    out: dict[str, Any] = {"claim": "the gain of HDKD over the student alone is largest with scarce data "
                                    "(gain at the smallest training fraction minus gain at the full training set)",
                           "present": False, "gains": {}, "differences": {}}
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
        gain_lo = {s: {"metrics": {m: _metric(hdkd[lo][s], m) - _metric(student[lo][s], m)}}
                   for s in set(hdkd[lo]) & set(student[lo])
                   if _metric(hdkd[lo][s], m) is not None and _metric(student[lo][s], m) is not None}
        gain_hi = {s: {"metrics": {m: _metric(hdkd[hi][s], m) - _metric(student[hi][s], m)}}
                   for s in set(hdkd[hi]) & set(student[hi])
                   if _metric(hdkd[hi][s], m) is not None and _metric(student[hi][s], m) is not None}
        out["differences"][m] = paired_difference(gain_lo, gain_hi, m)
    return out


# ---------------------------------------------------------------------------------------------------- formatting
def _fmt(entry: Mapping[str, Any], percent: bool, signed: bool = False) -> str:
    if entry.get("mean") is None:
        return "n/a"
    scale, digits = (100.0, 2) if percent else (1.0, 4)
    sign = "+" if signed else ""
    text = f"{scale * entry['mean']:{sign}.{digits}f}"
    if entry.get("std") is not None:
        text += f" ± {scale * entry['std']:.{digits}f}"
    return text


def _esc(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _diff_line(d: Mapping[str, Any]) -> str:
    text = f"{_fmt(d, True, signed=True)} points (n = {d['n']})"
    if d.get("ci95"):
        text += f", 95% CI [{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}]"
    return f"{text}: {d['verdict']}"


def _comparison_verdict(d: Mapping[str, Any]) -> str:
    """A comparison asserts nothing, so its verdict says which way the interval points rather than "supported"."""
    verdict = d.get("verdict", "")
    if verdict.startswith("supported"):
        return "variant higher (CI above 0)"
    if verdict.startswith("contradicted"):
        return "variant lower (CI below 0)"
    if verdict.startswith("inconclusive"):
        return "not resolved (CI contains 0)"
    return _esc(verdict)


def format_ablation_markdown(summary: Mapping[str, Any]) -> str:
    lines = ["# HDKD ablations", ""]
    if summary.get("source"):
        lines += [f"Results: `{summary['source']}`.", ""]
    lines += [f"Test-split metrics (each model selected on validation, tested once), mean ± {summary['std']}; "
              "n = seeds. Claims: differences " + summary["claims_method"] + ".", ""]
    for note in summary.get("notes") or []:
        lines.append(f"- note: {note}")
    if summary.get("notes"):
        lines.append("")

    lines += ["## The paper's claims", ""]
    claims = summary["claims"]
    for key in ("distillation", "block"):
        c = claims[key]
        lines.append(f"**{c['claim'][0].upper() + c['claim'][1:]}.**")
        if not c["present"]:
            lines += [f"Not measured: needs variants `{c['a']}` and `{c['b']}` "
                      f"(e.g. `--variants {c['a']} {c['b']}`).", ""]
            continue
        for m in TABLE_METRICS:
            lines.append(f"- {_NAMES[m].replace(' (%)', '')}: {_diff_line(c['differences'][m])}")
        lines.append("")
    c = claims["data_efficiency"]
    lines.append(f"**{c['claim'][0].upper() + c['claim'][1:]}.**")
    if not c["gains"]:
        lines += ["Not measured: needs the `data_efficiency` group (student alone and HDKD at several fractions).", ""]
    else:
        header = " | ".join(f"Gain, {_NAMES[m]}" for m in TABLE_METRICS)
        lines += ["", f"| Fraction of the training set | {header} |", "|---:|" + "---:|" * len(TABLE_METRICS)]
        for f, gains in c["gains"].items():
            counts = sorted({n for arm in summary["data_efficiency"].values()
                             for n in (arm.get(f) or {}).get("train_images", [])})
            images = f" ({counts[0]} images)" if len(counts) == 1 else ""
            lines.append(f"| {100 * float(f):g}%{images} | " + " | ".join(
                f"{_fmt(gains[m], True, signed=True)} (n = {gains[m]['n']})" for m in TABLE_METRICS) + " |")
        lines.append("")
        if c.get("largest_mean_accuracy_gain_at") is not None:
            lines.append(f"Largest mean accuracy gain at {100 * c['largest_mean_accuracy_gain_at']:g}% of the "
                         f"training set.")
        if c["present"]:
            lo, hi = 100 * c["smallest_fraction"], 100 * c["largest_fraction"]
            for m in TABLE_METRICS:
                lines.append(f"- gain at {lo:g}% minus gain at {hi:g}%, {_NAMES[m].replace(' (%)', '')}: "
                             f"{_diff_line(c['differences'][m])}")
        else:
            lines.append("Only one training fraction measured: the claim needs at least two.")
        lines.append("")
        lines.append(_FIGURE_LINK)
        lines.append("")

    if summary.get("comparisons"):
        lines += ["## Other ablations", "", "Paired by seed like the claims: variant minus reference, test split.", "",
                  "| Question | Variant - reference | n | " + " | ".join(_NAMES[m].replace(" (%)", "")
                                                                  for m in TABLE_METRICS)
                  + " | 95% CI (accuracy) | Accuracy |", "|---|---|---:|" + "---:|" * len(TABLE_METRICS)
                  + "---|---|"]
        for c in summary["comparisons"]:
            accuracy = c["differences"]["accuracy"]
            ci = accuracy.get("ci95")
            lines.append(f"| {_esc(c['what'])} | {_esc(c['a'])} - {_esc(c['b'])} | {accuracy['n']} | "
                         + " | ".join(_fmt(c["differences"][m], True, signed=True) for m in TABLE_METRICS)
                         + f" | {f'[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]' if ci else ''} | "
                         f"{_comparison_verdict(accuracy)} |")
        lines.append("")

    if summary.get("speed"):
        lines += ["## Speed settings against the defaults", "",
                  "Paired by seed: setting minus default. Within the spread: the mean difference is no larger than "
                  "the default's sample standard deviation over seeds.", ""]
        for variant, c in summary["speed"].items():
            lines.append(f"**{_esc(variant)} minus {_esc(c['b'])}.**")
            if not c["present"]:
                lines += [f"Not measured: needs `{c['b']}` too.", ""]
                continue
            for m in TABLE_METRICS:
                d = c["differences"][m]
                std = "n/a" if d.get("reference_std") is None else f"{100 * d['reference_std']:.2f}"
                lines.append(f"- {_NAMES[m].replace(' (%)', '')}: {_diff_line(d)}; default's std {std} points: "
                             f"{d['spread_verdict']}")
            lines.append("")

    if summary.get("teachers"):
        lines += ["## Teachers (validation split)", "",
                  "Teachers are selected and reported on validation only. Distillation can help only when the "
                  "teacher is the stronger model: compare with the student trained alone.", "",
                  "| Teacher | Model | Distilled into | n | " + " | ".join(_NAMES[m] for m in TABLE_METRICS) + " |",
                  "|---|---|---|---:|" + "---:|" * len(TABLE_METRICS)]
        for key, t in summary["teachers"].items():
            lines.append(f"| {_esc(key)} | {_esc(t['model'])} | {_esc(', '.join(t['variants']))} | "
                         f"{t['val'][TABLE_METRICS[0]]['n']} | " + " | ".join(_fmt(t["val"][m], True)
                                                                      for m in TABLE_METRICS) + " |")
        reference = summary.get("student_alone_val")
        if reference:
            lines.append(f"| (student alone) | hdkd_student | | {reference[TABLE_METRICS[0]]['n']} | "
                         + " | ".join(_fmt(reference[m], True) for m in TABLE_METRICS) + " |")
        lines.append("")

    lines += ["## Variants by group", ""]
    variants = summary["variants"]
    for group, names in summary["groups"].items():
        lines += [f"### {group}", "", "| Variant | Model | n | " + " | ".join(_NAMES[m] for m in TABLE_METRICS)
                  + " | Params | Train time (s) |", "|---|---|---:|" + "---:|" * (len(TABLE_METRICS) + 2)]
        for name in names:
            v = variants[name]
            params = "n/a" if v["params"] is None else f"{int(v['params']):,}"
            seconds = v["train_time_s"]["mean"]
            lines.append(f"| {_esc(name)} | {_esc(v['model'])} | {v['metrics']['accuracy']['n']} | "
                         + " | ".join(_fmt(v["metrics"][m], True) for m in TABLE_METRICS)
                         + f" | {params} | {'n/a' if seconds is None else f'{seconds:.0f}'} |")
        lines.append("")
    lines += ["### Variants", "", "| Variant | What | Seeds |", "|---|---|---|"]
    for name, v in variants.items():
        lines.append(f"| {_esc(name)} | {_esc(v['description'])} | {', '.join(str(s) for s in v['seeds'])} |")
    return "\n".join(lines) + "\n"


def data_efficiency_series(summary: Mapping[str, Any], metric: str) -> dict[str, tuple[list, ...]]:
    """``{arm: (fractions in %, means in %, stds in %, seeds per point)}`` of one metric, arms without points left out."""
    series = {}
    for arm, points in (summary.get("data_efficiency") or {}).items():
        xs, ys, errs, ns = [], [], [], []
        for f, stats in points.items():
            value = stats.get(metric) or {}
            if value.get("mean") is None:
                continue
            xs.append(100 * float(f))
            ys.append(100 * value["mean"])
            errs.append(0.0 if value["std"] is None else 100 * value["std"])
            ns.append(value["n"])
        if xs:
            series[arm] = (xs, ys, errs, ns)
    return series


def plot_data_efficiency(summary: Mapping[str, Any], path: str | Path) -> Optional[Path]:
    """Test accuracy, balanced accuracy and macro-F1 (one panel each: on an imbalanced set accuracy alone misleads)
    against training fraction (log axis), mean ± sample std over seeds as error bars, for the student alone and
    HDKD; None (nothing written) when no arm has a point."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curve = summary.get("data_efficiency") or {}
    if not any(curve.values()):
        return None
    fig = Figure(figsize=(15.0, 4.2), layout="constrained")
    FigureCanvasAgg(fig)  # attach the Agg canvas explicitly (headless, no pyplot state)
    axes = fig.subplots(1, len(TABLE_METRICS), sharex=True)
    styles = {"student_alone": ("student alone", "tab:blue", "o"), "hdkd": ("HDKD", "tab:red", "s")}
    images: dict[float, set] = {}
    for points in curve.values():
        for f, stats in points.items():
            images.setdefault(100 * float(f), set()).update(stats.get("train_images") or [])
    ticks = sorted(images)
    for ax, metric in zip(axes, TABLE_METRICS):
        for arm, (xs, ys, errs, ns) in data_efficiency_series(summary, metric).items():
            label, colour, marker = styles.get(arm, (arm, None, "^"))
            n_text = f"n = {min(ns)}" if min(ns) == max(ns) else f"n = {min(ns)}-{max(ns)}"
            ax.errorbar(xs, ys, yerr=errs, label=f"{label} ({n_text} seeds)", color=colour, marker=marker,
                        capsize=4, linewidth=1.5)
        ax.set_xscale("log")
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}%" + (f"\n{min(images[t])} images" if len(images[t]) == 1 else "") for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("fraction of the training set")
        ax.set_ylabel(f"test {_NAMES[metric][0].lower()}{_NAMES[metric][1:]}")
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    fig.suptitle("Data efficiency: mean ± sample std over seeds")
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))


def write_ablation_report(results: str | Path, out_dir: Optional[str | Path] = None) -> dict[str, Path]:
    """Read a results.jsonl, write ``ablation_report.md``, ``ablation_report.json`` and (when there are
    data-efficiency points) ``ablation_data_efficiency.png`` into ``out_dir`` (default: beside the results)."""
    from .errors import DataError

    results = Path(results)
    if not results.is_file():
        raise DataError(f"{results}: results file not found")
    records = read_results(results)
    if not records:
        raise DataError(f"{results}: no ablation records in it")
    out = Path(out_dir) if out_dir is not None else results.parent
    summary = summarise_ablation(records, source=str(results))
    paths = {}
    png = out / "ablation_data_efficiency.png"
    plotted = plot_data_efficiency(summary, png)
    if plotted is None:
        png.unlink(missing_ok=True)  # never leave an old figure looking like this report's
    else:
        paths["plot"] = plotted
    markdown = format_ablation_markdown(summary)
    if plotted is None:
        markdown = markdown.replace(_FIGURE_LINK + "\n", "")
    paths["markdown"] = atomic_write_text(out / "ablation_report.md", markdown)
    paths["json"] = atomic_write_text(out / "ablation_report.json",
                                      json.dumps(summary, indent=2, allow_nan=False, default=str) + "\n")
    return paths


# ------------------------------------------------------------------------------------------- across datasets
_CLAIM_TITLES = {"distillation": "Distillation beats the student alone (HDKD - student alone)",
                 "block": "MBCSA beats MBConv (HDKD with MBCSA - with MBConv)",
                 "data_efficiency": "The gain is largest with scarce data (gain at the smallest fraction - gain at "
                                    "the full set)"}


def _claim_difference(claim: Mapping[str, Any], metric: str) -> Optional[Mapping[str, Any]]:
    differences = claim.get("differences") or {}
    present = claim.get("present")
    return differences.get(metric) if present else None


def format_claims_across(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """One table per claim with a row per dataset: each dataset's paired differences and verdicts side by side,
    because a claim that holds on one dataset and not on another is the finding a reader needs to see."""
    labels = list(summaries)
    lines = ["# HDKD's claims across datasets", "",
             "Each row: one results file (" + ", ".join(f"`{_esc(label)}`: `{_esc(summaries[label].get('source', ''))}`"
                                                         for label in labels) + "). "
             "Test-split differences in percentage points, paired by seed: mean ± sample std of the per-seed "
             "differences (n pairs), 95% Student-t interval, verdict on accuracy.", ""]
    for key, title in _CLAIM_TITLES.items():
        lines += [f"## {title}", "",
                  "| Dataset | n | " + " | ".join(_NAMES[m].replace(" (%)", "") for m in TABLE_METRICS)
                  + " | 95% CI (accuracy) | Verdict |",
                  "|---|---:|" + "---:|" * len(TABLE_METRICS) + "---|---|"]
        for label in labels:
            claim = summaries[label]["claims"][key]
            accuracy = _claim_difference(claim, "accuracy")
            if accuracy is None:
                lines.append(f"| {_esc(label)} | 0 | " + " | ".join("n/a" for _ in TABLE_METRICS)
                             + " | | not measured |")
                continue
            cells = [_fmt(_claim_difference(claim, m) or {}, True, signed=True) for m in TABLE_METRICS]
            ci = accuracy.get("ci95")
            ci_text = f"[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]" if ci else ""
            lines.append(f"| {_esc(label)} | {accuracy['n']} | " + " | ".join(cells)
                         + f" | {ci_text} | {_esc(accuracy['verdict'])} |")
        lines.append("")
    lines += ["## Data efficiency: gain of HDKD over the student alone at each training fraction (accuracy)", ""]
    fractions = sorted({float(f) for s in summaries.values() for f in s["claims"]["data_efficiency"]["gains"]})
    if fractions:
        lines += ["| Dataset | " + " | ".join(f"{100 * f:g}%" for f in fractions) + " |",
                  "|---|" + "---:|" * len(fractions)]
        for label in labels:
            gains = summaries[label]["claims"]["data_efficiency"]["gains"]
            lines.append(f"| {_esc(label)} | " + " | ".join(
                _fmt(gains[str(f)]["accuracy"], True, signed=True) if str(f) in gains else "n/a"
                for f in fractions) + " |")
    else:
        lines.append("Not measured on any dataset.")
    return "\n".join(lines) + "\n"


def claim_labels(results: Sequence[str | Path], labels: Optional[Sequence[str]] = None) -> list[str]:
    """One distinct label per results file (default: its folder's name); checked before anything is written."""
    from .errors import ConfigError

    labels = list(labels) if labels else [Path(r).parent.name or str(r) for r in results]
    if len(labels) != len(results):
        raise ConfigError(f"--labels: {len(labels)} label(s) for {len(results)} results file(s)")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--labels: every results file needs its own label, got {labels} "
                          "(two results files in folders of the same name need --labels)")
    return labels


def write_claims_across(results: Sequence[str | Path], out_dir: str | Path,
                        labels: Optional[Sequence[str]] = None) -> dict[str, Path]:
    """``ablation_claims.md`` and ``.json`` in ``out_dir`` comparing the claims of several results files; each label
    defaults to the name of the folder holding its results file."""
    from .errors import DataError

    results = [Path(r) for r in results]
    labels = claim_labels(results, labels)
    summaries = {}
    for label, path in zip(labels, results):
        if not path.is_file():
            raise DataError(f"{path}: results file not found")
        records = read_results(path)
        if not records:
            raise DataError(f"{path}: no ablation records in it")
        summaries[label] = summarise_ablation(records, source=str(path))
    out = Path(out_dir)
    claims = {label: {"source": s["source"], "claims": s["claims"]} for label, s in summaries.items()}
    return {"markdown": atomic_write_text(out / "ablation_claims.md", format_claims_across(summaries)),
            "json": atomic_write_text(out / "ablation_claims.json",
                                      json.dumps(claims, indent=2, allow_nan=False, default=str) + "\n")}
