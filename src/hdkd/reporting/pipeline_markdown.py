"""The pipeline report as Markdown (``report.md``), rendered from ``pipeline_view``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hdkd.reporting.pipeline_view import (
    CALIBRATION_HEADER,
    CALIBRATION_NOTE,
    FIGURE_TITLES,
    REPORT_FILES,
    STAMP_KEYS,
    calibration_rows,
    comparison_note,
    format_number,
    humanise,
    inline_spans,
    is_count_table,
    model_facts,
    stamp_spans,
    summary_spans,
)
from hdkd.reporting.tables import (
    PER_CLASS_HEADER,
    format_comparison_table,
    md_escape,
    per_class_rows,
)


def _code(text: Any) -> str:
    """Inline code span that survives backticks in ``text``."""
    text = str(text).replace("\n", " ")
    longest = max((len(run) for run in _backtick_runs(text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_spans(spans: list) -> str:
    """Spans (``pipeline_view``) as Markdown: plain text escaped, bold as ``**``, code as a code span."""
    styles = {"plain": md_escape, "bold": lambda text: f"**{md_escape(text)}**", "code": _code}
    return "".join(styles[style](text) for style, text in spans)


def _backtick_runs(text: str) -> list[str]:
    runs, current = [], ""
    for ch in text:
        if ch == "`":
            current += ch
        elif current:
            runs.append(current)
            current = ""
    if current:
        runs.append(current)
    return runs


def _count_table(value: Mapping[str, Mapping[str, Any]]) -> list[str]:
    columns = [str(c) for c in value]
    rows: list[str] = []
    for inner in value.values():
        for k in inner:
            if str(k) not in rows:
                rows.append(str(k))
    lookup = {str(c): {str(k): v for k, v in inner.items()} for c, inner in value.items()}
    lines = [
        "| | " + " | ".join(md_escape(c) for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for r in rows:
        cells = [format_number(lookup[c][r]) if r in lookup[c] else "" for c in columns]
        lines.append(f"| {md_escape(r)} | " + " | ".join(cells) + " |")
    totals = [format_number(sum(lookup[c].values())) for c in columns]
    lines.append("| **Total** | " + " | ".join(totals) + " |")
    return lines


def _meta_section(meta: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    tables: list[tuple[str, Mapping]] = []
    for key, value in meta.items():
        if key in STAMP_KEYS and value:
            continue
        if is_count_table(value):
            tables.append((str(key), value))
        else:
            lines.append(f"- **{md_escape(humanise(key))}:** {md_spans(inline_spans(str(key), value))}")
    if not lines and not tables:
        lines.append("(no setup information was recorded)")
    for key, value in tables:
        lines += ["", f"**{md_escape(humanise(key))}**", ""]
        lines += _count_table(value)
    return lines


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return lines


def _per_class_markdown(m: Mapping[str, Any]) -> list[str]:
    return _md_table(PER_CLASS_HEADER, per_class_rows(m))


def _confusion_markdown(m: Mapping[str, Any]) -> list[str]:
    names = [md_escape(n) for n in m["class_names"]]
    lines = [
        "| true \\ predicted | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for name, row in zip(names, m["confusion_matrix"]):
        lines.append(f"| **{name}** | " + " | ".join(str(v) for v in row) + " |")
    return lines


def _model_section(label: str, r: Mapping[str, Any]) -> list[str]:
    m = r["metrics"]
    title = f"### {md_escape(label)}"
    if r.get("model"):
        title += f" ({_code(r['model'])})"
    lines = [title, ""]
    lines += [f"- **{md_escape(name)}:** {_code(text) if is_code else text}" for name, text, is_code in model_facts(r)]
    lines += ["", "Per class on the test split:", ""]
    lines += _per_class_markdown(m)
    lines += ["", "Confusion matrix on the test split (rows = true class, columns = predicted class):", ""]
    lines += _confusion_markdown(m)
    lines.append("")
    return lines


def render_markdown(
    results: Mapping[str, Mapping[str, Any]],
    meta: Mapping[str, Any],
    summary: Mapping[str, Any],
    figures: Mapping[str, Any] = REPORT_FILES,
) -> str:
    lines = ["# HDKD pipeline report", ""]
    stamp = md_spans(stamp_spans(meta))
    if stamp:
        lines += [stamp, ""]
    lines += ["## Dataset and setup", ""]
    lines += _meta_section(meta)
    lines += ["", "## Results on the test split", ""]
    lines += [format_comparison_table(results), ""]
    lines += [comparison_note(results), ""]
    paragraph = md_spans(summary_spans(results, summary))
    if paragraph:
        lines += [paragraph, ""]
    lines += ["## Calibration", ""]
    lines += _md_table(CALIBRATION_HEADER, calibration_rows(results))
    lines += ["", CALIBRATION_NOTE, ""]
    lines += ["## Figures", ""]
    for key, title in FIGURE_TITLES.items():
        if key in figures:
            lines += [f"![{title}]({REPORT_FILES[key]})", ""]
    lines += [
        "## Per model",
        "",
    ]
    for label, r in results.items():
        lines += _model_section(str(label), r)
    return "\n".join(lines).rstrip() + "\n"
