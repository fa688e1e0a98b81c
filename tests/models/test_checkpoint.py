import json
import socket

import pytest
import timm
import torch
from safetensors.torch import save_file

from hdkd import CheckpointError, create_model_from_checkpoint, load_checkpoint, save_checkpoint
from hdkd.models.checkpoint import (
    FORMAT,
    HDKD_ARCHITECTURES,
    SUPPORTED_TIMM_MODELS,
    checkpoint_filter_fn,
    read_checkpoint_metadata,
)
from hdkd.models.factory import create_model


def _fixture_models(fixtures):
    teacher = load_checkpoint(timm.create_model("hdkd_teacher", num_classes=4), fixtures / "teacher_4cls_224.pth")
    student = load_checkpoint(timm.create_model("hdkd", num_classes=4), fixtures / "hdkd_4cls_224.pth")
    return teacher.eval(), student.eval()


def test_official_checkpoints_reproduce_authors_outputs(official_fixtures):
    teacher, student = _fixture_models(official_fixtures)
    ref = torch.load(official_fixtures / "batch_and_outputs.pt", weights_only=True)
    with torch.no_grad():
        final, t_maps = teacher.forward_intermediates(ref["x"])
        assert (teacher.forward_head(final) - ref["teacher_logits_eval"]).abs().max() < 1e-4
        final, s_maps = student.forward_intermediates(ref["x"])
        assert (student.head(final[:, 0]) - ref["hdkd_cls_logits_eval"]).abs().max() < 1e-4
        assert (student.head_dist(final[:, 1]) - ref["hdkd_dist_logits_eval"]).abs().max() < 1e-4
        expected_eval = (ref["hdkd_cls_logits_eval"] + ref["hdkd_dist_logits_eval"]) / 2
        assert (student(ref["x"]) - expected_eval).abs().max() < 1e-4
    for maps, refs in ((t_maps, ref["teacher_stage_features_eval"]), (s_maps, ref["hdkd_stage_features_eval"])):
        for m, r in zip(maps, refs):
            assert list(m.shape) == r["shape"]
            assert abs(m.double().sum().item() - r["sum"]) <= 1e-4 * abs(r["sum"])
            assert abs(m.double().abs().sum().item() - r["abs_sum"]) <= 1e-4 * r["abs_sum"]
            assert torch.allclose(m[:, :4, :4, :4], r["corner"].float(), atol=1e-4)


def test_official_checkpoint_for_wrong_class_count_is_refused(official_fixtures):
    with pytest.raises(CheckpointError, match="4 classes but the model has 7"):
        load_checkpoint(timm.create_model("hdkd_teacher", num_classes=7), official_fixtures / "teacher_4cls_224.pth")


def test_checkpoint_of_another_architecture_is_refused(official_fixtures):
    with pytest.raises(CheckpointError, match="does not match the hdkd_student architecture"):
        load_checkpoint(timm.create_model("hdkd_student", num_classes=4), official_fixtures / "hdkd_4cls_224.pth")
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(timm.create_model("hdkd", num_classes=4), official_fixtures / "teacher_4cls_224.pth")


