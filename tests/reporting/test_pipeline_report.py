"""write_pipeline_report: every file, a JSON that round-trips, a Markdown and a self-contained HTML with the
comparison, safe write order."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import hdkd.reporting.pipeline_report as report_module
from hdkd.reporting.pipeline_report import write_pipeline_report
from hdkd.reporting.tables import format_comparison_table

from ._helpers import assert_valid_png, fake_assessed, fake_history, fake_metrics

NAMES = ["benign", "malignant", "normal"]


FIGURES = ["confusion_matrices.png", "reliability_diagrams.png", "roc_curves.png", "training_curves.png"]


def _results(n_classes: int = 3, assessed: bool = True) -> dict:
    """Three fake models; with ``assessed`` each also has bootstrap CIs, temperature scaling and predictions."""
    names = NAMES if n_classes == 3 else None
    spec = {
        "teacher": (0, 3.0, 20_000_000, 4.1e9),
        "student": (1, 1.0, 1_500_000, 3.0e8),
        "hdkd": (2, 1.8, 1_500_000, 3.0e8),
    }
    results = {}
    for i, (label, (seed, skill, params, flops)) in enumerate(spec.items()):
        results[label] = {
            "model": f"hdkd_{label}",
            "params": params,
            "flops": flops,
            "metrics": fake_metrics(n_classes, seed, skill, names=names),
            "val_metrics": fake_metrics(n_classes, seed + 10, skill, n=40, names=names),
            "history": fake_history(6 + i, seed),
            "best_epoch": 4 + i,
            "train_time_s": 75.5 * (i + 1),
            "checkpoint": f"runs/demo/{label}/best.pt",
        }
        if assessed:
            a = fake_assessed(n_classes, seed, skill, names=names)
            results[label].update(
                metrics=a["metrics"],
                bootstrap=a["bootstrap"],
                temperature_scaling=a["temperature_scaling"],
                predictions=a["predictions"],
            )
    return results


META = {
    "dataset": "synthetic (embedded)",
    "class_counts": {
        "train": {"benign": 40, "malignant": 30, "normal": 50},
        "test": {"benign": 40, "malignant": 35, "normal": 45},
    },
    "img_size": 64,
    "epochs": 8,
    "seed": 0,
    "command": ["hdkd", "run", "--out", "runs/demo"],
    "hdkd_version": "0.1.0",
    "timestamp": "2025-01-01T12:00:00+00:00",
}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One report shared by the read-only tests (rendering PNGs is the slow part)."""
    out = tmp_path_factory.mktemp("report") / "out"
    results = _results()
    return out, results, write_pipeline_report(out, results, META)


def test_writes_every_file(written):
    tmp_out, _, paths = written
    tmp_path = tmp_out.parent
    assert set(paths) == {
        "json",
        "markdown",
        "html",
        "confusion_matrices",
        "roc_curves",
        "reliability_diagrams",
        "training_curves",
    }
    assert paths["json"] == tmp_path / "out" / "report.json"
    assert paths["markdown"] == tmp_path / "out" / "report.md"
    assert paths["html"] == tmp_path / "out" / "report.html"
    for key in ("confusion_matrices", "roc_curves", "reliability_diagrams", "training_curves"):
        assert paths[key].parent == tmp_path / "out"
        assert_valid_png(paths[key])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths.values())


def test_json_round_trips_and_contains_the_metrics(written):
    _, results, paths = written
    doc = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert doc["meta"] == META
    assert list(doc["results"]) == ["teacher", "student", "hdkd"]
    for label, r in results.items():
        expected = {k: v for k, v in r.items() if k != "predictions"}  # predictions stay in memory (ROC figure)
        assert doc["results"][label] == expected  # every other field, metrics and history included, unchanged
        assert "predictions" not in doc["results"][label]
        ci = doc["results"][label]["bootstrap"]["metrics"]
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr_macro"):
            assert ci[key]["estimate"] == pytest.approx(r["metrics"][key])
            assert ci[key]["low"] <= ci[key]["high"]
        ts = doc["results"][label]["temperature_scaling"]
        assert ts["fitted_on"] == "validation" and ts["temperature"] > 0
        assert ts["test_before"]["ece"] == pytest.approx(r["metrics"]["ece"])
    assert set(doc["files"]) == {
        "markdown",
        "html",
        "confusion_matrices",
        "roc_curves",
        "reliability_diagrams",
        "training_curves",
    }
    h, s = results["hdkd"]["metrics"], results["student"]["metrics"]
    assert doc["summary"]["hdkd_minus_student_accuracy_points"] == pytest.approx(100 * (h["accuracy"] - s["accuracy"]))
    best = max(results, key=lambda k: results[k]["metrics"]["balanced_accuracy"])
    assert doc["summary"]["best_by_test_balanced_accuracy"] == [best]


