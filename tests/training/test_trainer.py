import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from hdkd.config import build_config
from hdkd.training import train


def _cfg(tmp_path, role, *extra):
    return build_config(
        role,
        overrides=[
            f"output={tmp_path / role}",
            "model.img_size=32",
            "data.max_per_class=12",
            "train.batch_size=8",
            "train.progress=false",
            "data.num_workers=0",
            *extra,
        ],
    )


def test_resume_continues_exactly(tmp_path):
    """Two epochs in one go and one epoch + resume give bit-identical weights (CPU, deterministic)."""
    straight = train(_cfg(tmp_path / "a", "student", "train.epochs=2", "train.deterministic=true"))
    first = _cfg(tmp_path / "b", "student", "train.epochs=1", "train.deterministic=true")
    train(first)
    resumed = train(_cfg(tmp_path / "b", "student", "train.epochs=2", "train.deterministic=true"), resume=True)
    a, b = load_file(straight.last_checkpoint), load_file(resumed.last_checkpoint)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert len((tmp_path / "b" / "student" / "log.jsonl").read_text().splitlines()) == 2


def test_outputs_and_selection_on_validation(tmp_path):
    result = train(_cfg(tmp_path, "teacher", "train.epochs=2"))
    out = tmp_path / "teacher"
    for name in ("best.safetensors", "last.safetensors", "last_state.pt", "log.jsonl", "config.yaml", "summary.json"):
        assert (out / name).is_file(), name
    history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    best = max(history, key=lambda r: r["val_balanced_accuracy"])
    assert result.best_epoch == best["epoch"]
    assert result.best_val["balanced_accuracy"] == pytest.approx(best["val_balanced_accuracy"])
    assert not any("test" in key for key in history[0])


def test_hdkd_role_distils_from_a_trained_teacher(tmp_path):
    teacher = train(_cfg(tmp_path, "teacher", "train.epochs=1"))
    result = train(_cfg(tmp_path, "hdkd", "train.epochs=1", f"distill.teacher={teacher.best_checkpoint}"))
    record = result.history[0]
    assert record["train_feature"] > 0 and record["train_kd"] > 0
    assert record["train_loss"] == pytest.approx(
        0.5 * record["train_ce"] + 0.5 * record["train_kd"] + 10 * record["train_feature"], rel=1e-4
    )


@pytest.mark.slow
def test_short_training_on_real_brain_mri_beats_chance(tmp_path, brain_mri):
    """A few epochs of the teacher on 100 images per class at 32 px: validation accuracy well above 25 %."""
    cfg = build_config(
        "teacher",
        overrides=[
            f"output={tmp_path / 't'}",
            f"data.path={brain_mri}",
            "data.max_per_class=100",
            "data.val_fraction=0.2",
            "model.img_size=32",
            "train.epochs=6",
            "train.batch_size=32",
            "train.progress=false",
        ],
    )
    result = train(cfg)
    assert result.best_val["n"] >= 80
    assert result.best_val["accuracy"] > 0.5, result.history


