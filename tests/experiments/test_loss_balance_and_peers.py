"""Issue 15 in the ablation grid: the loss-balance and peers groups, the teacher guard, the Pareto front."""

import json

import numpy as np
import pytest
import torch

from hdkd.cli import main
from hdkd.config import build_config
from hdkd.errors import DataError
from hdkd.experiments.ablation.latency import LATENCY_FILE, measure_latencies_ms
from hdkd.experiments.ablation.plan import model_config, teacher_config, teacher_key, variant_config
from hdkd.experiments.ablation.records import read_results
from hdkd.experiments.ablation.report import write_ablation_report
from hdkd.experiments.ablation.run import run_ablation
from hdkd.experiments.ablation.summary import pareto_front, summarise_ablation
from hdkd.experiments.ablation.variants import GROUPS, PEERS, VARIANTS, resolve_variants
from hdkd.models.from_config import build_model
from hdkd.reporting.ablation import format_ablation_markdown
from hdkd.runtime import cpu_name

TINY = [
    "model.img_size=32",
    "data.max_per_class=6",
    "train.epochs=1",
    "train.max_steps_per_epoch=2",
    "train.batch_size=4",
    "train.progress=false",
    "train.grad_share_every=1",
    "data.num_workers=0",
    "model.depths=[1,1,1]",
    "model.widths=[8,8,16]",
    "model.dflt_depth=1",
    "model.dflt_heads=2",
]
PAPER_GRID = (
    "student_alone logit_soft logit_hard feature_only hdkd lam_1 lam_10 lam_100 block_mbconv dflt_depth_1 "
    "dflt_depth_3 dflt_depth_6 stem_stride_4 frac_10_student frac_10_hdkd frac_25_student frac_25_hdkd "
    "frac_50_student frac_50_hdkd frac_100_student frac_100_hdkd teacher_resnet18"
).split()


def tiny_config(*extra):
    return build_config(None, [], TINY + list(extra))


def test_loss_balance_variants_resolve_to_their_settings_and_share_the_teacher():
    cfg = tiny_config()
    expected = {
        "lam_0.001": ("soft", 0.001, "none"),
        "lam_0.01_hard": ("hard", 0.01, "none"),
        "lam_0.1_var": ("soft", 0.1, "variance"),
        "lam_10_hard_var": ("hard", 10, "variance"),
        "lam_1": ("soft", 1, "none"),
    }
    shared = teacher_key(teacher_config(variant_config(cfg, "hdkd", 0)))
    for name, settings in expected.items():
        d = model_config(variant_config(cfg, name, 0), "hdkd").distill
        assert (d.kd, d.lam, d.feature_norm) == settings, name
        assert teacher_key(teacher_config(variant_config(cfg, name, 0))) == shared
    lams = {VARIANTS[n].overrides for n in GROUPS["loss_balance"] if VARIANTS[n].role == "hdkd"}
    assert len(lams) == len(GROUPS["loss_balance"]) - 1  # every variant a distinct setting (student_alone aside)
    assert len([n for n in GROUPS["loss_balance"] if n.startswith("lam_")]) == 5 * 2 * 2
    # the existing names keep their overrides, and the paper's grid is what it was
    assert VARIANTS["lam_1"].overrides == ("distill.kd=soft", "distill.lam=1")
    assert VARIANTS["hdkd"].overrides == ("distill.kd=soft", "distill.lam=10")
    assert list(GROUPS["all"]) == PAPER_GRID


def test_peers_train_in_the_student_role_and_build_at_32_px():
    cfg = tiny_config()
    assert set(GROUPS["peers"]) == {"student_alone", "hdkd", *(f"peer_{n}" for n in PEERS)}
    for name in PEERS:
        mcfg = model_config(variant_config(cfg, f"peer_{name}", 0), "student")
        assert (mcfg.role, mcfg.model.name) == ("student", name)
        model = build_model(mcfg, 4, 3).eval()
        with torch.no_grad():
            assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 4)