def test_json_handles_numpy_paths_and_nan(tmp_path):
    results = _results(assessed=False)
    results["teacher"]["params"] = np.int64(20_000_000)
    results["teacher"]["flops"] = np.float32(4.0e9)
    results["teacher"]["history"][0]["train_loss"] = float("nan")
    meta = {**META, "seed": np.int64(3), "data_path": Path("/data/x"), "sizes": np.array([1, 2])}
    paths = write_pipeline_report(tmp_path, results, meta)
    doc = json.loads(paths["json"].read_text(encoding="utf-8"))  # strict JSON: NaN would not parse as a value
    assert doc["results"]["teacher"]["params"] == 20_000_000
    assert doc["results"]["teacher"]["history"][0]["train_loss"] is None
    assert doc["meta"]["seed"] == 3 and doc["meta"]["data_path"] == "/data/x" and doc["meta"]["sizes"] == [1, 2]


def test_markdown_has_comparison_rows_summary_and_details(written):
    _, results, paths = written
    md = paths["markdown"].read_text(encoding="utf-8")
    assert md.startswith("# ")
    table = format_comparison_table(results)
    assert table in md
    for label, r in results.items():
        m = r["metrics"]
        row = next(line for line in md.splitlines() if line.startswith(f"| {label} |"))
        assert f"{100 * m['accuracy']:.2f}" in row and f"{100 * m['balanced_accuracy']:.2f}" in row
        assert f"{r['params']:,}" in row
        assert f"### {label}" in md and f"`hdkd_{label}`" in md
        assert r["checkpoint"] in md
    best = max(results, key=lambda k: results[k]["metrics"]["balanced_accuracy"])
    assert f"**{best}** has the best balanced accuracy" in md
    diff = 100 * (results["hdkd"]["metrics"]["accuracy"] - results["student"]["metrics"]["accuracy"])
    assert f"{diff:+.2f} accuracy points" in md
    for name in FIGURES:
        assert f"]({name})" in md
    for label, r in results.items():  # CIs, ECE before/after and the temperature, consistent with the JSON
        row = next(line for line in md.splitlines() if line.startswith(f"| {label} |"))
        acc = r["bootstrap"]["metrics"]["accuracy"]
        assert f"[{100 * acc['low']:.2f}, {100 * acc['high']:.2f}]" in row
        assert f"{100 * r['metrics']['ece']:.2f}" in row
        assert f"{100 * r['temperature_scaling']['test_after']['ece']:.2f}" in row
        assert f"{r['temperature_scaling']['temperature']:.3f}" in md
    for name in NAMES:  # per-class tables and the class-count table
        assert sum(line.startswith(f"| {name} |") for line in md.splitlines()) >= 4
    assert "synthetic (embedded)" in md and "`hdkd run --out runs/demo`" in md
    spec = results["teacher"]["metrics"]["per_class"]["normal"]["specificity"]
    assert f"{100 * spec:.2f}" in md


def test_report_with_undefined_auc_and_two_classes(tmp_path):
    results = _results(n_classes=2, assessed=False)
    m = fake_metrics(3, 4, 1.0, names=NAMES)
    results["student"]["metrics"] = dict(
        m, auc_ovr_macro=None, auc_ovr_weighted=None, auc_note="ROC AUC undefined: class(es) absent from y_true: normal"
    )
    results["hdkd"].pop("val_metrics")
    results["hdkd"]["history"] = []
    paths = write_pipeline_report(tmp_path, results, {})
    md = paths["markdown"].read_text(encoding="utf-8")
    assert "absent from y_true: normal" in md
    assert "| n/a |" in next(line for line in md.splitlines() if line.startswith("| student |"))
    assert_valid_png(paths["training_curves"])
    assert_valid_png(paths["reliability_diagrams"])
    assert "roc_curves" not in paths and not (tmp_path / "roc_curves.png").exists()  # no predictions: no ROC
    assert "roc_curves.png" not in paths["html"].read_text(encoding="utf-8")