def test_compiled_training_matches_eager_and_saves_plain_keys(tmp_path, monkeypatch, request):
    """train.compile wraps the student (and teacher) for the training passes only: same weights as an uncompiled
    run (dynamo's `eager` backend: tracing without code generation, so the test stays fast), and checkpoints keep
    the model's own keys (no `_orig_mod.` prefix) so they load anywhere."""
    # On one thread eager runs unstrided 1x1 convs as a matrix product (hdkd.models.hdkd._conv_leaves_onednn) while
    # a compiled graph sees plain convs: equal up to rounding only. Two threads, whatever an earlier test left, put
    # both on the same kernels, so the weights must agree exactly.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    # Likewise the eager frozen teacher runs BN-fused oneDNN convolutions (hdkd.models.hdkd._frozen_on_onednn) where
    # a compiled graph sees the modules: the modules in both, here.
    monkeypatch.setattr(sys.modules["hdkd.models.hdkd"], "_frozen_on_onednn", lambda *a: False)
    common = ("train.epochs=1", "train.deterministic=true", "train.max_steps_per_epoch=3")
    teacher = train(_cfg(tmp_path / "t", "teacher", *common))
    import hdkd.training.trainer as trainer_module

    compiled_models = []

    def recording_compile(model, *args, **kwargs):
        compiled_models.append(type(model).__name__)
        return real_compile(model, *args, **kwargs)

    real_compile = trainer_module.compile_model
    monkeypatch.setattr(trainer_module, "compile_model", recording_compile)
    monkeypatch.setattr("hdkd.distillation.losses.compile_model", recording_compile)  # the teacher's
    runs = {}
    for compiled in (False, True):
        cfg = _cfg(
            tmp_path / str(compiled),
            "hdkd",
            *common,
            f"distill.teacher={teacher.best_checkpoint}",
            f"train.compile={str(compiled).lower()}",
            "train.compile_backend=eager",
        )
        runs[compiled] = train(cfg)
    plain, compiled = load_file(runs[False].last_checkpoint), load_file(runs[True].last_checkpoint)
    assert plain.keys() == compiled.keys() and not any("_orig_mod" in k for k in compiled)
    # inductor's kernels reassociate fp32 sums: 1.0e-4 apart after these steps on an AVX2-only Zen 3 (weights up to
    # 3.9), within 1e-6 on the AVX-512 CPUs of earlier sessions
    assert all(torch.allclose(plain[k], compiled[k], atol=2e-4) for k in plain)
    assert runs[True].history[0]["train_loss"] == pytest.approx(runs[False].history[0]["train_loss"], rel=1e-6)
    assert compiled_models == ["HDKDDistilled", "HDKDTeacher"]  # the student, then the frozen teacher


@pytest.mark.parametrize(
    "option, message",
    [("train.compile_mode=fastest", "train.compile_mode"), ("train.compile_backend=nvcc", "train.compile_backend")],
)
def test_unknown_compile_option_is_refused_before_any_output(tmp_path, option, message):
    from hdkd.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        train(_cfg(tmp_path, "student", "train.compile=true", option))
    assert not (tmp_path / "student").exists()


def test_device_augmentation_feeds_the_model_batch_augmented_raw_images(tmp_path):
    """data.augment_on=device: the loader yields raw uint8 images with their indices, and what reaches the model is
    BatchAugment of exactly those images with their per-(seed, epoch, image) seeds."""
    from torch.utils.data import DataLoader

    from hdkd.data import build_datasets
    from hdkd.data.batch_augment import BatchAugment, batch_seeds
    from hdkd.distillation import SupervisedLoss
    from hdkd.training.engine import train_one_epoch
    from hdkd.training.trainer import device_augmentation

    cfg = _cfg(tmp_path, "student", "data.augment_on=device").resolved()
    data = build_datasets(cfg.data, cfg.model.img_size)
    data.train.set_epoch(seed=3, epoch=1)
    data.train.raw = True
    loader = DataLoader(data.train, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(0))
    seen = []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(data.num_classes))
    model(torch.zeros(1, data.in_chans, 32, 32))
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    raw_view, transform = device_augmentation(data.train, cfg, torch.device("cpu"))
    assert raw_view.raw and raw_view.images is data.train.images  # a view sharing the images
    train_one_epoch(
        model,
        SupervisedLoss(),
        loader,
        optimizer,
        torch.device("cpu"),
        progress=False,
        max_steps=2,
        batch_transform=transform,
    )
    batches = iter(DataLoader(data.train, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(0)))
    augment = BatchAugment(data.in_chans, "authors")
    for got in seen:
        images, _, indices = next(batches)
        assert images.dtype == torch.uint8
        assert torch.equal(got, augment(images, batch_seeds(data.train.augment_seed, indices)))
    assert len(seen) == 2