def test_own_checkpoint_round_trip_rebuilds_the_model(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("hdkd", num_classes=3, img_size=32, in_chans=1).eval()
    path = save_checkpoint(
        model,
        tmp_path / "m.safetensors",
        "hdkd",
        {"num_classes": 3, "img_size": 32, "in_chans": 1},
        extra={"class_names": ["a", "b", "c"]},
    )
    again = create_model_from_checkpoint(path).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    with pytest.raises(CheckpointError, match="3 classes but the model has 5"):
        load_checkpoint(timm.create_model("hdkd", num_classes=5, img_size=32, in_chans=1), path)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_checkpoint(timm.create_model("hdkd", num_classes=3, img_size=64, in_chans=1), path)


def test_plain_safetensors_and_pickled_objects(tmp_path):
    model = timm.create_model("hdkd_student", num_classes=2, img_size=32)
    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(plain))
    load_checkpoint(timm.create_model("hdkd_student", num_classes=2, img_size=32), plain)

    class Evil:  # an arbitrary pickled object must never be unpickled
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"model": Evil()}, evil)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_checkpoint(model, evil)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(model, tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        load_checkpoint(model, garbage)


# ----------------------------------------------------------------------------------- metadata is data, not trust
def _with_metadata(tmp_path, model_name="hdkd", model_args=None, extra="{}", raw_args=None):
    """A tiny real checkpoint whose metadata says what the test wants (as a hostile file would)."""
    model = timm.create_model("hdkd", num_classes=2, img_size=32)
    args = raw_args if raw_args is not None else json.dumps(model_args or {"num_classes": 2, "img_size": 32})
    path = tmp_path / "m.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(
        state, str(path), metadata={"format": FORMAT, "model_name": model_name, "model_args": args, "extra": extra}
    )
    return path


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize(
    "name,args,message",
    [
        (
            "hf-hub:timm/resnet18.a1_in1k",
            {"num_classes": 2},
            "model_name 'hf-hub:timm/resnet18.a1_in1k' is not a model",
        ),
        ("timm/resnet18", {"num_classes": 2}, "is not a model hdkd builds"),
        ("vit_giant_patch14_224", {"num_classes": 2}, "is not a model hdkd builds"),
        (
            "resnet18",
            {"num_classes": 2, "checkpoint_path": "/etc/passwd"},
            "'checkpoint_path' not accepted for resnet18",
        ),
        ("resnet18", {"num_classes": 2, "pretrained": True}, "'pretrained' not accepted"),
        (
            "resnet18",
            {"num_classes": 2, "pretrained_cfg_overlay": {"file": "x"}},
            "'pretrained_cfg_overlay' not accepted",
        ),
        (
            "hdkd",
            {"num_classes": 2, "widths": [100000, 100000, 100000]},
            r"model_args\.widths must be a list of 3 integers from 1 to 4096",
        ),
        (
            "hdkd",
            {"num_classes": 2, "widths": [4096, 4096, 4096], "depths": [64, 64, 64]},
            "parameters .* refused, over 500 M",
        ),
        ("hdkd", {"num_classes": 10**9}, r"model_args\.num_classes must be an integer from 1 to 100000"),
        ("hdkd", {"num_classes": 2, "in_chans": True}, r"model_args\.in_chans must be 1 or 3"),
        ("hdkd", {"num_classes": 2, "img_size": 40}, "cannot build hdkd from its metadata .*multiple of 16"),
    ],
)
def test_checkpoint_metadata_cannot_download_load_or_allocate(tmp_path, no_network, name, args, message):
    path = _with_metadata(tmp_path, name, args)
    with pytest.raises(CheckpointError, match=message):
        create_model_from_checkpoint(path)


@pytest.mark.parametrize(
    "raw_args,extra,message",
    [
        ("{not json", "{}", "metadata 'model_args' is not valid JSON"),
        ("[1, 2]", "{}", "metadata 'model_args' must be a JSON object"),
        (None, "nope", "metadata 'extra' is not valid JSON"),
        (None, json.dumps({"class_names": "abc"}), r"extra\.class_names must be a list of class name strings"),
        (None, json.dumps({"in_chans": "three"}), r"extra\.in_chans must be 1 or 3"),
        (None, json.dumps({"temperature": -1}), r"extra\.temperature must be a positive number"),
    ],
)
def test_malformed_metadata_is_a_checkpoint_error(tmp_path, raw_args, extra, message):
    path = _with_metadata(tmp_path, raw_args=raw_args, extra=extra)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint_metadata(path)


def test_supported_timm_peers_rebuild_from_their_checkpoint(tmp_path, no_network):
    model = create_model("resnet18", num_classes=3, in_chans=1)
    path = save_checkpoint(
        model, tmp_path / "r.safetensors", "resnet18", {"num_classes": 3, "in_chans": 1, "img_size": 32}
    )
    again = create_model_from_checkpoint(path)
    assert again.num_classes == 3
    assert set(SUPPORTED_TIMM_MODELS) >= {"resnet18", "deit_tiny_distilled_patch16_224", "levit_128s"}


def test_the_filter_function_maps_the_authors_names(official_fixtures):
    state = torch.load(official_fixtures / "teacher_4cls_224.pth", map_location="cpu", weights_only=True)
    model = timm.create_model("hdkd_teacher", num_classes=4)
    filtered = checkpoint_filter_fn({f"module.{k}": v for k, v in state.items()}, model)
    assert set(filtered) == set(model.state_dict())
    assert checkpoint_filter_fn(model.state_dict()).keys() == model.state_dict().keys()  # ours pass unchanged


def test_every_model_the_project_trains_or_measures_can_be_rebuilt():
    from hdkd.experiments.ablation.variants import VARIANTS
    from hdkd.experiments.benchmark import PEERS

    overrides = [o for v in VARIANTS.values() for o in v.overrides if "model.name=" in o]
    named = {o.split("=", 1)[1] for o in overrides}
    assert set(PEERS) | named <= set(SUPPORTED_TIMM_MODELS) | set(HDKD_ARCHITECTURES)


def test_what_the_trainer_saves_for_every_preset_and_role_is_accepted():
    from pathlib import Path

    from hdkd.config import ROLES, build_config
    from hdkd.models.checkpoint import check_model_spec
    from hdkd.training.trainer import model_args

    presets = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    for preset in [None, *presets]:
        cfg = build_config(None, [str(preset)] if preset else [])
        for role in ROLES:
            resolved = cfg.for_role(role)
            check_model_spec(resolved.model.name, model_args(resolved, 4, 3), where=f"{preset} {role}")
