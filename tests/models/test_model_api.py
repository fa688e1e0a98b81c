"""The model classes and the timm arguments they implement (drop_rate, global_pool, grad checkpointing,
no_weight_decay) or refuse."""

import pytest
import timm
import torch
import torch.nn as nn

from hdkd.models import HDKDDistilled, HDKDNet, HDKDStudent, HDKDTeacher
from hdkd.models.fuse import count_batchnorms
from hdkd.models.hdkd import MBCSA, StemBlock


def _model(name, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=3, img_size=32, **kwargs)


def test_registered_names_build_their_classes():
    teacher, student, distilled = _model("hdkd_teacher"), _model("hdkd_student"), _model("hdkd")
    assert type(teacher) is HDKDTeacher and type(student) is HDKDStudent and type(distilled) is HDKDDistilled
    assert all(isinstance(m, HDKDNet) for m in (teacher, student, distilled))
    assert (teacher.head_type, student.head_type, distilled.head_type) == ("linear", "dflt", "dflt")
    assert not hasattr(student, "dist_token") and not hasattr(student, "head_dist")
    assert student.num_prefix_tokens == 1 and distilled.num_prefix_tokens == 2


def test_teacher_ignores_dflt_settings_but_contradicting_head_is_refused():
    # the trainer passes the DFLT settings to every HDKD model and checkpoints store them
    teacher = _model("hdkd_teacher", dflt_depth=1, dflt_heads=2, dflt_patch_size=2, head="linear")
    assert not hasattr(teacher, "blocks")
    with pytest.raises(ValueError, match="describe another model"):
        _model("hdkd", head="linear")
    with pytest.raises(ValueError, match="describe another model"):
        _model("hdkd_student", distilled=True)


def test_block_fuse_folds_in_place():
    torch.manual_seed(0)
    stem, block = StemBlock(3, 8).eval(), MBCSA(8, 8).eval()
    for m in (stem, block):
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.normal_()
                bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = block(stem(x))
        stem.fuse()
        block.fuse()
        after = block(stem(x))
    assert count_batchnorms(stem) == count_batchnorms(block) == 0
    assert (before - after).abs().max() <= 1e-5 * before.abs().max()


def test_drop_rate_is_dropout_before_the_heads():
    model = _model("hdkd", drop_rate=0.5).train()
    assert isinstance(model.head_drop, nn.Dropout) and model.head_drop.p == 0.5
    feats = torch.randn(4, 10, 256)
    torch.manual_seed(1)
    a_cls, a_dist = model.forward_head(feats)
    torch.manual_seed(2)
    b_cls, b_dist = model.forward_head(feats)
    assert not torch.allclose(a_cls, b_cls) and not torch.allclose(a_dist, b_dist)
    model.eval()
    expected = (model.head(feats[:, 0]) + model.head_dist(feats[:, 1])) / 2
    assert torch.allclose(model.forward_head(feats), expected)
    teacher = _model("hdkd_teacher", drop_rate=0.5).train()
    assert (teacher.forward_head(torch.ones(8, 192, 4, 4), pre_logits=True) == 0).any()  # dropped activations
    with pytest.raises(ValueError, match="drop_rate"):
        _model("hdkd", drop_rate=1.0)


def test_global_pool_is_the_authors_or_refused():
    assert _model("hdkd_teacher", global_pool="avg").global_pool == "avg"
    assert _model("hdkd", global_pool="token").global_pool == "token"
    with pytest.raises(ValueError, match="global_pool 'max'"):
        _model("hdkd_teacher", global_pool="max")
    with pytest.raises(ValueError, match="global_pool 'avg'"):
        _model("hdkd_student", global_pool="avg")
    model = _model("hdkd")
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(5, "avg")
    model.reset_classifier(5)
    assert model.head.out_features == model.head_dist.out_features == 5 and model.num_classes == 5


def test_no_weight_decay_names_the_token_parameters():
    for name, expected in (
        ("hdkd_teacher", set()),
        ("hdkd_student", {"cls_token", "pos_embed"}),
        ("hdkd", {"cls_token", "dist_token", "pos_embed"}),
    ):
        model = _model(name)
        assert model.no_weight_decay() == expected
        assert expected <= dict(model.named_parameters()).keys()


@pytest.mark.parametrize("name", ["hdkd_teacher", "hdkd"])
def test_grad_checkpointing_gives_the_same_gradients_and_running_statistics(name):
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    results = []
    for enable in (False, True):
        model = _model(name).train()
        model.set_grad_checkpointing(enable)
        calls = []
        block = model.stages[1][0]
        block.forward = lambda t, run=block.forward, calls=calls: calls.append(1) or run(t)
        out = model(x)
        loss = sum(torch.nn.functional.cross_entropy(o, y) for o in (out if isinstance(out, tuple) else (out,)))
        loss.backward()
        assert len(calls) == (2 if enable else 1)  # recomputed in the backward pass
        results.append(model)
    plain, ckpt = results
    for (k, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7), k
    for (k, b), c in zip(plain.named_buffers(), ckpt.buffers()):
        assert torch.equal(b, c), k  # BatchNorm statistics updated once, not twice
