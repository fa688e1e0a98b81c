from pathlib import Path

import pytest
import yaml

import hdkd.config as hdkd_config
from hdkd.config import build_config, parse_override
from hdkd.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_role_defaults_are_the_authors():
    teacher = build_config("teacher").resolved()
    assert (teacher.optim.name, teacher.optim.lr, teacher.optim.schedule) == ("adam", 1e-3, "constant")
    assert teacher.model.name == "hdkd_teacher"
    hdkd = build_config("hdkd").resolved()
    assert (hdkd.optim.name, hdkd.optim.lr, hdkd.optim.weight_decay) == ("adamw", 5e-5, 0.05)
    assert (hdkd.optim.warmup_epochs, hdkd.optim.warmup_lr, hdkd.optim.min_lr) == (5, 2e-5, 2e-5)
    assert hdkd.train.epochs == 200 and hdkd.train.batch_size == 16 and hdkd.model.img_size == 224


def test_precedence_file_then_options_then_set(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("train: {epochs: 7, batch_size: 8}\nroles:\n  teacher: {train: {epochs: 3}, optim: {lr: 0.01}}\n")
    cfg = build_config(None, [str(preset)])
    assert cfg.for_role("teacher").train.epochs == 3 and cfg.for_role("teacher").optim.lr == 0.01
    assert cfg.for_role("student").train.epochs == 7 and cfg.for_role("student").optim.lr == 5e-5
    cfg = build_config(None, [str(preset)], ["train.batch_size=4"], train={"epochs": 2})
    # the command line wins over the preset's per-role values too
    assert cfg.for_role("teacher").train.epochs == 2 and cfg.for_role("student").train.epochs == 2
    assert cfg.for_role("teacher").train.batch_size == 4 and cfg.for_role("teacher").optim.lr == 0.01


def test_parse_override_types():
    assert parse_override("distill.lam=1") == {"distill": {"lam": 1}}
    assert parse_override("model.depths=[1, 1, 2]") == {"model": {"depths": [1, 1, 2]}}
    assert parse_override("data.cache_dir=null") == {"data": {"cache_dir": None}}


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.epochz=3", "unknown option.*epochz"),
        ("trainer.epochs=3", "unknown option.*trainer"),
        ("epochs", "expected KEY=VALUE"),
    ],
)
def test_bad_options_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config("teacher", overrides=[override])


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        build_config("teacher", [str(bad)])
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        build_config("teacher", [str(tmp_path / "nope.yaml")])
    with pytest.raises(ConfigError, match="unknown role"):
        build_config("teacher", overrides=["roles.teachr.train.epochs=1"]).resolved()


# ------------------------------------------------------------------------------------ types, ranges and rules
from hdkd.config import (  # noqa: E402
    ADDED_LATER,
    RESULT_NEUTRAL,
    ROLES,
    SELECT_METRICS,
    Config,
    from_dict,
    result_differences,
    save_yaml,
    selection_score,
    validate,
    with_overrides,
    with_seed,
)


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.epochs=ten", r"train\.epochs: expected an integer, got 'ten'"),
        ("train.epochs=1.5", r"train\.epochs: expected an integer, got 1\.5"),
        ("train.deterministic=maybe", r"train\.deterministic: expected true or false"),
        ("model.widths=[64, x, 192]", r"model\.widths: expected a list of integers"),
        ("optim.lr=fast", r"optim\.lr: expected a number or null, got 'fast'"),
        ("train=0", r"train: must be a mapping of options, got 0"),
        ("train.=3", r"'train\.' is not a dotted option name"),
        ("=3", r"'' is not a dotted option name"),
        ("roles.teacher=5", r"roles\.teacher: must be a mapping of sections, got 5"),
        ("roles.teacher.train.epochz=1", r"roles\.teacher\.train: unknown option\(s\) 'epochz'"),
    ],
)
def test_types_are_checked_when_the_config_is_read(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config("teacher", overrides=[override])


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.batch_size=0", r"train\.batch_size: expected >= 1, got 0"),
        ("train.batch_size=-4", r"train\.batch_size: expected >= 1, got -4"),
        ("train.epochs=0", r"train\.epochs: expected >= 1, got 0"),
        ("optim.lr=-0.1", r"optim\.lr: expected > 0, got -0\.1"),
        ("train.seed=-1", r"train\.seed: expected an integer in \[0, 2\*\*32\), got -1"),
        ("train.select_metric=auc", r"train\.select_metric: unknown 'auc'; choose accuracy, balanced_accuracy"),
        ("data.val_fraction=1.0", r"data\.val_fraction: expected .*got 1\.0"),
        ("distill.alpha=2", r"distill\.alpha: expected in \[0\.0, 1\.0\], got 2"),
        ("train.device=gpu", r"train\.device: expected auto, cpu, cuda or cuda:N, got 'gpu'"),
        ("model.widths=[64, 96, 1000000]", r"model\.widths: expected 3 integers from 1 to 4096"),
        ("model.name=hf-hub:timm/resnet18", r"model\.name: 'hf-hub:timm/resnet18' names a model on the internet"),
        ("model.kwargs={pretrained: true}", r"model\.kwargs: pretrained would load weights through timm"),
    ],
)
def test_ranges_are_checked_before_any_work(override, message):
    cfg = build_config("teacher", overrides=[override])  # reads fine: the value has the right type
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_img_size_rule_is_checked_for_every_role_before_the_teacher_trains():
    cfg = build_config(None, overrides=["model.img_size=40"])  # the teacher takes 40 (a multiple of 8) ...
    validate(cfg, roles=["teacher"])
    with pytest.raises(ConfigError, match=r"role student: model\.img_size: 40 is not a multiple of 16"):
        validate(cfg, roles=ROLES)  # ... the students do not: found before anything trains
    stem4 = build_config(None, overrides=["model.img_size=40", "model.stem_stride=4"])
    with pytest.raises(ConfigError, match="not a multiple of 16, which hdkd_teacher"):
        validate(stem4, roles=ROLES)


