import pytest
import timm
import torch
from safetensors.torch import save_file

from hdkd import CheckpointError, create_model_from_checkpoint, load_checkpoint, save_checkpoint


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