def _records(val_by_variant, test_by_variant, teacher_val, seeds=range(3)):
    rng = np.random.default_rng(0)
    records = []
    for seed in seeds:
        for name, test in test_by_variant.items():
            val = val_by_variant[name] + 0.001 * rng.standard_normal()
            acc = test + 0.002 * rng.standard_normal()
            distilled = VARIANTS[name].role == "hdkd"
            records.append(
                {
                    "variant": name,
                    "seed": seed,
                    "role": VARIANTS[name].role,
                    "model": "hdkd" if distilled else "hdkd_student",
                    "settings_key": "k",
                    "config": {"train": {"select_metric": "balanced_accuracy"}, "distill": {
                        "kd": "hard" if "hard" in name else "soft", "lam": 0.01, "feature_norm": "none"}},
                    "metrics": {"accuracy": acc, "balanced_accuracy": acc, "macro_f1": acc},
                    "val_metrics": {"accuracy": val, "balanced_accuracy": val, "macro_f1": val},
                    "teacher": {"key": "hdkd_teacher-abc", "model": "hdkd_teacher",
                                "val_metrics": {"balanced_accuracy": teacher_val, "accuracy": teacher_val}}
                    if distilled else None,
                    "grad_shares": {"ce": 0.2, "kd": 0.1, "feature": 0.7} if distilled else {"ce": 1.0},
                    "params": 1000,
                }
            )  # fmt: skip
    return records


def test_loss_balance_report_chooses_on_validation_and_shows_gradient_shares():
    # lam_0.01 is best on validation, lam_0.1 best on test: validation chooses
    val = {"student_alone": 0.70, "hdkd": 0.72, "lam_0.01": 0.80, "lam_0.1": 0.75}
    test = {"student_alone": 0.60, "hdkd": 0.62, "lam_0.01": 0.65, "lam_0.1": 0.70}
    summary = summarise_ablation(_records(val, test, teacher_val=0.9))
    balance = summary["loss_balance"]
    assert balance["best_on_validation"] == "lam_0.01"
    d = balance["best_minus_student_alone"]["differences"]["balanced_accuracy"]
    assert d["mean"] == pytest.approx(0.05, abs=0.005) and d["n"] == 3
    assert balance["variants"]["lam_0.01"]["grad_shares"] == pytest.approx({"ce": 0.2, "kd": 0.1, "feature": 0.7})
    md = format_ablation_markdown(summary)
    assert "## Loss balance" in md and "Chosen on validation: **lam_0.01**" in md
    assert "| lam_0.01 | soft | 0.01 | none | 3 |" in md and "| 20.0 | 10.0 | 70.0 |" in md
    assert summary["teacher_warnings"] == []


def test_a_teacher_weaker_than_the_student_alone_is_flagged_in_the_report():
    val = {"student_alone": 0.70, "hdkd": 0.72}
    summary = summarise_ablation(_records(val, {"student_alone": 0.6, "hdkd": 0.55}, teacher_val=0.65))
    weaker = summary["teachers"]["hdkd_teacher-abc"]["weaker_than_student_alone"]
    assert weaker == {
        "metric": "balanced_accuracy",
        "reference": "student_alone",
        "seeds": [0, 1, 2],
        "compared_seeds": [0, 1, 2],
    }
    assert len(summary["teacher_warnings"]) == 1 and "5 to 10 points" in summary["teacher_warnings"][0]
    assert "**Warning:** the teacher hdkd_teacher-abc" in format_ablation_markdown(summary)


def test_pareto_front_by_hand():
    points = {"a": (1.0, 0.5), "b": (2.0, 0.7), "c": (3.0, 0.6), "d": (2.0, 0.7), "e": (None, 0.9), "f": (4.0, 0.8)}
    assert pareto_front(points) == ["a", "b", "d", "f"]  # c is dominated by b; ties stay; e has no cost