def test_markdown_and_json_written_last(tmp_path, monkeypatch):
    order = []
    real = report_module.atomic_write_text

    def spy(path, text):
        order.append((Path(path).name, sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".png")))
        return real(path, text)

    monkeypatch.setattr(report_module, "atomic_write_text", spy)
    write_pipeline_report(tmp_path, _results(), META)
    assert order == [("report.md", FIGURES), ("report.html", FIGURES), ("report.json", FIGURES)]


def test_crash_midway_leaves_no_report_that_looks_complete(tmp_path, monkeypatch):
    (tmp_path / "report.json").write_text("{}")  # left by an earlier, complete run
    (tmp_path / "report.md").write_text("# old report\n")
    (tmp_path / "report.html").write_text("<html>old</html>\n")

    def boom(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(report_module, "plot_training_curves", boom)
    with pytest.raises(RuntimeError, match="plotting failed"):
        write_pipeline_report(tmp_path, _results(), META)
    assert not (tmp_path / "report.json").exists()
    assert not (tmp_path / "report.md").exists()
    assert not (tmp_path / "report.html").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_rejects_results_without_metrics(tmp_path):
    with pytest.raises(ValueError, match="student"):
        write_pipeline_report(tmp_path, {"student": {"params": 1}}, {})
    with pytest.raises(ValueError):
        write_pipeline_report(tmp_path, {}, {})


class _HTMLChecker(HTMLParser):
    """Records tags, attributes and nesting errors (every non-void element must be closed, in order)."""

    VOID = {"meta", "img", "br", "hr", "input", "link", "source", "col", "area", "base", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.tags, self.attrs = [], [], [], []
        self.text = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def test_html_is_well_formed_self_contained_and_consistent(written):
    _, results, paths = written
    text = paths["html"].read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    checker = _HTMLChecker()
    checker.feed(text)
    checker.close()
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack)
    assert "script" not in checker.tags and "link" not in checker.tags and "iframe" not in checker.tags
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.IGNORECASE)
    assert "http://" not in text and "https://" not in text and "url(" not in text and "@import" not in text
    images = [a for tag, a in checker.attrs if tag == "img"]
    assert len(images) == 4
    for attrs in images:
        assert attrs["src"].startswith("data:image/png;base64,") and attrs.get("alt")
        png = base64.b64decode(attrs["src"].split(",", 1)[1], validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    embedded = sorted(base64.b64decode(a["src"].split(",", 1)[1]) for a in images)
    assert embedded == sorted(
        paths[k].read_bytes() for k in ("confusion_matrices", "roc_curves", "reliability_diagrams", "training_curves")
    )
    body = " ".join(checker.text)
    for _label, r in results.items():  # the numbers of report.json / report.md are in the HTML
        m, ci = r["metrics"], r["bootstrap"]["metrics"]
        acc = ci["accuracy"]
        assert f"{100 * m['accuracy']:.2f} [{100 * acc['low']:.2f}, {100 * acc['high']:.2f}]" in body
        assert f"{100 * m['ece']:.2f}" in body and f"{r['temperature_scaling']['temperature']:.3f}" in body
        assert f"{r['params']:,}" in body
    for name in NAMES:
        assert name in body
    assert "synthetic (embedded)" in body and "hdkd run --out runs/demo" in body


def test_html_escapes_untrusted_text(tmp_path):
    results = _results(assessed=False)
    results["<b>x</b>"] = results.pop("hdkd")
    meta = {**META, "dataset": "<script>alert(1)</script> & co"}
    text = write_pipeline_report(tmp_path, results, meta)["html"].read_text(encoding="utf-8")
    assert "<script>" not in text and "&lt;script&gt;" in text and "&lt;b&gt;x&lt;/b&gt;" in text
    checker = _HTMLChecker()
    checker.feed(text)
    assert not checker.errors and not checker.stack
