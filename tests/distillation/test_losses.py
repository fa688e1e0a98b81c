import json

import pytest
import timm
import torch
import torch.nn.functional as F

from hdkd import ConfigError, HDKDError, HDKDLoss, SupervisedLoss, load_checkpoint


def _grad_norm(model):
    return torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None)).item()


@pytest.mark.parametrize("kd", ["soft", "hard"])
def test_loss_and_gradient_match_authors_code(official_fixtures, kd):
    expected = json.loads((official_fixtures / "expected_losses.json").read_text())[f"loss_{kd}"]
    ref = torch.load(official_fixtures / "batch_and_outputs.pt", weights_only=True)
    teacher = load_checkpoint(
        timm.create_model("hdkd_teacher", num_classes=4), official_fixtures / "teacher_4cls_224.pth"
    )
    student = load_checkpoint(timm.create_model("hdkd", num_classes=4), official_fixtures / "hdkd_4cls_224.pth")
    student.train()
    criterion = HDKDLoss(teacher, alpha=0.5, tau=1.0, lam=10.0, kd=kd, beta=1.0)
    out = criterion(student, ref["x"], ref["y"])
    out.total.backward()
    assert out.total.item() == pytest.approx(expected["total"], rel=1e-4)
    assert out.ce == pytest.approx(expected["base_ce_cls_head"], rel=1e-4)
    assert out.feature == pytest.approx(expected["feature_mse_weighted_sum"], rel=1e-4)
    assert _grad_norm(student) == pytest.approx(expected["grad_l2_norm"], rel=1e-3)
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training


def _tiny(name, classes=3, seed=0):
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=classes, img_size=32)


def test_single_pass_and_formula_against_float64_reference():
    teacher, student = _tiny("hdkd_teacher", seed=1).eval(), _tiny("hdkd", seed=2).train()
    x, y = torch.randn(5, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1])
    calls = {"t": 0, "s": 0}
    teacher.stages[0].register_forward_hook(lambda *a: calls.__setitem__("t", calls["t"] + 1))
    student.stages[0].register_forward_hook(lambda *a: calls.__setitem__("s", calls["s"] + 1))
    crit = HDKDLoss(teacher, alpha=0.3, tau=2.0, lam=5.0, beta=2.0)
    rng = torch.get_rng_state()
    out = crit(student, x, y)
    assert calls == {"t": 1, "s": 1}
    # reference: recompute every term in float64 from separate passes, authors' style
    torch.set_rng_state(rng)
    teacher.double()
    student.double()  # still in train mode: batch statistics, as in the single-pass call
    with torch.no_grad():
        _, t_maps = teacher.forward_intermediates(x.double())
        z_t = teacher(x.double())
        s_final, s_maps = student.forward_intermediates(x.double())
        z_cls, z_dist = student.forward_head(s_final)
    ce = F.cross_entropy(z_cls, y)
    p_t = F.softmax(z_t / 2.0, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(z_dist / 2.0, 1))).sum() * 4.0 / z_dist.numel()
    feat = sum((i**2.0) * ((s - t) ** 2).mean() for i, t, s in zip((1, 2, 3), t_maps, s_maps))
    total = 0.7 * ce + 0.3 * kl + 5.0 * feat
    assert out.total.item() == pytest.approx(total.item(), rel=1e-4)
    assert out.kd == pytest.approx(kl.item(), rel=1e-3)


def test_variants():
    teacher, student = _tiny("hdkd_teacher", seed=1), _tiny("hdkd", seed=2)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    deit = HDKDLoss(teacher, lam=0.0)(student, x, y)
    batchmean = HDKDLoss(teacher, lam=0.0, kd_reduction="batchmean")(student, x, y)
    assert batchmean.kd == pytest.approx(deit.kd * 3, rel=1e-5)  # divided by B, not B*C (C = 3)
    feature_only = HDKDLoss(teacher, kd="none")(student, x, y)
    assert feature_only.kd == 0.0 and feature_only.feature > 0
    logit_only = HDKDLoss(teacher, lam=0.0)(student, x, y)
    assert logit_only.feature == 0.0
    assert logit_only.total.item() == pytest.approx(0.5 * logit_only.ce + 0.5 * logit_only.kd, rel=1e-5)
    with pytest.raises(ConfigError, match="kd"):
        HDKDLoss(teacher, kd="sofft")


def test_any_timm_model_as_logit_only_teacher_and_shape_check():
    cnn = timm.create_model("resnet18", num_classes=3)
    student = _tiny("hdkd")
    out = HDKDLoss(cnn, lam=0.0, kd="hard")(student, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    out.total.backward()
    assert out.kd > 0
    with pytest.raises(HDKDError, match=r"stage \d of the teacher has shape"):
        HDKDLoss(cnn, lam=1.0)(student, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))


def test_supervised_loss_trains_both_heads():
    student = _tiny("hdkd").train()
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    out = SupervisedLoss()(student, x, y)
    out.total.backward()
    assert student.head.weight.grad.abs().sum() > 0 and student.head_dist.weight.grad.abs().sum() > 0
