"""``report.html``: the pipeline report as one self-contained HTML file.

Everything is inside the file: the CSS in a ``<style>`` element, the figures as base64 PNG ``data:`` URIs, no script
and no external resource (fonts, stylesheets, images), so it opens offline, can be mailed or archived as one file,
and shows the same numbers as ``report.md`` (both are rendered from the same helpers in ``report.py``).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hdkd.reporting import pipeline_view as view
from hdkd.reporting.tables import PER_CLASS_HEADER, comparison_rows, per_class_rows

__all__ = ["render_html"]

_CSS = """
:root { --ink: #1d2433; --muted: #5b6475; --line: #d9dee7; --band: #f5f7fa; --accent: #2b5d9b; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 48px; color: var(--ink); background: #fff;
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1500px; margin: 0 auto; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 17px; margin: 22px 0 8px; }
p, li { max-width: 110ch; }
.stamp, .note { color: var(--muted); font-size: 13.5px; }
.summary { background: var(--band); border-left: 4px solid var(--accent); padding: 10px 14px; }
table { border-collapse: collapse; margin: 8px 0 6px; font-size: 14px; }
th, td { border: 1px solid var(--line); padding: 5px 9px; text-align: right; white-space: nowrap; }
th { background: var(--band); font-weight: 600; }
td:first-child, th:first-child { text-align: left; }
tbody tr:nth-child(even) td { background: #fbfcfd; }
.scroll { overflow-x: auto; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 3px 16px; margin: 6px 0 10px; }
dl.meta dt { font-weight: 600; }
dl.meta dd { margin: 0; overflow-wrap: anywhere; }
code { font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--band);
       padding: 1px 4px; border-radius: 3px; }
figure { margin: 14px 0 26px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { font-weight: 600; margin-bottom: 6px; }
details { margin: 10px 0; border: 1px solid var(--line); border-radius: 4px; padding: 6px 12px; }
summary { cursor: pointer; font-weight: 600; font-size: 16px; }
ul.facts { padding-left: 20px; }
"""


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _html_spans(spans: list) -> str:
    """Spans (``pipeline_view``) as safe HTML: every text escaped, bold as <strong>, code as <code>."""
    tags = {"plain": "{}", "bold": "<strong>{}</strong>", "code": "<code>{}</code>"}
    return "".join(tags[style].format(_esc(text)) for style, text in spans)


def _table(header: list[str], rows: list[list[str]], first_is_header: bool = False) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            tag = "th" if first_is_header and i == 0 else "td"
            cells.append(f"<{tag}>{_esc(c)}</{tag}>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _count_table(value: Mapping[str, Mapping[str, Any]]) -> str:
    columns = [str(c) for c in value]
    row_names: list[str] = []
    for inner in value.values():
        for k in inner:
            if str(k) not in row_names:
                row_names.append(str(k))
    lookup = {str(c): {str(k): v for k, v in inner.items()} for c, inner in value.items()}
    rows = [[r, *(view.format_number(lookup[c][r]) if r in lookup[c] else "" for c in columns)] for r in row_names]
    rows.append(["Total", *(view.format_number(sum(lookup[c].values())) for c in columns)])
    return _table(["", *columns], rows)


def _meta_html(meta: Mapping[str, Any]) -> str:
    items, tables = [], []
    for key, value in meta.items():
        if key in view.STAMP_KEYS and value:
            continue
        if view.is_count_table(value):
            tables.append(f"<h3>{_esc(view.humanise(key))}</h3>{_count_table(value)}")
        else:
            items.append(
                f"<dt>{_esc(view.humanise(key))}</dt><dd>{_html_spans(view.inline_spans(str(key), value))}</dd>"
            )
    parts = [f'<dl class="meta">{"".join(items)}</dl>'] if items else []
    if not items and not tables:
        parts.append("<p>(no setup information was recorded)</p>")
    return "".join(parts + tables)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _model_html(label: str, r: Mapping[str, Any]) -> str:
    m = r["metrics"]
    facts = [f"<li><strong>Model:</strong> <code>{_esc(r['model'])}</code></li>"] if r.get("model") else []
    for name, text, is_code in view.model_facts(r):
        value = f"<code>{_esc(text)}</code>" if is_code else _esc(text)
        facts.append(f"<li><strong>{_esc(name)}:</strong> {value}</li>")
    names = [str(n) for n in m["class_names"]]
    cm_rows = [[n, *(str(v) for v in row)] for n, row in zip(names, m["confusion_matrix"])]
    cm_table = _table(["true \\ predicted", *names], cm_rows, first_is_header=True)
    return (
        f"<details open><summary>{_esc(label)}</summary>"
        f'<ul class="facts">{"".join(facts)}</ul>'
        f"<p>Per class on the test split:</p>{_table(PER_CLASS_HEADER, per_class_rows(m))}"
        "<p>Confusion matrix on the test split (rows = true class, columns = predicted class):</p>"
        f"{cm_table}"
        "</details>"
    )


def render_html(
    results: Mapping[str, Mapping[str, Any]],
    meta: Mapping[str, Any],
    summary: Mapping[str, Any],
    figures: Mapping[str, Path],
) -> str:
    """The whole report as one HTML document; ``figures`` maps a ``FIGURE_TITLES`` key to a written PNG."""
    stamp = _html_spans(view.stamp_spans(meta))
    header, rows = comparison_rows(results)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>HDKD pipeline report</title>",
        f"<style>{_CSS}</style></head><body><main>",
        "<h1>HDKD pipeline report</h1>",
    ]
    if stamp:
        parts.append(f'<p class="stamp">{stamp}</p>')
    paragraph = _html_spans(view.summary_spans(results, summary))
    if paragraph:
        parts.append(f'<p class="summary">{paragraph}</p>')
    parts += ["<h2>Dataset and setup</h2>", _meta_html(meta)]
    parts += [
        "<h2>Results on the test split</h2>",
        _table(header, rows),
        f'<p class="note">{_esc(view.comparison_note(results))}</p>',
    ]
    parts += [
        "<h2>Calibration</h2>",
        _table(view.CALIBRATION_HEADER, view.calibration_rows(results)),
        f'<p class="note">{_esc(view.CALIBRATION_NOTE)}</p>',
    ]
    parts.append("<h2>Figures</h2>")
    for key, title in view.FIGURE_TITLES.items():
        if key in figures:
            parts.append(f"<figure><figcaption>{_esc(title)}</figcaption>{_img(figures[key], title)}</figure>")
    parts.append("<h2>Per model</h2>")
    parts += [_model_html(str(label), r) for label, r in results.items()]
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"
