"""`hdkd ablate`: the variant registry's resolved configs, shared teachers, results.jsonl, resuming, and the report."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import hdkd.training.trainer as trainer_module
from hdkd.cli import main
from hdkd.config import build_config
from hdkd.errors import ConfigError
from hdkd.experiments.ablation.plan import model_config, plan_ablation, teacher_config, teacher_key, variant_config
from hdkd.experiments.ablation.records import read_results
from hdkd.experiments.ablation.report import write_ablation_report
from hdkd.experiments.ablation.run import run_ablation
from hdkd.experiments.ablation.summary import summarise_ablation
from hdkd.experiments.ablation.variants import GROUPS, VARIANTS, resolve_variants
from hdkd.reporting.ablation import format_ablation_markdown

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "model.img_size=32",
    "data.max_per_class=6",
    "train.epochs=1",
    "train.max_steps_per_epoch=1",
    "train.batch_size=4",
    "train.progress=false",
    "data.num_workers=0",
    "model.depths=[1,1,1]",
    "model.widths=[8,8,16]",
    "model.dflt_depth=1",
    "model.dflt_heads=2",
]
RECORD_FIELDS = {
    "variant",
    "group",
    "seed",
    "config",
    "git_commit",
    "hdkd_version",
    "metrics",
    "best_epoch",
    "amp",
    "val_metrics",
    "params",
    "train_time_s",
    "wall_time_s",
    "timestamp",
    "settings_key",
    "teacher",
}


def tiny_config(*extra):
    return build_config(None, [], TINY + list(extra))


def _teacher_key(cfg, name):
    return teacher_key(teacher_config(variant_config(cfg, name, seed=0)))


# ----------------------------------------------------------------------------------------------------- registry
def test_registry_overrides_give_the_intended_resolved_configs():
    cfg = tiny_config()
    hdkd = model_config(variant_config(cfg, "hdkd", 0), "hdkd")
    assert (hdkd.model.name, hdkd.distill.kd, hdkd.distill.lam) == ("hdkd", "soft", 10)
    assert (hdkd.model.depths, hdkd.model.widths) == ([1, 1, 1], [8, 8, 16])  # the base config is kept

    soft = model_config(variant_config(cfg, "logit_soft", 0), "hdkd")
    hard = model_config(variant_config(cfg, "logit_hard", 0), "hdkd")
    assert (soft.distill.kd, soft.distill.lam, hard.distill.kd, hard.distill.lam) == ("soft", 0, "hard", 0)
    feature = model_config(variant_config(cfg, "feature_only", 0), "hdkd")
    assert (feature.model.name, feature.distill.kd, feature.distill.lam) == ("hdkd_student", "none", 10)
    assert [model_config(variant_config(cfg, f"lam_{x}", 0), "hdkd").distill.lam for x in (1, 10, 100)] == [1, 10, 100]
    assert VARIANTS["student_alone"].trains == ("student",) and VARIANTS["hdkd"].trains == ("teacher", "hdkd")

    # block_mbconv changes the teacher (and the student); the default teacher is MBCSA
    mbconv = variant_config(cfg, "block_mbconv", 0)
    assert teacher_config(mbconv).model.block == "mbconv" and model_config(mbconv, "hdkd").model.block == "mbconv"
    assert teacher_config(variant_config(cfg, "hdkd", 0)).model.block == "mbcsa"
    assert _teacher_key(cfg, "block_mbconv") != _teacher_key(cfg, "hdkd")
    # a student-side change shares the teacher; a train fraction changes it
    assert model_config(variant_config(cfg, "dflt_depth_6", 0), "hdkd").model.dflt_depth == 6
    assert _teacher_key(cfg, "dflt_depth_6") == _teacher_key(cfg, "hdkd") == _teacher_key(cfg, "logit_hard")
    frac = variant_config(cfg, "frac_25_hdkd", 0)
    assert frac.data.train_fraction == pytest.approx(0.25)
    assert teacher_config(frac).data.train_fraction == pytest.approx(0.25)
    assert _teacher_key(cfg, "frac_25_hdkd") != _teacher_key(cfg, "hdkd")
    assert _teacher_key(cfg, "frac_100_hdkd") == _teacher_key(cfg, "hdkd")
    # fractions are of the configured training set
    assert variant_config(
        tiny_config("data.train_fraction=0.4"), "frac_25_student"
    ).data.train_fraction == pytest.approx(0.1)
    # a timm teacher, logit-only
    timm_variant = variant_config(cfg, "teacher_resnet18", 0)
    assert teacher_config(timm_variant).model.name == "resnet18"
    assert model_config(timm_variant, "hdkd").distill.lam == 0
    assert variant_config(cfg, "stem_stride_4", 0).model.stem_stride == 4

    # the documented flag agrees with the computed key, for every distilled variant
    for v in VARIANTS.values():
        if v.role == "hdkd":
            assert (_teacher_key(cfg, v.name) != _teacher_key(cfg, "hdkd")) == v.changes_teacher, v.name


def test_variant_wins_over_base_and_per_role_values_and_seed_is_set_for_every_role():
    cfg = build_config(None, [], TINY + ["distill.lam=3", "roles.hdkd.distill.lam=5", "roles.teacher.train.seed=9"])
    vcfg = variant_config(cfg, "lam_100", seed=2)
    assert vcfg.for_role("hdkd").distill.lam == 100
    assert vcfg.for_role("teacher").train.seed == 2 and vcfg.for_role("hdkd").train.seed == 2


def test_groups_select_variants_and_unknown_names_fail():
    assert [v.name for v in resolve_variants(["block"])] == ["hdkd", "block_mbconv"]
    from hdkd.experiments.ablation.variants import SPEED_REFERENCES

    # `all` is the paper's grid; the speed settings, the loss balance and the peers run on request (issue 15)
    extra = [v for v in VARIANTS.values() if v.group in ("loss_balance", "peers")]
    assert len(resolve_variants(None)) == len(GROUPS["all"]) == len(VARIANTS) - len(SPEED_REFERENCES) - len(extra)
    assert not {v.name for v in extra} & set(GROUPS["all"])
    assert not set(SPEED_REFERENCES) & set(GROUPS["all"]) and set(SPEED_REFERENCES) <= set(GROUPS["speed"])
    assert {v.name for v in resolve_variants(["frac_10", "student_alone"])} == {
        "student_alone",
        "frac_10_student",
        "frac_10_hdkd",
    }
    assert len(resolve_variants(["data_efficiency"])) == 8
    with pytest.raises(ConfigError, match="unknown variant or group 'nope'"):
        resolve_variants(["nope"])


def test_stem_stride_4_needs_a_multiple_of_32_checked_before_training(tmp_path):
    cfg = tiny_config("model.img_size=48")
    with pytest.raises(ConfigError, match="multiple of 32"):
        plan_ablation(cfg, resolve_variants(["stem"]), [0], tmp_path)
    assert not (tmp_path / "results.jsonl").exists()


@pytest.mark.parametrize("preset", ["ablation_cpu_brain_mri.yaml", "ablation_dermamnist.yaml"])
def test_presets_plan_the_whole_grid(preset, tmp_path):
    cfg = build_config(None, [str(REPO / "configs" / preset)])
    plan = plan_ablation(cfg, resolve_variants(["all"]), [0, 1, 2], tmp_path)
    needed = plan.trainings()
    assert len(plan.runs) == 3 * len(GROUPS["all"]) == 3 * 22
    assert len(needed["teachers"]) == 3 * 7  # default, mbconv, stem 4, three fractions, resnet18
    assert len(needed["models"]) == 3 * 18
    assert cfg.model.img_size % 32 == 0


# --------------------------------------------------------------------------------------------------- the grid
VARIANTS_RUN = ["student_alone", "logit_soft", "hdkd", "dflt_depth_6", "frac_50_hdkd", "lam_10"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """One tiny grid (2 seeds), counting real trainings per role with a spy on the trainer."""
    out = tmp_path_factory.mktemp("ablation")
    calls = []
    original = trainer_module.train

    def spy(cfg, *args, **kwargs):
        calls.append((cfg.role, cfg.output))
        return original(cfg, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(trainer_module, "train", spy)
    mp.setenv("HDKD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "hdkd-cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each --jobs 2 worker of the parallel test: the same arithmetic, the same weights
    try:
        results = run_ablation(tiny_config(), resolve_variants(VARIANTS_RUN), [0, 1], out, log=None)
        first_calls = list(calls)
        records = read_results(results)
        calls.clear()
        run_ablation(tiny_config(), resolve_variants(VARIANTS_RUN), [0, 1], out, log=None)  # all done: skipped
        rerun_calls = list(calls)
    finally:
        mp.undo()
        torch.set_num_threads(threads)
    return {"out": out, "results": results, "records": records, "calls": first_calls, "rerun_calls": rerun_calls}


def test_teachers_are_shared_and_each_distinct_model_trained_once(grid):
    teachers = [c for c in grid["calls"] if c[0] == "teacher"]
    # per seed: one default teacher (student-side variants share it) + one for the 50 % subset
    assert len(teachers) == 4 and len(set(teachers)) == 4
    assert all(Path(o).parent.parent == grid["out"] / "teachers" for _, o in teachers)
    assert len({Path(o).parent.name for _, o in teachers}) == 2  # two teacher keys ...
    assert {Path(o).name for _, o in teachers} == {"seed_0", "seed_1"}  # ... each once per seed
    models = [c for c in grid["calls"] if c[0] != "teacher"]
    # lam_10 is the same model as hdkd: 5 distinct models per seed
    assert len(models) == 10 and len(set(models)) == 10
    teacher_dirs = {r["variant"]: r["teacher"]["key"] for r in grid["records"] if r["seed"] == 0 and r["teacher"]}
    assert teacher_dirs["logit_soft"] == teacher_dirs["hdkd"] == teacher_dirs["dflt_depth_6"]
    assert teacher_dirs["frac_50_hdkd"] != teacher_dirs["hdkd"]


def test_results_have_one_line_per_variant_and_seed_with_the_fields(grid):
    records = grid["records"]
    assert sorted((r["variant"], r["seed"]) for r in records) == sorted((v, s) for v in VARIANTS_RUN for s in (0, 1))
    for r in records:
        assert RECORD_FIELDS <= set(r), RECORD_FIELDS - set(r)
        assert r["amp"] in ("bf16", "none")  # train.amp=auto is recorded as the precision that ran
        assert r["config"]["role"] == VARIANTS[r["variant"]].role and r["config"]["train"]["seed"] == r["seed"]
        assert r["group"] == VARIANTS[r["variant"]].group
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "ece"):
            assert 0.0 <= r["metrics"][key] <= 1.0
        assert r["metrics"]["n"] == 4 * 6  # the capped test split
        assert r["best_epoch"] == 1 and r["params"] > 0 and r["train_time_s"] >= 0
        if r["model_trained"]:
            assert r["wall_time_s"] >= r["train_time_s"]
        assert r["hdkd_version"] and (r["git_commit"] is None or len(r["git_commit"]) == 40)
    by = {(r["variant"], r["seed"]): r for r in records}
    assert by[("hdkd", 0)]["config"]["distill"]["lam"] == 10
    assert by[("dflt_depth_6", 0)]["config"]["model"]["dflt_depth"] == 6
    assert by[("frac_50_hdkd", 1)]["config"]["data"]["train_fraction"] == pytest.approx(0.5)
    assert by[("student_alone", 0)]["teacher"] is None
    assert by[("lam_10", 0)]["checkpoint"] == by[("hdkd", 0)]["checkpoint"]  # same settings, one model
    assert by[("lam_10", 0)]["metrics"]["accuracy"] == by[("hdkd", 0)]["metrics"]["accuracy"]


def test_rerun_skips_done_runs_and_a_changed_config_reruns(grid, tmp_path, monkeypatch):
    assert grid["rerun_calls"] == []
    assert len(read_results(grid["results"])) == len(grid["records"])

    # a copy of the results with a torn last line: the line is ignored, its run is redone
    out = tmp_path / "copy"
    out.mkdir()
    lines = grid["results"].read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:50])
    assert len(read_results(out / "results.jsonl")) == 2
    plan = plan_ablation(tiny_config(), resolve_variants(VARIANTS_RUN), [0, 1], out)
    assert len(plan.pending) == len(lines) - 2
    # other settings are another run, not a done one
    plan = plan_ablation(tiny_config("train.batch_size=3"), resolve_variants(VARIANTS_RUN), [0, 1], grid["out"])
    assert len(plan.pending) == len(plan.runs)


def test_parallel_jobs_train_the_same_models_and_record_every_run(grid, tmp_path, monkeypatch):
    """--jobs 2: the trainings run in two worker processes (teachers before their students), then every run is
    tested and recorded as with one process; the trained weights equal the one-process grid's."""
    from safetensors.torch import load_file

    monkeypatch.setenv("HDKD_CACHE_DIR", str(grid["out"].parent / "hdkd-cache"))
    # one thread per worker whatever this machine has, as the serial grid ran (a different thread count changes
    # float reductions, and a first Adam step amplifies that on near-zero gradients)
    monkeypatch.setattr("hdkd.training.parallel.available_cpus", lambda: 2)
    lines = []
    results = run_ablation(tiny_config(), resolve_variants(VARIANTS_RUN), [0], tmp_path, log=lines.append, jobs=2)
    records = read_results(results)
    assert sorted(r["variant"] for r in records) == sorted(VARIANTS_RUN)
    assert any("2 processes" in line for line in lines)
    trained = [line for line in lines if line.strip().startswith("trained ")]
    assert len(trained) == 2 + 5  # two teachers, five distinct models (lam_10 is hdkd)
    # records are written as runs become ready, not after the whole grid: the first before the last training ends
    first_record = next(i for i, line in enumerate(lines) if line.startswith("[1/"))
    last_training = max(i for i, line in enumerate(lines) if line.strip().startswith("trained "))
    assert first_record < last_training
    order = {line.split()[1]: i for i, line in enumerate(trained)}  # "trained <folder> (<s> s)"
    serial = {(r["variant"]): r for r in grid["records"] if r["seed"] == 0}
    for r in records:
        if r["teacher"]:  # a distilled model starts only after its teacher has finished
            teacher_dir = str(Path(r["teacher"]["checkpoint"]).parent.relative_to(tmp_path))
            model_dir = str(Path(r["checkpoint"]).parent.relative_to(tmp_path))
            assert order[teacher_dir] < order[model_dir]
        a = load_file(r["checkpoint"])
        b = load_file(serial[r["variant"]]["checkpoint"])
        assert a.keys() == b.keys()
        assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-5) for k in a), r["variant"]
        assert r["model_trained"] is (r["variant"] != "lam_10")  # trained in this run (by a worker); lam_10 = hdkd