def _peer_results(tmp_path, monkeypatch, latency):
    """A results file with two peers beside HDKD and the student alone; latency measurement replaced by ``latency``
    (counting the measurements in ``latency["calls"]``)."""
    test = {"student_alone": 0.60, "hdkd": 0.65, "peer_resnet18": 0.70, "peer_mobilevit_xs": 0.55}
    records = _records({k: 0.5 for k in test}, test, teacher_val=0.9)
    for r in records:
        r["params"] = {"peer_resnet18": 11_000_000, "peer_mobilevit_xs": 2_000_000}.get(r["variant"], 3_600_000)
        r["config"]["model"] = {"name": r["model"], "img_size": 32}
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    def measure(models):
        latency["calls"] += 1
        return {name: latency[name] for name in models}

    monkeypatch.setattr("hdkd.experiments.ablation.latency._model_of", lambda record: record["variant"])
    monkeypatch.setattr("hdkd.experiments.ablation.latency.measure_latencies_ms", measure)
    return tmp_path / "results.jsonl", records


def test_pareto_section_and_figure_with_peers(tmp_path, monkeypatch):
    latency = {"student_alone": 2.0, "hdkd": 2.1, "peer_resnet18": 1.0, "peer_mobilevit_xs": 3.0, "calls": 0}
    results, _ = _peer_results(tmp_path, monkeypatch, latency)
    paths = write_ablation_report(results)
    summary = json.loads(paths["json"].read_text())
    assert summary["pareto"]["front_latency"] == ["peer_resnet18"]  # fastest and most accurate
    assert summary["pareto"]["front_params"] == ["peer_mobilevit_xs", "hdkd", "peer_resnet18"]
    md = paths["markdown"].read_text()
    assert "## Peers: accuracy against size and CPU latency" in md and "ablation_pareto.png" in md
    assert f"measured on {cpu_name()} with torch {torch.__version__}" in md  # where the latencies come from
    assert paths["pareto_plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rebuilt_report_keeps_the_measured_latencies_until_an_architecture_changes(tmp_path, monkeypatch):
    latency = {"student_alone": 2.0, "hdkd": 2.1, "peer_resnet18": 1.0, "peer_mobilevit_xs": 3.0, "calls": 0}
    results, records = _peer_results(tmp_path, monkeypatch, latency)
    write_ablation_report(results)
    kept = json.loads((tmp_path / LATENCY_FILE).read_text())
    assert kept["machine"] == cpu_name() and kept["models"]["peer_resnet18"]["latency_ms"] == 1.0
    latency.update(peer_resnet18=9.0, calls=latency["calls"])  # a busy machine would now measure resnet18 slower
    summary = json.loads(write_ablation_report(results)["json"].read_text())
    assert latency["calls"] == 1 and summary["pareto"]["front_latency"] == ["peer_resnet18"]  # reused, not moved
    assert summary["pareto"]["latency"].endswith(kept["measured_at"])
    write_ablation_report(results, remeasure_latency=True)  # asked for: measured again, and kept
    assert latency["calls"] == 2 and json.loads((tmp_path / LATENCY_FILE).read_text())["models"]["peer_resnet18"][
        "latency_ms"] == 9.0  # fmt: skip
    for r in records:  # the same variants at another resolution are other models: measured again
        r["config"]["model"]["img_size"] = 64
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    write_ablation_report(results)
    assert latency["calls"] == 3


def test_a_damaged_latency_record_is_an_error_naming_it_and_writes_no_report(tmp_path, monkeypatch, capsys):
    latency = {"student_alone": 2.0, "hdkd": 2.1, "peer_resnet18": 1.0, "peer_mobilevit_xs": 3.0, "calls": 0}
    results, _ = _peer_results(tmp_path, monkeypatch, latency)
    (tmp_path / LATENCY_FILE).write_text('{"models": {"hdkd": {"latency_ms": "fast"}}}')
    with pytest.raises(DataError, match=f"{LATENCY_FILE}: not a latency record.*--remeasure-latency"):
        write_ablation_report(results)
    assert latency["calls"] == 0 and not (tmp_path / "ablation_report.md").exists()
    assert main(["ablate", "--report", str(results)]) == 2  # the CLI: one line, no traceback
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert main(["ablate", "--remeasure-latency", "--seeds", "0"]) == 2  # only with --report
    assert "--remeasure-latency: only with --report" in capsys.readouterr().err
    assert main(["ablate", "--report", str(results), "--remeasure-latency"]) == 0  # the way out the message names
    assert latency["calls"] == 1 and (tmp_path / "ablation_report.md").is_file()


def test_a_tiny_grid_records_gradient_shares_and_measures_the_peers(tmp_path, monkeypatch):
    monkeypatch.setenv("HDKD_CACHE_DIR", str(tmp_path / "cache"))
    messages = []
    variants = resolve_variants(["student_alone", "lam_0.01_var", "peer_resnet18"])
    results = run_ablation(tiny_config(), variants, [0], tmp_path / "grid", log=messages.append)
    by = {r["variant"]: r for r in read_results(results)}
    shares = by["lam_0.01_var"]["grad_shares"]
    assert set(shares) == {"ce", "kd", "feature"} and sum(shares.values()) == pytest.approx(1.0)
    assert by["student_alone"]["grad_shares"] == {"ce": 1.0, "kd": 0.0, "feature": 0.0}
    assert by["lam_0.01_var"]["config"]["distill"]["feature_norm"] == "variance"
    assert by["peer_resnet18"]["model"] == "resnet18"
    summary = json.loads((tmp_path / "grid" / "ablation_report.json").read_text())
    points = summary["pareto"]["points"]
    assert set(points) == {"student_alone", "peer_resnet18"}  # hdkd not run here
    assert all(p["latency_ms"] > 0 for p in points.values())
    weaker = summary["teachers"]
    assert all("weaker_than_student_alone" in t for t in weaker.values())


def test_the_paper_recipe_preset_is_the_paper_s_distillation_settings():
    from pathlib import Path

    from hdkd.config import DistillConfig

    preset = Path(__file__).resolve().parents[2] / "configs" / "paper_recipe.yaml"
    d = build_config(None, [str(preset)]).distill
    assert (d.kd, d.alpha, d.tau, d.kd_reduction, d.lam, d.beta, d.feature_stages, d.feature_norm) == (
        "soft", 0.5, 1.0, "deit", 10.0, 1.0, [1, 2, 3], "none")  # fmt: skip
    assert d == DistillConfig()  # today's defaults are the paper's recipe


def test_teachers_and_students_alone_do_not_follow_the_distillation_default(monkeypatch):
    """Their distill section is unused; pinned, so a new default neither retrains them nor moves a grid's keys."""
    import dataclasses

    from hdkd.config import DistillConfig
    from hdkd.experiments.ablation import plan

    def keys():
        cfg = build_config(None, overrides=["distill.lam=3", "distill.kd=hard"])
        student = model_config(variant_config(cfg, "student_alone", 0), "student")
        return teacher_key(teacher_config(variant_config(cfg, "hdkd", 0))), plan.config_key(student), student.distill

    before = keys()
    assert (before[2].lam, before[2].kd) == (10.0, "soft")
    changed = dataclasses.make_dataclass("ChangedDefaults", [("lam", float, 0.1)], bases=(DistillConfig,))
    monkeypatch.setattr(plan, "DistillConfig", changed)
    assert keys()[:2] == before[:2]


def test_latencies_are_measured_together_and_rank_models_by_their_work():
    torch.manual_seed(0)
    small = torch.nn.Conv2d(3, 8, 3, padding=1)
    large = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.Conv2d(64, 64, 3, padding=1))
    threads = torch.get_num_threads()
    latency = measure_latencies_ms({"small": (small, 32, 3), "large": (large, 32, 3)}, repeats=3, warmup=1, inner=2)
    assert set(latency) == {"small", "large"} and all(v > 0 for v in latency.values())
    assert latency["large"] > latency["small"]  # about 140 x the multiply-adds
    assert torch.get_num_threads() == threads  # one thread for the measurement, then restored
