"""`hdkd pipeline --seeds`: one run per seed, and a summary whose mean / std are numpy's over the per-seed reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import t

from hdkd.cli import main
from hdkd.evaluation.seeds import (
    HALF_WIDTH_GOAL,
    SEED_METRICS,
    seeds_for_half_width,
    signed_rank_p,
    summarise_seeds,
    t_quantile,
)
from hdkd.experiments.ablation.summary import paired_difference
from hdkd.reporting.ablation import _diff_line
from hdkd.reporting.seeds import format_seeds_markdown, write_seeds_summary


def test_summary_of_fake_runs(tmp_path):
    rng = np.random.default_rng(0)
    per_seed = {}
    for seed in (0, 1, 2):
        per_seed[seed] = {
            label: {"metrics": {k: float(rng.uniform(0.5, 1.0)) for k in SEED_METRICS}}
            for label in ("teacher", "student", "hdkd")
        }
    per_seed[1]["student"]["metrics"]["auc_ovr_macro"] = None  # undefined in one run: left out
    summary = summarise_seeds(per_seed)
    assert summary["seeds"] == [0, 1, 2] and list(summary["models"]) == ["teacher", "student", "hdkd"]
    for label in ("teacher", "student", "hdkd"):
        for key in SEED_METRICS:
            values = [per_seed[s][label]["metrics"][key] for s in (0, 1, 2)]
            defined = [v for v in values if v is not None]
            entry = summary["models"][label][key]
            assert entry["values"] == values and entry["n"] == len(defined)
            assert entry["mean"] == pytest.approx(np.mean(defined))
            assert entry["std"] == pytest.approx(np.std(defined, ddof=1))
    single = summarise_seeds({5: per_seed[0]})
    assert single["models"]["hdkd"]["accuracy"]["std"] is None
    assert "± " not in format_seeds_markdown(single, table_only=True)
    paths = write_seeds_summary(tmp_path, summary)
    assert json.loads(paths["json"].read_text()) == summary
    md = paths["markdown"].read_text()
    acc = summary["models"]["hdkd"]["accuracy"]
    assert f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f}" in md and "seed 2" in md


def test_pipeline_seeds_end_to_end(tmp_path, capsys):
    out = tmp_path / "seeds"
    code = main(
        [
            "pipeline",
            "-o",
            str(out),
            "--epochs",
            "1",
            "--img-size",
            "32",
            "--set",
            "data.max_per_class=4",
            "--roles",
            "student",
            "--seeds",
            "3",
            "7",
            "--bootstrap",
            "50",
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads((out / "seeds_summary.json").read_text())
    assert summary["seeds"] == [3, 7]
    reports = {s: json.loads((out / f"seed_{s}" / "report.json").read_text()) for s in (3, 7)}
    for s, report in reports.items():
        assert report["meta"]["seed"] == s
        assert (out / f"seed_{s}" / "report.html").is_file()
        assert report["results"]["student"]["bootstrap"]["n_boot"] == 50
        assert report["results"]["student"]["temperature_scaling"]["fitted_on"] == "validation"
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr_macro"):
        values = [reports[s]["results"]["student"]["metrics"][key] for s in (3, 7)]
        entry = summary["models"]["student"][key]
        assert entry["values"] == values
        assert entry["mean"] == pytest.approx(np.mean(values))
        assert entry["std"] == pytest.approx(np.std(values, ddof=1))
    md = (out / "seeds_summary.md").read_text()
    assert "| student |" in md and "| student |" in captured.out

    # `hdkd evaluate --bootstrap N` on one of the checkpoints: the same test metrics, with intervals
    ckpt = out / "seed_3" / "student" / "best.safetensors"
    code = main(
        [
            "evaluate",
            str(ckpt),
            "--split",
            "test",
            "--set",
            "data.max_per_class=4",
            "--bootstrap",
            "200",
            "-o",
            str(tmp_path / "m.json"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    metrics = json.loads((tmp_path / "m.json").read_text())
    expected = reports[3]["results"]["student"]["metrics"]
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"])
    assert metrics["bootstrap"]["n_boot"] == 200
    acc = metrics["bootstrap"]["metrics"]["accuracy"]
    assert acc["low"] <= metrics["accuracy"] <= acc["high"]
    assert f"[{100 * acc['low']:.2f}, {100 * acc['high']:.2f}]" in captured.out
    code = main(
        ["evaluate", str(ckpt), "--set", "data.max_per_class=4", "--bootstrap", "0", "-o", str(tmp_path / "m0.json")]
    )
    assert code == 0 and "bootstrap" not in json.loads((tmp_path / "m0.json").read_text())
    assert main(["evaluate", str(ckpt), "--bootstrap", "-1"]) == 2
    capsys.readouterr()


def test_seeds_for_half_width_is_the_fewest_seeds_whose_t_interval_fits():
    def half(n, std):
        return t.ppf(0.975, n - 1) * std / np.sqrt(n)

    for std in (0.0, 0.005, 0.018, 0.0474, 0.09):
        n = seeds_for_half_width(std)
        assert half(n, std) <= HALF_WIDTH_GOAL
        assert n == 2 or half(n - 1, std) > HALF_WIDTH_GOAL
    # section 10's Brain Tumor MRI spread (1.8 points): 9 seeds, the "about 10" of issue 15
    assert seeds_for_half_width(0.018) == 9
    assert seeds_for_half_width(0.5, most=50) is None
    assert t_quantile(9) == pytest.approx(2.262157, abs=1e-6)


def test_paired_difference_reports_its_half_width_and_the_seeds_the_goal_needs():
    a = {s: {"metrics": {"accuracy": 0.70 + d}} for s, d in enumerate((0.00, 0.04, -0.02, 0.03))}
    b = {s: {"metrics": {"accuracy": 0.70}} for s in range(4)}
    d = paired_difference(a, b, "accuracy")
    diffs = np.array([0.00, 0.04, -0.02, 0.03])
    expected = t_quantile(3) * diffs.std(ddof=1) / 2
    assert d["half_width"] == pytest.approx(expected)
    assert d["ci95"] == pytest.approx([diffs.mean() - expected, diffs.mean() + expected])
    assert d["seeds_for_goal"] == seeds_for_half_width(diffs.std(ddof=1)) > 4
    assert f"would need {d['seeds_for_goal']} seeds" in _diff_line(d)


def test_signed_rank_p_is_the_exact_wilcoxon_p_and_ignores_how_far_one_run_fell():
    # 8 positive differences, no ties: every sign pattern is equally likely under the null, so the exact two-sided
    # p is 2 / 2**8
    assert signed_rank_p([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08]) == pytest.approx(2 / 256)
    # one difference flipped to the smallest rank: the patterns at least as extreme are 2 (all positive, the
    # smallest negative) on each side
    assert signed_rank_p([-0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08]) == pytest.approx(4 / 256)
    # a collapse moves the mean below 0 but not the ranks: the p-value is that of any largest-rank negative
    collapsed = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, -0.90]
    assert np.mean(collapsed) < 0
    assert signed_rank_p(collapsed) == pytest.approx(signed_rank_p([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, -0.09]))
    assert signed_rank_p([0.0, 0.0, 0.0]) is None


def test_paired_difference_adds_median_sign_count_and_signed_rank_p_to_its_line():
    diffs = (0.02, 0.03, -0.12, 0.01, 0.04)
    a = {s: {"metrics": {"balanced_accuracy": 0.40 + d}} for s, d in enumerate(diffs)}
    b = {s: {"metrics": {"balanced_accuracy": 0.40}} for s in range(5)}
    d = paired_difference(a, b, "balanced_accuracy")
    assert d["above_zero"] == 4 and d["median"] == pytest.approx(0.02)
    assert d["signed_rank_p"] == pytest.approx(signed_rank_p(np.array(diffs)))
    line = _diff_line(d)
    assert line.index("inconclusive") < line.index("above 0 on 4 of 5 seeds, median +2.00, signed-rank p = ")