def test_report_mean_and_std_equal_numpy(grid, tmp_path):
    paths = write_ablation_report(grid["results"], tmp_path)
    summary = json.loads(paths["json"].read_text())
    for variant in VARIANTS_RUN:
        for metric in ("accuracy", "balanced_accuracy", "macro_f1"):
            values = np.array([r["metrics"][metric] for r in grid["records"] if r["variant"] == variant])
            entry = summary["variants"][variant]["metrics"][metric]
            assert entry["n"] == 2
            assert entry["mean"] == pytest.approx(np.mean(values))
            assert entry["std"] == pytest.approx(np.std(values, ddof=1))
    claim = summary["claims"]["distillation"]["differences"]["accuracy"]
    per_seed = {r["seed"]: r["metrics"]["accuracy"] for r in grid["records"] if r["variant"] == "hdkd"}
    alone = {r["seed"]: r["metrics"]["accuracy"] for r in grid["records"] if r["variant"] == "student_alone"}
    diffs = np.array([per_seed[s] - alone[s] for s in (0, 1)])
    assert claim["n"] == 2 and claim["mean"] == pytest.approx(diffs.mean())
    assert claim["std"] == pytest.approx(diffs.std(ddof=1))
    md = paths["markdown"].read_text()
    assert "## The paper's claims" in md and "### distillation" in md and "| hdkd | hdkd | 2 |" in md
    assert "MBConv" in md and "Not measured" in md  # block_mbconv was not run
    assert "speed" not in summary["groups"] and "### speed" not in md  # no speed setting was run
    # teachers: validation metrics of each, over its seeds, with the variants distilling from it
    teachers = summary["teachers"]
    default = teachers[next(r["teacher"]["key"] for r in grid["records"] if r["variant"] == "hdkd")]
    assert set(default["variants"]) == {"logit_soft", "hdkd", "dflt_depth_6", "lam_10"} and default["seeds"] == [0, 1]
    val = [r["teacher"]["val_metrics"]["accuracy"] for r in grid["records"] if r["variant"] == "hdkd"]
    assert default["val"]["accuracy"]["mean"] == pytest.approx(np.mean(val))
    assert len(teachers) == 2  # the default teacher and the 50 % subset's
    alone = [r["val_metrics"]["balanced_accuracy"] for r in grid["records"] if r["variant"] == "student_alone"]
    assert summary["student_alone_val"]["balanced_accuracy"]["mean"] == pytest.approx(np.mean(alone))
    assert "## Teachers (validation split)" in md and "| (student alone) |" in md
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_on_constructed_records_claims_and_latest_settings():
    rng = np.random.default_rng(0)
    records = []
    for seed in range(4):
        for variant, arm, frac, base in [
            ("frac_10_student", "student_alone", 0.1, 0.50),
            ("frac_10_hdkd", "hdkd", 0.1, 0.60),
            ("frac_100_student", "student_alone", 1.0, 0.80),
            ("frac_100_hdkd", "hdkd", 1.0, 0.82),
            ("hdkd", "hdkd", 1.0, 0.82),
            ("student_alone", "student_alone", 1.0, 0.80),
            ("block_mbconv", None, None, 0.70),
        ]:
            acc = base + 0.01 * rng.standard_normal()
            records.append(
                {
                    "variant": variant,
                    "seed": seed,
                    "arm": arm,
                    "fraction_of_base": frac,
                    "settings_key": "k",
                    "metrics": {"accuracy": acc, "balanced_accuracy": acc, "macro_f1": acc},
                }
            )
    records.append({"variant": "block_mbconv", "seed": 0, "settings_key": "old", "metrics": {"accuracy": 0.0}})
    records.append(dict(records[-2], metrics={"accuracy": 0.71, "balanced_accuracy": 0.71, "macro_f1": 0.71}))
    summary = summarise_ablation(records)
    claims = summary["claims"]
    assert claims["block"]["differences"]["accuracy"]["verdict"].startswith("supported")
    assert claims["distillation"]["differences"]["accuracy"]["n"] == 4
    eff = claims["data_efficiency"]
    assert eff["largest_mean_accuracy_gain_at"] == 0.1
    assert eff["differences"]["accuracy"]["verdict"].startswith("supported")
    gains = [r["metrics"]["accuracy"] for r in records if r["variant"] == "frac_10_hdkd"]
    alone = [r["metrics"]["accuracy"] for r in records if r["variant"] == "frac_10_student"]
    assert eff["gains"]["0.1"]["accuracy"]["mean"] == pytest.approx(np.mean(np.subtract(gains, alone)))
    # the other ablations: present pairs only, the same paired statistics as the claims
    assert [(c["a"], c["b"]) for c in summary["comparisons"]] == []  # no pair of ABLATION_COMPARISONS was run
    with_stem = records + [
        dict(r, variant="stem_stride_4", metrics={k: v - 0.09 for k, v in r["metrics"].items()})
        for r in records
        if r["variant"] == "hdkd"
    ]
    stem = summarise_ablation(with_stem)["comparisons"]
    assert [(c["a"], c["b"]) for c in stem] == [("hdkd", "stem_stride_4")]
    assert stem[0]["differences"]["accuracy"]["mean"] == pytest.approx(0.09)
    assert (
        "| stem stride 2 against 4 (own teachers) | hdkd - stem_stride_4 | 4 | +9.00 ± 0.00 |"
        in format_ablation_markdown(summarise_ablation(with_stem))
    )
    # the "old" settings record is left out, and the repeated seed-0 record replaced by the latest
    mbconv = summary["variants"]["block_mbconv"]["metrics"]["accuracy"]
    assert mbconv["n"] == 4 and 0.71 in mbconv["values"]
    assert any("other settings" in note for note in summary["notes"])


