"""BatchNorm folding: the folded frozen teacher computes what the eval-mode teacher computes."""

import timm
import torch
import torch.nn as nn

import hdkd
from hdkd.models.fuse import count_batchnorms, fold_batchnorm


def _teacher_with_stats(img_size=32, block="mbcsa", classes=4):
    torch.manual_seed(0)
    model = timm.create_model("hdkd_teacher", num_classes=classes, img_size=img_size, block=block)
    with torch.no_grad():  # non-trivial affine parameters as well as running statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
        model.train()
        for _ in range(3):
            model(torch.randn(4, 3, img_size, img_size) * 1.5 + 0.3)
    return model.eval()


def _assert_close(a, b, rel=1e-4):
    scale = a.abs().max().item()
    assert (a - b).abs().max().item() <= rel * scale, ((a - b).abs().max().item(), scale)


def test_folded_teacher_matches_eval_teacher():
    teacher = _teacher_with_stats()
    bn_before = count_batchnorms(teacher)
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    folded = fold_batchnorm(teacher)
    assert count_batchnorms(folded) == 0  # every BN, including MBCSA's pre-norm, is folded
    assert count_batchnorms(teacher) == bn_before and teacher.training is False  # the original is untouched
    assert all(torch.equal(state[k], v) for k, v in teacher.state_dict().items())
    assert not folded.training and not any(p.requires_grad for p in folded.parameters())

    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        final_t, maps_t = teacher.forward_intermediates(x)
        final_f, maps_f = folded.forward_intermediates(x)
        logits_t, logits_f = teacher.forward_head(final_t), folded.forward_head(final_f)
    assert len(maps_f) == 3
    for t, f in zip(maps_t + [logits_t], maps_f + [logits_f]):
        _assert_close(t, f)


def test_fold_mbconv_student_and_sequential():
    teacher = _teacher_with_stats(block="mbconv")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _assert_close(teacher(x), fold_batchnorm(teacher)(x))
    student = timm.create_model("hdkd", num_classes=3, img_size=32).eval()
    folded = fold_batchnorm(student)
    assert count_batchnorms(folded) == 0
    with torch.no_grad():
        _assert_close(student(x), folded(x))
    seq = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()).eval()
    seq[1].running_mean.normal_()
    seq[1].running_var.uniform_(0.5, 2)
    with torch.no_grad():
        _assert_close(seq(x), fold_batchnorm(seq)(x))
    assert isinstance(fold_batchnorm(seq)[1], nn.Identity)


def test_hdkd_loss_fold_teacher_bn_same_loss():
    teacher = _teacher_with_stats()
    student = timm.create_model("hdkd", num_classes=4, img_size=32).train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    plain = hdkd.HDKDLoss(teacher)(student, x, y).total.item()
    crit = hdkd.HDKDLoss(teacher, fold_teacher_bn=True)
    assert crit.teacher is not teacher and count_batchnorms(crit.teacher) == 0
    assert abs(crit(student, x, y).total.item() - plain) <= 1e-4 * abs(plain)


def test_config_has_fold_teacher_bn():
    from hdkd.config import from_dict

    assert from_dict({}).distill.fold_teacher_bn is True  # exact up to rounding, faster: the default
    assert from_dict({"distill": {"fold_teacher_bn": False}}).distill.fold_teacher_bn is False


def test_unwrap_model_removes_compile_and_ddp_wrappers_only():
    import torch

    from hdkd.runtime import unwrap_model

    class Holder(nn.Module):  # a model whose submodule happens to be called `module` is not a wrapper
        def __init__(self):
            super().__init__()
            self.module = nn.Linear(2, 2)

    holder = Holder()
    assert unwrap_model(holder) is holder
    assert unwrap_model(torch.compile(holder, backend="eager")) is holder


def test_folding_keeps_a_channels_last_model_channels_last():
    teacher = _teacher_with_stats().to(memory_format=torch.channels_last)
    folded = fold_batchnorm(teacher)
    conv = folded.stages[0][1].conv
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        _assert_close(teacher(x), folded(x))