def test_device_augmentation_training_is_reproducible_and_leaves_the_dataset_as_it_was(tmp_path):
    from hdkd.data import build_datasets

    runs = []
    for name in ("a", "b"):
        cfg = _cfg(
            tmp_path / name,
            "student",
            "train.epochs=1",
            "train.deterministic=true",
            "train.max_steps_per_epoch=3",
            "data.augment_on=device",
        ).resolved()
        data = build_datasets(cfg.data, cfg.model.img_size)
        runs.append(train(cfg, data=data))
        assert data.train.raw is False  # the next role of a pipeline gets the usual items
    a, b = load_file(runs[0].last_checkpoint), load_file(runs[1].last_checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_augment_on_is_refused(tmp_path):
    from hdkd.errors import ConfigError

    with pytest.raises(ConfigError, match="data.augment_on"):
        train(_cfg(tmp_path, "student", "data.augment_on=gpu"))
    assert not (tmp_path / "student").exists()


@pytest.mark.parametrize(
    "caps, expected",
    [({"amx_bf16": True, "avx512_bf16": True}, "bf16"), ({"avx512_bf16": True}, "bf16"), ({"avx2": True}, "none")],
)
def test_auto_amp_is_bf16_only_where_the_cpu_has_native_bf16(monkeypatch, caps, expected):
    from hdkd.runtime import resolve_amp

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert resolve_amp("auto", torch.device("cpu")) == expected
    assert resolve_amp("none", torch.device("cpu")) == "none" and resolve_amp("bf16", torch.device("cpu")) == "bf16"
    assert resolve_amp("auto", torch.device("meta")) == "none"


@pytest.mark.parametrize("native", [True, False])
def test_auto_amp_trains_exactly_as_the_precision_it_resolves_to(tmp_path, monkeypatch, native):
    """train.amp=auto is the default; its run is bit-identical to the explicit setting it stands for, and
    summary.json says which precision ran."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": native})
    steps = ["train.epochs=1", "train.max_steps_per_epoch=2", "train.deterministic=true"]
    auto = train(_cfg(tmp_path / "auto", "student", *steps))
    explicit = train(_cfg(tmp_path / "explicit", "student", *steps, f"train.amp={'bf16' if native else 'none'}"))
    other = train(_cfg(tmp_path / "other", "student", *steps, f"train.amp={'none' if native else 'bf16'}"))
    a, b, c = (load_file(r.last_checkpoint) for r in (auto, explicit, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the two precisions do differ: the test can tell them apart
    summary = json.loads((tmp_path / "auto" / "student" / "summary.json").read_text())
    assert summary["amp"] == ("bf16" if native else "none")
    assert build_config("student").train.amp == "auto"


def test_auto_channels_last_trains_exactly_as_channels_last_on_the_cpu(tmp_path):
    """train.channels_last=auto is the default; for fp32 on the CPU it is bit-identical to channels_last=true, and
    summary.json says which layout ran."""
    steps = ["train.epochs=1", "train.max_steps_per_epoch=2", "train.deterministic=true", "train.amp=none"]
    auto = train(_cfg(tmp_path / "auto", "student", *steps))
    explicit = train(_cfg(tmp_path / "explicit", "student", *steps, "train.channels_last=true"))
    nchw = train(_cfg(tmp_path / "nchw", "student", *steps, "train.channels_last=false"))
    a, b = load_file(auto.last_checkpoint), load_file(explicit.last_checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    layouts = [json.loads((tmp_path / run / "student" / "summary.json").read_text())["channels_last"]
               for run in ("auto", "nchw")]  # fmt: skip
    assert layouts == [True, False] and nchw.best_val["balanced_accuracy"] >= 0
    assert build_config("student").train.channels_last == "auto"


def test_channels_last_resolves_to_the_cpu_only_and_refuses_other_values(tmp_path):
    from hdkd.errors import ConfigError
    from hdkd.runtime import resolve_channels_last

    assert resolve_channels_last("auto", torch.device("cpu")) is True
    assert resolve_channels_last("auto", torch.device("cpu"), "bf16") is False  # slower under bf16 where measured
    assert resolve_channels_last("auto", torch.device("cuda")) is False
    assert resolve_channels_last(False, torch.device("cpu")) is False
    with pytest.raises(ConfigError, match="train.channels_last: expected auto, true or false, got 'nhwc'"):
        train(_cfg(tmp_path, "student", "train.channels_last=nhwc"))
    assert not (tmp_path / "student").exists()


def test_unknown_amp_is_refused_before_any_output(tmp_path):
    from hdkd.errors import ConfigError

    with pytest.raises(ConfigError, match="train.amp: unknown 'fp16'"):
        train(_cfg(tmp_path, "student", "train.amp=fp16"))
    assert not (tmp_path / "student").exists()


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_events_mirror_the_log_and_gradient_shares_are_logged(tmp_path):
    teacher = train(_cfg(tmp_path, "teacher", "train.epochs=1", "train.tensorboard=false"))
    assert not list((tmp_path / "teacher").glob("events.out.tfevents.*"))  # off: nothing written
    train(
        _cfg(
            tmp_path, "hdkd", "train.epochs=2", "train.grad_share_every=1", f"distill.teacher={teacher.best_checkpoint}"
        )
    )
    out = tmp_path / "hdkd"
    history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    for record in history:
        shares = [record[f"grad_share_{t}"] for t in ("ce", "kd", "feature")]
        assert sum(shares) == pytest.approx(1.0) and all(s > 0 for s in shares)
    scalars = _scalars(out)
    for key, tag in (("train_loss", "train/loss"), ("val_balanced_accuracy", "val/balanced_accuracy"),
                     ("lr", "lr"), ("grad_share_feature", "grad_share/feature")):  # fmt: skip
        assert [step for step, _ in scalars[tag]] == [1, 2]
        assert [v for _, v in scalars[tag]] == pytest.approx([r[key] for r in history], rel=1e-6)


def test_a_fresh_run_replaces_old_event_files_and_a_resumed_one_keeps_one_value_per_epoch(tmp_path):
    train(_cfg(tmp_path, "student", "train.epochs=1"))
    train(_cfg(tmp_path, "student", "train.epochs=1"))  # fresh again: the first run's events are removed
    assert len(list((tmp_path / "student").glob("events.out.tfevents.*"))) == 1
    train(_cfg(tmp_path, "student", "train.epochs=2"), resume=True)
    assert [step for step, _ in _scalars(tmp_path / "student")["train/loss"]] == [1, 2]


def test_grad_share_every_must_not_be_negative(tmp_path):
    from hdkd.errors import ConfigError

    with pytest.raises(ConfigError, match="train.grad_share_every"):
        train(_cfg(tmp_path, "student", "train.grad_share_every=-1"))


def test_cpu_training_keeps_freed_memory_unless_switched_off(tmp_path, monkeypatch):
    """train.reuse_memory (default true) applies hdkd.runtime.reuse_freed_memory before a CPU run; false leaves
    glibc's policy alone. It changes no result, so it is not part of what identifies a run."""
    from hdkd.config import RESULT_NEUTRAL
    from hdkd.errors import ConfigError
    from hdkd.training import trainer

    calls = []
    monkeypatch.setattr(trainer, "reuse_freed_memory", lambda: calls.append(1) or True)
    steps = ["train.epochs=1", "train.max_steps_per_epoch=1"]
    train(_cfg(tmp_path / "on", "student", *steps))
    assert calls == [1]
    train(_cfg(tmp_path / "off", "student", *steps, "train.reuse_memory=false"))
    assert calls == [1]
    assert build_config("student").train.reuse_memory is True and ("train", "reuse_memory") in RESULT_NEUTRAL
    with pytest.raises(ConfigError, match="train.reuse_memory"):
        train(_cfg(tmp_path / "bad", "student", "train.reuse_memory=sometimes"))
