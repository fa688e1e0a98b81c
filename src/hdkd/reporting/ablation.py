"""Rendering an ablation summary (``hdkd.experiments.ablation.summary``): the Markdown report, the claims across
datasets and the data-efficiency figure. Nothing here computes a statistic."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from hdkd.evaluation.seeds import HALF_WIDTH_GOAL
from hdkd.io import atomic_write
from hdkd.reporting.pareto import format_pareto_markdown
from hdkd.reporting.tables import METRIC_LABELS, md_escape

TABLE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


FIGURE_LINK = "![accuracy, balanced accuracy and macro-F1 against training fraction](ablation_data_efficiency.png)"


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


def _diff_line(d: Mapping[str, Any]) -> str:
    text = f"{_fmt(d, True, signed=True)} points (n = {d['n']})"
    if d.get("ci95"):
        text += f", 95% CI [{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}]"
    if d.get("half_width") is not None and d["half_width"] > HALF_WIDTH_GOAL:
        needed = d.get("seeds_for_goal")
        text += f" (±{100 * HALF_WIDTH_GOAL:.1f} points would need {needed or 'over 200'} seeds at this spread)"
    text = f"{text}: {d['verdict']}"
    if d.get("above_zero") is not None and d.get("median") is not None:
        text += f"; above 0 on {d['above_zero']} of {d['n']} seeds, median {100 * d['median']:+.2f}"
        if d.get("signed_rank_p") is not None:
            p = d["signed_rank_p"]
            text += ", signed-rank p < 0.001" if p < 0.001 else f", signed-rank p = {p:.3f}"
    return text


def _comparison_verdict(d: Mapping[str, Any]) -> str:
    """A comparison asserts nothing, so its verdict says which way the interval points rather than "supported"."""
    verdict = d.get("verdict", "")
    if verdict.startswith("supported"):
        return "variant higher (CI above 0)"
    if verdict.startswith("contradicted"):
        return "variant lower (CI below 0)"
    if verdict.startswith("inconclusive"):
        return "not resolved (CI contains 0)"
    return md_escape(verdict)


def format_ablation_markdown(summary: Mapping[str, Any]) -> str:
    lines = ["# HDKD ablations", ""]
    if summary.get("source"):
        lines += [f"Results: `{summary['source']}`.", ""]
    lines += [
        f"Test-split metrics (each model selected on validation, tested once), mean ± {summary['std']}; "
        "n = seeds. Claims: differences " + summary["claims_method"] + ".",
        "",
    ]
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
            lines += [
                f"Not measured: needs variants `{c['a']}` and `{c['b']}` (e.g. `--variants {c['a']} {c['b']}`).",
                "",
            ]
            continue
        for m in TABLE_METRICS:
            lines.append(f"- {METRIC_LABELS[m].replace(' (%)', '')}: {_diff_line(c['differences'][m])}")
        lines.append("")
    c = claims["data_efficiency"]
    lines.append(f"**{c['claim'][0].upper() + c['claim'][1:]}.**")
    if not c["gains"]:
        lines += ["Not measured: needs the `data_efficiency` group (student alone and HDKD at several fractions).", ""]
    else:
        header = " | ".join(f"Gain, {METRIC_LABELS[m]}" for m in TABLE_METRICS)
        lines += ["", f"| Fraction of the training set | {header} |", "|---:|" + "---:|" * len(TABLE_METRICS)]
        for f, gains in c["gains"].items():
            counts = sorted(
                {n for arm in summary["data_efficiency"].values() for n in (arm.get(f) or {}).get("train_images", [])}
            )
            images = f" ({counts[0]} images)" if len(counts) == 1 else ""
            lines.append(
                f"| {100 * float(f):g}%{images} | "
                + " | ".join(f"{_fmt(gains[m], True, signed=True)} (n = {gains[m]['n']})" for m in TABLE_METRICS)
                + " |"
            )
        lines.append("")
        if c.get("largest_mean_accuracy_gain_at") is not None:
            lines.append(
                f"Largest mean accuracy gain at {100 * c['largest_mean_accuracy_gain_at']:g}% of the training set."
            )
        if c["present"]:
            lo, hi = 100 * c["smallest_fraction"], 100 * c["largest_fraction"]
            for m in TABLE_METRICS:
                lines.append(
                    f"- gain at {lo:g}% minus gain at {hi:g}%, {METRIC_LABELS[m].replace(' (%)', '')}: "
                    f"{_diff_line(c['differences'][m])}"
                )
        else:
            lines.append("Only one training fraction measured: the claim needs at least two.")
        lines.append("")
        lines.append(FIGURE_LINK)
        lines.append("")

    if summary.get("comparisons"):
        lines += [
            "## Other ablations",
            "",
            "Paired by seed like the claims: variant minus reference, test split.",
            "",
            "| Question | Variant - reference | n | "
            + " | ".join(METRIC_LABELS[m].replace(" (%)", "") for m in TABLE_METRICS)
            + " | 95% CI (accuracy) | Accuracy |",
            "|---|---|---:|" + "---:|" * len(TABLE_METRICS) + "---|---|",
        ]
        for c in summary["comparisons"]:
            accuracy = c["differences"]["accuracy"]
            ci = accuracy.get("ci95")
            lines.append(
                f"| {md_escape(c['what'])} | {md_escape(c['a'])} - {md_escape(c['b'])} | {accuracy['n']} | "
                + " | ".join(_fmt(c["differences"][m], True, signed=True) for m in TABLE_METRICS)
                + f" | {f'[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]' if ci else ''} | "
                f"{_comparison_verdict(accuracy)} |"
            )
        lines.append("")

    if summary.get("speed"):
        lines += [
            "## Speed settings against the defaults",
            "",
            "Paired by seed: setting minus default. Within the spread: the mean difference is no larger than "
            "the default's sample standard deviation over seeds.",
            "",
        ]
        for variant, c in summary["speed"].items():
            lines.append(f"**{md_escape(variant)} minus {md_escape(c['b'])}.**")
            if not c["present"]:
                lines += [f"Not measured: needs `{c['b']}` too.", ""]
                continue
            for m in TABLE_METRICS:
                d = c["differences"][m]
                std = "n/a" if d.get("reference_std") is None else f"{100 * d['reference_std']:.2f}"
                lines.append(
                    f"- {METRIC_LABELS[m].replace(' (%)', '')}: {_diff_line(d)}; default's std {std} points: "
                    f"{d['spread_verdict']}"
                )
            lines.append("")

    if summary.get("teachers"):
        lines += [
            "## Teachers (validation split)",
            "",
            "Teachers are selected and reported on validation only. Distillation can help only when the "
            "teacher is the stronger model: compare with the student trained alone.",
            "",
            "| Teacher | Model | Distilled into | n | " + " | ".join(METRIC_LABELS[m] for m in TABLE_METRICS) + " |",
            "|---|---|---|---:|" + "---:|" * len(TABLE_METRICS),
        ]
        for key, t in summary["teachers"].items():
            lines.append(
                f"| {md_escape(key)} | {md_escape(t['model'])} | {md_escape(', '.join(t['variants']))} | "
                f"{t['val'][TABLE_METRICS[0]]['n']} | "
                + " | ".join(_fmt(t["val"][m], True) for m in TABLE_METRICS)
                + " |"
            )
        reference = summary.get("student_alone_val")
        if reference:
            lines.append(
                f"| (student alone) | hdkd_student | | {reference[TABLE_METRICS[0]]['n']} | "
                + " | ".join(_fmt(reference[m], True) for m in TABLE_METRICS)
                + " |"
            )
        lines.append("")
        for warning in summary.get("teacher_warnings") or []:
            lines += [f"**Warning:** {md_escape(warning)}.", ""]

    lines += _loss_balance_lines(summary.get("loss_balance") or {})
    if summary.get("pareto"):
        lines += format_pareto_markdown(summary["pareto"])

    lines += ["## Variants by group", ""]
    variants = summary["variants"]
    for group, names in summary["groups"].items():
        lines += [
            f"### {group}",
            "",
            "| Variant | Model | n | "
            + " | ".join(METRIC_LABELS[m] for m in TABLE_METRICS)
            + " | Params | Train time (s) |",
            "|---|---|---:|" + "---:|" * (len(TABLE_METRICS) + 2),
        ]
        for name in names:
            v = variants[name]
            params = "n/a" if v["params"] is None else f"{int(v['params']):,}"
            seconds = v["train_time_s"]["mean"]
            lines.append(
                f"| {md_escape(name)} | {md_escape(v['model'])} | {v['metrics']['accuracy']['n']} | "
                + " | ".join(_fmt(v["metrics"][m], True) for m in TABLE_METRICS)
                + f" | {params} | {'n/a' if seconds is None else f'{seconds:.0f}'} |"
            )
        lines.append("")
    lines += ["### Variants", "", "| Variant | What | Seeds |", "|---|---|---|"]
    for name, v in variants.items():
        lines.append(f"| {md_escape(name)} | {md_escape(v['description'])} | {', '.join(str(s) for s in v['seeds'])} |")
    return "\n".join(lines) + "\n"


def _share(value: Optional[float]) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _loss_balance_lines(balance: Mapping[str, Any]) -> list[str]:
    """The loss-balance table: settings, validation, test difference to the student alone, gradient shares."""
    if not balance:
        return []
    metric = balance["select_metric"]
    lines = [
        "## Loss balance",
        "",
        f"Each distilled variant's settings, its mean validation {metric} (the split that chooses), its test "
        "difference to the student alone (paired by seed, points) and the mean share of the gradient norm each "
        "loss term contributed (%, averaged over the measured steps of every epoch, then over seeds).",
        "",
        f"| Variant | KD | lambda | Feature norm | n | Validation {md_escape(metric)} (%) | Test balanced accuracy "
        "- student alone | Test accuracy - student alone | Grad share CE | Grad share KD | Grad share feature |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in balance["variants"].items():
        diff = r.get("minus_student_alone") or {}
        cells = [_fmt(diff[m], True, signed=True) if m in diff and name != "student_alone" else "" for m in
                 ("balanced_accuracy", "accuracy")]  # fmt: skip
        lam = "" if r["lam"] is None else f"{r['lam']:g}"
        lines.append(
            f"| {md_escape(name)} | {r['kd'] or ''} | {lam} | "
            f"{r['feature_norm'] or ''} | {r['val']['n']} | {_fmt(r['val'], True)} | {cells[0]} | {cells[1]} | "
            + " | ".join(_share(r["grad_shares"].get(t)) for t in ("ce", "kd", "feature"))
            + " |"
        )
    best = balance.get("best_on_validation")
    if best:
        lines += ["", f"Chosen on validation: **{md_escape(best)}**."]
        for key, label in (("best_minus_student_alone", "student alone"), ("best_minus_hdkd", "hdkd (the paper)")):
            c = balance.get(key)
            if c and c["present"]:
                lines.append(f"- {best} minus {label}, test balanced accuracy: "
                             f"{_diff_line(c['differences']['balanced_accuracy'])}")  # fmt: skip
    lines.append("")
    return lines


def data_efficiency_series(summary: Mapping[str, Any], metric: str) -> dict[str, tuple[list, ...]]:
    """``{arm: (fractions in %, means in %, stds in %, seeds per point)}`` of one metric; arms without points are
    left out."""
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
            ax.errorbar(
                xs,
                ys,
                yerr=errs,
                label=f"{label} ({n_text} seeds)",
                color=colour,
                marker=marker,
                capsize=4,
                linewidth=1.5,
            )
        ax.set_xscale("log")
        ax.set_xticks(ticks)
        if len(ticks) == 1:  # one fraction (e.g. a paired-seed grid): a range around it, not a singular axis
            ax.set_xlim(ticks[0] / 1.5, ticks[0] * 1.5)
        ax.set_xticklabels([f"{t:g}%" + (f"\n{min(images[t])} images" if len(images[t]) == 1 else "") for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("fraction of the training set")
        ax.set_ylabel(f"test {METRIC_LABELS[metric][0].lower()}{METRIC_LABELS[metric][1:]}")
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    fig.suptitle("Data efficiency: mean ± sample std over seeds")
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))


# ------------------------------------------------------------------------------------------- across datasets
_CLAIM_TITLES = {
    "distillation": "Distillation beats the student alone (HDKD - student alone)",
    "block": "MBCSA beats MBConv (HDKD with MBCSA - with MBConv)",
    "data_efficiency": "The gain is largest with scarce data (gain at the smallest fraction - gain at the full set)",
}


def _claim_difference(claim: Mapping[str, Any], metric: str) -> Optional[Mapping[str, Any]]:
    differences = claim.get("differences") or {}
    present = claim.get("present")
    return differences.get(metric) if present else None


def format_claims_across(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """One table per claim with a row per dataset: each dataset's paired differences and verdicts side by side,
    because a claim that holds on one dataset and not on another is the finding a reader needs to see."""
    labels = list(summaries)
    lines = [
        "# HDKD's claims across datasets",
        "",
        "Each row: one results file ("
        + ", ".join(f"`{md_escape(label)}`: `{md_escape(summaries[label].get('source', ''))}`" for label in labels)
        + "). "
        "Test-split differences in percentage points, paired by seed: mean ± sample std of the per-seed "
        "differences (n pairs), 95% Student-t interval, verdict on accuracy.",
        "",
    ]
    for key, title in _CLAIM_TITLES.items():
        lines += [
            f"## {title}",
            "",
            "| Dataset | n | "
            + " | ".join(METRIC_LABELS[m].replace(" (%)", "") for m in TABLE_METRICS)
            + " | 95% CI (accuracy) | Verdict |",
            "|---|---:|" + "---:|" * len(TABLE_METRICS) + "---|---|",
        ]
        for label in labels:
            claim = summaries[label]["claims"][key]
            accuracy = _claim_difference(claim, "accuracy")
            if accuracy is None:
                lines.append(
                    f"| {md_escape(label)} | 0 | " + " | ".join("n/a" for _ in TABLE_METRICS) + " | | not measured |"
                )
                continue
            cells = [_fmt(_claim_difference(claim, m) or {}, True, signed=True) for m in TABLE_METRICS]
            ci = accuracy.get("ci95")
            ci_text = f"[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]" if ci else ""
            lines.append(
                f"| {md_escape(label)} | {accuracy['n']} | "
                + " | ".join(cells)
                + f" | {ci_text} | {md_escape(accuracy['verdict'])} |"
            )
        lines.append("")
    lines += ["## Data efficiency: gain of HDKD over the student alone at each training fraction (accuracy)", ""]
    fractions = sorted({float(f) for s in summaries.values() for f in s["claims"]["data_efficiency"]["gains"]})
    if fractions:
        lines += [
            "| Dataset | " + " | ".join(f"{100 * f:g}%" for f in fractions) + " |",
            "|---|" + "---:|" * len(fractions),
        ]
        for label in labels:
            gains = summaries[label]["claims"]["data_efficiency"]["gains"]
            lines.append(
                f"| {md_escape(label)} | "
                + " | ".join(
                    _fmt(gains[str(f)]["accuracy"], True, signed=True) if str(f) in gains else "n/a" for f in fractions
                )
                + " |"
            )
    else:
        lines.append("Not measured on any dataset.")
    return "\n".join(lines) + "\n"