def test_cli_report_list_and_bad_variant(grid, tmp_path, capsys):
    assert main(["ablate", "--report", str(grid["results"]), "-o", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "ablation_report.md").is_file()
    assert (tmp_path / "rep" / "ablation_data_efficiency.png").is_file()
    assert main(["ablate", "--list"]) == 0
    assert "block_mbconv" in capsys.readouterr().out
    assert main(["ablate", "--variants", "nope", "-o", str(tmp_path / "x")]) == 2
    assert "unknown variant or group" in capsys.readouterr().err
    assert main(["ablate", "--report", str(tmp_path / "missing.jsonl")]) == 2
    assert (
        main(
            ["ablate", "--dry-run", "--variants", "block", "--seeds", "0", "-o", str(tmp_path / "d")]
            + sum((["--set", s] for s in TINY), [])
        )
        == 0
    )
    assert "2 run(s)" in capsys.readouterr().out and not (tmp_path / "d").exists()


def test_options_added_later_keep_the_keys_of_finished_runs():
    """A config written before train.compile / data.augment_on existed hashes like today's config at their
    defaults (finished runs are reused); setting such an option to a non-default value is a new setting."""
    from hdkd.config import ADDED_LATER as _ADDED_LATER
    from hdkd.experiments.ablation.plan import config_key

    cfg = build_config("hdkd").resolved()
    older = cfg.to_dict()
    for section, key in _ADDED_LATER:
        del older[section][key]
    assert config_key(cfg) == config_key(older)
    older["distill"]["fold_teacher_bn"] = False  # folding the teacher's BNs is exact: one setting either way
    assert config_key(cfg) == config_key(older)
    for layout in (False, True, "auto"):  # a memory format is a layout: the records made in NCHW stay done
        older["train"]["channels_last"] = layout
        assert config_key(cfg) == config_key(older)
    cfg.data.augment_on = "device"
    assert config_key(cfg) != config_key(older)


COMMITTED_GRIDS = {  # folder in docs/ablation -> the presets of its command, in order
    "brain_mri_32": ["ablation_cpu_brain_mri.yaml"],
    "dermamnist_32": ["ablation_dermamnist.yaml"],
    "dermamnist_32_20ep_paired": ["ablation_dermamnist.yaml", "ablation_dermamnist_20ep.yaml"],
    "dermamnist_32_teacher30_pilot": [
        "ablation_dermamnist.yaml",
        "ablation_dermamnist_20ep.yaml",
        "ablation_dermamnist_teacher30.yaml",
    ],
}


@pytest.mark.parametrize("folder", sorted(COMMITTED_GRIDS))
def test_committed_grid_records_keep_their_keys_under_todays_preset(folder, tmp_path):
    """A changed default (train.amp became auto) or option must not orphan the committed records: rerunning the
    preset's command finds every (variant, seed) recorded in docs/ablation/<dataset>/ already done."""
    records = read_results(REPO / "docs" / "ablation" / folder / "results.jsonl")
    if not records:
        pytest.skip(f"no committed records in docs/ablation/{folder}")
    data = records[0]["config"]["data"]
    cfg = build_config(
        None,
        [str(REPO / "configs" / preset) for preset in COMMITTED_GRIDS[folder]],
        [],
        data={"path": data["path"], "num_workers": data["num_workers"]},
    )
    seeds = sorted({r["seed"] for r in records})
    plan = plan_ablation(cfg, resolve_variants(sorted({r["variant"] for r in records})), seeds, tmp_path)
    planned = {(run.variant.name, run.seed): run.settings_key for run in plan.runs}
    orphaned = [(r["variant"], r["seed"]) for r in records if planned[(r["variant"], r["seed"])] != r["settings_key"]]
    assert not orphaned
    assert cfg.train.amp == "none" and build_config(None).train.amp == "auto"


def test_speed_settings_are_compared_with_their_default_within_the_seed_spread():
    """student_bf16 against student_alone, paired by seed; 'within' when |mean difference| <= the default's std."""
    rng = np.random.default_rng(1)
    records = []
    for seed in range(3):
        base = 0.80 + 0.02 * rng.standard_normal()
        for variant, acc in [
            ("student_alone", base),
            ("student_bf16", base + 0.001),
            ("hdkd", base),
            ("hdkd_augment_device", base - 0.10),
        ]:
            records.append(
                {
                    "variant": variant,
                    "seed": seed,
                    "settings_key": "k",
                    "metrics": {"accuracy": acc, "balanced_accuracy": acc, "macro_f1": acc},
                }
            )
    speed = summarise_ablation(records)["speed"]
    assert set(speed) == {"student_bf16", "hdkd_augment_device"}
    bf16 = speed["student_bf16"]["differences"]["accuracy"]
    assert bf16["mean"] == pytest.approx(0.001) and bf16["spread_verdict"].startswith("within")
    alone = [r["metrics"]["accuracy"] for r in records if r["variant"] == "student_alone"]
    assert bf16["reference_std"] == pytest.approx(np.std(alone, ddof=1))
    device = speed["hdkd_augment_device"]["differences"]["accuracy"]
    assert device["mean"] == pytest.approx(-0.10) and device["spread_verdict"].startswith("outside")
    md = format_ablation_markdown(summarise_ablation(records))
    assert "## Speed settings against the defaults" in md and "**student_bf16 minus student_alone.**" in md
    # the bf16 and device-augmentation HDKD arms train their own teacher with the same setting
    assert variant_config(tiny_config(), "hdkd_bf16", seed=0).for_role("teacher").train.amp == "bf16"
    assert _teacher_key(tiny_config(), "hdkd_bf16") != _teacher_key(tiny_config(), "hdkd")
    assert _teacher_key(tiny_config(), "hdkd_augment_device") != _teacher_key(tiny_config(), "hdkd")


def _claim_records(gain: float, seeds=range(3), noise: float = 0.002, seed: int = 0) -> list[dict]:
    """Records where HDKD beats the student alone by ``gain`` (and MBConv by 0.1), at two training fractions."""
    rng = np.random.default_rng(seed)
    records = []
    for s in seeds:
        for variant, arm, frac, base in [
            ("student_alone", "student_alone", 1.0, 0.70),
            ("hdkd", "hdkd", 1.0, 0.70 + gain),
            ("block_mbconv", None, None, 0.60 + gain),
            ("frac_10_student", "student_alone", 0.1, 0.40),
            ("frac_10_hdkd", "hdkd", 0.1, 0.40 + 2 * gain),
        ]:
            acc = base + noise * rng.standard_normal()
            records.append(
                {
                    "variant": variant,
                    "seed": s,
                    "arm": arm,
                    "fraction_of_base": frac,
                    "settings_key": "k",
                    "metrics": {"accuracy": acc, "balanced_accuracy": acc, "macro_f1": acc},
                }
            )
    return records


def test_claims_across_datasets_side_by_side(tmp_path):
    from hdkd.experiments.ablation.report import write_claims_across

    for name, gain in [("brain", 0.05), ("derma", -0.05)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _claim_records(gain)))
    files = [tmp_path / "brain" / "results.jsonl", tmp_path / "derma" / "results.jsonl"]
    paths = write_claims_across(files, tmp_path / "out")
    claims = json.loads(paths["json"].read_text())
    brain, derma = claims["brain"]["claims"], claims["derma"]["claims"]
    assert brain["distillation"]["differences"]["accuracy"]["mean"] == pytest.approx(0.05, abs=0.01)
    assert brain["distillation"]["differences"]["accuracy"]["verdict"].startswith("supported")
    assert derma["distillation"]["differences"]["accuracy"]["verdict"].startswith("contradicted")
    assert derma["block"]["differences"]["accuracy"]["verdict"].startswith("supported")  # 0.1 on both
    md = paths["markdown"].read_text()
    rows = [line for line in md.splitlines() if line.startswith("| brain |") or line.startswith("| derma |")]
    assert len(rows) == 4 * 2  # three claims and the per-fraction gains, one row per dataset each

    def cells(row):
        return [c.strip() for c in row.strip("|").split("|")]

    assert cells(rows[0])[:2] == ["brain", "3"] and float(cells(rows[0])[2].split()[0]) == pytest.approx(5, abs=1)
    assert "supported" in cells(rows[0])[-1]
    assert cells(rows[1])[:2] == ["derma", "3"] and float(cells(rows[1])[2].split()[0]) == pytest.approx(-5, abs=1)
    assert "contradicted" in cells(rows[1])[-1]
    gains = [float(c.split()[0]) for c in cells(rows[-1])[1:]]  # derma's gain at 10 % then at 100 %
    assert cells(rows[-1])[0] == "derma" and gains == pytest.approx([-10, -5], abs=1)
    # the CLI: each report beside its results file, the comparison in -o; labels checked
    assert (
        main(
            ["ablate", "--report", *map(str, files), "-o", str(tmp_path / "cli"), "--labels", "Brain MRI", "DermaMNIST"]
        )
        == 0
    )
    assert "| Brain MRI | 3 |" in (tmp_path / "cli" / "ablation_claims.md").read_text()
    assert (tmp_path / "derma" / "ablation_report.md").is_file()
    assert main(["ablate", "--report", *map(str, files)]) == 2  # several need -o
    (tmp_path / "derma" / "ablation_report.md").unlink()
    assert main(["ablate", "--report", *map(str, files), "-o", str(tmp_path / "x"), "--labels", "one"]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "derma" / "ablation_report.md").exists()