def test_defaults_and_presets_validate():
    validate(build_config(None), roles=ROLES)
    for preset in sorted((REPO / "configs").glob("*.yaml")):
        validate(build_config(None, [str(preset)]), roles=ROLES)


def test_an_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(ConfigError, match="output: .*taken/run cannot be a folder: .*taken is a file"):
        validate(build_config("teacher", overrides=[f"output={tmp_path / 'taken' / 'run'}"]))


def test_yaml_numbers_without_a_dot_are_numbers():
    cfg = build_config("teacher", overrides=["optim.lr=1e-3"])  # YAML 1.1 reads 1e-3 as a string
    assert cfg.optim.lr == 1e-3
    validate(cfg)


@pytest.mark.parametrize(
    "content,message",
    [
        (b"\xff\xfe\x00\x01garbage\x80\x81", "not a UTF-8 text file"),
        (b"train: !!python/object/apply:os.system [echo hi]", "not valid YAML"),
        (b"- a\n- b\n", "must be a mapping of sections"),
        (b"train: 5\n", r"train: must be a mapping of options, got 5"),
        (b"train: false\n", r"train: must be a mapping of options, got False"),
        (b"1: 2\n", r"unknown option\(s\) '1'"),
    ],
)
def test_bad_config_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        build_config("teacher", [str(path)])


def test_an_empty_section_in_a_later_file_keeps_the_earlier_files_values(tmp_path):
    (tmp_path / "a.yaml").write_text("train: {epochs: 7}\n")
    (tmp_path / "b.yaml").write_text("train:\n  # epochs: 3\n")
    assert build_config("teacher", [str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")]).train.epochs == 7


def test_lower_is_better_metrics_are_minimised():
    assert selection_score("nll", 0.2) > selection_score("nll", 0.9)
    assert selection_score("accuracy", 0.9) > selection_score("accuracy", 0.2)
    assert not SELECT_METRICS["nll"] and not SELECT_METRICS["ece"] and SELECT_METRICS["balanced_accuracy"]


def test_with_seed_and_with_overrides_beat_per_role_values():
    cfg = build_config(None, overrides=["roles.teacher.train.seed=3", "roles.teacher.optim.lr=0.01"])
    seeded = with_seed(cfg, 5, output="runs/x")
    assert all(seeded.for_role(r).train.seed == 5 for r in ROLES) and seeded.output == "runs/x"
    changed = with_overrides(cfg, ["optim.lr=0.5"])
    assert changed.for_role("teacher").optim.lr == 0.5 and changed.for_role("student").optim.lr == 0.5
    with pytest.raises(ConfigError, match="seed: expected an integer"):
        with_seed(cfg, -2)


def test_result_differences_ignore_neutral_settings_and_default_later_options():
    saved = build_config("teacher").resolved().to_dict()
    for path in ADDED_LATER:  # a run saved before these options existed
        saved[path[0]].pop(path[1])
    current = build_config("teacher", overrides=["train.device=cpu", "train.progress=false"]).resolved()
    assert ("train", "device") in RESULT_NEUTRAL
    assert result_differences(saved, current.to_dict()) == []
    current = build_config("teacher", overrides=["train.compile=true", "train.epochs=3"]).resolved()
    assert result_differences(saved, current.to_dict()) == ["train.compile", "train.epochs"]


def test_save_yaml_round_trips_atomically(tmp_path):
    cfg = build_config("teacher", overrides=["train.epochs=3"]).resolved()
    save_yaml(cfg, tmp_path / "config.yaml")
    assert from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text())) == cfg
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
    assert Config().to_dict() == from_dict({}).to_dict()


def test_choice_lists_match_the_modules_that_use_them():
    from hdkd import runtime

    assert hdkd_config.AMP_CHOICES == runtime.AMP and hdkd_config.COMPILE_MODES == runtime.COMPILE_MODES


def test_a_scalar_section_in_a_file_is_refused_even_with_named_options(tmp_path):
    (tmp_path / "s.yaml").write_text("train: 5\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: train: must be a mapping of options, got 5"):
        build_config("teacher", [str(tmp_path / "s.yaml")], train={"epochs": None, "seed": None})
