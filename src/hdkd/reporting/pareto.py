"""The peers' Pareto figure and table (``hdkd ablate --report`` with peer records): test balanced accuracy against
parameters and against measured CPU latency, HDKD and the student alone among them. Rendering only."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from hdkd.io import atomic_write
from hdkd.reporting.tables import md_escape

PARETO_FIGURE = "ablation_pareto.png"
_HIGHLIGHT = {"hdkd": "tab:red", "student_alone": "tab:blue"}


def _pct(entry: Mapping[str, Any]) -> str:
    if entry.get("mean") is None:
        return "n/a"
    text = f"{100 * entry['mean']:.2f}"
    return text + (f" ± {100 * entry['std']:.2f}" if entry.get("std") is not None else "")


def format_pareto_markdown(pareto: Mapping[str, Any]) -> list[str]:
    """The section's lines: one row per model, marked where it is on a front."""
    lines = [
        "## Peers: accuracy against size and CPU latency",
        "",
        f"timm models trained from scratch exactly like the student (same data, augmentation, epochs, selection on "
        f"validation), with HDKD and the student alone. Latency: {pareto['latency']}. Pareto front: no other model "
        "is both at most as large (or fast) and at least as accurate.",
        "",
        "| Variant | Model | n | Balanced accuracy (%) | Accuracy (%) | Params | Latency (ms) | Front (params) | "
        "Front (latency) |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, p in sorted(pareto["points"].items(), key=lambda kv: -(kv[1][pareto["metric"]]["mean"] or 0)):
        params = "n/a" if p["params"] is None else f"{int(p['params']):,}"
        latency = "n/a" if p["latency_ms"] is None else f"{p['latency_ms']:.2f}"
        lines.append(
            f"| {md_escape(name)} | {md_escape(p['model'])} | {p[pareto['metric']]['n']} | {_pct(p[pareto['metric']])} "
            f"| {_pct(p['accuracy'])} | {params} | {latency} | {'yes' if name in pareto['front_params'] else ''} | "
            f"{'yes' if name in pareto['front_latency'] else ''} |"
        )
    lines += ["", f"![balanced accuracy against parameters and CPU latency]({PARETO_FIGURE})", ""]
    return lines


def plot_pareto(pareto: Mapping[str, Any], path: str | Path) -> Optional[Path]:
    """Two panels (parameters, latency; log x axes), mean ± sample std over seeds, the front as a step line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = pareto.get("points") or {}
    if not points:
        return None
    fig = Figure(figsize=(12.0, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    metric = pareto["metric"]
    for ax, key, front, label in (
        (axes[0], "params", pareto["front_params"], "parameters"),
        (axes[1], "latency_ms", pareto["front_latency"], "CPU latency, batch 1, one thread (ms)"),
    ):
        for name, p in points.items():
            x, y = p[key], p[metric]["mean"]
            if x is None or y is None:
                continue
            colour = _HIGHLIGHT.get(name, "tab:grey")
            ax.errorbar(x, 100 * y, yerr=100 * (p[metric]["std"] or 0), fmt="o", color=colour, capsize=3)
            ax.annotate(name.removeprefix("peer_"), (x, 100 * y), textcoords="offset points", xytext=(4, 4),
                        fontsize=8, color=colour)  # fmt: skip
        xs = [points[n][key] for n in front]
        ys = [100 * points[n][metric]["mean"] for n in front]
        if xs:
            ax.step(xs, ys, where="post", color="tab:green", alpha=0.6, label="Pareto front")
            ax.legend(loc="lower right")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("test balanced accuracy (%)")
    fig.suptitle("Peers trained from scratch like the student: mean ± sample std over seeds")
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
