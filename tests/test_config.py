import pytest

from hdkd.config import build_config, parse_override
from hdkd.errors import ConfigError


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
