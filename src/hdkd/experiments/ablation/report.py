"""Writing the ablation report (``hdkd ablate --report``): the summary of a results file (``summary``) rendered by
``hdkd.reporting.ablation`` into Markdown, JSON and the data-efficiency figure, and the claims across datasets."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from hdkd.errors import ConfigError, DataError
from hdkd.experiments.ablation.latency import LATENCY_FILE, latency_note, pareto_latencies
from hdkd.experiments.ablation.records import read_results
from hdkd.experiments.ablation.summary import summarise_ablation, summarise_pareto
from hdkd.experiments.ablation.variants import GROUPS
from hdkd.io import atomic_write_text
from hdkd.reporting.ablation import FIGURE_LINK, format_ablation_markdown, format_claims_across, plot_data_efficiency
from hdkd.reporting.pareto import PARETO_FIGURE, plot_pareto

__all__ = ["write_ablation_report", "write_claims_across", "claim_labels"]


def write_ablation_report(
    results: str | Path, out_dir: Optional[str | Path] = None, remeasure_latency: bool = False
) -> dict[str, Path]:
    """Read a results.jsonl, write ``ablation_report.md``, ``ablation_report.json``, (when there are
    data-efficiency points) ``ablation_data_efficiency.png`` and (when there are peer records)
    ``ablation_pareto.png`` into ``out_dir`` (default: beside the results). With peers, each peer's, HDKD's and the
    student alone's CPU latency comes from ``ablation_latency.json`` there, measured (a few seconds) and kept when
    it is absent, covers other architectures, or ``remeasure_latency`` asks (``hdkd.experiments.ablation.latency``)."""

    results = Path(results)
    if not results.is_file():
        raise DataError(f"{results}: results file not found")
    records = read_results(results)
    if not records:
        raise DataError(f"{results}: no ablation records in it")
    out = Path(out_dir) if out_dir is not None else results.parent
    summary = summarise_ablation(records, source=str(results))
    paths = {}
    pareto_png = out / PARETO_FIGURE
    if any(name.startswith("peer_") for name in summary["variants"]):  # the peers' Pareto front
        latency = pareto_latencies(records, GROUPS["peers"], out, remeasure=remeasure_latency)
        ms = {name: entry["latency_ms"] for name, entry in latency["models"].items()}
        summary["pareto"] = summarise_pareto(summary, ms, latency_note(latency))
        paths["latency"] = out / LATENCY_FILE
        paths["pareto_plot"] = plot_pareto(summary["pareto"], pareto_png)
    else:
        pareto_png.unlink(missing_ok=True)
    png = out / "ablation_data_efficiency.png"
    plotted = plot_data_efficiency(summary, png)
    if plotted is None:
        png.unlink(missing_ok=True)  # never leave an old figure looking like this report's
    else:
        paths["plot"] = plotted
    markdown = format_ablation_markdown(summary)
    if plotted is None:
        markdown = markdown.replace(FIGURE_LINK + "\n", "")
    paths["markdown"] = atomic_write_text(out / "ablation_report.md", markdown)
    paths["json"] = atomic_write_text(
        out / "ablation_report.json", json.dumps(summary, indent=2, allow_nan=False, default=str) + "\n"
    )
    return paths


def claim_labels(results: Sequence[str | Path], labels: Optional[Sequence[str]] = None) -> list[str]:
    """One distinct label per results file (default: its folder's name); checked before anything is written."""

    labels = list(labels) if labels else [Path(r).parent.name or str(r) for r in results]
    if len(labels) != len(results):
        raise ConfigError(f"--labels: {len(labels)} label(s) for {len(results)} results file(s)")
    if len(set(labels)) != len(labels):
        raise ConfigError(
            f"--labels: every results file needs its own label, got {labels} "
            "(two results files in folders of the same name need --labels)"
        )
    return labels


def write_claims_across(
    results: Sequence[str | Path], out_dir: str | Path, labels: Optional[Sequence[str]] = None
) -> dict[str, Path]:
    """``ablation_claims.md`` and ``.json`` in ``out_dir`` comparing the claims of several results files; each label
    defaults to the name of the folder holding its results file."""

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
    return {
        "markdown": atomic_write_text(out / "ablation_claims.md", format_claims_across(summaries)),
        "json": atomic_write_text(
            out / "ablation_claims.json", json.dumps(claims, indent=2, allow_nan=False, default=str) + "\n"
        ),
    }