def test_data_efficiency_figure_plots_each_headline_metric(tmp_path):
    """One panel per metric: balanced accuracy is plotted from balanced accuracy, not from accuracy (which misleads
    on an imbalanced set such as DermaMNIST)."""
    from hdkd.reporting.ablation import data_efficiency_series, plot_data_efficiency

    records = []
    for seed in range(3):
        for variant, arm, frac, acc, bal in [
            ("frac_10_student", "student_alone", 0.1, 0.50, 0.20),
            ("frac_10_hdkd", "hdkd", 0.1, 0.40, 0.30 + 0.01 * seed),
            ("frac_100_student", "student_alone", 1.0, 0.80, 0.35),
            ("frac_100_hdkd", "hdkd", 1.0, 0.70, 0.45),
        ]:
            records.append(
                {
                    "variant": variant,
                    "seed": seed,
                    "arm": arm,
                    "fraction_of_base": frac,
                    "settings_key": "k",
                    "metrics": {"accuracy": acc, "balanced_accuracy": bal, "macro_f1": bal / 2},
                }
            )
    summary = summarise_ablation(records)
    xs, ys, errs, ns = data_efficiency_series(summary, "balanced_accuracy")["hdkd"]
    assert xs == [10.0, 100.0] and ys == pytest.approx([31.0, 45.0]) and errs[0] == pytest.approx(1.0)
    assert ns == [3, 3]
    assert data_efficiency_series(summary, "accuracy")["student_alone"][1] == pytest.approx([50.0, 80.0])
    path = plot_data_efficiency(summary, tmp_path / "eff.png")
    from PIL import Image

    width, height = Image.open(path).size
    assert width > 3 * height  # three panels side by side
    assert plot_data_efficiency({"data_efficiency": {}}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    one_fraction = summarise_ablation([r for r in records if r["fraction_of_base"] == 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warned of a singular x axis with one fraction
        assert plot_data_efficiency(one_fraction, tmp_path / "one.png").exists()
